"""What the generic storage does differently for a custom resource (a kind a CRD defines).

Mirrors apiextensions-apiserver's customresource handler around the generic store: on write the object is
defaulted and pruned against the version's structural schema, validated (schema, CEL rules, metadata), and
stored at the CRD's storage version; on read it is defaulted again and answered at the requested version.
Conversion between versions is `None` (kube's nopConverter): only `apiVersion` changes.
"""

from __future__ import annotations

from typing import Any

from kwire.api.crd import cel, schema
from kwire.api.errors import FieldError
from kwire.api.registry import Kind

Obj = dict[str, Any]

_HAS_DEFAULTS: dict[int, bool] = {}


def _has_defaults(s: Any) -> bool:
    if not isinstance(s, dict):
        return False
    if "default" in s:
        return True
    if any(_has_defaults(v) for v in (s.get("properties") or {}).values()):
        return True
    return _has_defaults(s.get("items")) or _has_defaults(s.get("additionalProperties"))


def has_defaults(kind: Kind) -> bool:
    assert kind.custom is not None
    key = id(kind.custom)
    if key not in _HAS_DEFAULTS:
        _HAS_DEFAULTS[key] = _has_defaults(kind.custom.schema)
    return _HAS_DEFAULTS[key]


def storage_api_version(kind: Kind) -> str:
    assert kind.custom is not None
    return f"{kind.group}/{kind.custom.storage_version}"


def prepare_write(kind: Kind, obj: Obj) -> None:
    """Default, then prune unknown fields (in place), as the CR handler does before validation."""
    assert kind.custom is not None
    s = kind.custom.schema
    if s is None:
        return
    if has_defaults(kind):
        schema.apply_defaults(s, obj)
    if not kind.custom.preserve_unknown:
        schema.prune(s, obj, root=True)


def validate(kind: Kind, obj: Obj, old: Obj | None) -> list[FieldError]:
    """Schema and CEL errors of `obj` (metadata is validated by the generic path)."""
    assert kind.custom is not None
    s = kind.custom.schema
    if s is None:
        return []
    body = {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}
    schema_for_body = {k: v for k, v in s.items() if k != "required"}
    required = [r for r in s.get("required") or [] if r not in ("metadata", "apiVersion", "kind")]
    if required:
        schema_for_body["required"] = required
    props = dict(s.get("properties") or {})
    for k in ("metadata", "apiVersion", "kind"):
        props.pop(k, None)
    schema_for_body["properties"] = props
    errs = schema.validate(schema_for_body, body, "")
    errs += cel.validate(schema_for_body, body, old if old is not None else None, "")
    return errs


def present(kind: Kind, obj: Obj) -> Obj:
    """A stored object as read through `kind`'s version: that apiVersion, schema defaults applied."""
    assert kind.custom is not None
    if obj.get("apiVersion") != kind.api_version:
        obj["apiVersion"] = kind.api_version
    if kind.custom.schema is not None and has_defaults(kind):
        schema.apply_defaults(kind.custom.schema, obj)
    return obj


def to_storage(kind: Kind, obj: Obj) -> Obj:
    """`obj` as stored: at the CRD's storage version (a shallow copy when that differs)."""
    want = storage_api_version(kind)
    if obj.get("apiVersion") == want:
        return obj
    return {**obj, "apiVersion": want}
