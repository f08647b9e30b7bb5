"""The Job controller: runs a Job's pods to completion (kube's pkg/controller/job, batch/v1 as of 1.32).

Owns the pods of Jobs and Job status. Pods are made from spec.template (`<job>-<5 random>`; Indexed: named
`<job>-<index>-<5 random>` with hostname `<job>-<index>`, the `batch.kubernetes.io/job-completion-index`
annotation and label and the `JOB_COMPLETION_INDEX` env var from it) and carry the
`batch.kubernetes.io/job-tracking` finalizer, so a pod is counted exactly once even if it is deleted: a finished
pod goes into `status.uncountedTerminatedPods`, loses the finalizer, then moves into `succeeded`/`failed`
(kube's finalizer-based tracking). A terminating pod that did not succeed counts as failed.

Up to `parallelism` pods run until `completions` succeed (NonIndexed), or each index in [0, completions) has
succeeded once (Indexed: `status.completedIndexes` as "0-2,4"); without completions, the first success with no
pods left running completes the Job. A failed pod is replaced after kube's back-off: 10 s doubled per
consecutive failure, at most 6 min. More than `backoffLimit` failures, or running past `activeDeadlineSeconds`,
sets FailureTarget (`BackoffLimitExceeded` / `DeadlineExceeded`), deletes the running pods, and once none is
left sets Failed; reaching the completions sets SuccessCriteriaMet and then Complete with `completionTime`.
`suspend` deletes the running pods and sets Suspended. `ttlSecondsAfterFinished` deletes a finished Job (and,
in the foreground, its pods) that long after it finished, as the ttl-after-finished controller does.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

from kwire.client import ApiClient, Informers, NotFound
from kwire.client.client import JOBS, PODS
from kwire.controllers.common import (
    BY_CONTROLLER,
    Obj,
    d,
    int_field,
    key_of,
    lst,
    meta,
    name_of,
    namespace_of,
    now_rfc3339,
    parse_time,
    pod_ready,
    set_or_omit,
    spec,
    split_key,
    status,
    terminating,
    uid_of,
    update_with_retry,
)
from kwire.controllers.queue import Controller, RetryLater
from kwire.controllers.workloads import owner_key, pod_from_template, slow_start

log = logging.getLogger(__name__)


TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
BACKOFF_BASE = 10.0
BACKOFF_MAX = 360.0


# -- pure parts ----------------------------------------------------------------------------------------------------
def backoff_delay(consecutive_failures: int) -> float:
    """kube's pod failure back-off: 0 before the first failure, then 10 s doubling, capped at 6 min."""
    if consecutive_failures <= 0:
        return 0.0
    return min(BACKOFF_BASE * 2 ** (consecutive_failures - 1), BACKOFF_MAX)


def parse_indexes(text: str) -> set[int]:
    """ "0-2,4" -> {0, 1, 2, 4} (status.completedIndexes); malformed parts are ignored."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if hi else a
        except ValueError:
            continue
        out.update(range(a, b + 1))
    return out


def format_indexes(indexes: set[int]) -> str:
    """{0, 1, 2, 4} -> "0-2,4"."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(indexes):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def pod_index(pod: Obj) -> int | None:
    value = d(meta(pod).get("annotations")).get(INDEX_KEY)
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def pod_succeeded(pod: Obj) -> bool:
    return status(pod).get("phase") == "Succeeded"


def pod_failed(pod: Obj) -> bool:
    """Failed, or being deleted without having succeeded (kube counts those as failed with finalizers)."""
    return status(pod).get("phase") == "Failed" or (terminating(pod) and not pod_succeeded(pod))


def job_condition(job: Obj, ctype: str) -> bool:
    return any(
        isinstance(c, dict) and c.get("type") == ctype and c.get("status") == "True"
        for c in lst(status(job).get("conditions"))
    )


def finished(job: Obj) -> bool:
    return job_condition(job, "Complete") or job_condition(job, "Failed")


def indexes_to_create(job: Obj, active: list[Obj], completed: set[int]) -> list[int]:
    """Indexed: the lowest indexes with neither a success nor an active pod, up to parallelism."""
    completions = int_field(spec(job).get("completions"))
    parallelism = int_field(spec(job).get("parallelism"), 1)
    running = {i for p in active if (i := pod_index(p)) is not None}
    room = max(0, parallelism - len(active))
    return [i for i in range(completions) if i not in completed and i not in running][:room]


