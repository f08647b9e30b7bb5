"""The cluster as `kwire trace` sees it: one snapshot of the API objects the agents' data path is computed from
(Pods, Services, EndpointSlices, Nodes, Namespaces, NetworkPolicies) and the cluster-wide settings the server
publishes in `kube-system/kwire-config` (what every agent reads at start: cluster-cidr, service-cidr, cluster-dns,
flannel-backend, disable-network-policy).

A snapshot is plain data, so the path computation (`path.py`) is a pure function of it and unit tests craft one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from kwire.client import ApiClient, NotFound
from kwire.client.client import CONFIGMAPS, ENDPOINTSLICES, NAMESPACES, NETWORKPOLICIES, NODES, PODS, SERVICES
from kwire.config import CLUSTER_CONFIG, ClusterSettings

Obj = dict[str, Any]


@dataclass
class ClusterState:
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    pods: list[Obj] = field(default_factory=list)
    services: list[Obj] = field(default_factory=list)
    slices: list[Obj] = field(default_factory=list)
    nodes: list[Obj] = field(default_factory=list)
    namespaces: list[Obj] = field(default_factory=list)
    policies: list[Obj] = field(default_factory=list)


async def fetch(client: ApiClient) -> ClusterState:
    """One list of every kind the data path depends on (paged), and the settings."""

    async def items(res: Any) -> list[Obj]:
        return list((await client.list_all(res)).get("items") or [])

    try:
        cm = await client.get(CONFIGMAPS, CLUSTER_CONFIG, "kube-system")
        settings = ClusterSettings.from_configmap(dict(cm.get("data") or {}))
    except NotFound:
        settings = ClusterSettings()
    pods, services, slices, nodes, namespaces, policies = await asyncio.gather(
        items(PODS), items(SERVICES), items(ENDPOINTSLICES), items(NODES), items(NAMESPACES), items(NETWORKPOLICIES)
    )
    return ClusterState(settings, pods, services, slices, nodes, namespaces, policies)
