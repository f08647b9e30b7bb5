"""/openapi/v2 and /openapi/v3: the schemas of the served kinds, as kube-apiserver publishes them.

Built from one source (`kwire.api.schemas`: the generated built-in definitions plus the registered CRD schemas):

- `/openapi/v2`: one swagger 2.0 JSON document (`definitions` + one POST/PATCH path per kind). kube serves
  it as protobuf too; kwire answers 406 to a protobuf-only Accept so clients use v3 (kubectl 1.32 does).
- `/openapi/v3`: the index (`paths` -> `serverRelativeURL` with a content hash) and one OpenAPI 3.0 document
  per group-version with the schemas its kinds reach, `$ref`s under `#/components/schemas/` and a referencing
  property written as `allOf: [{$ref}]` beside its description (as kube's builder does), each kind carrying
  `x-kubernetes-group-version-kind`. `kubectl explain` reads these; the PATCH/POST operations list the
  `fieldValidation` parameter, which is how kubectl 1.32 learns the server validates fields (it then sends
  `fieldValidation=Strict` instead of validating client-side).
- Custom kinds get `<reversed group>.<version>.<Kind>` schemas from their CRD's openAPIV3Schema with
  `metadata` as ObjectMeta. Documents are rebuilt when the served kinds or CRD schemas change, so the hash in
  the index changes and clients refetch.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import orjson

from kwire.api import schemas
from kwire.api.registry import Kind, groups, kinds_in

Schema = dict[str, Any]
_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_LIST_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
_STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"

_QUERY = ["dryRun", "fieldManager", "fieldValidation"]


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def custom_definition_name(group: str, version: str, kind: str) -> str:
    """kube's name for a CR schema: the group reversed, e.g. `io.metallb.v1beta1.IPAddressPool`."""
    return ".".join([*reversed(group.split(".")), version, kind])


def _custom_definition(gvk: tuple[str, str, str], schema: Schema) -> Schema:
    group, version, kind = gvk
    out = copy.deepcopy(schema)
    out["type"] = "object"
    props = out.setdefault("properties", {})
    base = schemas.definitions()["io.k8s.api.core.v1.Pod"]["properties"]
    props["apiVersion"] = copy.deepcopy(base["apiVersion"])
    props["kind"] = copy.deepcopy(base["kind"])
    props["metadata"] = {**base["metadata"]}
    out["x-kubernetes-group-version-kind"] = [{"group": group, "version": version, "kind": kind}]
    return out


def _all_definitions(custom: dict[tuple[str, str, str], Schema]) -> dict[str, Schema]:
    defs = dict(schemas.definitions())
    for gvk, schema in custom.items():
        defs[custom_definition_name(*gvk)] = _custom_definition(gvk, schema)
    return defs


def _refs(node: Any, acc: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            acc.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            _refs(value, acc)
    elif isinstance(node, list):
        for value in node:
            _refs(value, acc)


def _closure(defs: dict[str, Schema], roots: list[str]) -> list[str]:
    keep: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in keep or name not in defs:
            continue
        keep.add(name)
        found: set[str] = set()
        _refs(defs[name], found)
        todo.extend(found - keep)
    return sorted(keep)


def _kind_definition(kind: Kind, custom: dict[tuple[str, str, str], Schema]) -> str | None:
    if (kind.group, kind.version, kind.kind) in custom:
        return custom_definition_name(kind.group, kind.version, kind.kind)
    return schemas.definition_name(kind.group, kind.version, kind.kind)


def _operation(kind: Kind, action: str, *, v3: bool) -> Schema:
    params: list[Schema] = []
    for name in _QUERY:
        p: Schema = {"name": name, "in": "query", "uniqueItems": True}
        if v3:
            p["schema"] = {"type": "string", "uniqueItems": True}
        else:
            p["type"] = "string"
        params.append(p)
    verb = "create" if action == "post" else "patch"
    return {
        "operationId": f"{verb}{kind.kind}",
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
    }


def _paths(kinds: list[Kind], *, v3: bool) -> Schema:
    paths: Schema = {}
    for k in kinds:
        base = "/" + _gv_path(k.group, k.version)
        ns = "/namespaces/{namespace}" if k.namespaced else ""
        paths[f"{base}{ns}/{k.plural}/{{name}}"] = {"patch": _operation(k, "patch", v3=v3)}
        paths[f"{base}{ns}/{k.plural}"] = {"post": _operation(k, "post", v3=v3)}
    return paths


def _to_v3(node: Any) -> Any:
    """swagger 2 schema -> OpenAPI 3 schema (refs under components; a described ref wrapped in allOf)."""
    if isinstance(node, list):
        return [_to_v3(x) for x in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = {"$ref": "#/components/schemas/" + ref.rsplit("/", 1)[-1]}
        rest = {k: _to_v3(v) for k, v in node.items() if k != "$ref"}
        return {**rest, "allOf": [target]} if rest else target
    return {k: _to_v3(v) for k, v in node.items()}


def _served() -> list[tuple[str, str]]:
    return [(g, v) for g, vs in groups().items() for v in vs]


class _Cache:
    def __init__(self) -> None:
        self.fingerprint = b""
        self.v2 = b""
        self.v3: dict[str, bytes] = {}


_cache = _Cache()


def _refresh() -> _Cache:
    custom = schemas.served_crd_schemas()
    served = _served()
    fingerprint = orjson.dumps([served, [[*gvk, s] for gvk, s in custom.items()]], option=orjson.OPT_SORT_KEYS)
    if fingerprint == _cache.fingerprint:
        return _cache
    defs = _all_definitions(custom)
    all_kinds: list[Kind] = []
    v3: dict[str, bytes] = {}
    for group, version in served:
        kinds = kinds_in(group, version)
        all_kinds.extend(kinds)
        roots = [n for n in (_kind_definition(k, custom) for k in kinds) if n]
        names = _closure(defs, [*roots, _STATUS, _LIST_META])
        doc = {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": schemas.kubernetes_version()},
            "paths": _paths(kinds, v3=True),
            "components": {"schemas": {n: _to_v3(defs[n]) for n in names}},
        }
        v3[_gv_path(group, version)] = orjson.dumps(doc)
    v2 = {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": schemas.kubernetes_version()},
        "paths": _paths(all_kinds, v3=False),
        "definitions": defs,
    }
    _cache.v2 = orjson.dumps(v2)
    _cache.v3 = v3
    _cache.fingerprint = fingerprint
    return _cache


def v2_document() -> bytes:
    return _refresh().v2


def v3_document(path: str) -> bytes | None:
    """The document for `api/v1` or `apis/<group>/<version>` (a `?hash=` query is ignored, as kube allows)."""
    return _refresh().v3.get(path)


def v3_root() -> Schema:
    return {
        "paths": {
            path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={hashlib.sha512(doc).hexdigest()[:128].upper()}"}
            for path, doc in _refresh().v3.items()
        }
    }
