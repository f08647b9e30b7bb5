"""Discovery documents (/api, /apis, group versions, /version) and the OpenAPI v3 index kubectl consults.

The OpenAPI v3 documents are minimal: one PATCH operation per kind carrying `x-kubernetes-group-version-kind`
and the `fieldValidation` parameter. That is what kubectl checks to decide that the server validates fields
itself (so it skips downloading a full schema), and nothing more is claimed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from kwire.api.registry import KINDS, Kind, groups, kinds_in

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0+kwire",
    "gitCommit": "kwire",
    "gitTreeState": "clean",
    "buildDate": "2026-11-22T00:00:00Z",
    "goVersion": "python3.11",
    "compiler": "cpython",
    "platform": "linux/amd64",
}

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _resource_entries(kind: Kind) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": kind.plural,
        "singularName": kind.singular,
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": _VERBS,
        "storageVersionHash": hashlib.sha256(f"{kind.api_version}/{kind.kind}".encode()).hexdigest()[:12],
    }
    if kind.short_names:
        main["shortNames"] = list(kind.short_names)
    if kind.categories:
        main["categories"] = list(kind.categories)
    out = [main]
    for sub in kind.subresources:
        entry: dict[str, Any] = {
            "name": f"{kind.plural}/{sub}",
            "singularName": "",
            "namespaced": kind.namespaced,
            "kind": kind.kind,
            "verbs": ["get", "patch", "update"],
        }
        if sub == "scale":
            entry.update({"kind": "Scale", "group": "autoscaling", "version": "v1"})
        if sub == "binding":
            entry.update({"kind": "Binding", "verbs": ["create"]})
        if sub == "eviction":  # kubectl drain looks for exactly this entry before it evicts
            entry.update({"kind": "Eviction", "group": "policy", "version": "v1", "verbs": ["create"]})
        out.append(entry)
    return out


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": vs, "preferredVersion": vs[0]}


def api_group_list() -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(g, vs) for g, vs in groups().items() if g],
    }


def api_group(name: str) -> dict[str, Any] | None:
    vs = groups().get(name)
    if not name or vs is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, vs)}


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    kinds = kinds_in(group, version)
    if not kinds:
        return None
    resources: list[dict[str, Any]] = []
    for k in kinds:
        resources.extend(_resource_entries(k))
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _gv_doc(group: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for k in kinds_in(group, version):
        base = "/" + _gv_path(group, version)
        item = f"{base}/namespaces/{{namespace}}/{k.plural}/{{name}}" if k.namespaced else f"{base}/{k.plural}/{{name}}"
        gvk = {"group": k.group, "version": k.version, "kind": k.kind}
        params = [
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
        ]
        op = {
            "operationId": f"patch{k.kind}",
            "parameters": params,
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        }
        paths[item] = {"patch": op}
        coll = f"{base}/namespaces/{{namespace}}/{k.plural}" if k.namespaced else f"{base}/{k.plural}"
        paths[coll] = {"post": {**op, "operationId": f"create{k.kind}", "x-kubernetes-action": "post"}}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }


def _gv_bytes() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    seen: set[tuple[str, str]] = set()
    for k in KINDS:
        if (k.group, k.version) in seen:
            continue
        seen.add((k.group, k.version))
        out[_gv_path(k.group, k.version)] = orjson.dumps(_gv_doc(k.group, k.version))
    return out


OPENAPI_V3_DOCS: dict[str, bytes] = _gv_bytes()


def openapi_v3_root() -> dict[str, Any]:
    return {
        "paths": {
            path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={hashlib.sha512(doc).hexdigest()[:32].upper()}"}
            for path, doc in OPENAPI_V3_DOCS.items()
        }
    }
