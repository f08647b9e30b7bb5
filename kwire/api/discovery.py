"""Discovery documents (/api, /apis, group versions, /version); the OpenAPI documents live in `openapi.py`.

/api and /apis also answer aggregated discovery (apidiscovery.k8s.io v2 and v2beta1 `APIGroupDiscoveryList`,
kube-apiserver's default since 1.30) when the Accept header asks for it, as kubectl 1.32 does: one request
then describes every group, version and resource, built-in and CRD-defined alike. Group versions served by
another server through an APIService (`aggregator.py`) are listed once it is Available, with the resources that
server's own discovery document lists, as kube-aggregator merges them.
"""

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

PROXIED = ("Pod", "Service", "Node")

# Aggregated group versions (group -> version -> that server's APIResourceList), set by kwire.api.aggregator.
_AGGREGATED_APIS: dict[str, dict[str, dict[str, Any]]] = {}


def set_aggregated(apis: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Replace the aggregated group versions discovery lists (only Available APIServices)."""
    global _AGGREGATED_APIS
    _AGGREGATED_APIS = {g: dict(vs) for g, vs in apis.items()}


def _all_groups() -> dict[str, list[str]]:
    out = {g: list(vs) for g, vs in groups().items()}
    for g, vs in _AGGREGATED_APIS.items():
        out.setdefault(g, []).extend(v for v in vs if v not in out[g])
    return out


_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _resource_entries(kind: Kind) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": kind.plural,
        "singularName": kind.singular,
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": list(kind.verbs) or _VERBS,
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
    if kind.api_version == "v1" and kind.kind in PROXIED:
        # the proxy subresources (kwire.api.proxy), listed as kube-apiserver lists them
        out.append(
            {
                "name": f"{kind.plural}/proxy",
                "singularName": "",
                "namespaced": kind.namespaced,
                "kind": f"{kind.kind}ProxyOptions",
                "verbs": ["create", "delete", "get", "patch", "update"],
            }
        )
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
        "groups": [_group(g, vs) for g, vs in _all_groups().items() if g],
    }


def api_group(name: str) -> dict[str, Any] | None:
    vs = _all_groups().get(name)
    if not name or vs is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, vs)}


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    kinds = kinds_in(group, version)
    if not kinds:
        return _AGGREGATED_APIS.get(group, {}).get(version)
    resources: list[dict[str, Any]] = []
    for k in kinds:
        resources.extend(_resource_entries(k))
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


# -- aggregated discovery ----------------------------------------------------------------------------------------
_AGGREGATED = "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"


def aggregated_version(accept: str) -> str | None:
    """ "v2" or "v2beta1" when the Accept header asks for aggregated discovery (the first one it lists)."""
    for part in accept.split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in part.split(";")[1:] if "=" in p}
        if params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList":
            if params.get("v") in ("v2", "v2beta1"):
                return params["v"]
    return None


def aggregated_content_type(version: str) -> str:
    return _AGGREGATED.format(v=version)


def _aggregated_resource(kind: Kind) -> dict[str, Any]:
    main, *subs = _resource_entries(kind)
    out: dict[str, Any] = {
        "resource": kind.plural,
        "responseKind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
        "scope": "Namespaced" if kind.namespaced else "Cluster",
        "singularResource": kind.singular,
        "verbs": main["verbs"],
    }
    if kind.short_names:
        out["shortNames"] = list(kind.short_names)
    if kind.categories:
        out["categories"] = list(kind.categories)
    if subs:
        out["subresources"] = [
            {
                "subresource": sub["name"].split("/", 1)[1],
                "responseKind": {
                    "group": sub.get("group", kind.group),
                    "version": sub.get("version", kind.version),
                    "kind": sub["kind"],
                },
                "verbs": sub["verbs"],
            }
            for sub in subs
        ]
    return out


def _aggregated_from_list(rl: dict[str, Any], group: str, version: str) -> list[dict[str, Any]]:
    """An aggregated server's APIResourceList in aggregated discovery's form (kube-aggregator's conversion)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rl.get("resources") or []:
        name = str(r.get("name", ""))
        base, _, sub = name.partition("/")
        kind = {"group": r.get("group", group), "version": r.get("version", version), "kind": r.get("kind", "")}
        if not sub:
            out[base] = {
                "resource": base,
                "responseKind": kind,
                "scope": "Namespaced" if r.get("namespaced") else "Cluster",
                "singularResource": r.get("singularName") or str(r.get("kind", "")).lower(),
                "verbs": list(r.get("verbs") or []),
            }
        elif base in out:
            out[base].setdefault("subresources", []).append(
                {"subresource": sub, "responseKind": kind, "verbs": list(r.get("verbs") or [])}
            )
    return list(out.values())


def aggregated_discovery(*, core: bool, version: str = "v2") -> dict[str, Any]:
    """The APIGroupDiscoveryList for /api (core=True) or /apis."""
    items = []
    for group, versions in _all_groups().items():
        if bool(group) == core:
            continue
        entries = []
        for v in versions:
            kinds = kinds_in(group, v)
            if kinds:
                resources = [_aggregated_resource(k) for k in kinds]
            else:
                resources = _aggregated_from_list(_AGGREGATED_APIS.get(group, {}).get(v) or {}, group, v)
            entries.append({"version": v, "resources": resources, "freshness": "Current"})
        items.append({"metadata": {"name": group}, "versions": entries})
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": f"apidiscovery.k8s.io/{version}",
        "metadata": {},
        "items": items,
    }
