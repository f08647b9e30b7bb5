"""The proxy's sync loop without a kernel: events collapse into one sync, partial syncs touch only changed
services, a failed apply makes the next sync a full one, and stale UDP endpoints are noticed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kwire.agent.proxy import proxier as proxier_mod
from kwire.agent.proxy.proxier import Proxier
from kwire.client.fake import FakeInformer
from kwire.kernel import nft

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


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    scripts: list[str] = []

    def fake_apply(script: str, **_: Any) -> None:
        if "FAIL" in scripts:
            scripts.remove("FAIL")
            raise nft.NftError("injected failure")
        scripts.append(script)

    monkeypatch.setattr(proxier_mod.nft, "apply", fake_apply)
    return scripts


async def _settle(p: Proxier) -> None:
    """Until nothing is pending and no sync has finished for a while (a sync runs its apply in a thread)."""
    quiet, last = 0, -1
    for _ in range(200):
        await asyncio.sleep(0.02)
        done = p.stats.full + p.stats.partial + p.stats.failed
        quiet = quiet + 1 if (done == last and not p._dirty and not p._kick.is_set()) else 0
        last = done
        if quiet >= 8:
            return


async def test_events_collapse_partial_syncs_and_failure_forces_full(
    applied: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cleared: list[list[str]] = []

    def fake_run(cmd: list[str], **_: Any) -> None:
        cleared.append(cmd)

    monkeypatch.setattr(proxier_mod.subprocess, "run", fake_run)
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
    )
    p.start()
    try:
        await _settle(p)
        assert len(applied) == 1 and applied[0].startswith("add table ip kwire-proxy")  # the first sync is full
        # Many events inside one min-sync-period: one partial sync that touches only service b.
        await svcs.aput(_svc("b", "10.43.0.21", "UDP"))
        for n in range(5):
            await slices.aput(_slice("b", [f"10.42.2.{i}" for i in range(2, 3 + n)], "UDP"))
        await _settle(p)
        assert len(applied) == 2
        assert "10.43.0.21" in applied[1] and "10.43.0.20" not in applied[1]
        assert "delete table" not in applied[1]
        # A failing apply: the next sync is a full one.
        applied.append("FAIL")
        await slices.aput(_slice("b", ["10.42.2.2"], "UDP"))
        await asyncio.sleep(1.5)
        await _settle(p)
        assert p.stats.failed == 1
        assert applied[-1].startswith("add table ip kwire-proxy") and "10.43.0.20" in applied[-1]
        # Removed UDP endpoints get their conntrack entries deleted.
        assert any("--dst-nat" in c and "10.42.2.6" in c for c in cleared)
        # Deleting the service removes it in a partial sync.
        await svcs.aremove({"metadata": {"namespace": "default", "name": "b"}})
        await _settle(p)
        assert "delete element ip kwire-proxy service-ips { 10.43.0.21 . udp . 53 }" in applied[-1]
    finally:
        await p.stop()
