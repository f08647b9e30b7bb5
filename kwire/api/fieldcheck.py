"""Checks a decoded object against its kind's OpenAPI schema, as kube-apiserver's decoder does.

kube-apiserver decodes request bodies into Go structs (built-ins) or prunes them by the CRD's structural schema
(custom resources): fields the schema does not know are dropped, and with `fieldValidation=Strict` reported as
`unknown field "spec.template.spec.containers[0].imagePullPolicyy"`; a value of the wrong JSON type (a string for
an int32, 2147483648 for an int32) fails decoding with encoding/json's words, `json: cannot unmarshal number
2147483648 into Go struct field DeploymentSpec.spec.replicas of type int32`. This module walks the object with
the schema from `kwire.api.schemas` (built-ins) or the registered CRD schemas, removes unknown fields in place
and returns what it found; `decoding.py` turns that into 400s or warnings by the fieldValidation mode.

The walk is iterative (an explicit stack), so a deeply nested body cannot exhaust Python's recursion limit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from kwire.api import schemas
from kwire.api.registry import Kind

Schema = dict[str, Any]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_OBJECT_META = "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@dataclass
class Findings:
    unknown: list[str] = field(default_factory=list)  # field paths, in document order
    type_error: str | None = None  # encoding/json's message for the first bad value (decoding stops there)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass(slots=True, eq=False)
class _Node:
    """A schema compiled for the walk: refs resolved, the type check reduced to one code."""

    check: str  # "" (anything), int32, int64, number, bool, string, array, object, intstr, quantity
    go: str  # the Go type encoding/json names in its errors
    struct: str  # the Go struct name when this is a named definition, else ""
    preserve: bool = False
    accepts: frozenset[type] = frozenset()  # scalar types that need no further look (the walk's fast path)
    props: dict[str, _Node] | None = None
    additional: _Node | None = None
    items: _Node | None = None


def _go_type(schema: Schema, ref: str | None) -> str:
    """The Go type encoding/json names in its error (`int32`, `string`, `v1.PodTemplateSpec`, `[]v1.Container`)."""
    if ref:
        parts = ref.rsplit("/", 1)[-1].split(".")
        return f"{parts[-2]}.{parts[-1]}" if len(parts) > 1 else parts[-1]
    t = schema.get("type")
    fmt = schema.get("format")
    if t == "integer":
        return str(fmt or "int64")
    if t == "number":
        return "float64"
    if t == "boolean":
        return "bool"
    if t == "string":
        return "[]uint8" if fmt == "byte" else "string"
    if t == "array":
        items = schema.get("items") or {}
        return "[]" + _go_type(items, items.get("$ref"))
    if t == "object" and "additionalProperties" in schema:
        add = schema["additionalProperties"]
        return "map[string]" + (_go_type(add, add.get("$ref")) if isinstance(add, dict) else "interface {}")
    return "interface {}"


def _check_code(schema: Schema, ref: str | None) -> str:
    if ref and ref.endswith(_QUANTITY):
        return "quantity"
    t = schema.get("type")
    fmt = schema.get("format")
    if fmt == "int-or-string":
        return "intstr"
    if t == "integer":
        return "int32" if fmt == "int32" else "int64"
    return {"number": "number", "boolean": "bool", "string": "string", "array": "array", "object": "object"}.get(
        str(t), ""
    )


def _bad_value(code: str, value: Any) -> bool:
    """True when `value` (not None) cannot be decoded into the type `code` stands for."""
    if code == "":
        return False
    if code == "string":
        return not isinstance(value, str)
    if code == "object":
        return not isinstance(value, dict)
    if code == "array":
        return not isinstance(value, list)
    if code == "bool":
        return not isinstance(value, bool)
    if code in ("int32", "int64"):
        if isinstance(value, bool) or not isinstance(value, int):
            return True
        lo, hi = (INT32_MIN, INT32_MAX) if code == "int32" else (INT64_MIN, INT64_MAX)
        return not lo <= value <= hi
    if code == "number":
        return isinstance(value, bool) or not isinstance(value, int | float)
    if code == "intstr":
        return not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)))
    if code == "quantity":
        return isinstance(value, bool) or not isinstance(value, str | int | float)
    return False


_ACCEPTS: dict[str, frozenset[type]] = {
    "": frozenset({str, int, float, bool}),
    "string": frozenset({str}),
    "bool": frozenset({bool}),
    "intstr": frozenset({str}),
    "quantity": frozenset({str, float}),
    "number": frozenset({float}),
}


def _ref_of(schema: Schema) -> str | None:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        inner = all_of[0].get("$ref")
        return inner if isinstance(inner, str) else None
    return None


class _Compiler:
    """Compiles schemas into `_Node`s; a named definition is compiled once (recursive ones included)."""

    def __init__(self, named: dict[str, _Node] | None = None) -> None:
        self.named: dict[str, _Node] = {} if named is None else named

    def node(self, schema: Schema) -> _Node:
        ref = _ref_of(schema)
        if ref is None:
            return self._build(schema, None)
        hit = self.named.get(ref)
        if hit is None:
            hit = self._build(schemas.resolve(ref), ref)
        return hit

    def _build(self, schema: Schema, ref: str | None) -> _Node:
        n = _Node(
            check=_check_code(schema, ref),
            go=_go_type(schema, ref),
            struct=ref.rsplit(".", 1)[-1] if ref else "",
            preserve=bool(schema.get("x-kubernetes-preserve-unknown-fields")),
        )
        n.accepts = _ACCEPTS.get(n.check, frozenset())
        if ref:
            self.named[ref] = n  # before the children, so a recursive definition finds itself
        props = schema.get("properties")
        if isinstance(props, dict):
            n.props = {k: self.node(v) for k, v in props.items() if isinstance(v, dict)}
        add = schema.get("additionalProperties")
        if isinstance(add, dict):
            n.additional = self.node(add)
        items = schema.get("items")
        if isinstance(items, dict):
            n.items = self.node(items)
        return n


_builtin = _Compiler()
_builtin_roots: dict[int, _Node] = {}

# Custom-resource schemas, compiled once per schema object (a served CRD version keeps its schema object until
# the CRD changes, which serves a new one): id -> (the schema, held so its id cannot be reused, its node).
# Bounded: the least recently compiled go first.
_CUSTOM_ROOTS = 512
_custom_roots: OrderedDict[int, tuple[Schema, _Node]] = OrderedDict()
# A CRD schema wrapped as kube's CR decoder sees it (apiVersion/kind/metadata known), one per schema object.
_wrapped: OrderedDict[int, tuple[Schema, Schema]] = OrderedDict()


def _remember(cache: OrderedDict[int, tuple[Schema, Any]], key: Schema, value: Any) -> None:
    cache[id(key)] = (key, value)
    while len(cache) > _CUSTOM_ROOTS:
        cache.popitem(last=False)


def _root(schema: Schema, *, builtin: bool) -> _Node:
    if not builtin:
        held = _custom_roots.get(id(schema))
        if held is not None and held[0] is schema:
            return held[1]
        # The definitions CRD schemas reach (ObjectMeta) are the built-in ones: their nodes are shared.
        node = _Compiler(named=_builtin.named).node(schema)
        _remember(_custom_roots, schema, node)
        return node
    hit = _builtin_roots.get(id(schema))
    if hit is None:
        hit = _builtin_roots[id(schema)] = _builtin.node(schema)
    return hit


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check(schema: Schema, obj: Any, *, types: bool, builtin: bool = False) -> Findings:
    """Walks `obj` (changed in place: unknown fields are removed) against `schema`.

    `types` also checks JSON types and integer ranges (built-in kinds: Go decoding); custom resources leave
    that to their schema validation. A `builtin` schema's compiled form is kept for good (it must be a long-lived
    object); another (a CRD version's) is compiled once per schema object, in a bounded cache: a changed CRD
    serves a new schema object, so a schema must not be changed in place once it is served.
    """
    found = Findings()
    # (value, node, field path with indices, Go path without indices, enclosing struct name)
    stack: list[tuple[Any, _Node, str, str, str]] = [(obj, _root(schema, builtin=builtin), "", "", "")]
    while stack:
        value, node, path, gopath, struct = stack.pop()
        if value is None:
            continue
        if types and node.check and _bad_value(node.check, value):
            where = f"Go struct field {struct}.{gopath}" if struct else "Go value"
            kind = _json_type(value)
            # encoding/json names the number only when it does not fit an integer type (overflow, 1.5)
            shown = f"number {value}" if kind == "number" and node.check in ("int32", "int64") else kind
            found.type_error = f"json: cannot unmarshal {shown} into {where} of type {node.go}"
            return found
        if node.preserve:
            continue
        if isinstance(value, dict):
            props = node.props
            add = node.additional
            here = node.struct or struct
            if props is not None:
                children = []
                for key in list(value):
                    sub = props.get(key)
                    if sub is None:
                        if add is None:
                            found.unknown.append(_join(path, key))
                            del value[key]
                            continue
                        sub = add
                    child = value[key]
                    if child is None or type(child) in sub.accepts:
                        continue  # a scalar of the right type: nothing below it
                    children.append((child, sub, _join(path, key), _join(gopath, key), here))
                stack.extend(reversed(children))
            elif add is not None:
                ok = add.accepts
                stack.extend(
                    reversed([(v, add, f"{path}[{k}]", gopath, here) for k, v in value.items() if type(v) not in ok])
                )
        elif isinstance(value, list) and node.items is not None:
            items = node.items
            stack.extend(reversed([(v, items, f"{path}[{i}]", gopath, struct) for i, v in enumerate(value)]))
    return found


def kind_schema(kind: Kind) -> tuple[Schema, bool] | None:
    """The schema to check `kind` against and whether Go types apply; None when kwire knows none."""
    builtin = schemas.builtin_schema(kind.group, kind.version, kind.kind)
    if builtin is not None:
        return builtin, True
    custom = schemas.crd_schema(kind)
    if custom is None:
        return None
    held = _wrapped.get(id(custom))
    if held is not None and held[0] is custom:
        return held[1], False
    props = dict(custom.get("properties") or {})
    # As kube's CR handling: apiVersion/kind/metadata are always known, metadata is ObjectMeta.
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"$ref": _OBJECT_META}
    wrapped = {**custom, "type": "object", "properties": props}
    _remember(_wrapped, custom, wrapped)
    return wrapped, False
