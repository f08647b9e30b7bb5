"""PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch.

Strategic merge patch follows apimachinery's `strategicpatch` for the directives `kubectl apply` sends
(`$patch: replace|delete|merge`, `$retainKeys`, `$deleteFromPrimitiveList/<f>`, `$setElementOrder/<f>`, null
deletes a key). Which lists merge, and by which key, comes from the `x-kubernetes-patch-strategy` /
`x-kubernetes-patch-merge-key` extensions (the Go types' `patchStrategy`/`patchMergeKey` tags) in the generated
schemas (`kwire.api.schemas`), for every built-in kind; every other list is replaced whole. Kinds without a
built-in schema (CRD kinds) do not support strategic merge patch, as in kube-apiserver.

JSON patches are bounded as kube-apiserver bounds them (`apply_json_patch`): 10,000 operations, and `copy`
operations adding at most the request body limit in total. Merge and strategic patches cannot amplify: their
result is at most the stored object plus the (3 MiB-bounded) body, and the store refuses objects over 1.5 MiB.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import orjson

from kwire.api import schemas
from kwire.api.errors import ApiError, bad_request
from kwire.api.registry import Kind

Obj = dict[str, Any]
Schema = dict[str, Any]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY_YAML = "application/apply-patch+yaml"

MAX_JSON_PATCH_OPERATIONS = 10_000  # kube-apiserver's maxJSONPatchOperations
MAX_COPY_BYTES = 3 * 1024 * 1024  # the request body limit, which kube passes as json-patch's copy limit


_META_FIELDS: Schema = {"finalizers": {"primitive_merge": True}, "ownerReferences": {"merge_key": "uid", "items": {}}}

# Definition name -> its merge metadata: {field: {"fields": {...}} for objects, {"merge_key": k, "items": {...}}
# for lists merged by key, {"primitive_merge": True} for merged scalar lists}. Built lazily and shared, so
# recursive definitions (JSONSchemaProps) are cyclic dicts rather than endless ones.
_SMP_FIELDS: dict[str, Schema] = {}


def _smp_fields(name: str) -> Schema:
    hit = _SMP_FIELDS.get(name)
    if hit is not None:
        return hit
    fields: Schema = {}
    _SMP_FIELDS[name] = fields
    for prop, sub in (schemas.definitions()[name].get("properties") or {}).items():
        node = _smp_node(sub)
        if node is not None:
            fields[prop] = node
    return fields


def _ref_name(schema: Schema) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _smp_node(schema: Schema) -> Schema | None:
    name = _ref_name(schema)
    if name is not None:
        return {"fields": _smp_fields(name)}
    if schema.get("type") != "array":
        return None  # scalars and maps merge generically
    if "merge" not in str(schema.get("x-kubernetes-patch-strategy", "")).split(","):
        return None  # replaced whole
    key = schema.get("x-kubernetes-patch-merge-key")
    if not key:
        return {"primitive_merge": True}
    item = _ref_name(schema.get("items") or {})
    return {"merge_key": key, "items": _smp_fields(item) if item else {}}


def smp_fields(kind: Kind) -> Schema:
    """Which lists of `kind` merge and by which key: the `x-kubernetes-patch-*` extensions of its schema (the
    `patchStrategy`/`patchMergeKey` Go tags), from the same generated definitions as OpenAPI."""
    name = schemas.definition_name(kind.group, kind.version, kind.kind)
    return _smp_fields(name) if name else {"metadata": {"fields": _META_FIELDS}}


def smp_supported(kind: Kind) -> bool:
    """Strategic merge patch needs Go struct tags: only built-in kinds have them (not CRD kinds, as in kube)."""
    return schemas.definition_name(kind.group, kind.version, kind.kind) is not None


class _Delete:
    """Marks an element or key to remove ($patch: delete)."""


_DELETE = _Delete()


def _strip(value: Any) -> Any:
    """A patch value with its directives removed (for values that do not merge with anything)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and v.get("$patch") == "delete")]
    return value


