"""Unit tests of the controllers' pure parts: the work queue, subnet carving, rollout arithmetic, scheduling
filters and wording, taints vs tolerations, pod ordering, template hashing."""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter

from kwire.controllers.common import template_hash, tolerates, untolerated_taint
from kwire.controllers.daemonset import should_run
from kwire.controllers.deployment import fenceposts, max_unavailable, new_rs_replicas, scaled_value
from kwire.controllers.ipam import CidrSet
from kwire.controllers.queue import WorkQueue
from kwire.controllers.replicaset import deletion_order
from kwire.controllers.scheduler import failure_message, filter_node, ports_conflict


async def test_queue_dedups_and_requeues_a_key_added_while_processing() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("b")
    q.add("a")
    assert len(q) == 2
    key = await q.get()
    assert key == "a"
    q.add("a")  # changed while being processed: not handed to a second worker now...
    assert await q.get() == "b"
    assert len(q) == 0
    q.done("a")  # ...but once more after the first is done
    assert await asyncio.wait_for(q.get(), 1) == "a"
    q.done("a")
    q.done("b")


async def test_queue_backoff_grows_and_forget_resets() -> None:
    q: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.04)
    assert [q.add_rate_limited("k") for _ in range(4)] == [0.01, 0.02, 0.04, 0.04]
    q.forget("k")
    assert q.add_rate_limited("k") == 0.01
    assert await asyncio.wait_for(q.get(), 1) == "k"
    q.done("k")
    q.add_after("late", 0.05)
    q.add_after("late", 10)  # the earlier timer wins
    assert await asyncio.wait_for(q.get(), 1) == "late"
    q.shutdown()


async def test_queue_worker_retries_with_backoff_looks_again_when_asked_and_can_give_up() -> None:
    """WorkQueue.process, the loop the controllers, the kubelet and Flannel share."""
    q: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.04)
    calls: Counter[str] = Counter()
    reports: list[tuple[str, str, float | None]] = []

    async def sync(key: str) -> float | None:
        calls[key] += 1
        if key == "flaky" and calls[key] < 3:
            raise OSError("api away")
        if key == "broken":
            raise ValueError("bug")
        return 0.02 if key == "periodic" and calls[key] < 3 else None

    worker = asyncio.create_task(
        q.process(
            sync,
            failed=lambda key, exc, delay: reports.append((key, str(exc), delay)),
            give_up=lambda key, exc: isinstance(exc, ValueError) and q.failures(key) >= 2,
        )
    )
    for key in ("flaky", "broken", "periodic", "once"):
        q.add(key)
    await asyncio.sleep(0.5)
    q.shutdown()
    await asyncio.wait_for(worker, 1)  # shutdown ends the worker
    assert calls == {"flaky": 3, "broken": 3, "periodic": 3, "once": 1}
    assert ("flaky", "api away", 0.01) in reports and ("flaky", "api away", 0.02) in reports
    assert [r for r in reports if r[0] == "broken"] == [
        ("broken", "bug", 0.01),
        ("broken", "bug", 0.02),
        ("broken", "bug", None),
    ]
    assert q.failures("flaky") == 0 and q.failures("broken") == 0  # success and giving up both forget


def test_cidrset_order_wraps_and_rewinds_unused_allocations() -> None:
    s = CidrSet(ipaddress.ip_network("10.42.0.0/22"), 24)
    assert s.size == 4
    assert str(s.allocate("a")) == "10.42.0.0/24"
    assert str(s.allocate("b")) == "10.42.1.0/24"
    # An allocation that turned out not to be needed is taken back: the next node gets the same subnet.
    c = s.allocate("c")
    s.release(str(c), "c", rewind=True)
    assert str(s.allocate("c")) == "10.42.2.0/24"
    # A freed subnet is handed out again only after the search has passed the others.
    s.release("10.42.0.0/24", "a")
    assert str(s.allocate("d")) == "10.42.3.0/24"
    assert str(s.allocate("e")) == "10.42.0.0/24"
    assert s.allocate("f") is None
    # Occupying respects other owners and ignores foreign subnets.
    assert not s.occupy("10.42.1.0/24", "x")
    assert not s.occupy("10.99.0.0/24", "x")
    assert s.index_of("10.42.3.0/25") is None


def test_rolling_update_fenceposts_round_like_kube() -> None:
    def dep(replicas: int, surge: object = "25%", unavailable: object = "25%") -> dict:  # type: ignore[type-arg]
        ru = {"maxSurge": surge, "maxUnavailable": unavailable}
        return {"spec": {"replicas": replicas, "strategy": {"type": "RollingUpdate", "rollingUpdate": ru}}}

    assert fenceposts(dep(3)) == (1, 0)  # surge rounds up, unavailable down
    assert fenceposts(dep(10)) == (3, 2)
    assert fenceposts(dep(3, 0, 0)) == (0, 1)  # both 0 would never progress
    assert max_unavailable(dep(1, 0, 5)) == 1
    assert max_unavailable({"spec": {"replicas": 3, "strategy": {"type": "Recreate"}}}) == 0
    assert scaled_value("50%", 3, round_up=True) == 2 and scaled_value("50%", 3, round_up=False) == 1
    old = {"spec": {"replicas": 3}}
    new = {"spec": {"replicas": 0}}
    assert new_rs_replicas(dep(3), [old, new], new) == 1  # 3 + surge 1 = 4 pods at most
    new["spec"]["replicas"] = 1
    assert new_rs_replicas(dep(3), [old, new], new) == 1  # old still at 3: no room
    old["spec"]["replicas"] = 2
    assert new_rs_replicas(dep(3), [old, new], new) == 2


