"""/openapi/v2 and /openapi/v3: the schemas of the served kinds, as kube-apiserver publishes them.

Built from one source (`kwire.api.schemas`: the generated built-in definitions plus the registered CRD schemas):

- `/openapi/v2`: one swagger 2.0 document (`definitions` + one POST/PATCH path per kind) in JSON, or in
  gnostic's protobuf (`openapi_v2.Document`, what client-go's OpenAPISchema() asks for). kubectl 1.32 reads v2
  to learn whether a kind it cannot find in v3 (a CRD created by the same `apply`, a kind kwire does not
  serve) supports `fieldValidation`; without a v2 it fails the whole file, with one it goes on and reports per
  object, as against kube-apiserver. `kubectl explain --output plaintext-openapiv2` reads its definitions.
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
import threading
from typing import Any

import orjson
import yaml

from kwire.api import schemas
from kwire.api.registry import Kind, groups, kinds_in

Schema = dict[str, Any]
_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_LIST_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
_STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"

_QUERY = ["dryRun", "fieldManager", "fieldValidation"]
V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"  # kube-openapi answers this form


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


def _served_kinds() -> list[Kind]:
    return [k for g, v in _served() for k in kinds_in(g, v)]


class _Cache:
    def __init__(self) -> None:
        self.fingerprint = b""
        self.v2 = b""
        self.v2_pb = b""
        self.v3: dict[str, bytes] = {}
        self.v3_root: Schema = {"paths": {}}


_cache = _Cache()
_lock = threading.Lock()  # the server builds documents in worker threads


def _refresh() -> _Cache:
    with _lock:
        return _refresh_locked()


def _refresh_locked() -> _Cache:
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
    _cache.v2_pb = b""
    _cache.v3 = v3
    _cache.v3_root = {
        "paths": {
            path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={hashlib.sha512(doc).hexdigest()[:128].upper()}"}
            for path, doc in v3.items()
        }
    }
    _cache.fingerprint = fingerprint
    return _cache


def v2_document() -> bytes:
    return _refresh().v2


def v2_protobuf() -> bytes:
    with _lock:
        cache = _refresh_locked()
        if not cache.v2_pb:
            cache.v2_pb = _v2_pb(_served_kinds(), _all_definitions(schemas.served_crd_schemas()))
        return cache.v2_pb


# -- gnostic openapi_v2 protobuf (google/gnostic openapiv2/OpenAPIv2.proto field numbers) ------------------------
def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb_bytes(field: int, value: bytes) -> bytes:
    return _pb_varint(field << 3 | 2) + _pb_varint(len(value)) + value


def _pb_str(field: int, value: str) -> bytes:
    return _pb_bytes(field, value.encode())


def _pb_operation(kind: Kind, action: str) -> bytes:
    params = b""
    for name in _QUERY:
        query = _pb_str(2, "query") + _pb_str(4, name) + _pb_str(6, "string") + _pb_varint(20 << 3) + b"\x01"
        non_body = _pb_bytes(3, query)  # NonBodyParameter.query_parameter_sub_schema
        params += _pb_bytes(8, _pb_bytes(1, _pb_bytes(2, non_body)))  # ParametersItem.parameter.non_body
    gvk_yaml = f"group: {kind.group!r}\nkind: {kind.kind}\nversion: {kind.version}\n"
    ext = _pb_str(1, "x-kubernetes-group-version-kind") + _pb_bytes(2, _pb_str(2, gvk_yaml))  # NamedAny{Any.yaml}
    verb = "create" if action == "post" else "patch"
    action_ext = _pb_str(1, "x-kubernetes-action") + _pb_bytes(2, _pb_str(2, action + "\n"))
    return _pb_str(5, f"{verb}{kind.kind}") + params + _pb_bytes(13, action_ext) + _pb_bytes(13, ext)


def _pb_any_yaml(field: int, name: str, value: Any) -> bytes:
    """A NamedAny vendor extension: gnostic keeps extension values as YAML text."""
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=True)
    return _pb_bytes(field, _pb_str(1, name) + _pb_bytes(2, _pb_str(2, text)))


def _pb_schema(schema: Schema) -> bytes:
    out = b""
    if isinstance(schema.get("$ref"), str):
        out += _pb_str(1, schema["$ref"])
    for key, field in (("format", 2), ("title", 3), ("description", 4)):
        if isinstance(schema.get(key), str):
            out += _pb_str(field, schema[key])
    for name in schema.get("required") or []:
        out += _pb_str(19, str(name))
    add = schema.get("additionalProperties")
    if isinstance(add, dict):
        out += _pb_bytes(21, _pb_bytes(1, _pb_schema(add)))
    elif isinstance(add, bool):
        out += _pb_bytes(21, _pb_varint(2 << 3) + (b"\x01" if add else b"\x00"))
    t = schema.get("type")
    if t:
        out += _pb_bytes(22, b"".join(_pb_str(1, str(v)) for v in (t if isinstance(t, list) else [t])))
    if isinstance(schema.get("items"), dict):
        out += _pb_bytes(23, _pb_bytes(1, _pb_schema(schema["items"])))
    for sub in schema.get("allOf") or []:
        if isinstance(sub, dict):
            out += _pb_bytes(24, _pb_schema(sub))
    props = schema.get("properties")
    if isinstance(props, dict):
        named = b"".join(
            _pb_bytes(1, _pb_str(1, k) + _pb_bytes(2, _pb_schema(v))) for k, v in props.items() if isinstance(v, dict)
        )
        out += _pb_bytes(25, named)
    for key in sorted(schema):
        if key.startswith("x-"):
            out += _pb_any_yaml(31, key, schema[key])
    return out


def _v2_pb(kinds: list[Kind], defs: dict[str, Schema]) -> bytes:
    paths = b""
    for k in kinds:
        base = "/" + _gv_path(k.group, k.version)
        ns = "/namespaces/{namespace}" if k.namespaced else ""
        item = _pb_bytes(8, _pb_operation(k, "patch"))  # PathItem.patch
        paths += _pb_bytes(2, _pb_str(1, f"{base}{ns}/{k.plural}/{{name}}") + _pb_bytes(2, item))
        coll = _pb_bytes(4, _pb_operation(k, "post"))  # PathItem.post
        paths += _pb_bytes(2, _pb_str(1, f"{base}{ns}/{k.plural}") + _pb_bytes(2, coll))
    info = _pb_str(1, "Kubernetes") + _pb_str(2, schemas.kubernetes_version())
    definitions = b"".join(_pb_bytes(1, _pb_str(1, n) + _pb_bytes(2, _pb_schema(d))) for n, d in defs.items())
    return _pb_str(1, "2.0") + _pb_bytes(2, info) + _pb_bytes(8, paths) + _pb_bytes(9, definitions)


def v3_document(path: str) -> bytes | None:
    """The document for `api/v1` or `apis/<group>/<version>` (a `?hash=` query is ignored, as kube allows)."""
    return _refresh().v3.get(path)


def v3_root() -> Schema:
    return _refresh().v3_root
