"""StatefulSets, Jobs and CronJobs against a real in-process server with simulated nodes, driven by the real
kubectl 1.32 where a user would use it (apply, rollout status/history/undo, scale, wait)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import yaml

from kwire.client import ApiStatusError, NotFound
from kwire.client.client import (
    CONTROLLERREVISIONS,
    CRONJOBS,
    JOBS,
    NODES,
    PODDISRUPTIONBUDGETS,
    PODS,
    REPLICASETS,
    SERVICEACCOUNTS,
    STATEFULSETS,
)
from kwire.controllers.cronjob import CronJobController
from tests.integration.test_controllers import (  # noqa: F401 (fixtures)
    HAVE_KUBECTL,
    Cluster,
    FakeKubelet,
    cluster,
    cluster_factory,
    until,
)

Obj = dict[str, Any]
pytestmark = pytest.mark.skipif(not HAVE_KUBECTL, reason="needs kubectl 1.32 at /usr/bin/kubectl")

STS = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80, name: http}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: nginx, image: "nginx:1.25"}]
"""


async def kubectl_ok(cl: Cluster, *args: str) -> str:
    code, out = await cl.kubectl(*args)
    assert code == 0, out
    return out


async def apply(cl: Cluster, manifest: str) -> str:
    path = f"{cl.server.cfg.data_dir}/manifest-{abs(hash(manifest))}.yaml"
    with open(path, "w") as f:
        f.write(manifest)
    return await kubectl_ok(cl, "apply", "-f", path)


async def test_statefulset_ordered_identity_rollout_history_undo_and_scale(cluster: Cluster) -> None:  # noqa: F811
    cl = cluster
    await cl.add_node("n1")
    # Pods come up one at a time: while web-0 is not Ready there is no web-1.
    slow = FakeKubelet(cl, ready=False, delete_delay=0.2)
    async with slow:
        await apply(cl, STS)
        first = await until(lambda: cl.pods(selector="app=web"), what="web-0")
        await asyncio.sleep(1.0)
        assert [p["metadata"]["name"] for p in await cl.pods(selector="app=web")] == ["web-0"]
        p0 = first[0]
        assert p0["spec"]["hostname"] == "web-0" and p0["spec"]["subdomain"] == "web"
        labels = p0["metadata"]["labels"]
        assert labels["statefulset.kubernetes.io/pod-name"] == "web-0"
        assert labels["apps.kubernetes.io/pod-index"] == "0"
        assert labels["controller-revision-hash"].startswith("web-")
        await cl.mark_ready(p0)

        async def two() -> bool:
            return {p["metadata"]["name"] for p in await cl.pods(selector="app=web")} == {"web-0", "web-1"}

        await until(two, what="web-1 after web-0 is ready")
    async with FakeKubelet(cl, delete_delay=0.2):
        out = await kubectl_ok(cl, "rollout", "status", "sts/web", "--timeout=30s")
        # kubectl prints this for every RollingUpdate set, since kube defaults the partition to 0.
        assert "partitioned roll out complete: 3 new pods have been updated..." in out
        sts = await cl.c.get(STATEFULSETS, "web", "default")
        rev1 = sts["status"]["currentRevision"]
        assert sts["status"]["readyReplicas"] == 3 and sts["status"]["updateRevision"] == rev1
        table = await kubectl_ok(cl, "get", "sts", "web")
        assert table.split("\n")[0].split() == ["NAME", "READY", "AGE"] and table.split("\n")[1].split()[1] == "3/3"

        # A template change replaces pods from the highest ordinal down.
        deleted: list[str] = []
        watch_task = asyncio.create_task(_record_deletions(cl, deleted))
        await kubectl_ok(cl, "set", "image", "sts/web", "nginx=nginx:1.27")
        await kubectl_ok(cl, "rollout", "status", "sts/web", "--timeout=60s")
        watch_task.cancel()
        assert deleted[:3] == ["web-2", "web-1", "web-0"], deleted
        sts = await cl.c.get(STATEFULSETS, "web", "default")
        assert sts["status"]["currentRevision"] == sts["status"]["updateRevision"] != rev1
        pods = await cl.pods(selector="app=web")
        assert {p["spec"]["containers"][0]["image"] for p in pods} == {"nginx:1.27"}

        history = await kubectl_ok(cl, "rollout", "history", "sts/web")
        assert history.split("\n")[0].strip() == "statefulset.apps/web"
        assert [ln.split()[0] for ln in history.strip().split("\n")[2:]] == ["1", "2"]
        revs = (await cl.c.list(CONTROLLERREVISIONS, "default"))["items"]
        assert sorted(r["revision"] for r in revs) == [1, 2]
        described = await kubectl_ok(cl, "describe", "sts", "web")
        assert "Pods Status:        3 Running / 0 Waiting / 0 Succeeded / 0 Failed" in described, described
        crs = await kubectl_ok(cl, "get", "controllerrevisions")
        assert "statefulset.apps/web" in crs

        await kubectl_ok(cl, "rollout", "undo", "sts/web")
        await kubectl_ok(cl, "rollout", "status", "sts/web", "--timeout=60s")
        pods = await cl.pods(selector="app=web")
        assert {p["spec"]["containers"][0]["image"] for p in pods} == {"nginx:1.25"}
        # The rollback renumbers the old revision (kube's behaviour): revisions 2 and 3 remain.
        revs = (await cl.c.list(CONTROLLERREVISIONS, "default"))["items"]
        assert sorted(r["revision"] for r in revs) == [2, 3]
        assert {r["metadata"]["name"] for r in revs if r["revision"] == 3} == {rev1}

        # Scale down removes the highest ordinals.
        await kubectl_ok(cl, "scale", "sts/web", "--replicas=1")

        async def one() -> bool:
            return [p["metadata"]["name"] for p in await cl.pods(selector="app=web", live=False)] == ["web-0"]

        await until(one, timeout=30, what="scale down to web-0")


