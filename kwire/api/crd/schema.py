"""Structural-schema handling of custom resources: defaulting, pruning and validation against `openAPIV3Schema`.

Mirrors apiextensions-apiserver: `structuraldefaulting.Default` (defaults applied on read and on write),
`structuralpruning.Prune` (unknown fields dropped unless `x-kubernetes-preserve-unknown-fields`; nulls of
non-nullable fields without a default dropped) and the kube-openapi schema validator whose errors
`apiservervalidation.ValidateCustomResource` turns into field errors. Every error is collected (never the
first only) with kube's field paths and words (`spec.replicas in body must be of type integer: "string"`).

A schema is compiled once into a tree of `Node`s (as kube builds a CRD's structural schema once, not per
request): keywords read and type-checked, regexes compiled, formats looked up, scalars that need no look past
their type marked (`passes`), subtrees without defaults marked. A served CRD version keeps its nodes
(`custom.derive`); a write defaults and prunes in one walk (`Node.prune(defaults=True)`, the same result as
defaulting the whole object, then pruning it) and validates in another.

Hand-written rather than `jsonschema`: kube's messages, its path syntax (`spec.ports[0]`, `spec.labels[key]`),
the Kubernetes extensions (int-or-string, list-type set/map, embedded resources) and kube's format list have no
counterpart there, and mapping jsonschema's errors back would be longer than this walk.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import functools
import ipaddress
import math
import re
import uuid
from collections import OrderedDict
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


def _type_ok(schema_type: Any, actual: str) -> bool:
    if schema_type == "number":
        return actual in ("integer", "number")
    return actual == schema_type  # a float is never an integer: Go's JSON decoding keeps 1.0 a float64


def _num(value: float) -> str:
    """A bound as Go's %v prints a float64 (10, 0.5)."""
    f = float(value)
    return str(int(f)) if f.is_integer() else repr(f)


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


# -- the compiled schema ----------------------------------------------------------------------------------------
def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _bound(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) else None


_NOTHING: frozenset[Any] = frozenset()
_NO_PROPS: dict[str, Node] = {}  # shared by every node without properties: never changed
_SCALARS = frozenset({str, int, bool})  # not float: a float is also checked for being finite
_INT_OR_STRING = frozenset({str, int})


@functools.cache  # a handful of type names: the frozensets are shared by every node
def _accepts(stype: Any) -> frozenset[type]:
    return frozenset(t for t, n in _TYPE_NAMES.items() if _type_ok(stype, n))


@functools.cache
def _passes(accepts: frozenset[type]) -> frozenset[type]:
    return accepts & _SCALARS


