"""The CronJob controller: creates a Job from spec.jobTemplate at each time the schedule names (kube's
pkg/controller/cronjob, the v2 controller).

Owns the Jobs of CronJobs (named `<cronjob>-<scheduled time in minutes since the epoch>`, labels and annotations
from the jobTemplate plus `batch.kubernetes.io/cronjob-scheduled-timestamp`, a controller ownerReference) and
CronJob status (`active`, `lastScheduleTime`, `lastSuccessfulTime`). Schedules are standard 5-field cron or
@descriptors, parsed by croniter, in `spec.timeZone` (zoneinfo) or UTC. At each sync: the most recent schedule
time since the last one (or creation) is the one to run, unless `startingDeadlineSeconds` has passed since it
(`Missed starting window`) or more than 100 were missed (`TooManyMissedTimes`, as kube warns);
concurrencyPolicy Forbid skips it while a Job is active, Replace deletes the active Jobs first; `suspend` stops
new runs. Finished Jobs beyond successfulJobsHistoryLimit / failedJobsHistoryLimit are deleted, oldest first.
The key comes back at the next schedule time. The clock is injectable so the logic is testable without waiting.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import time
import zoneinfo
from collections.abc import Callable

from croniter import croniter

from kwire.base.timefmt import rfc3339
from kwire.client import ApiClient, Conflict, Informers, NotFound
from kwire.client.client import CRONJOBS, JOBS
from kwire.controllers.common import (
    BY_CONTROLLER,
    Obj,
    d,
    int_field,
    lst,
    meta,
    name_of,
    namespace_of,
    owner_reference,
    parse_time,
    set_or_omit,
    spec,
    split_key,
    status,
    terminating,
    uid_of,
    update_with_retry,
)
from kwire.controllers.job import job_condition
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)


SCHEDULED_TIMESTAMP = "batch.kubernetes.io/cronjob-scheduled-timestamp"
MAX_MISSED = 100


def zone_of(cj: Obj) -> dt.tzinfo:
    tz = spec(cj).get("timeZone")
    if isinstance(tz, str) and tz:
        try:
            return zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return dt.UTC


def schedule_times(schedule: str, tz: dt.tzinfo, *, after: float, until: float) -> tuple[float | None, int]:
    """The most recent schedule time t with after < t <= until, and how many there are (counting stops past
    MAX_MISSED + 1). (None, 0) when there is none."""
    it = croniter(schedule, dt.datetime.fromtimestamp(after, tz))
    last: float | None = None
    count = 0
    while True:
        t = float(it.get_next(float))
        if t > until:
            return last, count
        last, count = t, count + 1
        if count > MAX_MISSED:
            # Too many: jump to the most recent one directly, as kube does after warning.
            back = croniter(schedule, dt.datetime.fromtimestamp(until, tz))
            prev = float(back.get_prev(float))
            return (prev if prev > after else last), count


def next_schedule(schedule: str, tz: dt.tzinfo, *, after: float) -> float:
    return float(croniter(schedule, dt.datetime.fromtimestamp(after, tz)).get_next(float))


def job_name(cj: Obj, scheduled: float) -> str:
    """getJobName: `<cronjob>-<scheduled time in minutes>`."""
    return f"{name_of(cj)}-{int(scheduled) // 60}"


def job_from_template(cj: Obj, scheduled: float) -> Obj:
    """getJobFromTemplate2."""
    jt = d(spec(cj).get("jobTemplate"))
    jmeta = d(jt.get("metadata"))
    tz = zone_of(cj)
    stamp = dt.datetime.fromtimestamp(scheduled, tz).isoformat().replace("+00:00", "Z")
    annotations = {str(k): str(v) for k, v in d(jmeta.get("annotations")).items()}
    annotations[SCHEDULED_TIMESTAMP] = stamp
    m: Obj = {
        "name": job_name(cj, scheduled),
        "namespace": namespace_of(cj),
        "annotations": annotations,
        "ownerReferences": [owner_reference(cj, api_version="batch/v1", kind="CronJob")],
    }
    if d(jmeta.get("labels")):
        m["labels"] = dict(jmeta["labels"])
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": m, "spec": copy.deepcopy(d(jt.get("spec")))}


def job_finished_kind(job: Obj) -> str | None:
    if job_condition(job, "Complete"):
        return "Complete"
    if job_condition(job, "Failed"):
        return "Failed"
    return None


class CronJobController(Controller):
    name = "cronjob"
    component = "cronjob-controller"

    def __init__(self, client: ApiClient, informers: Informers, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(client, informers)
        self.clock = clock
        self.cronjobs = self.informer(CRONJOBS, indexed=True)
        self.jobs = self.informer(JOBS, indexed=True)
        self.enqueue_on_change(self.cronjobs)
        self.on_change(self.jobs, self._on_job)

    def _on_job(self, job: Obj) -> None:
        for ref in lst(meta(job).get("ownerReferences")):
            if isinstance(ref, dict) and ref.get("controller") and ref.get("kind") == "CronJob":
                self.enqueue(f"{namespace_of(job)}/{ref.get('name')}")

    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        cj = self.cronjobs.get(ns, name)
        if cj is None:
            return None
        jobs = self.jobs.by_index(BY_CONTROLLER, uid_of(cj))
        now = self.clock()
        active_refs, last_success = await self._track(cj, jobs)
        if terminating(cj):
            return None
        schedule = str(spec(cj).get("schedule") or "")
        tz = zone_of(cj)
        try:
            nxt = next_schedule(schedule, tz, after=now)
        except (ValueError, KeyError) as exc:
            await self.recorder.event(cj, "Warning", "UnparseableSchedule", f"unparseable schedule: {schedule}: {exc}")
            return None
        last_schedule = parse_time(status(cj).get("lastScheduleTime"))
        scheduled_now: float | None = None
        if spec(cj).get("suspend") is not True:
            earliest = last_schedule or parse_time(meta(cj).get("creationTimestamp")) or now
            deadline = spec(cj).get("startingDeadlineSeconds")
            if isinstance(deadline, int) and not isinstance(deadline, bool):
                earliest = max(earliest, now - deadline)
            scheduled, missed = schedule_times(schedule, tz, after=earliest, until=now)
            if missed > MAX_MISSED:
                await self.recorder.event(
                    cj,
                    "Warning",
                    "TooManyMissedTimes",
                    "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                )
            if scheduled is not None:
                if isinstance(deadline, int) and scheduled + deadline < now:
                    await self.recorder.event(
                        cj, "Warning", "MissSchedule", f"Missed scheduled time to start a job: {rfc3339(scheduled)}"
                    )
                else:
                    active_refs, scheduled_now = await self._run(cj, scheduled, active_refs, jobs)
        await self._write_status(cj, active_refs, scheduled_now, last_success)
        await self._cleanup(cj, jobs)
        return max(0.1, nxt - self.clock() + 0.1)

    async def _track(self, cj: Obj, jobs: list[Obj]) -> tuple[list[Obj], float | None]:
        """status.active from the Jobs that exist and have not finished; lastSuccessfulTime from completions."""
        by_uid = {uid_of(j): j for j in jobs}
        active: list[Obj] = []
        last_success = parse_time(status(cj).get("lastSuccessfulTime"))
        for ref in lst(status(cj).get("active")):
            job = by_uid.get(str(d(ref).get("uid")))
            if job is not None and job_finished_kind(job) is None:
                active.append(ref)
        known = {str(d(r).get("uid")) for r in active}
        for job in jobs:
            kind = job_finished_kind(job)
            if kind is None:
                if uid_of(job) not in known and not terminating(job):
                    active.append(_ref(job))
                continue
            if any(str(d(r).get("uid")) == uid_of(job) for r in lst(status(cj).get("active"))):
                await self.recorder.event(
                    cj, "Normal", "SawCompletedJob", f"Saw completed job: {name_of(job)}, status: {kind}"
                )
            if kind == "Complete":
                done = parse_time(status(job).get("completionTime"))
                if done is not None and (last_success is None or done > last_success):
                    last_success = done
        return active, last_success

    async def _run(
        self, cj: Obj, scheduled: float, active: list[Obj], jobs: list[Obj]
    ) -> tuple[list[Obj], float | None]:
        policy = spec(cj).get("concurrencyPolicy", "Allow")
        if policy == "Forbid" and active:
            return active, None  # kube waits for the next schedule time (the Job already active keeps running)
        if policy == "Replace":
            for ref in active:
                try:
                    await self.client.delete(
                        JOBS, str(ref.get("name")), namespace_of(cj), propagation_policy="Background"
                    )
                except NotFound:
                    pass
                await self.recorder.event(cj, "Normal", "SuccessfulDelete", f"Deleted job {ref.get('name')}")
            active = []
        want = job_from_template(cj, scheduled)
        try:
            job = await self.client.create(JOBS, want, namespace_of(cj))
        except Conflict:
            # Created before (a restart, or a lagging cache): it is this run's Job if we own it.
            try:
                job = await self.client.get(JOBS, name_of(want), namespace_of(cj))
            except NotFound:
                raise
            ref = next((r for r in lst(meta(job).get("ownerReferences")) if isinstance(r, dict)), {})
            if ref.get("uid") != uid_of(cj):
                return active, None
            return active, scheduled
        await self.recorder.event(cj, "Normal", "SuccessfulCreate", f"Created job {name_of(job)}")
        return [*active, _ref(job)], scheduled

    async def _write_status(
        self, cj: Obj, active: list[Obj], scheduled: float | None, last_success: float | None
    ) -> None:
        def apply(obj: Obj) -> bool:
            st = dict(status(obj))
            set_or_omit(st, "active", active)
            if scheduled is not None:
                st["lastScheduleTime"] = rfc3339(scheduled)
            if last_success is not None:
                st["lastSuccessfulTime"] = rfc3339(last_success)
            if st == status(obj):
                return False
            obj["status"] = st
            return True

        await update_with_retry(self.client, CRONJOBS, cj, apply, subresource_status=True)

    async def _cleanup(self, cj: Obj, jobs: list[Obj]) -> None:
        """cleanupFinishedJobs: keep the newest successfulJobsHistoryLimit / failedJobsHistoryLimit."""
        for kind, field in (("Complete", "successfulJobsHistoryLimit"), ("Failed", "failedJobsHistoryLimit")):
            limit = spec(cj).get(field)
            if not isinstance(limit, int):
                continue
            done = [j for j in jobs if job_finished_kind(j) == kind and not terminating(j)]
            done.sort(
                key=lambda j: (
                    parse_time(status(j).get("startTime")) or parse_time(meta(j).get("creationTimestamp")) or 0
                )
            )
            for job in done[: max(0, len(done) - max(0, int_field(limit)))]:
                try:
                    await self.client.delete(JOBS, name_of(job), namespace_of(job), propagation_policy="Background")
                except NotFound:
                    continue
                await self.recorder.event(cj, "Normal", "SuccessfulDelete", f"Deleted job {name_of(job)}")


def _ref(job: Obj) -> Obj:
    return {
        "kind": "Job",
        "namespace": namespace_of(job),
        "name": name_of(job),
        "uid": uid_of(job),
        "apiVersion": "batch/v1",
        "resourceVersion": str(meta(job).get("resourceVersion") or ""),
    }
