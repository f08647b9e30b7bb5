"""The NetworkPolicy controller on the recording applier (no kernel, nothing patched): the first sync replaces the
table, events collapse into one partial transaction, unrelated objects produce no transaction, a failed apply makes
the next sync a full one, a vanished table is restored, and the disabled setting removes the table. Transactions
are asserted whole, against golden files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from kwire.agent.netpol import controller as ctrl_mod
from kwire.agent.netpol.controller import NetworkPolicyController
from kwire.client.fake import FakeInformer
from kwire.kernel import nft
from tests.polling import until
from tests.unit import golden

Obj = dict[str, Any]


def _pod(ns: str, name: str, ip: str, node: str = "n1", **labels: str) -> Obj:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": {"pod": name, **labels}},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"podIP": ip, "phase": "Running"},
    }


def _deny(ns: str, name: str = "deny") -> Obj:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"podSelector": {}}}


def _controller() -> tuple[NetworkPolicyController, FakeInformer, FakeInformer, FakeInformer]:
    return _controller_with(nft.RecordingApplier())


def _controller_with(
    applier: nft.RecordingApplier, *, table_check_period: float = 5.0
) -> tuple[NetworkPolicyController, FakeInformer, FakeInformer, FakeInformer]:
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
        table_check_period=table_check_period,
        applier=applier,
    )
    return c, pods, namespaces, policies


async def _settle(c: NetworkPolicyController, syncs: int) -> None:
    for _ in range(200):
        if c.stats.full + c.stats.partial >= syncs:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {c.stats.full + c.stats.partial} syncs")


@contextlib.asynccontextmanager
async def _running(c: NetworkPolicyController) -> AsyncIterator[None]:
    """The controller started and through its first sync; stopped on exit."""
    c.start()
    try:
        await _settle(c, 1)
        yield
    finally:
        await c.stop()


def _recorder(c: NetworkPolicyController) -> nft.RecordingApplier:
    assert isinstance(c.reconciler.applier, nft.RecordingApplier)
    return c.reconciler.applier


async def test_sync_loop_full_then_partial_collapsing_events() -> None:
    c, pods, _, policies = _controller()
    rec = _recorder(c)
    policies.put(_deny("x"))
    async with _running(c):
        (first,) = rec.take()
        assert c.stats.full == 1 and first.kind == "replace"
        golden.check("netpol-controller-first", first)
        # Three events before the loop runs: one transaction.
        policies.put(_deny("y"))
        pods.put(_pod("y", "b", "10.42.0.12"))
        pods.put(_pod("y", "c", "10.42.0.13"))
        await _settle(c, 2)
        await asyncio.sleep(0.05)
        (second,) = rec.take()
        assert c.stats.partial == 1 and second.kind == "update"
        golden.check("netpol-controller-partial", second)
        assert c.stats.latencies and c.stats.latencies[-1] < 1.0
        # A pod on another node selected by nothing here: a sync, but no transaction.
        pods.put(_pod("y", "far", "10.42.1.99", node="n2"))
        await _settle(c, 3)
        assert rec.take() == []


async def test_a_failed_apply_makes_the_next_sync_full() -> None:
    c, pods, _, policies = _controller()
    rec = _recorder(c)
    async with _running(c):
        rec.take()
        rec.fail_next()
        policies.put(_deny("x"))
        await until(
            lambda: c.stats.failed and rec.transactions, what="a failed sync, then a transaction", interval=0.01
        )
        assert c.stats.failed == 1
        (txn,) = rec.take()
        assert txn.kind == "replace"  # replaced whole after the failure, with the change in it
        assert txn == nft.replace(c.current.table())
        assert "10.42.0.10 : jump pod-in-" in txn.render()


async def test_a_vanished_table_is_restored() -> None:
    rec = nft.RecordingApplier()
    c, _, _, policies = _controller_with(rec, table_check_period=0.05)
    policies.put(_deny("x"))
    async with _running(c):
        (first,) = rec.take()
        rec.lose("ip", "kwire-netpol")  # a host firewall's `flush ruleset`
        await until(lambda: rec.transactions, what="a transaction", interval=0.01)
        assert rec.take() == [first] and rec.exists("ip", "kwire-netpol")


async def test_malformed_policy_is_ignored() -> None:
    c, _, _, policies = _controller()
    rec = _recorder(c)
    policies.put(
        {
            "metadata": {"namespace": "x", "name": "bad"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
        }
    )
    policies.put(_deny("y"))
    async with _running(c):
        text = rec.take()[0].render()
        assert "10.42.0.11 : jump pod-in-" in text and "10.42.0.10" not in text


def test_delete_table_when_disabled() -> None:
    rec = nft.RecordingApplier()
    rec.apply(nft.replace(nft.table("ip", "kwire-netpol")))
    rec.take()
    ctrl_mod.delete_table(rec)
    assert [t.render() for t in rec.take()] == ["add table ip kwire-netpol\ndelete table ip kwire-netpol\n"]
    assert not rec.exists("ip", "kwire-netpol")
