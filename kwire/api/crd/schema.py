"""Structural-schema handling of custom resources: defaulting, pruning and validation against `openAPIV3Schema`.

Mirrors apiextensions-apiserver: `structuraldefaulting.Default` (defaults applied on read and on write),
`structuralpruning.Prune` (unknown fields dropped unless `x-kubernetes-preserve-unknown-fields`; nulls of
non-nullable fields without a default dropped) and the kube-openapi schema validator whose errors
`apiservervalidation.ValidateCustomResource` turns into field errors. Every error is collected (never the
first only) with kube's field paths and words (`spec.replicas in body must be of type integer: "string"`).

Hand-written rather than `jsonschema`: kube's messages, its path syntax (`spec.ports[0]`, `spec.labels[key]`),
the Kubernetes extensions (int-or-string, list-type set/map, embedded resources) and kube's format list have no
counterpart there, and mapping jsonschema's errors back would be longer than this walk.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import ipaddress
import math
import re
import uuid
from typing import Any

from kwire.api.errors import (
    DUPLICATE,
    TOO_LONG,
    TOO_MANY,
    FieldError,
    RawValue,
    forbidden,
    invalid,
    not_supported,
    required,
)

Schema = dict[str, Any]
Errs = list[FieldError]

_META_KEEP = ("apiVersion", "kind", "metadata")


def child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_TYPE_NAMES: dict[type, str] = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value)) or type(value).__name__


def _type_ok(schema_type: str, actual: str) -> bool:
    if schema_type == "number":
        return actual in ("integer", "number")
    return actual == schema_type  # a float is never an integer: Go's JSON decoding keeps 1.0 a float64


def _num(value: float) -> str:
    """A bound as Go's %v prints a float64 (10, 0.5)."""
    f = float(value)
    return str(int(f)) if f.is_integer() else repr(f)


# -- defaulting -------------------------------------------------------------------------------------------------
def apply_defaults(schema: Schema | None, value: Any) -> None:
    """Fill absent fields that have a `default`, recursively (structuraldefaulting.Default)."""
    if not schema or not isinstance(value, (dict, list)):
        return
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if not isinstance(sub, dict):
                continue
            if "default" in sub and (name not in value or (value[name] is None and not sub.get("nullable"))):
                d = sub["default"]
                value[name] = copy.deepcopy(d) if isinstance(d, (dict, list)) else d
            if name in value:
                apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for k, v in value.items():
                if k not in props:
                    apply_defaults(extra, v)
    else:
        items = schema.get("items")
        if isinstance(items, dict):
            for v in value:
                apply_defaults(items, v)


def defaults_only(schema: Any) -> Schema | None:
    """The part of `schema` that leads to a `default` (None when there is none): what `apply_defaults` needs to
    walk, so objects are not walked through subtrees that never default."""
    if not isinstance(schema, dict):
        return None
    out: Schema = {}
    if "default" in schema:
        out["default"] = schema["default"]
        if schema.get("nullable"):
            out["nullable"] = True
    props = {k: d for k, v in (schema.get("properties") or {}).items() if (d := defaults_only(v)) is not None}
    if props:
        out["properties"] = props
    for key in ("items", "additionalProperties"):
        sub = defaults_only(schema.get(key))
        if sub is not None:
            out[key] = sub
    return out or None  # structural schemas never have both properties and additionalProperties


# -- pruning ----------------------------------------------------------------------------------------------------
def prune(schema: Schema | None, value: Any, *, root: bool = False, path: str = "") -> list[str]:
    """Drop fields the schema does not specify (structuralpruning.Prune), in place; returns the paths of the
    unknown fields dropped (`spec.bogus`, `spec.ports[0].x`), which fieldValidation Strict/Warn report."""
    if schema is None:
        return []
    dropped: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        for k in list(value):
            if (root or embedded) and k in _META_KEEP:
                continue
            sub = props.get(k)
            if sub is None and isinstance(extra, dict):
                sub = extra
            if sub is None:
                if not preserve and extra is not True:
                    del value[k]
                    dropped.append(child(path, k))
                continue
            if value[k] is None and not sub.get("nullable") and "default" not in sub:
                del value[k]  # PruneNonNullableNullsWithoutDefaults (not an unknown field)
                continue
            dropped += prune(sub, value[k], path=child(path, k))
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, v in enumerate(value):
                dropped += prune(items, v, path=f"{path}[{i}]")
    return dropped


# -- formats (kube-openapi's strfmt registry as apiextensions enables it) -------------------------------------
_UUID = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)
_HOSTNAME = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_MAC = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$|^([0-9A-Fa-f]{4}\.){2}[0-9A-Fa-f]{4}$")
_DURATION = re.compile(r"^(-?(\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d|w))+$|^0$")
_HEXCOLOR = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


