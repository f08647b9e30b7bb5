"""The proxy on the recording applier and conntrack (no kernel, nothing patched): events collapse into one sync,
partial syncs touch only changed services, a failed apply makes the next sync a full one, stale UDP endpoints get
their conntrack entries deleted. Transactions are asserted whole."""

from __future__ import annotations

import asyncio
from typing import Any

from kwire.agent.proxy import ruleset
from kwire.agent.proxy.proxier import Proxier
from kwire.client.fake import FakeInformer
from kwire.kernel import nft
from kwire.kernel.conntrack import RecordingConntrack, StaleUdp
from tests.unit import golden

Obj = dict[str, Any]


def _svc(name: str, ip: str, proto: str = "TCP") -> Obj:
    return {
        "metadata": {"namespace": "default", "name": name},
        "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 53, "protocol": proto}]},
    }


def _slice(name: str, ips: list[str], proto: str = "TCP") -> Obj:
    return {
        "metadata": {"namespace": "default", "name": f"{name}-x", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": 5353, "protocol": proto}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node2"} for ip in ips],
    }


async def _settle(p: Proxier) -> None:
    """Until nothing is pending and no sync has finished for a while (a sync runs its apply in a thread)."""
    quiet, last = 0, -1
    for _ in range(200):
        await asyncio.sleep(0.02)
        done = p.stats.full + p.stats.partial + p.stats.failed
        quiet = quiet + 1 if (done == last and not p.reconciler.pending) else 0
        last = done
        if quiet >= 8:
            return


async def test_events_collapse_partial_syncs_and_failure_forces_full() -> None:
    rec, ct = nft.RecordingApplier(), RecordingConntrack()
    svcs, slices = FakeInformer(), FakeInformer()
    await svcs.aput(_svc("a", "10.43.0.20"))
    await slices.aput(_slice("a", ["10.42.1.2", "10.42.1.3"]))
    p = Proxier(
        services=svcs,  # type: ignore[arg-type]
        slices=slices,  # type: ignore[arg-type]
        node="node1",
        node_ips=("192.168.77.11",),
        cluster_cidr="10.42.0.0/16",
        service_cidr="10.43.0.0/16",
        pod_cidr="10.42.0.0/24",
        min_sync_period=0.1,
        applier=rec,
        conntrack=ct,
    )
    p.start()
    try:
        await _settle(p)
        (first,) = rec.take()
        assert first == nft.replace(p.desired.table())  # the first sync replaces the table
        assert "10.43.0.20 . tcp . 53 : goto service-" in first.render()
        # Many events inside one min-sync-period: one partial sync that touches only service b.
        await svcs.aput(_svc("b", "10.43.0.21", "UDP"))
        for n in range(5):
            await slices.aput(_slice("b", [f"10.42.2.{i}" for i in range(2, 3 + n)], "UDP"))
        await _settle(p)
        (second,) = rec.take()
        golden.check("proxier-add-udp-service", second)
        # A failing apply: the next sync replaces the whole table, with the change in it.
        rec.fail_next()
        await slices.aput(_slice("b", ["10.42.2.2"], "UDP"))
        await asyncio.sleep(1.5)
        await _settle(p)
        assert p.stats.failed == 1
        (third,) = rec.take()
        assert third == nft.replace(p.desired.table()) and "10.42.2.6" not in third.render()
        # Removed UDP endpoints get their conntrack entries deleted (the service's first endpoints cleared the
        # entries made while it had none).
        assert ct.flows == [
            StaleUdp(orig_dst="10.43.0.21", orig_dport=53),
            *(StaleUdp(orig_dst="10.43.0.21", dnat_to=f"10.42.2.{i}") for i in range(3, 7)),
        ]
        # Deleting the service removes it in a partial sync.
        await svcs.aremove({"metadata": {"namespace": "default", "name": "b"}})
        await _settle(p)
        (fourth,) = rec.take()
        golden.check("proxier-remove-udp-service", fourth)
        assert p.desired.table() == build_expected(p)
    finally:
        await p.stop()


def build_expected(p: Proxier) -> nft.Table:
    """The table a fresh ProxyTable holds for the services left: incremental upkeep equals a rebuild."""
    return ruleset.build(
        [sp for ports in p.ports.values() for sp in ports],
        node=p.node,
        node_ips=p.node_ips,
        cluster_cidr=p.cluster_cidr,
        service_cidr=p.service_cidr,
        pod_cidr=p.pod_cidr,
    ).table()