def test_tolerations_match_taints() -> None:
    taint = {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}
    assert tolerates({"key": "dedicated", "operator": "Equal", "value": "infra"}, taint)
    assert tolerates({"key": "dedicated", "value": "infra", "effect": "NoSchedule"}, taint)
    assert not tolerates({"key": "dedicated", "value": "other"}, taint)
    assert not tolerates({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, taint)
    assert tolerates({"key": "dedicated", "operator": "Exists"}, taint)
    assert tolerates({"operator": "Exists"}, taint)  # empty key + Exists tolerates everything
    assert not tolerates({"operator": "Equal", "value": "infra"}, taint)
    soft = {"key": "x", "effect": "PreferNoSchedule"}
    assert untolerated_taint([soft, taint], [], effects=("NoSchedule", "NoExecute")) == taint


def _node(name: str, **spec: object) -> dict:  # type: ignore[type-arg]
    labels = spec.pop("labels", {})
    ready = spec.pop("ready", "True")
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def _pod(**spec: object) -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}], **spec}}


def test_filters_and_failure_wording() -> None:
    assert filter_node(_pod(), _node("a"), []) is None
    assert filter_node(_pod(), _node("a", unschedulable=True), []) == "node(s) were unschedulable"
    assert filter_node(_pod(), _node("a", ready="False"), []) == (
        "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
    )
    assert filter_node(_pod(), _node("a", ready="Unknown"), []) == (
        "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
    )
    assert filter_node(_pod(nodeSelector={"disk": "ssd"}), _node("a"), []) is not None
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]},
                ]
            }
        }
    }
    assert filter_node(_pod(affinity=affinity), _node("a", labels={"zone": "z1"}), []) is None
    assert filter_node(_pod(affinity=affinity), _node("b"), []) is None
    assert filter_node(_pod(affinity=affinity), _node("c"), []) is not None
    assert ports_conflict([("TCP", "0.0.0.0", 80)], [("TCP", "10.0.0.1", 80)])
    assert not ports_conflict([("TCP", "10.0.0.2", 80)], [("TCP", "10.0.0.1", 80)])
    assert not ports_conflict([("UDP", "0.0.0.0", 80)], [("TCP", "0.0.0.0", 80)])
    reasons = Counter({"node(s) were unschedulable": 1, "node(s) didn't match Pod's node affinity/selector": 2})
    assert failure_message(3, reasons) == (
        "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."
    )
    assert failure_message(0, Counter()) == "no nodes available to schedule pods"


def test_daemonset_keeps_pods_on_nodes_with_new_noschedule_taints() -> None:
    ds = {"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}
    assert should_run(ds, _node("a")) == (True, True)
    assert should_run(ds, _node("a", taints=[{"key": "k", "effect": "NoSchedule"}])) == (False, True)
    assert should_run(ds, _node("a", taints=[{"key": "k", "effect": "NoExecute"}])) == (False, False)
    # Added by the DaemonSet controller: not-ready/unreachable NoExecute, unschedulable NoSchedule.
    assert should_run(ds, _node("a", taints=[{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]))[0]
    assert should_run(
        ds, _node("a", unschedulable=True, taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])
    )[0]
    ds["spec"]["template"]["spec"]["nodeSelector"] = {"role": "w"}  # type: ignore[index]
    assert should_run(ds, _node("a")) == (False, False)


def test_pods_to_delete_first() -> None:
    def pod(name: str, *, node: str = "n", phase: str = "Running", ready: bool = True, created: str) -> dict:  # type: ignore[type-arg]
        return {
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node} if node else {},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        }

    pods = [
        pod("old-ready", created="2024-01-01T00:00:00Z"),
        pod("new-ready", created="2024-01-02T00:00:00Z"),
        pod("old-notready", ready=False, created="2024-01-01T00:00:00Z"),
        pod("pending", phase="Pending", ready=False, created="2024-01-01T00:00:00Z"),
        pod("unscheduled", node="", phase="Pending", ready=False, created="2024-01-01T00:00:00Z"),
    ]
    order = [p["metadata"]["name"] for p in sorted(pods, key=deletion_order)]
    assert order == ["unscheduled", "pending", "old-notready", "new-ready", "old-ready"]


def test_template_hash_is_stable_short_and_safe() -> None:
    tmpl = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}
    same = {"spec": {"containers": [{"image": "nginx", "name": "web"}]}, "metadata": {"labels": {"app": "web"}}}
    h = template_hash(tmpl)
    assert h == template_hash(same)  # key order does not matter
    assert h != template_hash(tmpl, 1)  # collisionCount changes it
    assert 1 <= len(h) <= 10 and set(h) <= set("bcdfghjklmnpqrstvwxz2456789")