def _date_time(v: str) -> bool:
    try:
        dt.datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
        return "T" in v.upper() or " " in v
    except ValueError:
        return False


def _date(v: str) -> bool:
    try:
        dt.date.fromisoformat(v)
        return len(v) == 10
    except ValueError:
        return False


def _ip(v: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(v).version == version
    except ValueError:
        return False


def _cidr(v: str) -> bool:
    try:
        ipaddress.ip_network(v, strict=False)
        return "/" in v
    except ValueError:
        return False


def _byte(v: str) -> bool:
    try:
        base64.b64decode(v, validate=True)
        return True
    except ValueError:
        return False


def _uuid_version(n: int) -> Any:
    def check(v: str) -> bool:
        try:
            return _UUID.match(v) is not None and uuid.UUID(v).version == n
        except ValueError:
            return False

    return check


_FORMATS: dict[str, Any] = {
    "byte": _byte,
    "date": _date,
    "date-time": _date_time,
    "datetime": _date_time,
    "uuid": lambda v: _UUID.match(v) is not None,
    "uuid3": _uuid_version(3),
    "uuid4": _uuid_version(4),
    "uuid5": _uuid_version(5),
    "ipv4": lambda v: _ip(v, 4),
    "ipv6": lambda v: _ip(v, 6),
    "cidr": _cidr,
    "mac": lambda v: _MAC.match(v) is not None,
    "hostname": lambda v: _HOSTNAME.match(v) is not None and len(v) <= 255,
    "email": lambda v: _EMAIL.match(v) is not None,
    "duration": lambda v: _DURATION.match(v) is not None,
    "hexcolor": lambda v: _HEXCOLOR.match(v) is not None,
}
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


# -- validation -------------------------------------------------------------------------------------------------
def _go_map(value: dict[str, Any]) -> RawValue:
    inner = ", ".join(f'"{k}":{_go_value(v)}' for k, v in sorted(value.items()))
    return RawValue("map[string]interface {}{" + inner + "}")


def _go_value(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return str(_go_map(v))
    return str(v)


def validate(schema: Schema | None, value: Any, path: str) -> Errs:
    """Every error of `value` against the structural `schema`, at `path` ("" for the object root)."""
    if not schema:
        return []
    errs: Errs = []
    where = path or "body"
    if value is None:
        if schema.get("nullable"):
            return []
        stype = schema.get("type")
        if stype and not schema.get("x-kubernetes-int-or-string"):
            return [invalid(path, RawValue('"null"'), f'{where} in body must be of type {stype}: "null"')]
        return []
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            t = _type_name(value)
            return [invalid(path, t, f'{where} in body must be of type integer,string: "{t}"')]
    else:
        stype = schema.get("type")
        if stype:
            t = _type_name(value)
            if not _type_ok(stype, t):
                return [invalid(path, t, f'{where} in body must be of type {stype}: "{t}"')]
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        errs.append(not_supported(path, value, tuple(_go_value(e).strip('"') for e in enum)))
    errs += _validate_combinators(schema, value, path, where)
    if isinstance(value, str):
        errs += _validate_string(schema, value, path, where)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        errs += _validate_number(schema, value, path, where)
    elif isinstance(value, list):
        errs += _validate_array(schema, value, path, where)
    elif isinstance(value, dict):
        errs += _validate_object(schema, value, path, where)
    return errs


def _validate_combinators(schema: Schema, value: Any, path: str, where: str) -> Errs:
    """allOf / anyOf / oneOf / not: value validations a structural schema may carry (kube-openapi's words)."""
    errs: Errs = []
    for sub in schema.get("allOf") or []:
        errs += validate(sub, value, path)
    any_of = schema.get("anyOf")
    if any_of and all(validate(sub, value, path) for sub in any_of):
        errs.append(invalid(path, value, f"{where} in body must validate at least one schema (anyOf)"))
    one_of = schema.get("oneOf")
    if one_of and sum(1 for sub in one_of if not validate(sub, value, path)) != 1:
        errs.append(invalid(path, value, f"{where} in body must validate one and only one schema (oneOf)"))
    not_schema = schema.get("not")
    if isinstance(not_schema, dict) and not validate(not_schema, value, path):
        errs.append(invalid(path, value, f"{where} in body must not validate the schema (not)"))
    return errs


def _validate_string(schema: Schema, value: str, path: str, where: str) -> Errs:
    errs: Errs = []
    max_len = schema.get("maxLength")
    if isinstance(max_len, int) and len(value) > max_len:
        unit = "byte" if max_len == 1 else "bytes"
        errs.append(FieldError(TOO_LONG, path, f"may not be more than {max_len} {unit}", value))
    min_len = schema.get("minLength")
    if isinstance(min_len, int) and len(value) < min_len:
        errs.append(invalid(path, value, f"{where} in body should be at least {min_len} chars long"))
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            if re.search(pattern, value) is None:
                errs.append(invalid(path, value, f"{where} in body should match '{pattern}'"))
        except re.error:
            pass  # a pattern Python cannot compile is not enforced (kube would have rejected the CRD)
    fmt = schema.get("format")
    check = _FORMATS.get(fmt) if isinstance(fmt, str) else None
    if check is not None and not check(value):
        errs.append(invalid(path, value, f'{where} in body must be of type {fmt}: "{value}"'))
    return errs


def _validate_number(schema: Schema, value: float, path: str, where: str) -> Errs:
    errs: Errs = []
    fmt = schema.get("format")
    if isinstance(value, int) and fmt in _INT_RANGES:
        lo, hi = _INT_RANGES[fmt]
        if not lo <= value <= hi:
            errs.append(invalid(path, value, f'{where} in body must be of type {fmt}: "{value}"'))
    if isinstance(value, float) and not math.isfinite(value):
        errs.append(invalid(path, value, f"{where} in body must be a finite number"))
    maximum = schema.get("maximum")
    if isinstance(maximum, (int, float)):
        if schema.get("exclusiveMaximum") and value >= maximum:
            errs.append(invalid(path, value, f"{where} in body should be less than {_num(maximum)}"))
        elif value > maximum:
            errs.append(invalid(path, value, f"{where} in body should be less than or equal to {_num(maximum)}"))
    minimum = schema.get("minimum")
    if isinstance(minimum, (int, float)):
        if schema.get("exclusiveMinimum") and value <= minimum:
            errs.append(invalid(path, value, f"{where} in body should be greater than {_num(minimum)}"))
        elif value < minimum:
            errs.append(invalid(path, value, f"{where} in body should be greater than or equal to {_num(minimum)}"))
    multiple = schema.get("multipleOf")
    if isinstance(multiple, (int, float)) and multiple > 0 and (value / multiple) % 1 != 0:
        errs.append(invalid(path, value, f"{where} in body should be a multiple of {_num(multiple)}"))
    return errs


def _validate_array(schema: Schema, value: list[Any], path: str, where: str) -> Errs:
    errs: Errs = []
    max_items = schema.get("maxItems")
    if isinstance(max_items, int) and len(value) > max_items:
        errs.append(FieldError(TOO_MANY, path, f"{len(value)}: must have at most {max_items} items"))
    min_items = schema.get("minItems")
    if isinstance(min_items, int) and len(value) < min_items:
        errs.append(invalid(path, RawValue(str(len(value))), f"{where} in body should have at least {min_items} items"))
    items = schema.get("items")
    if isinstance(items, dict):
        for i, v in enumerate(value):
            errs += validate(items, v, f"{path}[{i}]")
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        seen: list[Any] = []
        for i, v in enumerate(value):
            if v in seen:
                errs.append(FieldError(DUPLICATE, f"{path}[{i}]", "", v if not isinstance(v, dict) else _go_map(v)))
            else:
                seen.append(v)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen_keys: set[str] = set()
        for i, v in enumerate(value):
            if not isinstance(v, dict):
                continue
            key_vals = {k: v[k] for k in keys if k in v}
            marker = repr(sorted(key_vals.items()))
            if marker in seen_keys:
                errs.append(FieldError(DUPLICATE, f"{path}[{i}]", "", _go_map(key_vals)))
            seen_keys.add(marker)
    return errs


def _validate_object(schema: Schema, value: dict[str, Any], path: str, where: str) -> Errs:
    errs: Errs = []
    props = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if name not in value:
            errs.append(required(child(path, name), ""))
    max_props = schema.get("maxProperties")
    if isinstance(max_props, int) and len(value) > max_props:
        errs.append(FieldError(TOO_MANY, path, f"{len(value)}: must have at most {max_props} items"))
    min_props = schema.get("minProperties")
    if isinstance(min_props, int) and len(value) < min_props:
        errs.append(
            invalid(path, RawValue(str(len(value))), f"{where} in body should have at least {min_props} properties")
        )
    if schema.get("x-kubernetes-embedded-resource"):
        for field in ("apiVersion", "kind"):
            if not value.get(field):
                errs.append(required(child(path, field), "must not be empty"))
    extra = schema.get("additionalProperties")
    for k, v in value.items():
        sub = props.get(k)
        if isinstance(sub, dict):
            errs += validate(sub, v, child(path, k))
        elif isinstance(extra, dict):
            errs += validate(extra, v, f"{path}[{k}]" if path else k)
        elif extra is False and k not in _META_KEEP:
            errs.append(forbidden(child(path, k), "additional properties are not allowed"))
    return errs
