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


def _type_error(value: Any, schema: Schema, ref: str | None) -> bool:
    """True when `value` cannot be decoded into the type `schema` declares (null always can)."""
    if value is None:
        return False
    if ref and ref.endswith(_QUANTITY):
        return not isinstance(value, str | int | float) or isinstance(value, bool)
    t = schema.get("type")
    fmt = schema.get("format")
    if fmt == "int-or-string":
        return not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)))
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return True
        lo, hi = (INT32_MIN, INT32_MAX) if fmt == "int32" else (INT64_MIN, INT64_MAX)
        return not lo <= value <= hi
    if t == "number":
        return isinstance(value, bool) or not isinstance(value, int | float)
    if t == "boolean":
        return not isinstance(value, bool)
    if t == "string":
        return not isinstance(value, str)
    if t == "array":
        return not isinstance(value, list)
    if t == "object":
        return not isinstance(value, dict)
    return False


def _deref(schema: Schema) -> tuple[Schema, str | None]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return schemas.resolve(ref), ref
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict) and "$ref" in all_of[0]:
        ref = all_of[0]["$ref"]
        return schemas.resolve(ref), ref
    return schema, None


def _struct_name(ref: str | None) -> str:
    return ref.rsplit(".", 1)[-1] if ref else ""


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check(schema: Schema, obj: Any, *, types: bool) -> Findings:
    """Walks `obj` (changed in place: unknown fields are removed) against `schema`.

    `types` also checks JSON types and integer ranges (built-in kinds: Go decoding); custom resources leave
    that to their schema validation.
    """
    found = Findings()
    # (value, schema, field path with indices, Go path without indices, enclosing struct name)
    stack: list[tuple[Any, Schema, str, str, str]] = [(obj, schema, "", "", "")]
    while stack:
        value, sch, path, gopath, struct = stack.pop()
        sch, ref = _deref(sch)
        if types and _type_error(value, sch, ref):
            where = f"Go struct field {struct}.{gopath}" if struct else "Go value"
            found.type_error = (
                f"json: cannot unmarshal {_json_type(value)}"
                + (f" {value}" if _json_type(value) == "number" else "")
                + f" into {where} of type {_go_type(sch, ref)}"
            )
            return found
        if value is None or sch.get("x-kubernetes-preserve-unknown-fields"):
            continue
        if isinstance(value, dict):
            props = sch.get("properties")
            add = sch.get("additionalProperties")
            here = _struct_name(ref) or struct
            if isinstance(props, dict):
                children = []
                for key in list(value):
                    sub = props.get(key)
                    if sub is None:
                        if isinstance(add, dict):
                            sub = add
                        else:
                            found.unknown.append(_join(path, key))
                            del value[key]
                            continue
                    children.append((value[key], sub, _join(path, key), _join(gopath, key), here))
                stack.extend(reversed(children))
            elif isinstance(add, dict):
                children = [(v, add, f"{path}[{k}]", gopath, here) for k, v in value.items()]
                stack.extend(reversed(children))
        elif isinstance(value, list):
            items = sch.get("items")
            if isinstance(items, dict):
                stack.extend(reversed([(v, items, f"{path}[{i}]", gopath, struct) for i, v in enumerate(value)]))
    found.unknown.sort(key=lambda p: 0)  # stable: document order is already kept
    return found


def kind_schema(kind: Kind) -> tuple[Schema, bool] | None:
    """The schema to check `kind` against and whether Go types apply; None when kwire knows none."""
    builtin = schemas.builtin_schema(kind.group, kind.version, kind.kind)
    if builtin is not None:
        return builtin, True
    custom = schemas.custom_schemas().get((kind.group, kind.version, kind.kind))
    if custom is None:
        return None
    props = dict(custom.get("properties") or {})
    # As kube's CR handling: apiVersion/kind/metadata are always known, metadata is ObjectMeta.
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"$ref": _OBJECT_META}
    return {**custom, "type": "object", "properties": props}, False
