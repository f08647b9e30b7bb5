"""kube-scheduler's pod-count, required anti-affinity and topology spread filters (kwire/controllers/topology.py)."""

from __future__ import annotations

from typing import Any

from kwire.controllers.topology import anti_affinity_violated, max_pods, spread_score, spread_violated

Obj = dict[str, Any]


def node(name: str, *, zone: str | None = None, pods: int | None = None) -> Obj:
    labels = {"kubernetes.io/hostname": name, **({"zone": zone} if zone else {})}
    status: Obj = {"allocatable": {"pods": str(pods)}} if pods is not None else {}
    return {"metadata": {"name": name, "labels": labels}, "spec": {}, "status": status}


def pod(name: str, *, labels: dict[str, str] | None = None, ns: str = "kube-system", **spec: Any) -> Obj:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "spec": {"containers": [], **spec}}


DNS = {"k8s-app": "kube-dns"}
ANTI = {
    "podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": DNS}, "topologyKey": "kubernetes.io/hostname"}
        ]
    }
}
SPREAD = [
    {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": DNS},
    }
]


def test_max_pods_from_allocatable_default_110() -> None:
    assert max_pods(node("a", pods=3)) == 3
    assert max_pods(node("a")) == 110


def test_required_anti_affinity_keeps_replicas_apart_both_ways() -> None:
    a, b = node("a"), node("b")
    placed = {"a": [pod("dns-1", labels=DNS, affinity=ANTI)], "b": []}
    incoming = pod("dns-2", labels=DNS, affinity=ANTI)
    assert anti_affinity_violated(incoming, a, placed, [a, b])
    assert not anti_affinity_violated(incoming, b, placed, [a, b])
    # The placed pod's own term refuses a pod it selects, even one without terms of its own.
    plain = pod("other", labels=DNS)
    assert anti_affinity_violated(plain, a, placed, [a, b])
    # Another namespace is not selected by a term without namespaces.
    assert not anti_affinity_violated(pod("x", labels=DNS, ns="default"), a, placed, [a, b])


def test_topology_spread_skew() -> None:
    a, b, c = node("a"), node("b"), node("c")
    one_dns = {"a": [pod("dns-1", labels=DNS)], "b": [], "c": []}
    incoming = pod("dns-2", labels=DNS, topologySpreadConstraints=SPREAD)
    assert spread_violated(incoming, a, [a, b, c], one_dns)  # 1 + 1 - 0 > 1
    assert not spread_violated(incoming, b, [a, b, c], one_dns)
    # A single node is its own smallest domain: both replicas may share it (kube's behaviour).
    assert not spread_violated(incoming, a, [a], {"a": [pod("dns-1", labels=DNS)]})
    # A node without the topology key is refused.
    keyless = {"metadata": {"name": "k", "labels": {}}, "spec": {}, "status": {}}
    assert spread_violated(incoming, keyless, [a, keyless], one_dns)
    assert spread_score(incoming, a, [a, b, c], one_dns) > spread_score(incoming, b, [a, b, c], one_dns)


def test_zone_spread_counts_domains_not_nodes() -> None:
    a1, a2, b1 = node("a1", zone="za"), node("a2", zone="za"), node("b1", zone="zb")
    zone_spread = [{**SPREAD[0], "topologyKey": "zone"}]
    placed = {"a1": [pod("w-1", labels=DNS)], "a2": [], "b1": []}
    incoming = pod("w-2", labels=DNS, topologySpreadConstraints=zone_spread)
    assert spread_violated(incoming, a2, [a1, a2, b1], placed)  # zone za already has one, zb none
    assert not spread_violated(incoming, b1, [a1, a2, b1], placed)


def test_dns_replicas_follow_the_nodes_like_the_dns_autoscaler() -> None:
    from kwire.controllers.addons import dns_replicas

    def n(name: str, cpu: str = "2", unschedulable: bool = False) -> Obj:
        return {
            "metadata": {"name": name},
            "spec": {"unschedulable": unschedulable},
            "status": {"capacity": {"cpu": cpu}},
        }

    assert dns_replicas([]) == 1
    assert dns_replicas([n("a")]) == 1
    assert dns_replicas([n("a"), n("b")]) == 2  # preventSinglePointFailure
    assert dns_replicas([n("a"), n("b", unschedulable=True)]) == 1  # cordoned nodes do not count
    assert dns_replicas([n(f"n{i}") for i in range(40)]) == 3  # one per 16 nodes
    assert dns_replicas([n("a", cpu="300"), n("b", cpu="300")]) == 3  # one per 256 cores