def nonindexed_to_create(job: Obj, active: int, succeeded: int) -> int:
    """How many pods to add (kube's wantActive - active): parallelism, never more than the completions left;
    with no completions, none once any pod succeeded."""
    parallelism = int_field(spec(job).get("parallelism"), 1)
    completions = spec(job).get("completions")
    if completions is None:
        want = 0 if succeeded > 0 else parallelism
    else:
        want = min(parallelism, max(0, int_field(completions) - succeeded))
    return max(0, want - active)


@dataclass
class _Backoff:
    failures: int = 0  # consecutive failures since the last success
    last_failure: float = 0.0


class JobController(Controller):
    name = "job"
    workers = 2
    component = "job-controller"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.jobs = self.informer(JOBS, indexed=True)
        self.pods = self.informer(PODS, indexed=True)
        self.enqueue_on_change(self.jobs)
        self.jobs.on_delete(lambda o: self._backoff.pop(key_of(o), None))
        self.on_change(self.pods, self._on_pod)
        self._backoff: dict[str, _Backoff] = {}

    def _on_pod(self, pod: Obj) -> None:
        owner = owner_key(self.jobs, pod, "Job")
        if owner:
            self.enqueue(owner)
        elif TRACKING_FINALIZER in lst(meta(pod).get("finalizers")):
            self.enqueue(f"orphan:{key_of(pod)}")  # its Job is gone: only the finalizer has to go

    async def sync(self, key: str) -> float | None:
        if key.startswith("orphan:"):
            ns, name = split_key(key.removeprefix("orphan:"))
            pod = self.pods.get(ns, name)
            if pod is not None and owner_key(self.jobs, pod, "Job") is None:
                await self._drop_finalizers([pod])
            return None
        ns, name = split_key(key)
        job = self.jobs.get(ns, name)
        if job is None:
            return None
        pods = [p for p in self.pods.by_index(BY_CONTROLLER, uid_of(job))]
        if terminating(job):
            await self._drop_finalizers(pods)
            return None
        if finished(job):
            await self._drop_finalizers(pods)
            return await self._ttl(job)
        return await self._reconcile(job, pods)

    # -- the steps ---------------------------------------------------------------------------------------------
    async def _reconcile(self, job: Obj, pods: list[Obj]) -> float | None:
        key = key_of(job)
        now = time.time()
        st = status(job)
        uncounted = d(st.get("uncountedTerminatedPods"))
        uncounted_ok = {str(u) for u in lst(uncounted.get("succeeded"))}
        uncounted_failed = {str(u) for u in lst(uncounted.get("failed"))}
        tracked = {uid_of(p): p for p in pods if TRACKING_FINALIZER in lst(meta(p).get("finalizers"))}
        indexed = spec(job).get("completionMode") == "Indexed"
        completed = parse_indexes(str(st.get("completedIndexes") or ""))

        # 1. Finished pods still carrying the finalizer are recorded as uncounted first.
        new_ok = [p for p in tracked.values() if pod_succeeded(p) and uid_of(p) not in uncounted_ok]
        new_failed = [
            p
            for p in tracked.values()
            if pod_failed(p) and uid_of(p) not in uncounted_failed and uid_of(p) not in uncounted_ok
        ]
        # 2. Uncounted pods whose finalizer is gone are moved into the counts.
        done_ok = {u for u in uncounted_ok if u not in tracked}
        done_failed = {u for u in uncounted_failed if u not in tracked}
        succeeded = int_field(st.get("succeeded")) + len(done_ok)
        failed = int_field(st.get("failed")) + len(done_failed)
        bo = self._backoff.setdefault(key, _Backoff())
        if new_ok:
            bo.failures = 0
        if new_failed:
            bo.failures += len(new_failed)
            bo.last_failure = now
        if indexed:
            for p in pods:
                if uid_of(p) in done_ok and (i := pod_index(p)) is not None:
                    completed.add(i)
            for p in new_ok:
                if (i := pod_index(p)) is not None:
                    completed.add(i)

        active = [p for p in pods if not terminating(p) and status(p).get("phase") not in ("Succeeded", "Failed")]
        counted_ok = succeeded + len(uncounted_ok - done_ok) + len(new_ok)
        counted_failed = failed + len(uncounted_failed - done_failed) + len(new_failed)
        backoff_limit = int_field(spec(job).get("backoffLimit"), 6)
        started = parse_time(st.get("startTime")) or now
        deadline = spec(job).get("activeDeadlineSeconds")
        conds = [c for c in lst(st.get("conditions")) if isinstance(c, dict)]

        failure: tuple[str, str] | None = None
        if job_condition(job, "FailureTarget"):
            c = next(c for c in conds if c.get("type") == "FailureTarget")
            failure = (str(c.get("reason")), str(c.get("message")))
        elif counted_failed > backoff_limit:
            failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif isinstance(deadline, int) and now - started >= deadline:
            failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
        success = False
        if failure is None:
            if indexed:
                success = len({i for i in completed if i < int_field(spec(job).get("completions"))}) >= int_field(
                    spec(job).get("completions")
                )
            elif spec(job).get("completions") is None:
                success = counted_ok > 0 and not active
            else:
                success = counted_ok >= int_field(spec(job).get("completions"))

        later: float | None = None
        suspended = spec(job).get("suspend") is True
        if failure is not None or success or suspended:
            doomed = [p for p in active if not terminating(p)]
            await self._delete_pods(job, doomed)
        else:
            wait = bo.last_failure + backoff_delay(bo.failures) - now
            if wait > 0:
                later = wait
            else:
                await self._create_pods(job, active, counted_ok, completed)
            if isinstance(deadline, int):
                left = started + deadline - now
                later = min(later, left) if later is not None else left

        # Status: counts, then conditions in kube's order (the terminal one only once no pod is left running).
        # A terminating pod counts as gone: its deletion is confirmed by a kubelet the finalizer hides from us.
        no_pods_left = not active
        stamp = now_rfc3339()
        new_conds = [dict(c) for c in conds]

        def set_cond(ctype: str, reason: str, message: str, cstatus: str = "True") -> None:
            for c in new_conds:
                if c.get("type") == ctype:
                    if c.get("status") != cstatus:
                        c.update(status=cstatus, reason=reason, message=message, lastTransitionTime=stamp)
                    c["lastProbeTime"] = c.get("lastProbeTime") or stamp
                    return
            new_conds.append(
                {
                    "type": ctype,
                    "status": cstatus,
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": stamp,
                    "lastTransitionTime": stamp,
                }
            )

        all_counted = not new_ok and not new_failed and done_ok == uncounted_ok and done_failed == uncounted_failed
        completion_time = st.get("completionTime")
        if failure is not None:
            set_cond("FailureTarget", *failure)
            if no_pods_left and all_counted:
                set_cond("Failed", *failure)
        elif success:
            set_cond("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods")
            if no_pods_left and all_counted:
                set_cond("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
                completion_time = completion_time or stamp
        if suspended and failure is None and not success:
            set_cond("Suspended", "JobSuspended", "Job suspended")
        elif any(c.get("type") == "Suspended" for c in new_conds) and not suspended:
            set_cond("Suspended", "JobResumed", "Job resumed", cstatus="False")

        new_status: Obj = {k: v for k, v in st.items() if k not in ("active", "ready", "terminating")}
        if not suspended or st.get("startTime"):
            new_status.setdefault("startTime", st.get("startTime") or stamp)
        new_status["uncountedTerminatedPods"] = {
            k: sorted(v)
            for k, v in (
                ("succeeded", (uncounted_ok - done_ok) | {uid_of(p) for p in new_ok}),
                ("failed", (uncounted_failed - done_failed) | {uid_of(p) for p in new_failed}),
            )
            if v
        }
        live_active = [p for p in active if not terminating(p)]
        if live_active:
            new_status["active"] = len(live_active)
        new_status["ready"] = sum(1 for p in live_active if pod_ready(p))
        new_status["terminating"] = sum(1 for p in pods if terminating(p))
        for k, v in (("succeeded", succeeded), ("failed", failed)):
            if v:
                new_status[k] = v
            else:
                new_status.pop(k, None)
        if indexed:
            text = format_indexes(completed)
            if text:
                new_status["completedIndexes"] = text
        if new_conds:
            new_status["conditions"] = new_conds
        if completion_time:
            new_status["completionTime"] = completion_time

        def apply(obj: Obj) -> bool:
            if status(obj) == new_status:
                return False
            obj["status"] = new_status
            return True

        written = await update_with_retry(self.client, JOBS, job, apply, subresource_status=True)
        # 3. Only after the status records them may the pods lose the finalizer.
        if new_ok or new_failed:
            if written is None and status(job) != new_status:
                raise RetryLater(f"job {key}: status not written")
            await self._drop_finalizers(new_ok + new_failed)
        for c in new_conds:
            if c.get("type") in ("Complete", "Failed") and not job_condition(job, str(c["type"])):
                etype = "Normal" if c["type"] == "Complete" else "Warning"
                reason = "Completed" if c["type"] == "Complete" else str(c.get("reason"))
                msg = "Job completed" if c["type"] == "Complete" else str(c.get("message"))
                await self.recorder.event(job, etype, reason, msg)
        return later

    async def _create_pods(self, job: Obj, active: list[Obj], succeeded: int, completed: set[int]) -> None:
        if spec(job).get("completionMode") == "Indexed":
            todo = indexes_to_create(job, active, completed)
        else:
            todo = [-1] * nonindexed_to_create(job, len(active), succeeded)
        if not todo:
            return
        queue = list(todo)

        async def create_one() -> None:
            index = queue.pop(0)
            pod = self._pod(job, index)
            out = await self.client.create(PODS, pod, namespace_of(job))
            await self.recorder.event(job, "Normal", "SuccessfulCreate", f"Created pod: {name_of(out)}")

        _, err = await slow_start(len(todo), create_one)
        if err is not None:
            msg = getattr(err, "message", None) or str(err)
            await self.recorder.event(job, "Warning", "FailedCreate", f"Error creating: {msg}")
            raise RetryLater(f"job {key_of(job)}: {msg}")

    def _pod(self, job: Obj, index: int) -> Obj:
        pod = pod_from_template(job, owner_api_version="batch/v1", owner_kind="Job")
        m = pod["metadata"]
        m["finalizers"] = [*lst(m.get("finalizers")), TRACKING_FINALIZER]
        if index >= 0:
            m["generateName"] = f"{name_of(job)}-{index}-"
            m["annotations"] = {**d(m.get("annotations")), INDEX_KEY: str(index)}
            m["labels"] = {**d(m.get("labels")), INDEX_KEY: str(index)}
            ps = pod["spec"]
            ps.setdefault("hostname", f"{name_of(job)}-{index}")
            env = {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_KEY}']"}},
            }
            for c in lst(ps.get("containers")) + lst(ps.get("initContainers")):
                if isinstance(c, dict) and not any(
                    isinstance(e, dict) and e.get("name") == "JOB_COMPLETION_INDEX" for e in lst(c.get("env"))
                ):
                    c["env"] = [*lst(c.get("env")), copy.deepcopy(env)]
        return pod

    async def _delete_pods(self, job: Obj, pods: list[Obj]) -> None:
        for p in pods:
            try:
                await self.client.delete(PODS, name_of(p), namespace_of(p), preconditions={"uid": uid_of(p)})
            except NotFound:
                continue
            await self.recorder.event(job, "Normal", "SuccessfulDelete", f"Deleted pod: {name_of(p)}")

    async def _drop_finalizers(self, pods: list[Obj]) -> None:
        def drop(o: Obj) -> bool:
            fins = lst(meta(o).get("finalizers"))
            if TRACKING_FINALIZER not in fins:
                return False
            kept = [f for f in fins if f != TRACKING_FINALIZER]
            set_or_omit(o["metadata"], "finalizers", kept)
            return True

        for p in pods:
            if TRACKING_FINALIZER in lst(meta(p).get("finalizers")):
                await update_with_retry(self.client, PODS, p, drop)

    async def _ttl(self, job: Obj) -> float | None:
        ttl = spec(job).get("ttlSecondsAfterFinished")
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            return None
        done = next(
            (
                parse_time(c.get("lastTransitionTime"))
                for c in lst(status(job).get("conditions"))
                if isinstance(c, dict) and c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            ),
            None,
        )
        left = (done or time.time()) + ttl - time.time()
        if left > 0:
            return left
        try:
            await self.client.delete(
                JOBS,
                name_of(job),
                namespace_of(job),
                propagation_policy="Foreground",
                preconditions={"uid": uid_of(job)},
            )
        except NotFound:
            pass
        return None