async def _record_deletions(cl: Cluster, out: list[str]) -> None:
    seen: set[str] = set()
    while True:
        for p in await cl.pods(selector="app=web", live=False):
            uid = p["metadata"]["uid"]
            if p["metadata"].get("deletionTimestamp") and uid not in seen:
                seen.add(uid)
                out.append(p["metadata"]["name"])
        await asyncio.sleep(0.05)


async def test_statefulset_parallel_partition_and_validation(cluster: Cluster) -> None:  # noqa: F811
    cl = cluster
    await cl.add_node("n1")
    manifest = STS.replace("replicas: 3", "replicas: 3\n  podManagementPolicy: Parallel").replace(
        "serviceName: web", "serviceName: web\n  updateStrategy: {rollingUpdate: {partition: 2}}"
    )
    manifest += """  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"""
    async with FakeKubelet(cl, ready=False):
        await apply(cl, manifest)

        async def three() -> bool:
            return len(await cl.pods(selector="app=web")) == 3

        await until(three, what="all three pods at once (Parallel)")
        web0 = await cl.c.get(PODS, "web-0", "default")
        assert {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0"}} in web0["spec"]["volumes"]
        if not any(g["name"] == "persistentvolumeclaims" for g in (await cl.c.request("GET", "/api/v1"))["resources"]):
            # Without PersistentVolumeClaims in the API the claim is skipped, and an Event says so.
            skipped = await until(lambda: cl.events(reason="FailedCreate", name="web"), what="claim skipped event")
            assert "create Claim data-web-0 for Pod web-0 in StatefulSet web skipped" in skipped[0]["message"]
        else:
            claim = await cl.c.request("GET", "/api/v1/namespaces/default/persistentvolumeclaims/data-web-0")
            assert claim["metadata"]["labels"] == {"app": "web"}
    async with FakeKubelet(cl, delete_delay=0.1):
        await kubectl_ok(cl, "rollout", "status", "sts/web", "--timeout=30s")
        await kubectl_ok(cl, "set", "image", "sts/web", "nginx=nginx:1.27")
        out = await kubectl_ok(cl, "rollout", "status", "sts/web", "--timeout=30s")
        assert "partitioned roll out complete: 1 new pods have been updated" in out
        images = {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in await cl.pods()}
        assert images == {"web-0": "nginx:1.25", "web-1": "nginx:1.25", "web-2": "nginx:1.27"}
    code, out = await cl.kubectl("patch", "sts", "web", "-p", '{"spec":{"serviceName":"other"}}')
    assert code != 0
    assert "spec: Forbidden: updates to statefulset spec for fields other than 'replicas'" in out
    bad = yaml.safe_load(STS.split("---")[1])
    bad["metadata"]["name"] = "bad"
    bad["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    path = f"{cl.server.cfg.data_dir}/bad.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(bad, f)
    code, out = await cl.kubectl("create", "-f", path)
    assert code != 0
    assert 'spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"' in out


# -- Jobs ----------------------------------------------------------------------------------------------------------
async def finish(cl: Cluster, pod: Obj, phase: str) -> None:
    """What the kubelet reports when a Job pod's containers exit (restartPolicy Never)."""
    code = 0 if phase == "Succeeded" else 1
    reason = "Completed" if code == 0 else "Error"
    await cl.c.patch(
        PODS,
        pod["metadata"]["name"],
        {
            "status": {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
                "containerStatuses": [
                    {"name": "c", "ready": False, "state": {"terminated": {"exitCode": code, "reason": reason}}}
                ],
            }
        },
        namespace=pod["metadata"]["namespace"],
        subresource="status",
    )


async def running(cl: Cluster, selector: str, n: int) -> list[Obj]:
    async def get() -> list[Obj] | None:
        pods = [
            p
            for p in await cl.pods(selector=selector)
            if p["status"].get("phase") == "Running"
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
        ]
        return pods if len(pods) == n else None

    return list(await until(get, timeout=30, what=f"{n} running pods of {selector}"))


async def test_job_completions_parallelism_and_kubectl_wait(cluster: Cluster) -> None:  # noqa: F811
    cl = cluster
    await cl.add_node("n1")
    async with FakeKubelet(cl):
        await kubectl_ok(cl, "create", "job", "pi", "--image=busybox:1.36", "--", "true")
        job = await cl.c.get(JOBS, "pi", "default")
        uid = job["metadata"]["uid"]
        assert job["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        assert job["spec"]["backoffLimit"] == 6 and job["spec"]["completionMode"] == "NonIndexed"
        await kubectl_ok(cl, "patch", "job", "pi", "-p", '{"spec":{"parallelism":2}}')
        # completions 1 (the default) caps the pods at one even with parallelism 2.
        pods = await running(cl, "job-name=pi", 1)
        labels = pods[0]["metadata"]["labels"]
        assert labels["batch.kubernetes.io/job-name"] == "pi" and labels["controller-uid"] == uid
        assert "batch.kubernetes.io/job-tracking" in pods[0]["metadata"]["finalizers"]
        await finish(cl, pods[0], "Succeeded")
        await kubectl_ok(cl, "wait", "--for=condition=complete", "job/pi", "--timeout=30s")
        job = await cl.c.get(JOBS, "pi", "default")
        types = [c["type"] for c in job["status"]["conditions"]]
        assert types == ["SuccessCriteriaMet", "Complete"]
        assert job["status"]["succeeded"] == 1 and job["status"].get("completionTime")
        assert job["status"]["uncountedTerminatedPods"] == {}
        # The pod lost its tracking finalizer once counted.
        p = (await cl.pods(selector="job-name=pi"))[0]
        assert "batch.kubernetes.io/job-tracking" not in (p["metadata"].get("finalizers") or [])
        described = await kubectl_ok(cl, "describe", "job", "pi")
        assert "Pods Statuses:    0 Active (0 Ready) / 1 Succeeded / 0 Failed" in described, described
        table = await kubectl_ok(cl, "get", "job", "pi")
        head, row = table.strip().split("\n")
        assert head.split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
        assert row.split()[:3] == ["pi", "Complete", "1/1"]


async def test_deleting_a_running_job_removes_its_pods(cluster: Cluster) -> None:  # noqa: F811
    cl = cluster
    await cl.add_node("n1")
    async with FakeKubelet(cl, delete_delay=0.2):
        await kubectl_ok(cl, "create", "job", "busy", "--image=busybox", "--", "sleep", "100")
        await running(cl, "job-name=busy", 1)
        await kubectl_ok(cl, "delete", "job", "busy", "--timeout=30s")

        async def no_pods() -> bool:
            return not await cl.pods(selector="job-name=busy", live=False)

        await until(no_pods, timeout=20, what="the deleted Job's pods gone (tracking finalizer released)")


async def test_job_backoff_limit_fails_after_backoff(cluster: Cluster) -> None:  # noqa: F811
    cl = cluster
    await cl.add_node("n1")
    manifest = """
apiVersion: batch/v1
kind: Job
metadata: {name: bad}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["false"]}]
"""
    async with FakeKubelet(cl):
        await apply(cl, manifest)
        first = (await running(cl, "job-name=bad", 1))[0]
        loop = asyncio.get_running_loop()
        await finish(cl, first, "Failed")
        t0 = loop.time()
        second = (await running(cl, "job-name=bad", 1))[0]
        # The replacement waits for kube's back-off (10 s after the first failure).
        assert loop.time() - t0 >= 9.0, loop.time() - t0
        assert second["metadata"]["uid"] != first["metadata"]["uid"]
        await finish(cl, second, "Failed")
        await kubectl_ok(cl, "wait", "--for=condition=failed", "job/bad", "--timeout=30s")
        job = await cl.c.get(JOBS, "bad", "default")
        failed = {c["type"]: c for c in job["status"]["conditions"]}
        assert failed["Failed"]["reason"] == "BackoffLimitExceeded"
        assert failed["Failed"]["message"] == "Job has reached the specified backoff limit"
        assert failed["FailureTarget"]["reason"] == "BackoffLimitExceeded"
        assert job["status"]["failed"] == 2 and "completionTime" not in job["status"]
        events = await cl.events(reason="BackoffLimitExceeded", name="bad")
        assert events and events[0]["type"] == "Warning"


async def test_job_indexed_deadline_and_ttl(cluster: Cluster) -> None:  # noqa: F811
    cl = cluster
    await cl.add_node("n1")
    indexed = """
apiVersion: batch/v1
kind: Job
metadata: {name: idx}
spec:
  completions: 3
  parallelism: 2
  completionMode: Indexed
  ttlSecondsAfterFinished: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["true"]}]
"""
    deadline = """
apiVersion: batch/v1
kind: Job
metadata: {name: slow}
spec:
  activeDeadlineSeconds: 2
  template:
    spec:
      restartPolicy: OnFailure
      containers: [{name: c, image: busybox, command: ["sleep", "100"]}]
"""
    async with FakeKubelet(cl, delete_delay=0.1):
        await apply(cl, indexed)
        await apply(cl, deadline)
        pods = await running(cl, "job-name=idx", 2)
        idx = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods)
        assert idx == ["0", "1"]
        p0 = next(p for p in pods if p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "0")
        assert p0["metadata"]["name"].startswith("idx-0-") and p0["spec"]["hostname"] == "idx-0"
        env = p0["spec"]["containers"][0]["env"]
        assert env == [
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                },
            }
        ]
        await finish(cl, p0, "Succeeded")

        async def index2() -> list[Obj] | None:
            live = await running(cl, "job-name=idx", 2)
            got = sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in live)
            return live if got == ["1", "2"] else None

        for p in await until(index2, what="index 2 after index 0 succeeded"):
            await finish(cl, p, "Succeeded")
        await kubectl_ok(cl, "wait", "--for=condition=complete", "job/idx", "--timeout=30s")
        job = await cl.c.get(JOBS, "idx", "default")
        assert job["status"]["completedIndexes"] == "0-2" and job["status"]["succeeded"] == 3

        # activeDeadlineSeconds: the running pod is deleted, the Job fails with DeadlineExceeded.
        await kubectl_ok(cl, "wait", "--for=condition=failed", "job/slow", "--timeout=30s")
        slow = await cl.c.get(JOBS, "slow", "default")
        assert {c["type"]: c["reason"] for c in slow["status"]["conditions"]}["Failed"] == "DeadlineExceeded"

        # ttlSecondsAfterFinished: the finished Job and its pods go.
        async def gone() -> bool:
            try:
                await cl.c.get(JOBS, "idx", "default")
            except NotFound:
                return not await cl.pods(selector="job-name=idx", live=False)
            return False

        await until(gone, timeout=30, what="the Job deleted after its TTL")


