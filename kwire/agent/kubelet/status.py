"""The pod status the kubelet reports, as pure functions: container states, the phase and the conditions.

Container states mirror kubelet over containerd: `waiting` (ContainerCreating, CreateContainerConfigError,
RunContainerError for a program that cannot start, CrashLoopBackOff while a restart waits out its back-off with
kubelet's message `back-off 10s restarting failed container=x pod=name_ns(uid)`), `running` (startedAt) or
`terminated` (exitCode, reason Completed/Error/StartError, startedAt/finishedAt); the run before the current one is
`lastState.terminated`. The phase is kubelet's getPhase (kubelet_pods.go), and the conditions are kubelet's
(PodReadyToStartContainers, Initialized, Ready, ContainersReady; PodScheduled comes from the scheduler).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kwire.base.timefmt import rfc3339

Obj = dict[str, Any]


def pod_ref(pod: Obj) -> str:
    """kubelet's format.Pod: `name_namespace(uid)`."""
    m = pod.get("metadata") or {}
    return f"{m.get('name', '')}_{m.get('namespace', '')}({m.get('uid', '')})"


def _terminated(t: Obj, cid: str) -> Obj:
    out: Obj = {"exitCode": int(t.get("exitCode") or 0), "reason": str(t.get("reason") or "Error")}
    if t.get("message"):
        out["message"] = str(t["message"])
    if t.get("startedAt"):
        out["startedAt"] = rfc3339(float(t["startedAt"]))
    if t.get("finishedAt"):
        out["finishedAt"] = rfc3339(float(t["finishedAt"]))
    out["containerID"] = cid
    return out


@dataclass
class ContainerView:
    """What the kubelet knows of one container when it computes the status."""

    name: str
    image: str
    cid: str
    # "responder" | "process" | "error" (an image kwire cannot run) | "initializing" (waits for init containers)
    # | "completed" (an init container kwire has no program for: done at once)
    kind: str
    runtime: Obj | None = None  # the runtime's status of the process, if it has one
    config_error: str = ""  # CreateContainerConfigError's message
    image_error: str = ""
    ready_probe: bool | None = None  # the readiness probe's result; None: no probe
    extra_restarts: int = 0
    sandbox_started: str = ""


def container_status(v: ContainerView, pod: Obj, *, now: float | None = None) -> Obj:
    """One entry of status.containerStatuses (or initContainerStatuses)."""
    now = time.time() if now is None else now
    rc = v.runtime or {}
    restarts = v.extra_restarts + int(rc.get("restartCount") or 0)
    last: Obj = {}
    if v.kind == "error":
        state: Obj = {"waiting": {"reason": "ErrImagePull", "message": v.image_error}}
    elif v.kind == "initializing":
        state = {"waiting": {"reason": "PodInitializing"}}
    elif v.kind == "completed":
        t = {"exitCode": 0, "reason": "Completed", "startedAt": v.sandbox_started, "finishedAt": v.sandbox_started}
        state = {"terminated": {**t, "containerID": v.cid}}
    elif v.config_error:
        state = {"waiting": {"reason": "CreateContainerConfigError", "message": v.config_error}}
    elif v.kind == "responder":
        state = {"running": {"startedAt": v.sandbox_started}}
    elif not rc or (not rc.get("running") and rc.get("exitCode") is None):
        state = {"waiting": {"reason": "ContainerCreating"}}
    elif rc.get("running"):
        state = {"running": {"startedAt": rfc3339(float(rc.get("startedAt") or now))}}
        if rc.get("lastTermination"):
            last = {"terminated": _terminated(rc["lastTermination"], v.cid)}
    elif rc.get("done"):
        state = {"terminated": _terminated(rc, v.cid)}
        if rc.get("lastTermination"):
            last = {"terminated": _terminated(rc["lastTermination"], v.cid)}
    elif float(rc.get("backoffUntil") or 0) > now:
        secs = int(float(rc.get("backoffSeconds") or 10))
        delay = f"{secs // 60}m{secs % 60}s" if secs >= 60 else f"{secs}s"
        msg = f"back-off {delay} restarting failed container={v.name} pod={pod_ref(pod)}"
        state = {"waiting": {"reason": "CrashLoopBackOff", "message": msg}}
        last = {"terminated": _terminated(rc, v.cid)}
    elif rc.get("reason") == "StartError":
        state = {"waiting": {"reason": "RunContainerError", "message": str(rc.get("message") or "")}}
        last = {"terminated": _terminated(rc, v.cid)}
    else:
        state = {"terminated": _terminated(rc, v.cid)}
    running = "running" in state
    ready = running and (v.ready_probe if v.ready_probe is not None else True)
    out: Obj = {
        "name": v.name,
        "image": v.image,
        "imageID": "",
        "restartCount": restarts,
        "ready": ready,
        "started": running,
        "state": state,
        "lastState": last,
    }
    if "waiting" not in state or last:
        out["containerID"] = v.cid
    return out


def is_sidecar(c: Obj) -> bool:
    """A restartable init container (sidecar): `restartPolicy: Always` on an init container."""
    return c.get("restartPolicy") == "Always"