class Node:
    """One schema node compiled once: each keyword read and checked for its type, regexes compiled, formats
    looked up, sub-schemas compiled. Validation, defaulting and pruning walk these nodes instead of reading the
    schema's dicts again for every value of every write (kube compiles a CRD's structural schema once too)."""

    __slots__ = (
        "empty",
        "nullable",
        "int_or_string",
        "stype",
        "accepts",
        "enum",
        "enum_shown",
        "all_of",
        "any_of",
        "one_of",
        "not_",
        "max_len",
        "min_len",
        "pattern",
        "pattern_re",
        "fmt",
        "fmt_check",
        "int_range",
        "maximum",
        "exclusive_max",
        "minimum",
        "exclusive_min",
        "multiple_of",
        "max_items",
        "min_items",
        "items",
        "list_type",
        "map_keys",
        "required",
        "max_props",
        "min_props",
        "embedded",
        "props",
        "known",
        "extra",
        "extra_true",
        "extra_false",
        "preserve",
        "has_default",
        "default",
        "defaulting",
        "passes",
    )
    has_default: bool
    defaulting: bool

    def __init__(self, schema: Schema, *, shared: dict[int, Node] | None = None) -> None:
        """`shared`: nodes already compiled for sub-schemas of the same (live) schema, by id, reused instead of
        compiled again (a CRD version's body schema shares spec and status with the whole schema)."""
        get = schema.get
        memo: dict[int, Node] = {} if shared is None else shared

        def sub(value: Schema) -> Node:
            node = memo.get(id(value))
            if node is None:
                node = memo[id(value)] = Node(value, shared=memo)
            return node

        self.empty = not schema
        self.nullable = bool(get("nullable"))
        self.int_or_string = bool(get("x-kubernetes-int-or-string"))
        self.stype = get("type")
        # the Python types that pass the type check at once; others are looked at by name, as before
        self.accepts = _accepts(self.stype) if self.stype else None
        self.enum = get("enum")
        enum = self.enum
        self.enum_shown = tuple(_go_value(e).strip('"') for e in enum) if isinstance(enum, (list, tuple)) else ()
        self.all_of = tuple(sub(one) for one in get("allOf") or () if isinstance(one, dict))
        self.any_of = tuple(sub(one) for one in get("anyOf") or () if isinstance(one, dict))
        self.one_of = tuple(sub(one) for one in get("oneOf") or () if isinstance(one, dict))
        not_schema = get("not")
        self.not_ = sub(not_schema) if isinstance(not_schema, dict) else None
        self.max_len = _int(get("maxLength"))
        self.min_len = _int(get("minLength"))
        pattern = get("pattern")
        self.pattern = pattern if isinstance(pattern, str) else None
        try:
            self.pattern_re = re.compile(pattern) if isinstance(pattern, str) else None
        except re.error:
            self.pattern_re = None  # a pattern Python cannot compile is not enforced (kube would have rejected the CRD)
        fmt = get("format")
        self.fmt = fmt
        self.fmt_check = _FORMATS.get(fmt) if isinstance(fmt, str) else None
        self.int_range = _INT_RANGES.get(fmt) if isinstance(fmt, str) else None
        self.maximum = _bound(get("maximum"))
        self.exclusive_max = bool(get("exclusiveMaximum"))
        self.minimum = _bound(get("minimum"))
        self.exclusive_min = bool(get("exclusiveMinimum"))
        multiple = _bound(get("multipleOf"))
        self.multiple_of = multiple if multiple is not None and multiple > 0 else None
        self.max_items = _int(get("maxItems"))
        self.min_items = _int(get("minItems"))
        items = get("items")
        self.items = sub(items) if isinstance(items, dict) else None
        self.list_type = get("x-kubernetes-list-type")
        self.map_keys = tuple(get("x-kubernetes-list-map-keys") or ())
        self.required = tuple(get("required") or ())
        self.max_props = _int(get("maxProperties"))
        self.min_props = _int(get("minProperties"))
        self.embedded = bool(get("x-kubernetes-embedded-resource"))
        props = get("properties") or {}
        self.props = {k: sub(v) for k, v in props.items() if isinstance(v, dict)} if props else _NO_PROPS
        self.known = frozenset(props) if props else _NOTHING  # pruning keeps a property whatever its schema
        extra = get("additionalProperties")
        self.extra = sub(extra) if isinstance(extra, dict) else None
        self.extra_true = extra is True
        self.extra_false = extra is False
        self.preserve = bool(get("x-kubernetes-preserve-unknown-fields"))
        self.has_default = "default" in schema
        self.default = get("default")
        # whether defaulting has anything to do at or below this node (subtrees without a default are not walked)
        # Scalar types a value of which this node accepts without a further look (the walk's fast path): the
        # type fits and no value validation (enum, combinators, string or number bounds, format) applies.
        plain = not (
            self.enum is not None
            or self.all_of
            or self.any_of
            or self.one_of
            or self.not_ is not None
            or self.max_len is not None
            or self.min_len is not None
            or self.pattern_re is not None
            or self.fmt_check is not None
            or self.int_range is not None
            or self.maximum is not None
            or self.minimum is not None
            or self.multiple_of is not None
        )
        if not plain:
            self.passes: frozenset[type] = _NOTHING
        elif self.int_or_string:
            self.passes = _INT_OR_STRING
        elif self.accepts is not None:
            self.passes = _passes(self.accepts)
        else:
            self.passes = _SCALARS
        # (the defaults of a map's values or a list's items are never applied: only those of their properties)
        self.defaulting = (
            any(sub.has_default or sub.defaulting for sub in self.props.values())
            or (self.extra is not None and self.extra.defaulting)
            or (self.items is not None and self.items.defaulting)
        )

    # -- defaulting (structuraldefaulting.Default) ---------------------------------------------------------------
    def apply_defaults(self, value: Any) -> None:
        """Fill absent fields that have a `default`, recursively."""
        if not self.defaulting:
            return
        if isinstance(value, dict):
            self._default_here(value)
            for name, sub in self.props.items():
                if sub.defaulting and name in value:
                    sub.apply_defaults(value[name])
            extra = self.extra
            if extra is not None and extra.defaulting:
                for k, v in value.items():
                    if k not in self.known:
                        extra.apply_defaults(v)
        elif isinstance(value, list) and self.items is not None:
            for v in value:
                self.items.apply_defaults(v)

    def _default_here(self, value: dict[str, Any]) -> None:
        for name, sub in self.props.items():
            if sub.has_default and (name not in value or (value[name] is None and not sub.nullable)):
                d = sub.default
                value[name] = copy.deepcopy(d) if isinstance(d, (dict, list)) else d

    # -- pruning (structuralpruning.Prune) -----------------------------------------------------------------------
    def prune(self, value: Any, *, root: bool = False, path: str = "", defaults: bool = False) -> list[str]:
        """Drop fields the schema does not specify, in place; returns the paths of the unknown fields dropped
        (`spec.bogus`, `spec.ports[0].x`). With `defaults`, each object is defaulted before it is pruned, in the
        same walk: the result is that of defaulting the whole value, then pruning it."""
        dropped: list[str] = []
        if isinstance(value, dict):
            if defaults and self.defaulting:
                self._default_here(value)
            props = self.props
            extra = self.extra
            for k in list(value):
                if (root or self.embedded) and k in _META_KEEP:
                    sub = props.get(k)
                    if defaults and sub is not None and sub.defaulting:
                        sub.apply_defaults(value[k])  # kept unpruned, but defaulted
                    continue
                sub = props.get(k)
                if sub is None:
                    if k in self.known:
                        continue  # a property whose schema is not an object: nothing to prune below it
                    if extra is None:
                        if not self.preserve and not self.extra_true:
                            del value[k]
                            dropped.append(child(path, k))
                        continue
                    sub = extra
                v = value[k]
                if v is None:
                    if not sub.nullable and not sub.has_default:
                        del value[k]  # PruneNonNullableNullsWithoutDefaults (not an unknown field)
                    continue
                if isinstance(v, (dict, list)):
                    dropped += sub.prune(v, path=child(path, k), defaults=defaults)
        elif isinstance(value, list):
            items = self.items
            if items is not None:
                for i, v in enumerate(value):
                    if isinstance(v, (dict, list)):
                        dropped += items.prune(v, path=f"{path}[{i}]", defaults=defaults)
        return dropped

    # -- validation (kube-openapi's validator, in apiextensions' words) ----------------------------------------
    def validate(self, value: Any, path: str) -> Errs:
        """Every error of `value` against this node, at `path` ("" for the object root)."""
        if self.empty or type(value) in self.passes:
            return []
        where = path or "body"
        if value is None:
            if self.nullable:
                return []
            if self.stype and not self.int_or_string:
                return [invalid(path, RawValue('"null"'), f'{where} in body must be of type {self.stype}: "null"')]
            return []
        if self.int_or_string:
            if not isinstance(value, (int, str)) or isinstance(value, bool):
                t = _type_name(value)
                return [invalid(path, t, f'{where} in body must be of type integer,string: "{t}"')]
        elif self.accepts is not None and type(value) not in self.accepts:
            t = _type_name(value)
            if not _type_ok(self.stype, t):
                return [invalid(path, t, f'{where} in body must be of type {self.stype}: "{t}"')]
        errs: Errs = []
        if self.enum is not None and value not in self.enum:
            errs.append(not_supported(path, value, self.enum_shown))
        if self.all_of or self.any_of or self.one_of or self.not_ is not None:
            errs += self._validate_combinators(value, path, where)
        if isinstance(value, str):
            errs += self._validate_string(value, path, where)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            errs += self._validate_number(value, path, where)
        elif isinstance(value, list):
            errs += self._validate_array(value, path, where)
        elif isinstance(value, dict):
            errs += self._validate_object(value, path, where)
        return errs

    def _validate_combinators(self, value: Any, path: str, where: str) -> Errs:
        """allOf / anyOf / oneOf / not: value validations a structural schema may carry (kube-openapi's words)."""
        errs: Errs = []
        for sub in self.all_of:
            errs += sub.validate(value, path)
        if self.any_of and all(sub.validate(value, path) for sub in self.any_of):
            errs.append(invalid(path, value, f"{where} in body must validate at least one schema (anyOf)"))
        if self.one_of and sum(1 for sub in self.one_of if not sub.validate(value, path)) != 1:
            errs.append(invalid(path, value, f"{where} in body must validate one and only one schema (oneOf)"))
        if self.not_ is not None and not self.not_.validate(value, path):
            errs.append(invalid(path, value, f"{where} in body must not validate the schema (not)"))
        return errs

    def _validate_string(self, value: str, path: str, where: str) -> Errs:
        errs: Errs = []
        if self.max_len is not None and len(value) > self.max_len:
            unit = "byte" if self.max_len == 1 else "bytes"
            errs.append(FieldError(TOO_LONG, path, f"may not be more than {self.max_len} {unit}", value))
        if self.min_len is not None and len(value) < self.min_len:
            errs.append(invalid(path, value, f"{where} in body should be at least {self.min_len} chars long"))
        if self.pattern_re is not None and self.pattern_re.search(value) is None:
            errs.append(invalid(path, value, f"{where} in body should match '{self.pattern}'"))
        if self.fmt_check is not None and not self.fmt_check(value):
            errs.append(invalid(path, value, f'{where} in body must be of type {self.fmt}: "{value}"'))
        return errs

    def _validate_number(self, value: float, path: str, where: str) -> Errs:
        errs: Errs = []
        if isinstance(value, int) and self.int_range is not None:
            lo, hi = self.int_range
            if not lo <= value <= hi:
                errs.append(invalid(path, value, f'{where} in body must be of type {self.fmt}: "{value}"'))
        if isinstance(value, float) and not math.isfinite(value):
            errs.append(invalid(path, value, f"{where} in body must be a finite number"))
        maximum = self.maximum
        if maximum is not None:
            if self.exclusive_max and value >= maximum:
                errs.append(invalid(path, value, f"{where} in body should be less than {_num(maximum)}"))
            elif value > maximum:
                errs.append(invalid(path, value, f"{where} in body should be less than or equal to {_num(maximum)}"))
        minimum = self.minimum
        if minimum is not None:
            if self.exclusive_min and value <= minimum:
                errs.append(invalid(path, value, f"{where} in body should be greater than {_num(minimum)}"))
            elif value < minimum:
                errs.append(invalid(path, value, f"{where} in body should be greater than or equal to {_num(minimum)}"))
        multiple = self.multiple_of
        if multiple is not None and (value / multiple) % 1 != 0:
            errs.append(invalid(path, value, f"{where} in body should be a multiple of {_num(multiple)}"))
        return errs

    def _validate_array(self, value: list[Any], path: str, where: str) -> Errs:
        errs: Errs = []
        if self.max_items is not None and len(value) > self.max_items:
            errs.append(FieldError(TOO_MANY, path, f"{len(value)}: must have at most {self.max_items} items"))
        if self.min_items is not None and len(value) < self.min_items:
            shown = RawValue(str(len(value)))
            errs.append(invalid(path, shown, f"{where} in body should have at least {self.min_items} items"))
        items = self.items
        if items is not None and not items.empty:
            passes = items.passes
            for i, v in enumerate(value):
                if type(v) not in passes:
                    errs += items.validate(v, f"{path}[{i}]")
        if self.list_type == "set":
            seen: list[Any] = []
            for i, v in enumerate(value):
                if v in seen:
                    errs.append(FieldError(DUPLICATE, f"{path}[{i}]", "", v if not isinstance(v, dict) else _go_map(v)))
                else:
                    seen.append(v)
        elif self.list_type == "map":
            keys = self.map_keys
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

    def _validate_object(self, value: dict[str, Any], path: str, where: str) -> Errs:
        errs: Errs = []
        for name in self.required:
            if name not in value:
                errs.append(required(child(path, name), ""))
        if self.max_props is not None and len(value) > self.max_props:
            errs.append(FieldError(TOO_MANY, path, f"{len(value)}: must have at most {self.max_props} items"))
        if self.min_props is not None and len(value) < self.min_props:
            shown = RawValue(str(len(value)))
            errs.append(invalid(path, shown, f"{where} in body should have at least {self.min_props} properties"))
        if self.embedded:
            for field in ("apiVersion", "kind"):
                if not value.get(field):
                    errs.append(required(child(path, field), "must not be empty"))
        props = self.props
        extra = self.extra
        for k, v in value.items():
            sub = props.get(k)
            if sub is not None:
                if not sub.empty and type(v) not in sub.passes:
                    errs += sub.validate(v, child(path, k))
            elif extra is not None:
                errs += extra.validate(v, f"{path}[{k}]" if path else k)
            elif self.extra_false and k not in _META_KEEP:
                errs.append(forbidden(child(path, k), "additional properties are not allowed"))
        return errs


