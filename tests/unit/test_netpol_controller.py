"""The NetworkPolicy sync loop without a kernel: the first sync replaces the table, events collapse into one partial
transaction, unrelated objects produce no transaction, a failed apply makes the next sync a full one, and the
disabled setting removes the table."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kwire.agent.netpol import controller as ctrl_mod
from kwire.agent.netpol.controller import NetworkPolicyController
from kwire.client.fake import FakeInformer
from kwire.kernel import nft

Obj = dict[str, Any]


def _pod(ns: str, name: str, ip: str, node: str = "n1", **labels: str) -> Obj:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": {"pod": name, **labels}},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"podIP": ip, "phase": "Running"},
    }


def _deny(ns: str, name: str = "deny") -> Obj:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"podSelector": {}}}


class Applied(list[str]):
    """The scripts the controller applied; `fail_next` makes the next apply fail as nft would."""

    fail_next = False

    def __call__(self, script: str, **_: Any) -> None:
        if self.fail_next:
            self.fail_next = False
            raise nft.NftError("nft failed: injected")
        self.append(script)


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> Applied:
    out = Applied()
    monkeypatch.setattr(ctrl_mod.nft, "apply", out)
    return out


def _controller() -> tuple[NetworkPolicyController, FakeInformer, FakeInformer, FakeInformer]:
    pods, namespaces, policies = FakeInformer(), FakeInformer(), FakeInformer()
    for ns in ("x", "y"):
        namespaces.put({"metadata": {"name": ns}})
    pods.put(_pod("x", "a", "10.42.0.10"))
    pods.put(_pod("y", "b", "10.42.0.11"))
    pods.put(_pod("y", "far", "10.42.1.10", node="n2"))
    c = NetworkPolicyController(
        pods=pods,  # type: ignore[arg-type]
        namespaces=namespaces,  # type: ignore[arg-type]
        policies=policies,  # type: ignore[arg-type]
        node="n1",
        node_ips=("192.168.77.11",),
        min_sync_period=0.01,
    )
    return c, pods, namespaces, policies


async def _settle(c: NetworkPolicyController, syncs: int) -> None:
    for _ in range(200):
        if c.stats.full + c.stats.partial >= syncs:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {c.stats.full + c.stats.partial} syncs")


async def test_sync_loop_full_then_partial_collapsing_events(applied: Applied) -> None:
    c, pods, _, policies = _controller()
    policies.put(_deny("x"))
    c.start()
    try:
        await _settle(c, 1)
        assert c.stats.full == 1 and applied[0].startswith("add table ip kwire-netpol\ndelete table")
        assert "10.42.0.10 : jump pod-in-" in applied[0]
        # Three events before the loop runs: one transaction.
        policies.put(_deny("y"))
        pods.put(_pod("y", "b", "10.42.0.12"))
        pods.put(_pod("y", "c", "10.42.0.13"))
        await _settle(c, 2)
        await asyncio.sleep(0.05)
        assert c.stats.partial == 1 and len(applied) == 2
        assert "add element ip kwire-netpol ingress-pods" in applied[1] and "10.42.0.12" in applied[1]
        assert "10.42.0.13" in applied[1] and "add table" not in applied[1]
        assert c.stats.latencies and c.stats.latencies[-1] < 1.0
        # A pod on another node selected by nothing here: a sync, but no transaction.
        pods.put(_pod("y", "far", "10.42.1.99", node="n2"))
        await _settle(c, 3)
        assert len(applied) == 2
    finally:
        await c.stop()


async def test_a_failed_apply_makes_the_next_sync_full(applied: Applied) -> None:
    c, pods, _, policies = _controller()
    c.start()
    try:
        await _settle(c, 1)
        applied.fail_next = True
        policies.put(_deny("x"))
        for _ in range(300):
            if c.stats.failed and len(applied) >= 2:
                break
            await asyncio.sleep(0.01)
        assert c.stats.failed == 1
        assert applied[-1].startswith("add table ip kwire-netpol\ndelete table")  # replaced whole after the failure
        assert "10.42.0.10 : jump pod-in-" in applied[-1]
    finally:
        await c.stop()


async def test_malformed_policy_is_ignored(applied: Applied) -> None:
    c, _, _, policies = _controller()
    policies.put(
        {
            "metadata": {"namespace": "x", "name": "bad"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
        }
    )
    policies.put(_deny("y"))
    c.start()
    try:
        await _settle(c, 1)
        assert "10.42.0.11 : jump pod-in-" in applied[0] and "10.42.0.10" not in applied[0]
    finally:
        await c.stop()


def test_delete_table_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    scripts: list[str] = []
    monkeypatch.setattr(ctrl_mod.nft, "apply", lambda s, **_: scripts.append(s))
    ctrl_mod.delete_table()
    assert scripts == ["add table ip kwire-netpol\ndelete table ip kwire-netpol\n"]
