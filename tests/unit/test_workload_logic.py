"""Unit tests of the StatefulSet, Job and CronJob controllers' decisions: what one sync creates or deletes,
back-off, index bookkeeping, and cron schedule arithmetic with an injected clock."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from kwire.controllers.cronjob import job_from_template, job_name, next_schedule, schedule_times
from kwire.controllers.job import backoff_delay, format_indexes, indexes_to_create, nonindexed_to_create, parse_indexes
from kwire.controllers.statefulset import plan

Obj = dict[str, Any]
NOW = 1_000_000.0


def sts(replicas: int, *, policy: str = "OrderedReady", partition: int = 0, strategy: str = "RollingUpdate") -> Obj:
    upd: Obj = {"type": strategy}
    if strategy == "RollingUpdate":
        upd["rollingUpdate"] = {"partition": partition}
    return {
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {"replicas": replicas, "podManagementPolicy": policy, "updateStrategy": upd},
    }


def pod(ordinal: int, *, rev: str = "r1", ready: bool = True, phase: str = "Running", deleting: bool = False) -> Obj:
    m: Obj = {"name": f"web-{ordinal}", "labels": {"controller-revision-hash": rev}}
    if deleting:
        m["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    conds = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": m, "status": {"phase": phase, "conditions": conds}}


def ops(actions: list[Any]) -> list[tuple[str, int, str]]:
    return [(a.op, a.ordinal, a.revision) for a in actions]


def test_ordered_ready_creates_one_at_a_time_and_waits_for_ready() -> None:
    assert ops(plan(sts(3), [], current_revision="r1", update_revision="r1", now=NOW)) == [("create", 0, "r1")]
    waiting = [pod(0, ready=False)]
    assert plan(sts(3), waiting, current_revision="r1", update_revision="r1", now=NOW) == []
    assert ops(plan(sts(3), [pod(0)], current_revision="r1", update_revision="r1", now=NOW)) == [("create", 1, "r1")]
    # A failed pod is deleted (and comes back on a later sync).
    failed = [pod(0), pod(1, phase="Failed", ready=False)]
    assert ops(plan(sts(2), failed, current_revision="r1", update_revision="r1", now=NOW)) == [("delete", 1, "")]


def test_parallel_creates_all_and_scale_down_goes_from_the_top() -> None:
    out = plan(sts(3, policy="Parallel"), [], current_revision="r1", update_revision="r1", now=NOW)
    assert ops(out) == [("create", 0, "r1"), ("create", 1, "r1"), ("create", 2, "r1")]
    pods = [pod(i) for i in range(4)]
    assert ops(plan(sts(2), pods, current_revision="r1", update_revision="r1", now=NOW)) == [("delete", 3, "")]
    # OrderedReady waits for the condemned pod to go before the next one.
    terminating = [pod(0), pod(1), pod(2), pod(3, deleting=True)]
    assert plan(sts(2), terminating, current_revision="r1", update_revision="r1", now=NOW) == []
    out = plan(sts(1, policy="Parallel"), pods, current_revision="r1", update_revision="r1", now=NOW)
    assert ops(out) == [("delete", 3, ""), ("delete", 2, ""), ("delete", 1, "")]


def test_rolling_update_reverse_order_partition_and_on_delete() -> None:
    pods = [pod(i) for i in range(3)]
    assert ops(plan(sts(3), pods, current_revision="r1", update_revision="r2", now=NOW)) == [("delete", 2, "")]
    pods[2] = pod(2, rev="r2", ready=False)  # the replacement is not ready yet: wait
    assert plan(sts(3), pods, current_revision="r1", update_revision="r2", now=NOW) == []
    pods[2] = pod(2, rev="r2")
    assert ops(plan(sts(3), pods, current_revision="r1", update_revision="r2", now=NOW)) == [("delete", 1, "")]
    # partition 2: ordinals below it stay at the current revision, and are created at it.
    assert plan(sts(3, partition=2), pods, current_revision="r1", update_revision="r2", now=NOW) == []
    out = plan(sts(3, partition=2), [pods[0], pods[2]], current_revision="r1", update_revision="r2", now=NOW)
    assert ops(out) == [("create", 1, "r1")]
    # OnDelete replaces nothing; a missing pod comes back at the update revision.
    on_delete = sts(3, strategy="OnDelete")
    assert plan(on_delete, [pod(0), pod(2)], current_revision="r1", update_revision="r2", now=NOW)[0].revision == "r2"
    assert plan(on_delete, [pod(i) for i in range(3)], current_revision="r1", update_revision="r2", now=NOW) == []


def test_job_backoff_indexes_and_wanted_pods() -> None:
    assert [backoff_delay(n) for n in range(7)] == [0, 10, 20, 40, 80, 160, 320]
    assert backoff_delay(7) == backoff_delay(30) == 360
    assert parse_indexes("0-2,4,7-8") == {0, 1, 2, 4, 7, 8}
    assert format_indexes({0, 1, 2, 4, 7, 8}) == "0-2,4,7-8" and format_indexes(set()) == ""
    job: Obj = {"spec": {"completions": 5, "parallelism": 2, "completionMode": "Indexed"}}
    running = [{"metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": "1"}}}]
    assert indexes_to_create(job, running, {0}) == [2]
    assert nonindexed_to_create({"spec": {"completions": 3, "parallelism": 5}}, 0, 1) == 2
    assert nonindexed_to_create({"spec": {"parallelism": 3}}, 1, 0) == 2  # no completions: parallel work queue
    assert nonindexed_to_create({"spec": {"parallelism": 3}}, 1, 1) == 0  # ...done once any pod succeeded


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def test_cron_schedule_times_descriptors_time_zones_and_missed_runs() -> None:
    utc = dt.UTC
    # Every minute: between 10:00:30 and 10:03:10 the runs were 10:01, 10:02, 10:03; the most recent is 10:03.
    last, n = schedule_times(
        "*/1 * * * *", utc, after=_ts("2026-01-01T10:00:30+00:00"), until=_ts("2026-01-01T10:03:10+00:00")
    )
    assert (last, n) == (_ts("2026-01-01T10:03:00+00:00"), 3)
    assert schedule_times(
        "@hourly", utc, after=_ts("2026-01-01T10:00:00+00:00"), until=_ts("2026-01-01T10:59:59+00:00")
    ) == (None, 0)
    assert next_schedule("@hourly", utc, after=_ts("2026-01-01T10:00:00+00:00")) == _ts("2026-01-01T11:00:00+00:00")
    # 09:00 in Berlin is 08:00 UTC in winter.
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    assert next_schedule("0 9 * * *", berlin, after=_ts("2026-01-01T00:00:00+00:00")) == _ts(
        "2026-01-01T08:00:00+00:00"
    )
    # More than 100 missed runs: still the most recent one, and the count says so.
    last, n = schedule_times(
        "* * * * *", utc, after=_ts("2026-01-01T00:00:00+00:00"), until=_ts("2026-01-01T05:00:30+00:00")
    )
    assert last == _ts("2026-01-01T05:00:00+00:00") and n > 100


def test_cron_job_names_and_template() -> None:
    cj: Obj = {
        "metadata": {"name": "hello", "namespace": "ns", "uid": "u1"},
        "spec": {
            "timeZone": "Europe/Berlin",
            "jobTemplate": {"metadata": {"labels": {"a": "b"}}, "spec": {"template": {"spec": {"containers": []}}}},
        },
    }
    t = _ts("2026-01-01T08:00:00+00:00")
    assert job_name(cj, t) == f"hello-{int(t) // 60}"
    job = job_from_template(cj, t)
    assert job["metadata"]["labels"] == {"a": "b"}
    assert job["metadata"]["annotations"] == {
        "batch.kubernetes.io/cronjob-scheduled-timestamp": "2026-01-01T09:00:00+01:00"
    }
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    assert job["spec"] == {"template": {"spec": {"containers": []}}}


def test_noexecute_eviction_delay() -> None:
    from kwire.controllers.taintmanager import eviction_delay

    unreachable = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    default_tols = [
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    ]
    assert eviction_delay([], [], since=NOW, now=NOW) is None
    assert eviction_delay([unreachable], [], since=NOW, now=NOW) == 0.0  # not tolerated: at once
    assert eviction_delay([unreachable], default_tols, since=NOW, now=NOW + 100) == 200.0
    assert eviction_delay([unreachable], default_tols, since=NOW, now=NOW + 400) == 0.0
    forever = [{"operator": "Exists"}]  # tolerates everything, with no tolerationSeconds
    assert eviction_delay([unreachable], forever, since=NOW, now=NOW) is None
    # Two taints: every one must be tolerated, and the smallest tolerationSeconds counts.
    maint = {"key": "maint", "value": "x", "effect": "NoExecute"}
    both = [
        *default_tols,
        {"key": "maint", "operator": "Equal", "value": "x", "effect": "NoExecute", "tolerationSeconds": 5},
    ]
    assert eviction_delay([unreachable, maint], default_tols, since=NOW, now=NOW) == 0.0
    assert eviction_delay([unreachable, maint], both, since=NOW, now=NOW + 1) == 4.0


def test_pdb_expected_and_desired_healthy() -> None:
    from kwire.controllers.disruption import desired_healthy

    def pdb(**sp: Any) -> Obj:
        return {"spec": sp}

    assert desired_healthy(pdb(minAvailable=2), pod_count=3, controller_scale=5) == (3, 2)  # int: counts pods
    assert desired_healthy(pdb(minAvailable="50%"), pod_count=3, controller_scale=5) == (5, 3)  # rounded up
    assert desired_healthy(pdb(maxUnavailable=1), pod_count=3, controller_scale=4) == (4, 3)
    assert desired_healthy(pdb(maxUnavailable="30%"), pod_count=3, controller_scale=4) == (4, 2)  # 1.2 -> 2
    assert desired_healthy(pdb(), pod_count=3, controller_scale=4) == (0, 0)  # policy/v1: no default