def _order(result: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(item: Any) -> Any:
        if key is not None and isinstance(item, dict):
            return orjson.dumps(item.get(key))
        return orjson.dumps(item)

    rank = {ident(o): i for i, o in enumerate(order)}
    listed = sorted((x for x in result if ident(x) in rank), key=lambda x: rank[ident(x)])
    rest = [x for x in result if ident(x) not in rank]
    return listed + rest


def _merge_list(original: Any, patch: list[Any], schema: Schema) -> list[Any]:
    if schema.get("primitive_merge"):
        base = list(original) if isinstance(original, list) else []
        for v in patch:
            if v not in base:
                base.append(v)
        return base
    key = schema.get("merge_key")
    if key is None:
        return _strip(patch)  # type: ignore[no-any-return]
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [_strip(p) for p in patch if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    result = [copy.deepcopy(x) for x in original] if isinstance(original, list) else []
    for item in patch:
        if not isinstance(item, dict):
            result.append(item)
            continue
        kv = item.get(key)
        idx = next((i for i, x in enumerate(result) if isinstance(x, dict) and x.get(key) == kv), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del result[idx]
            continue
        if idx is None:
            result.append(_strip(item))
        else:
            merged = _merge_map(result[idx], item, schema.get("items") or {})
            result[idx] = merged
    return result


def _merge_map(original: Any, patch: Obj, fields: Schema) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip(patch)
    if directive == "delete":
        return _DELETE
    result: Obj = copy.deepcopy(original) if isinstance(original, dict) else {}
    orders: dict[str, list[Any]] = {}
    for k, v in patch.items():
        if k.startswith("$deleteFromPrimitiveList/"):
            field = k.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(v, list):
                result[field] = [x for x in result[field] if x not in v]
        elif k.startswith("$setElementOrder/"):
            orders[k.split("/", 1)[1]] = v if isinstance(v, list) else []
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        sub = fields.get(k) or {}
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            merged = _merge_map(result.get(k), v, sub.get("fields") or {})
            if merged is _DELETE:
                result.pop(k, None)
            else:
                result[k] = merged
        elif isinstance(v, list):
            result[k] = _merge_list(result.get(k), v, sub)
        else:
            result[k] = v
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _order(result[field], order, (fields.get(field) or {}).get("merge_key"))
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        for k in list(result):
            if k not in retain:
                del result[k]
    return result


def strategic_merge(kind: Kind, current: Obj, patch: Obj) -> Obj:
    merged = _merge_map(current, patch, smp_fields(kind))
    if merged is _DELETE:
        raise bad_request("a strategic merge patch cannot delete the whole object")
    return merged  # type: ignore[no-any-return]


def merge_patch(current: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(current) if isinstance(current, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


class CopySizeError(ValueError):
    """evanphx/json-patch's AccumulatedCopySizeError."""


def apply_json_patch(current: Obj, ops: list[Any], *, copy_limit: int = MAX_COPY_BYTES) -> Any:
    """RFC 6902 with kube-apiserver's bounds: at most 10,000 operations (413), and `copy` operations may add at
    most `copy_limit` bytes in total (json-patch's AccumulatedCopySizeLimit, which kube sets to the request
    body limit), so a short patch that doubles the document with each copy fails after a few steps."""
    if len(ops) > MAX_JSON_PATCH_OPERATIONS:
        raise ApiError(
            413,
            "RequestEntityTooLarge",
            f"Request entity too large: The allowed maximum operations in a JSON patch is "
            f"{MAX_JSON_PATCH_OPERATIONS}, got {len(ops)}",
        )
    doc: Any = copy.deepcopy(current)
    copied = 0
    for op in ops:
        if isinstance(op, dict) and op.get("op") == "copy":
            value = jsonpatch.JsonPointer(str(op.get("from", ""))).resolve(doc)
            copied += len(orjson.dumps(value))
            if copied > copy_limit:
                raise CopySizeError(
                    f"Unable to complete the copy, the accumulated size increase of copy is {copied}, "
                    f"exceeding the limit {copy_limit}"
                )
        doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
    return doc


def unsupported_patch_type(kind: Kind) -> ApiError:
    """kube-apiserver's 415 for a PATCH content type it does not take (apply-patch+cbor included)."""
    accepted = "application/json-patch+json, application/merge-patch+json"
    if smp_supported(kind):
        accepted += ", application/strategic-merge-patch+json"
    accepted += ", application/apply-patch+yaml"
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {accepted}",
    )


def apply_patch(kind: Kind, current: Obj, patch_body: bytes, content_type: str) -> Obj:
    """The object after applying `patch_body` of `content_type` to `current` (which is not modified).
    Server-side apply (`application/apply-patch+yaml`) is `managedfields.apply`, called by the storage layer."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype not in (JSON_PATCH, MERGE_PATCH, STRATEGIC) or (ctype == STRATEGIC and not smp_supported(kind)):
        raise unsupported_patch_type(kind)
    try:
        patch = orjson.loads(patch_body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"error decoding patch: {exc}") from None
    if ctype == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request("json patch must be a list of operations")
        try:
            result = apply_json_patch(current, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, TypeError, ValueError) as exc:
            raise ApiError(
                422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
            ) from None
    elif ctype == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise bad_request("merge patch must be a JSON object")
        result = merge_patch(current, patch)
    else:
        if not isinstance(patch, dict):
            raise bad_request("strategic merge patch must be a JSON object")
        result = strategic_merge(kind, current, patch)
    if not isinstance(result, dict):
        raise bad_request("the patched object is not a JSON object")
    return result