def get_phase(pod: Obj, init_statuses: list[Obj], statuses: list[Obj]) -> str:
    """kubelet's getPhase for a pod that is not being terminated."""
    sp = pod.get("spec") or {}
    policy = sp.get("restartPolicy") or "Always"
    by_name = {s["name"]: s for s in init_statuses}
    pending_init = failed_init = 0
    for c in sp.get("initContainers") or []:
        if is_sidecar(c):
            continue
        s = by_name.get(c.get("name"))
        st = (s or {}).get("state") or {}
        if s is None or "running" in st:
            pending_init += 1
        elif "terminated" in st:
            failed_init += 1 if st["terminated"].get("exitCode") else 0
        elif "waiting" in st and ((s.get("lastState") or {}).get("terminated")):
            failed_init += 1 if s["lastState"]["terminated"].get("exitCode") else 0
        else:
            pending_init += 1
    by_name = {s["name"]: s for s in statuses}
    unknown = running = waiting = stopped = succeeded = 0
    for c in sp.get("containers") or []:
        s = by_name.get(c.get("name"))
        if s is None:
            unknown += 1
            continue
        st = s.get("state") or {}
        if "running" in st:
            running += 1
        elif "terminated" in st:
            stopped += 1
            succeeded += 1 if st["terminated"].get("exitCode") == 0 else 0
        elif "waiting" in st:
            if (s.get("lastState") or {}).get("terminated"):
                stopped += 1
            else:
                waiting += 1
        else:
            unknown += 1
    if failed_init > 0 and policy == "Never":
        return "Failed"
    any_started = any("running" in (s.get("state") or {}) or "terminated" in (s.get("state") or {}) for s in statuses)
    if (pending_init > 0 and not any_started) or waiting > 0:
        return "Pending"
    if running > 0 and unknown == 0:
        return "Running"
    if running == 0 and stopped > 0 and unknown == 0:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


@dataclass
class PodView:
    pod: Obj
    host_ip: str
    pod_ip: str
    started_at: str
    init: list[ContainerView] = field(default_factory=list)
    containers: list[ContainerView] = field(default_factory=list)
    ephemeral: list[ContainerView] = field(default_factory=list)


def pod_status(v: PodView, *, now: float | None = None) -> Obj:
    """The whole status the kubelet patches (without lastTransitionTime carried over: see `keep_transitions`)."""
    init = [container_status(c, v.pod, now=now) for c in v.init]
    containers = [container_status(c, v.pod, now=now) for c in v.containers]
    phase = get_phase(v.pod, init, containers)
    init_specs = {str(c.get("name")): c for c in (v.pod.get("spec") or {}).get("initContainers") or []}
    initialized = all(
        ("terminated" in s["state"] and s["state"]["terminated"].get("exitCode") == 0)
        or (is_sidecar(init_specs.get(s["name"], {})) and s["started"])
        for s in init
    ) and len(init) == len(init_specs)
    all_ready = bool(containers) and all(s["ready"] for s in containers) and phase == "Running"
    stamp = rfc3339(time.time() if now is None else now)

    def cond(typ: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        c: Obj = {"type": typ, "status": "True" if ok else "False", "lastProbeTime": None, "lastTransitionTime": stamp}
        if not ok and reason:
            c["reason"] = reason
            if message:
                c["message"] = message
        return c

    if phase in ("Succeeded", "Failed"):
        ready_reason = "PodCompleted"
        not_ready: list[str] = []
    else:
        ready_reason = "ContainersNotReady"
        not_ready = [s["name"] for s in containers if not s["ready"]]
    msg = f"containers with unready status: [{' '.join(not_ready)}]" if not_ready else ""
    pending_init = [s["name"] for s in init if not ("terminated" in s["state"] or s["started"])]
    conditions = [
        cond("PodReadyToStartContainers", True),
        cond(
            "Initialized",
            initialized or phase == "Succeeded",
            "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(pending_init)}]" if pending_init else "",
        ),
        cond("Ready", all_ready, ready_reason, msg),
        cond("ContainersReady", all_ready, ready_reason, msg),
        cond("PodScheduled", True),
    ]
    out: Obj = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": v.host_ip,
        "hostIPs": [{"ip": v.host_ip}],
        "podIP": v.pod_ip,
        "podIPs": [{"ip": v.pod_ip}],
        "startTime": v.started_at,
        "qosClass": "BestEffort",
        "containerStatuses": containers,
    }
    if init:
        out["initContainerStatuses"] = init
    if v.ephemeral:
        # ephemeral containers have no readiness: kubelet reports them not ready
        out["ephemeralContainerStatuses"] = [
            {**container_status(c, v.pod, now=now), "ready": False} for c in v.ephemeral
        ]
    return out


def summary(status: Obj, types: frozenset[str]) -> tuple[Any, ...]:
    """What the kubelet owns in a pod status, without the conditions' timestamps (to post only changes)."""
    conds = tuple(
        sorted(
            (str(c.get("type")), str(c.get("status")), str(c.get("reason") or ""))
            for c in status.get("conditions") or []
            if c.get("type") in types
        )
    )

    def cs(items: list[Obj]) -> tuple[Any, ...]:
        return tuple(
            (c.get("name"), c.get("ready"), c.get("restartCount"), repr(c.get("state")), repr(c.get("lastState")))
            for c in items
        )

    return (
        status.get("phase"),
        status.get("podIP"),
        status.get("hostIP"),
        conds,
        cs(status.get("containerStatuses") or []),
        cs(status.get("initContainerStatuses") or []),
        cs(status.get("ephemeralContainerStatuses") or []),
    )


def keep_transitions(new: Obj, old: Obj) -> None:
    """A condition whose status did not change keeps its lastTransitionTime."""
    prev = {c.get("type"): c for c in old.get("conditions") or []}
    for c in new["conditions"]:
        p = prev.get(c["type"])
        if p and p.get("status") == c["status"] and p.get("lastTransitionTime"):
            c["lastTransitionTime"] = p["lastTransitionTime"]
