"""Discovery documents (/api, /apis, group versions, /version); the OpenAPI documents live in `openapi.py`."""

from __future__ import annotations

import hashlib
from typing import Any

from kwire.api.registry import Kind, groups, kinds_in

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
