"""Admission webhooks' `matchConditions`: CEL expressions deciding whether a webhook is called (GA in Kubernetes 1.30),
evaluated with cel-python as the CRD rules are (`kwire.api.crd.cel`).

Mirrors k8s.io/apiserver's matchconditions.Matcher: each condition sees `object`, `oldObject` (null when absent) and
`request` (the AdmissionRequest); the webhook is called only when every condition is true. A false condition skips
it at once; an evaluation error (with no false condition) follows the webhook's failurePolicy: `Fail` rejects the
request, `Ignore` skips the webhook. Expressions must compile when the configuration is written (422 with the field
path); at most 64 conditions with unique names. The `authorizer` variable kube also offers is not available here:
an expression using it is refused at write time rather than failing every request later.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import celpy

from kwire.api.crd import cellib
from kwire.api.errors import TOO_MANY, FieldError, duplicate, invalid, required
from kwire.api.validation import qualified_name

MAX_CONDITIONS = 64
VARIABLES = ("object", "oldObject", "request")


@functools.cache
def _env() -> Any:
    return celpy.Environment()


@functools.lru_cache(maxsize=4096)  # bounded: expressions come from users' webhook configurations
def _compile(expression: str) -> tuple[Any, str]:
    """(program, "") or (None, why it does not compile)."""
    if "authorizer" in expression.replace("'authorizer'", "").replace('"authorizer"', ""):
        return None, "the authorizer variable is not supported by this API server"
    try:
        return _env().program(_env().compile(expression), functions=cellib.FUNCTIONS), ""
    except Exception as exc:  # noqa: BLE001 - any compile failure is the user's error, reported with the path
        return None, f"compilation failed: {exc}"


def validate(conditions: Any, path: str) -> list[FieldError]:
    """Errors of a webhook's matchConditions in kube-apiserver's words."""
    errs: list[FieldError] = []
    if conditions is None:
        return errs
    if not isinstance(conditions, list):
        return [invalid(path, conditions, "must be a list")]
    if len(conditions) > MAX_CONDITIONS:
        errs.append(FieldError(TOO_MANY, path, f"must have at most {MAX_CONDITIONS} items", len(conditions)))
    names: set[str] = set()
    for i, cond in enumerate(conditions):
        cpath = f"{path}[{i}]"
        cond = cond if isinstance(cond, dict) else {}
        name = str(cond.get("name") or "")
        if not name:
            errs.append(required(f"{cpath}.name"))
        else:
            errs += [invalid(f"{cpath}.name", name, m) for m in qualified_name(name)]
            if name in names:
                errs.append(duplicate(f"{cpath}.name", name))
            names.add(name)
        expression = str(cond.get("expression") or "")
        if not expression.strip():
            errs.append(required(f"{cpath}.expression"))
            continue
        _, why = _compile(expression)
        if why:
            errs.append(invalid(f"{cpath}.expression", expression, why))
    return errs


@dataclass(frozen=True)
class Match:
    matches: bool
    error: str = ""  # set when a condition could not be evaluated (and none was false)


def evaluate(conditions: list[Any], *, request: dict[str, Any]) -> Match:
    """Whether a webhook with these matchConditions is called for `request` (an AdmissionRequest)."""
    if not conditions:
        return Match(True)
    activation = {
        "object": celpy.json_to_cel(request.get("object")),
        "oldObject": celpy.json_to_cel(request.get("oldObject")),
        "request": celpy.json_to_cel(request),
    }
    errors: list[str] = []
    for cond in conditions:
        name = str((cond or {}).get("name") or "")
        prog, why = _compile(str((cond or {}).get("expression") or ""))
        if prog is None:
            errors.append(f"{name}: {why}")
            continue
        try:
            result = prog.evaluate(activation)
        except Exception as exc:  # noqa: BLE001 - a runtime error is reported under the failure policy
            errors.append(f"{name}: {exc}")
            continue
        if isinstance(result, Exception):
            errors.append(f"{name}: {result}")
        elif not isinstance(result, celpy.celtypes.BoolType):
            errors.append(f"{name}: expression must evaluate to a bool, got {type(result).__name__}")
        elif not bool(result):
            return Match(False)
    if errors:
        return Match(False, error="; ".join(errors))
    return Match(True)
