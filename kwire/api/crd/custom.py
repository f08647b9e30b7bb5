"""What the generic storage does differently for a custom resource (a kind a CRD defines).

Mirrors apiextensions-apiserver's customresource handler around the generic store: on write the object is
defaulted and pruned against the version's structural schema, validated (schema, CEL rules, metadata), and
stored at the CRD's storage version; on read it is defaulted again and answered at the requested version.
Conversion between versions is `None` (kube's nopConverter): only `apiVersion` changes. Field selectors are
limited to what kube's crConverter allows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kwire.api.crd import cel
from kwire.api.crd.schema import Node, Schema
from kwire.api.errors import FieldError, bad_request
from kwire.api.fields import FieldSelector
from kwire.api.registry import CustomVersion, Kind

Obj = dict[str, Any]

_GENERIC = ("metadata", "apiVersion", "kind")


def derive(version: CustomVersion) -> CustomVersion:
    """`version` with what every request needs precomputed: the schema and the body schema compiled (once per
    served CRD version, as kube builds a CRD's structural schema once), whether it has CEL rules."""
    s = version.schema
    if s is None:
        return version
    body: Schema = {k: v for k, v in s.items() if k not in ("required", "properties")}
    required = [r for r in s.get("required") or [] if r not in _GENERIC]
    if required:
        body["required"] = required
    body["properties"] = {k: v for k, v in (s.get("properties") or {}).items() if k not in _GENERIC}
    shared: dict[int, Node] = {}  # the body's spec/status nodes are the whole schema's
    node = Node(s, shared=shared)
    return dataclasses.replace(
        version, body_schema=body, node=node, body_node=Node(body, shared=shared), has_rules=cel.has_rules(body)
    )


def storage_api_version(kind: Kind) -> str:
    assert kind.custom is not None
    return f"{kind.group}/{kind.custom.storage_version}"


_OBJECT_META = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)


def prepare_write(kind: Kind, obj: Obj) -> list[str]:
    """Default, then prune unknown fields (in place), as the CR handler does before validation; metadata keeps
    only ObjectMeta's fields (kube round-trips it through the typed ObjectMeta). Returns the paths of the unknown
    fields dropped (`metadata.x`, `spec.y`): what fieldValidation=Strict refuses and Warn warns about."""
    assert kind.custom is not None
    dropped: list[str] = []
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for k in [k for k in meta if k not in _OBJECT_META]:
            del meta[k]
            dropped.append(f"metadata.{k}")
    node: Node | None = kind.custom.node
    if node is None:
        return dropped
    if kind.custom.preserve_unknown:
        node.apply_defaults(obj)
    else:  # one walk: each object defaulted, then pruned
        dropped += node.prune(obj, root=True, defaults=True)
    return dropped


def validate(kind: Kind, obj: Obj, old: Obj | None) -> list[FieldError]:
    """Schema and CEL errors of `obj` (metadata is validated by the generic path)."""
    assert kind.custom is not None
    body_node: Node | None = kind.custom.body_node
    if body_node is None:
        return []
    body = {k: v for k, v in obj.items() if k not in _GENERIC}
    errs = body_node.validate(body, "")
    if kind.custom.has_rules:  # a root rule sees the whole object, metadata included, as in kube
        errs += cel.validate(kind.custom.body_schema, obj, old, "")
    return errs


def present(kind: Kind, obj: Obj) -> Obj:
    """A stored object as read through `kind`'s version: that apiVersion, schema defaults applied."""
    assert kind.custom is not None
    if obj.get("apiVersion") != kind.api_version:
        obj["apiVersion"] = kind.api_version
    node: Node | None = kind.custom.node
    if node is not None:
        node.apply_defaults(obj)
    return obj


def to_storage(kind: Kind, obj: Obj) -> Obj:
    """`obj` as stored: at the CRD's storage version (a shallow copy when that differs)."""
    want = storage_api_version(kind)
    if obj.get("apiVersion") == want:
        return obj
    return {**obj, "apiVersion": want}


def check_field_selector(kind: Kind, fields: FieldSelector) -> None:
    """Field selectors on custom resources: metadata.name, metadata.namespace (namespaced kinds) and the CRD's
    selectableFields only, refused with 400 as kube's crConverter.ConvertFieldLabel does."""
    assert kind.custom is not None
    allowed = {"metadata.name", *(f.lstrip(".") for f in kind.custom.selectable_fields)}
    if kind.namespaced:
        allowed.add("metadata.namespace")
    for req in fields.requirements:
        label = ".".join(req.path)
        if label not in allowed:
            raise bad_request(f"field label not supported: {label}")
