"""Which node announces an IP in layer 2, as pure functions (MetalLB's `speaker/layer2_controller.go`
ShouldAnnounce and `internal/config` L2Advertisement selection).

Candidates for a Service's IP are the nodes with a live speaker that some L2Advertisement selects (its
`ipAddressPools`/`ipAddressPoolSelectors` match the IP's pool, its `nodeSelectors` the node, and its `interfaces`,
when given, include the node's LAN interface), that do not carry `node.kubernetes.io/exclude-from-external-load-
balancers`, and, when externalTrafficPolicy is Local, that have a ready endpoint of the Service. A Service with no
ready endpoint at all is not announced. The leader is the first candidate ordered by sha256(node + "#" + ip).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from kwire.base import labels

Obj = dict[str, Any]
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"


def leader(ip: str, candidates: Iterable[str]) -> str | None:
    ordered = sorted(candidates, key=lambda node: hashlib.sha256(f"{node}#{ip}".encode()).digest())
    return ordered[0] if ordered else None


def ready_endpoint_nodes(slices: Iterable[Obj]) -> tuple[bool, set[str]]:
    """(any ready endpoint, the nodes that have one) over a Service's EndpointSlices."""
    any_ready, nodes = False, set()
    for sl in slices:
        for ep in sl.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is False:
                continue
            any_ready = True
            if ep.get("nodeName"):
                nodes.add(str(ep["nodeName"]))
    return any_ready, nodes


def advertisement_selects(
    adv: Obj, *, pool: str, pool_labels: Mapping[str, str], node_labels: Mapping[str, str], interface: str
) -> bool:
    spec = adv.get("spec") or {}
    names = [str(x) for x in spec.get("ipAddressPools") or []]
    sels = [labels.from_label_selector(s) for s in spec.get("ipAddressPoolSelectors") or []]
    if (names or sels) and pool not in names and not any(s.matches(pool_labels) for s in sels):
        return False
    node_sels = [labels.from_label_selector(s) for s in spec.get("nodeSelectors") or []]
    if node_sels and not any(s.matches(node_labels) for s in node_sels):
        return False
    ifaces = [str(x) for x in spec.get("interfaces") or []]
    return not (ifaces and interface not in ifaces)


def candidates(
    svc: Obj,
    *,
    pool: str,
    pool_labels: Mapping[str, str],
    advertisements: list[Obj],
    nodes: Mapping[str, Obj],
    live: set[str],
    slices: list[Obj],
    interface: str,
) -> set[str]:
    """The nodes that may announce the Service's IPs (see the module docstring)."""
    any_ready, endpoint_nodes = ready_endpoint_nodes(slices)
    if not any_ready:
        return set()
    local = ((svc.get("spec") or {}).get("externalTrafficPolicy") or "Cluster") == "Local"
    out = set()
    for name in live:
        node = nodes.get(name)
        if node is None:
            continue
        node_labels = (node.get("metadata") or {}).get("labels") or {}
        if EXCLUDE_LABEL in node_labels:
            continue
        if local and name not in endpoint_nodes:
            continue
        if any(
            advertisement_selects(a, pool=pool, pool_labels=pool_labels, node_labels=node_labels, interface=interface)
            for a in advertisements
        ):
            out.add(name)
    return out