# -- CronJobs ------------------------------------------------------------------------------------------------------
async def test_cronjob_fires_on_an_injected_clock_with_policies_and_history(cluster: Cluster) -> None:  # noqa: F811
    cl = cluster
    await cl.add_node("n1")
    assert cl.server.controllers is not None
    ctrl = next(c for c in cl.server.controllers.controllers if isinstance(c, CronJobController))
    clock = {"now": time.time()}
    ctrl.clock = lambda: clock["now"]
    manifest = """
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "*/1 * * * *"
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: c, image: busybox, command: ["date"]}]
"""
    async with FakeKubelet(cl):
        await apply(cl, manifest)
        head = (await kubectl_ok(cl, "get", "cronjob", "tick")).split("\n")
        assert head[0].split() == ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"]
        assert head[1].split()[1:7] == ["*/1", "*", "*", "*", "*", "<none>"]

        async def jobs() -> list[Obj]:
            return list((await cl.c.list(JOBS, "default"))["items"])

        async def tick(seconds: float) -> None:
            clock["now"] += seconds
            ctrl.enqueue("default/tick")

        await tick(61)
        first = (await until(jobs, what="the first scheduled Job"))[0]
        scheduled = int(clock["now"]) // 60 * 60
        assert first["metadata"]["name"] == f"tick-{scheduled // 60}"
        assert first["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
        ann = first["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        assert ann == dt.datetime.fromtimestamp(scheduled, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        async def status_written() -> Obj | None:
            got = await cl.c.get(CRONJOBS, "tick", "default")
            return got if got.get("status", {}).get("active") else None

        cj = await until(status_written, what="status.active")
        assert cj["status"]["active"][0]["name"] == first["metadata"]["name"]
        assert cj["status"]["lastScheduleTime"] == ann

        # Forbid: while the first Job runs, the next minute's run is skipped.
        await tick(60)
        await asyncio.sleep(1.0)
        assert [j["metadata"]["name"] for j in await jobs()] == [first["metadata"]["name"]]
        pods = await running(cl, f"job-name={first['metadata']['name']}", 1)
        await finish(cl, pods[0], "Succeeded")

        # Once it finished, the skipped run starts late (no startingDeadlineSeconds), as kube does.
        second_name = f"tick-{int(clock['now']) // 60}"

        async def recorded() -> Obj | None:
            got = await cl.c.get(CRONJOBS, "tick", "default")
            active = [r["name"] for r in got["status"].get("active") or []]
            return got if got["status"].get("lastSuccessfulTime") and active == [second_name] else None

        await until(recorded, timeout=20, what="lastSuccessfulTime and the skipped run active")
        # When the second finishes, the history limit of 1 removes the first.
        pods = await running(cl, f"job-name={second_name}", 1)
        await finish(cl, pods[0], "Succeeded")

        async def history() -> list[str] | None:
            names = [j["metadata"]["name"] for j in await jobs() if not j["metadata"].get("deletionTimestamp")]
            return names if names == [second_name] else None

        await until(history, timeout=20, what="only the newest finished Job kept")

        described = await kubectl_ok(cl, "describe", "cronjob", "tick")
        assert "Concurrency Policy:            Forbid" in described, described
        # kubectl create job --from=cronjob works (a manual run, owned by the CronJob).
        await kubectl_ok(cl, "create", "job", "manual", "--from=cronjob/tick")
        manual = await cl.c.get(JOBS, "manual", "default")
        assert manual["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
        assert manual["spec"]["template"]["spec"]["containers"][0]["command"] == ["date"]

        async def scheduled_jobs() -> list[str]:
            return sorted(
                j["metadata"]["name"]
                for j in await jobs()
                if not j["metadata"].get("deletionTimestamp") and j["metadata"]["name"].startswith("tick-")
            )

        # suspend: no new run while it is set.
        before = await scheduled_jobs()
        await kubectl_ok(cl, "patch", "cronjob", "tick", "-p", '{"spec":{"suspend":true}}')
        await tick(60)
        await asyncio.sleep(1.0)
        assert await scheduled_jobs() == before
        # Replace: the next run deletes the still-active one and takes its place.
        await kubectl_ok(
            cl, "patch", "cronjob", "tick", "-p", '{"spec":{"suspend":false,"concurrencyPolicy":"Replace"}}'
        )
        third = f"tick-{int(clock['now']) // 60}"
        await until(lambda: _has(scheduled_jobs, third), what="the run after resuming")
        await tick(60)
        fourth = f"tick-{int(clock['now']) // 60}"

        async def replaced() -> bool:
            names = await scheduled_jobs()
            return fourth in names and third not in names

        await until(replaced, timeout=20, what="Replace deleting the active Job for the next run")

    code, out = await cl.kubectl("create", "cronjob", "bad", "--image=busybox", "--schedule=61 * * * *")
    assert code != 0 and 'spec.schedule: Invalid value: "61 * * * *"' in out, out


async def _has(fn: Callable[[], Awaitable[list[str]]], name: str) -> bool:
    return name in await fn()


# -- DaemonSet history and the Deployment's change-cause -----------------------------------------------------------
DS = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: a, image: "busybox:1.35"}]
"""


async def test_daemonset_rollout_history_undo_and_deployment_change_cause(cluster: Cluster) -> None:  # noqa: F811
    cl = cluster
    await cl.add_node("n1")
    async with FakeKubelet(cl, delete_delay=0.1):
        await apply(cl, DS)
        await kubectl_ok(cl, "rollout", "status", "ds/agent", "--timeout=30s")
        await kubectl_ok(cl, "set", "image", "ds/agent", "a=busybox:1.36")
        await kubectl_ok(cl, "rollout", "status", "ds/agent", "--timeout=30s")
        history = await kubectl_ok(cl, "rollout", "history", "ds/agent")
        assert history.split("\n")[0].strip() == "daemonset.apps/agent"
        assert [ln.split()[0] for ln in history.strip().split("\n")[2:]] == ["1", "2"]
        detail = await kubectl_ok(cl, "rollout", "history", "ds/agent", "--revision=1")
        assert "busybox:1.35" in detail
        await kubectl_ok(cl, "rollout", "undo", "ds/agent")

        async def rolled_back() -> bool:
            pods = await cl.pods(selector="app=agent")
            return [p["spec"]["containers"][0]["image"] for p in pods] == ["busybox:1.35"]

        await until(rolled_back, timeout=30, what="the DaemonSet's pods back at busybox:1.35")
        revs = [r for r in (await cl.c.list(CONTROLLERREVISIONS, "default"))["items"]]
        assert sorted(r["revision"] for r in revs) == [2, 3]
        assert all(r["metadata"]["name"].startswith("agent-") for r in revs)

        # kubernetes.io/change-cause on a Deployment shows in its rollout history (copied to the ReplicaSet).
        await kubectl_ok(cl, "create", "deployment", "web", "--image=nginx:1.25")
        await kubectl_ok(cl, "rollout", "status", "deploy/web", "--timeout=30s")
        await kubectl_ok(cl, "annotate", "deploy/web", "kubernetes.io/change-cause=first release")

        async def cause() -> str | None:
            out = await kubectl_ok(cl, "rollout", "history", "deploy/web")
            return out if "first release" in out else None

        out = await until(cause, timeout=20, what="the change-cause in rollout history")
        assert out.strip().split("\n")[-1].split(None, 1) == ["1", "first release"]


# -- NoExecute taints: node failure and user taints ----------------------------------------------------------------
async def test_noexecute_eviction_of_a_dead_nodes_pods_and_user_taints(
    cluster_factory: Callable[..., Awaitable[Cluster]],  # noqa: F811
) -> None:
    cl = await cluster_factory(node_monitor_grace_period=2, default_unreachable_toleration_seconds=3)
    c = cl.c
    for n in ("alive", "dying"):
        await cl.add_node(n)
    stop = asyncio.Event()

    async def heartbeat(node: str) -> None:
        while not stop.is_set():
            await cl.renew(node)
            await asyncio.sleep(0.5)

    beats = {n: asyncio.create_task(heartbeat(n)) for n in ("alive", "dying")}
    try:
        async with FakeKubelet(cl, delete_delay=0.1) as kubelet:
            await kubectl_ok(cl, "create", "deployment", "web", "--image=nginx:1.25", "--replicas=2")
            await kubectl_ok(cl, "rollout", "status", "deploy/web", "--timeout=30s")
            pods = await cl.pods(selector="app=web")
            assert sorted(p["spec"]["nodeName"] for p in pods) == ["alive", "dying"]
            # DefaultTolerationSeconds: every pod tolerates not-ready (300 s, the default) and unreachable (3 s here).
            tols = {t["key"]: t for t in pods[0]["spec"]["tolerations"]}
            assert tols["node.kubernetes.io/not-ready"] == {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
            assert tols["node.kubernetes.io/unreachable"]["tolerationSeconds"] == 3
            doomed = next(p for p in pods if p["spec"]["nodeName"] == "dying")

            # The node's agent dies: no more heartbeats, nobody confirms deletions there.
            kubelet.stopped.add("dying")
            beats["dying"].cancel()
            loop = asyncio.get_running_loop()
            t0 = loop.time()

            async def replaced() -> list[Obj] | None:
                live = await cl.pods(selector="app=web")
                return live if sorted(p["spec"].get("nodeName", "") for p in live) == ["alive", "alive"] else None

            await until(replaced, timeout=30, what="the dying node's pod replaced on the other node")
            # Not before grace period (2 s) + toleration (3 s), counted from the last heartbeat (up to 0.5 s before
            # t0), less up to 1 s: timeAdded has whole seconds, as in kube.
            assert loop.time() - t0 >= 3.5, loop.time() - t0
            gone = await c.get(PODS, doomed["metadata"]["name"], "default")
            assert gone["metadata"].get("deletionTimestamp")  # stays Terminating: no kubelet confirms it
            dt_cond = next(x for x in gone["status"]["conditions"] if x["type"] == "DisruptionTarget")
            assert dt_cond["reason"] == "DeletionByTaintManager"
            events = await cl.events(reason="TaintManagerEviction", name=doomed["metadata"]["name"])
            assert events[0]["message"] == f"Marking for deletion Pod default/{doomed['metadata']['name']}"
            # An admin marks the dead node out-of-service: pod GC force-deletes its terminating pods.
            await kubectl_ok(cl, "taint", "node", "dying", "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute")

            async def released() -> bool:
                try:
                    await c.get(PODS, doomed["metadata"]["name"], "default")
                except NotFound:
                    return True
                return False

            await until(released, timeout=15, what="the terminating pod force-deleted from the out-of-service node")

            # A user's NoExecute taint evicts what does not tolerate it at once; a toleration with seconds delays it.
            await c.create(
                PODS,
                {
                    "metadata": {"name": "patient"},
                    "spec": {
                        "nodeName": "alive",
                        "containers": [{"name": "c", "image": "busybox"}],
                        "tolerations": [
                            {"key": "maint", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}
                        ],
                    },
                },
                "default",
            )
            await kubectl_ok(cl, "taint", "node", "alive", "maint=now:NoExecute")

            async def evicted(name: str) -> bool:
                try:
                    await c.get(PODS, name, "default")
                except NotFound:
                    return True
                return False

            web = [p["metadata"]["name"] for p in await cl.pods(selector="app=web")]
            for name in web:
                await until(lambda n=name: evicted(n), timeout=10, what=f"{name} evicted by the user's taint")
            assert not await evicted("patient")
            await until(lambda: evicted("patient"), timeout=10, what="the tolerating pod evicted after 2 s")
    finally:
        stop.set()
        for t in beats.values():
            t.cancel()


# -- kubectl drain: evictions and PodDisruptionBudgets -------------------------------------------------------------
async def test_drain_evicts_replaces_elsewhere_and_a_pdb_blocks(cluster: Cluster) -> None:  # noqa: F811
    cl = cluster
    for n in ("n1", "n2"):
        await cl.add_node(n)
    async with FakeKubelet(cl, delete_delay=0.2):
        await kubectl_ok(cl, "create", "deployment", "web", "--image=nginx:1.25", "--replicas=2")
        await kubectl_ok(cl, "rollout", "status", "deploy/web", "--timeout=30s")
        pods = await cl.pods(selector="app=web")
        assert sorted(p["spec"]["nodeName"] for p in pods) == ["n1", "n2"]
        on_n1 = next(p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == "n1")

        out = await kubectl_ok(cl, "drain", "n1", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s")
        assert "node/n1 cordoned" in out
        assert f"evicting pod default/{on_n1}" in out and f"pod/{on_n1} evicted" in out
        assert "node/n1 drained" in out
        assert (await cl.c.get(NODES, "n1"))["spec"]["unschedulable"] is True

        async def all_on_n2() -> bool:
            live = await cl.pods(selector="app=web")
            return sorted(p["spec"].get("nodeName", "") for p in live) == ["n2", "n2"]

        await until(all_on_n2, timeout=30, what="the evicted pod replaced on n2")
        await kubectl_ok(cl, "rollout", "status", "deploy/web", "--timeout=30s")
        await kubectl_ok(cl, "uncordon", "n1")

        # A PodDisruptionBudget that allows no disruption blocks the drain; kubectl retries with kube's words.
        await kubectl_ok(cl, "create", "pdb", "web", "--selector=app=web", "--min-available=2")

        async def budget() -> Obj | None:
            got = await cl.c.get(PODDISRUPTIONBUDGETS, "web", "default")
            st = got.get("status", {})
            return got if st.get("currentHealthy") == 2 and st.get("observedGeneration") == 1 else None

        pdb = await until(budget, what="the PDB's status")
        assert pdb["status"]["desiredHealthy"] == 2 and pdb["status"]["disruptionsAllowed"] == 0
        assert pdb["status"]["expectedPods"] == 2
        described = await kubectl_ok(cl, "describe", "pdb", "web")
        assert "Allowed disruptions:  0" in described, described
        table = (await kubectl_ok(cl, "get", "pdb", "web")).split("\n")
        assert table[0].split() == ["NAME", "MIN", "AVAILABLE", "MAX", "UNAVAILABLE", "ALLOWED", "DISRUPTIONS", "AGE"]
        assert table[1].split()[:4] == ["web", "2", "N/A", "0"]
        # --delete-emptydir-data as K3s users drain: the metrics-server add-on keeps its /tmp in an emptyDir.
        code, out = await cl.kubectl("drain", "n2", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=3s")
        assert code != 0
        assert "(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget." in out, out
        assert len(await cl.pods(selector="app=web")) == 2

        # With room for one disruption, one eviction succeeds and the next is refused until the pod is replaced.
        await kubectl_ok(cl, "uncordon", "n2")
        await kubectl_ok(
            cl, "patch", "pdb", "web", "--type=json", "-p", '[{"op":"replace","path":"/spec/minAvailable","value":1}]'
        )

        async def one_allowed() -> bool:
            st = (await cl.c.get(PODDISRUPTIONBUDGETS, "web", "default")).get("status", {})
            return st.get("disruptionsAllowed") == 1 and st.get("observedGeneration") == 2

        await until(one_allowed, what="one disruption allowed")
        kubelet_pods = await cl.pods(selector="app=web")
        first = await cl.c.request(
            "POST",
            f"/api/v1/namespaces/default/pods/{kubelet_pods[0]['metadata']['name']}/eviction",
            body={
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": kubelet_pods[0]["metadata"]["name"]},
            },
        )
        assert first["status"] == "Success"
        with pytest.raises(ApiStatusError) as refused:
            await cl.c.request(
                "POST",
                f"/api/v1/namespaces/default/pods/{kubelet_pods[1]['metadata']['name']}/eviction",
                body={
                    "apiVersion": "policy/v1",
                    "kind": "Eviction",
                    "metadata": {"name": kubelet_pods[1]["metadata"]["name"]},
                },
            )
        assert refused.value.code == 429
        assert refused.value.message == "Cannot evict pod as it would violate the pod's disruption budget."


# -- cascading deletion, delete responses, default ServiceAccounts, fresh status ------------------------------------
async def test_foreground_deletion_python_client_responses_and_default_serviceaccount(cluster: Cluster) -> None:  # noqa: F811
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    cl = cluster
    await cl.add_node("n1")
    api = k8s_config.new_client_from_config(config_file=str(cl.server.kubeconfig))
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    try:
        async with FakeKubelet(cl, delete_delay=0.5):
            # A fresh Deployment carries a status, as kube's does.
            body = {
                "metadata": {"name": "fg"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "fg"}},
                    "template": {
                        "metadata": {"labels": {"app": "fg"}},
                        "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]},
                    },
                },
            }
            created = await asyncio.to_thread(apps.create_namespaced_deployment, "default", body)
            assert created.status is not None
            read = await asyncio.to_thread(apps.read_namespaced_deployment, "fg", "default")
            assert read.status is not None
            await kubectl_ok(cl, "rollout", "status", "deploy/fg", "--timeout=30s")

            # kubectl delete --cascade=foreground returns once the pods and the ReplicaSet are gone.
            out = await kubectl_ok(cl, "delete", "deploy", "fg", "--cascade=foreground", "--timeout=30s")
            assert 'deployment.apps "fg" deleted' in out
            assert not await cl.pods(selector="app=fg", live=False)
            assert (await cl.c.list(REPLICASETS, "default"))["items"] == []

            # Immediate deletions answer with a Status; a graceful one with the object and its deletionTimestamp.
            await asyncio.to_thread(core.create_namespaced_config_map, "default", {"metadata": {"name": "cm"}})
            gone = await asyncio.to_thread(core.delete_namespaced_config_map, "cm", "default")
            # (this client version hands the DELETE response back as a plain dict)
            assert gone["kind"] == "Status" and gone["status"] == "Success"
            assert gone["details"]["name"] == "cm" and gone["details"]["kind"] == "configmaps"
            await asyncio.to_thread(
                core.create_namespaced_pod,
                "default",
                {
                    "metadata": {"name": "bound"},
                    "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
                },
            )
            pending = await asyncio.to_thread(core.delete_namespaced_pod, "bound", "default")
            assert pending.kind == "Pod" and pending.metadata.deletion_timestamp is not None

        # The default ServiceAccount exists in every namespace and comes back when deleted.
        await kubectl_ok(cl, "create", "namespace", "team")

        async def default_sa() -> bool:
            return bool(await cl.c.get(SERVICEACCOUNTS, "default", "team"))

        await until(default_sa, what="default ServiceAccount in a new namespace")
        await kubectl_ok(cl, "delete", "serviceaccount", "default", "-n", "team")
        await until(default_sa, what="default ServiceAccount recreated")
        sas = await kubectl_ok(cl, "get", "sa", "-A")
        assert {"default", "kube-system", "kube-public", "kube-node-lease", "team"} <= {
            ln.split()[0] for ln in sas.strip().split("\n")[1:]
        }
    finally:
        api.close()
