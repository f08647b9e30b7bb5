"""`x-kubernetes-validations`: CEL rules of a CRD schema, evaluated with `cel-python` (module `celpy`).

Mirrors apiextensions-apiserver's `cel.Validator`: each rule runs with `self` bound to the value at its schema
node; a rule that mentions `oldSelf` is a transition rule and runs on update only, where the old object has a
value at the same place (correlated through object properties, additionalProperties keys and the keys of
`x-kubernetes-list-type: map` lists, as kube does; items of other lists have no old value). A false
result is `<path>: Invalid value: "<schema type>": <message>` (or `failed rule: <rule>`); `messageExpression`,
`fieldPath` and `reason` are honoured.

A rule cel-python cannot compile does not block the CRD: the rule is skipped and logged. Kubernetes' CEL library
functions come from `cellib`; a rule calling one that neither provides is found when it first runs and is not
enforced from then on (logged once); kube would enforce both kinds. A runtime error (a missing key) is reported
as kube words it: `no such key: x evaluating rule: <rule>`.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import celpy

from kwire.api.crd import cellib
from kwire.api.crd.schema import Schema, child
from kwire.api.errors import DUPLICATE, FORBIDDEN, REQUIRED, FieldError, invalid

log = logging.getLogger(__name__)


@functools.cache
def _env() -> Any:
    """The CEL environment, built on first use (building its parser takes a few hundred ms)."""
    return celpy.Environment()


_MISSING = object()
_REASONS = {"FieldValueForbidden": FORBIDDEN, "FieldValueRequired": REQUIRED, "FieldValueDuplicate": DUPLICATE}


@functools.lru_cache(maxsize=4096)  # bounded: rule texts come from users' CRDs
def program(rule: str) -> Any:
    """The compiled rule, or None (logged when compiled) when cel-python cannot compile it."""
    try:
        return _env().program(_env().compile(rule), functions=cellib.FUNCTIONS)
    except Exception as exc:  # noqa: BLE001 - any compile failure means: skip this rule
        log.warning("CEL rule skipped (cel-python cannot compile it): %r: %s", rule, exc)
        return None


def skipped_rules(schema: Schema | None) -> list[str]:
    """The rules of `schema` that will not be enforced (compiling them now, so the log says so at CRD time)."""
    out: list[str] = []
    for rule in _rules(schema):
        if program(rule) is None:
            out.append(rule)
    return out


def _rules(schema: Any) -> list[str]:
    if not isinstance(schema, dict):
        return []
    out = [str(v.get("rule")) for v in schema.get("x-kubernetes-validations") or [] if isinstance(v, dict)]
    for sub in (schema.get("properties") or {}).values():
        out += _rules(sub)
    for key in ("items", "additionalProperties"):
        out += _rules(schema.get(key))
    return out


def _evaluate(prog: Any, activation: dict[str, Any]) -> Any:
    try:
        return prog.evaluate({k: celpy.json_to_cel(v) for k, v in activation.items()})
    except Exception as exc:  # noqa: BLE001 - a runtime error is reported, as kube reports it
        return exc


# Whether a schema node has rules at or below it, per schema object (held so its id cannot be reused while
# cached; bounded): the walk skips subtrees without rules instead of visiting every value.
_RULES_BELOW_MAX = 4096
_rules_below: dict[int, tuple[Schema, bool]] = {}


def _has_rules_below(schema: Schema) -> bool:
    held = _rules_below.get(id(schema))
    if held is not None and held[0] is schema:
        return held[1]
    if len(_rules_below) >= _RULES_BELOW_MAX:
        _rules_below.clear()
    found = bool(_rules(schema))
    _rules_below[id(schema)] = (schema, found)
    return found


def validate(schema: Schema | None, value: Any, old: Any, path: str) -> list[FieldError]:
    """Errors of every CEL rule under `schema` for `value` (`old` is the previous value, or _MISSING/None)."""
    if not isinstance(schema, dict) or value is None or not _has_rules_below(schema):
        return []
    errs: list[FieldError] = []
    for spec in schema.get("x-kubernetes-validations") or []:
        if not isinstance(spec, dict) or not spec.get("rule"):
            continue
        rule = str(spec["rule"])
        transition = "oldSelf" in rule
        if transition and (old is None or old is _MISSING):
            continue
        prog = program(rule)
        if prog is None:
            continue
        activation = {"self": value, **({"oldSelf": old} if transition else {})}
        result = _evaluate(prog, activation)
        if isinstance(result, celpy.celtypes.BoolType) and bool(result):
            continue
        # a rule at the root has no field path: kube prints a nil *field.Path as "<nil>"
        where = (path + str(spec.get("fieldPath") or "")).lstrip(".") or "<nil>"
        if not isinstance(result, celpy.celtypes.BoolType):
            detail = _runtime_error(rule, result)
            if detail is not None:
                errs.append(invalid(where, schema.get("type", "object"), f"{detail} evaluating rule: {rule}"))
            continue
        message = str(spec.get("message") or f"failed rule: {rule}")
        if spec.get("messageExpression"):
            mprog = program(str(spec["messageExpression"]))
            out = _evaluate(mprog, activation) if mprog is not None else None
            if isinstance(out, str) and out.strip():
                message = str(out)
        reason = _REASONS.get(str(spec.get("reason") or ""))
        if reason is not None:
            errs.append(FieldError(reason, where, message))
        else:
            errs.append(invalid(where, schema.get("type", "object"), message))
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        old_map = old if isinstance(old, dict) else {}
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if isinstance(sub, dict):
                sub_path = child(path, k) if k in props else f"{path}[{k}]"
                errs += validate(sub, v, old_map.get(k, _MISSING), sub_path)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        old_items: dict[str, Any] = {}
        if schema.get("x-kubernetes-list-type") == "map" and isinstance(old, list):
            old_items = {_map_key(o, keys): o for o in old if isinstance(o, dict)}
        for i, v in enumerate(value):
            prev = old_items.get(_map_key(v, keys), _MISSING) if old_items and isinstance(v, dict) else _MISSING
            errs += validate(schema["items"], v, prev, f"{path}[{i}]")
    return errs


def _map_key(item: dict[str, Any], keys: list[str]) -> str:
    return repr([item.get(k) for k in keys])


_NO_KEY = re.compile(r"no such member in mapping: '([^']*)'")


def _runtime_error(rule: str, result: Any) -> str | None:
    """kube's words for a rule that failed to evaluate, or None when the rule uses a function outside the
    Kubernetes CEL library cel-python and `cellib` provide (the rule is then not enforced, logged once)."""
    text = str(result.args[0]) if getattr(result, "args", None) else str(result)
    if "undeclared reference" in text:
        _log_unsupported(rule, text.split("(in activation")[0].strip())
        return None
    m = _NO_KEY.search(text)
    return f"no such key: {m.group(1)}" if m else text


@functools.lru_cache(maxsize=1024)  # once per rule (bounded)
def _log_unsupported(rule: str, why: str) -> None:
    log.warning("CEL rule not enforced (cel-python lacks a function it uses): %r: %s", rule, why)


def has_rules(schema: Schema | None) -> bool:
    return bool(_rules(schema))