# Schemas compiled on demand (a CRD's defaults checked when it is written, tests): id -> (schema, held so its id
# cannot be reused while cached, its node). Bounded: the oldest compiled go first. Served CRD versions keep their
# nodes in their `CustomVersion` instead.
_COMPILED_MAX = 256
_compiled: OrderedDict[int, tuple[Schema, Node]] = OrderedDict()


def compile_schema(schema: Schema) -> Node:
    """`schema` compiled (once per schema object while it stays in the bounded cache); the schema must not be
    changed in place afterwards."""
    held = _compiled.get(id(schema))
    if held is not None and held[0] is schema:
        return held[1]
    node = Node(schema)
    _compiled[id(schema)] = (schema, node)
    while len(_compiled) > _COMPILED_MAX:
        _compiled.popitem(last=False)
    return node


def apply_defaults(schema: Schema | None, value: Any) -> None:
    """Fill absent fields that have a `default`, recursively (structuraldefaulting.Default)."""
    if schema and isinstance(value, (dict, list)):
        compile_schema(schema).apply_defaults(value)


def prune(schema: Schema | None, value: Any, *, root: bool = False, path: str = "") -> list[str]:
    """Drop fields the schema does not specify (structuralpruning.Prune), in place; returns the paths of the
    unknown fields dropped (`spec.bogus`, `spec.ports[0].x`), which fieldValidation Strict/Warn report."""
    if schema is None:
        return []
    return compile_schema(schema).prune(value, root=root, path=path)


def validate(schema: Schema | None, value: Any, path: str) -> Errs:
    """Every error of `value` against the structural `schema`, at `path` ("" for the object root)."""
    if not schema:
        return []
    return compile_schema(schema).validate(value, path)
