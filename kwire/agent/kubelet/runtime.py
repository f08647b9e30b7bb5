"""The node's pod runtime: a long-lived process that runs what is inside pods, separate from the agent.

It outlives agent restarts (as containerd outlives the kubelet), so restarting `kwire agent` never closes a
pod's sockets or kills its processes. The agent drives it over a unix socket with a tiny JSON API:

    PUT    /pods/{uid}   {"pod": {...identity...}, "ports": [[80, "TCP"]], "processes": [...], "restartPolicy": ...}
    DELETE /pods/{uid}[?grace=SECONDS]
    GET    /pods         {uid: {"ports": [...], "containers": {name: {"running", "exitCode", "restartCount", "pid",
                              "reason", "startedAt", "finishedAt", "lastTermination", "backoffUntil", ...}}}}
    POST   /pods/{uid}/stdin/{container}[?close=1]   input for a container started with stdin (attach)
    POST   /pods/{uid}/kill/{container}   SIGKILL the container's run (a failed postStart hook); its policy decides

Processes run through `ip netns exec <pod netns>`, which also gives them the pod's /etc/resolv.conf and
/etc/hosts (bind-mounted from /etc/netns/<name>/, the iproute2 convention), and, when the pod has one, `nsenter
--uts=<file>` into the pod's UTS namespace (its hostname), then in a PID namespace of their own (`unshare --pid
--fork`; the pod's pause's with shareProcessNamespace; the node's with hostPID) through contain.py, which confines
them as runc would (mounts, masks, identity, capabilities; see there). A spec without a `stage` runs its
processes unconfined (the runtime's own tests). A container whose process exits is restarted per
restartPolicy with kubelet's back-off (the first restart at once, then 10 s doubling to 5 min; reset after 10 min
of running). A program that cannot be started is a start error (exit code 128, reason StartError, containerd's
message), as containerd reports it. Each run's end is kept as the next run's `lastTermination`, and where each run's
output starts in the log file, for `kubectl logs --previous`.

Container processes run in sessions of their own, so they would outlive a runtime that is killed; the runtime
keeps their PIDs (with their start times, against PID reuse) in `containers.json`, and a new runtime first ends
what a previous one left behind. The agent, finding the runtime gone, starts a new one and hands it every pod
again: as when a pod sandbox dies under kubelet, the containers start afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kwire.agent.kubelet import crilog
from kwire.agent.kubelet.responder import PodIdentity, Responders
from kwire.base import http11, process, pty
from kwire.base.files import atomic_write

log = logging.getLogger(__name__)

IP = shutil.which("ip") or "/usr/sbin/ip"
BACKOFF_START = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET = 600.0
ORPHAN_GRACE = 2.0
SETSID = shutil.which("setsid") or "/usr/bin/setsid"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
TINI = shutil.which("tini") or "/usr/bin/tini"
CONTAIN_SCRIPT = str(Path(__file__).with_name("contain.py"))
MAX_GRACE = 3600.0
CONTAINERD_START = (
    "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: "
    "unable to start container process: error during container init"
)


class StartError(Exception):
    """The container's program cannot be started (containerd's StartError)."""


def start_problem(argv: list[str], path: str) -> str:
    """Why `argv` cannot be started, in containerd's words ("" if it can): what kubelet shows as the message of
    RunContainerError and of the terminated state's StartError."""
    if not argv:
        return f"{CONTAINERD_START}: no command specified: unknown"
    prog = argv[0]
    if "/" in prog:
        if not os.path.exists(prog):
            return f'{CONTAINERD_START}: exec: "{prog}": stat {prog}: no such file or directory: unknown'
        if not (os.path.isfile(prog) and os.access(prog, os.X_OK)):
            return f'{CONTAINERD_START}: exec: "{prog}": permission denied: unknown'
        return ""
    if shutil.which(prog, path=path) is None:
        return f'{CONTAINERD_START}: exec: "{prog}": executable file not found in $PATH: unknown'
    return ""


async def _copy_pty(master: int, log_path: Path) -> None:
    """A terminal's output into the container's log (CRI entries on stdout), until the terminal closes."""
    with open(log_path, "ab", buffering=0) as out:
        w = crilog.LineWriter(out, "stdout")
        try:
            async for chunk in pty.read_master(master):
                w.write(chunk)
        finally:
            w.close()


async def _copy_pipes(stdout: asyncio.StreamReader | None, stderr: asyncio.StreamReader | None, log_path: Path) -> None:
    """The process's stdout and stderr into the container's log as CRI entries, until both end."""
    with open(log_path, "ab", buffering=0) as out:

        async def copy(reader: asyncio.StreamReader | None, stream: str) -> None:
            if reader is None:
                return
            w = crilog.LineWriter(out, stream)
            try:
                while chunk := await reader.read(65536):
                    w.write(chunk)
            finally:
                w.close()

        await asyncio.gather(copy(stdout, "stdout"), copy(stderr, "stderr"))


def _wait_ready(sock: socket.socket) -> int:
    """Until contain.py says it execs the program (a byte) or every writer is gone (it failed before); the
    terminal's master it sent along, or -1."""
    try:
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    except OSError:
        return -1
    return fds[0] if fds else -1


async def _copy_console(master: int, log_path: Path, pipes: asyncio.Task[None] | None) -> None:
    """A contained terminal container's output: its terminal, and the pipes its wrappers write errors to."""
    await asyncio.gather(_copy_pty(master, log_path), *([pipes] if pipes is not None else []))


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot): a PID plus this names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def reap_orphans(state_dir: Path) -> int:
    """End the container processes a previous runtime recorded and left running; how many were found."""
    path = state_dir / "containers.json"
    try:
        recorded = orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return 0
    alive = []
    for pid_s, started in recorded.items() if isinstance(recorded, dict) else []:
        with contextlib.suppress(ValueError):
            pid = int(pid_s)
            if started and _start_time(pid) == started:
                alive.append(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + ORPHAN_GRACE
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(_start_time(p) for p in alive):
            time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if alive:
        log.warning("runtime: ended %d container process(es) left by a previous runtime", len(alive))
    return len(alive)


def _inner_pid(pid: int) -> int:
    """The first process below `pid` in another PID namespace than the runtime's: the container's init, which
    `unshare --pid --fork` started (0 if there is none: it failed to start)."""
    try:
        ours = os.readlink("/proc/self/ns/pid")
    except OSError:
        return 0
    todo, seen = [pid], 0
    while todo and seen < 16:
        p = todo.pop(0)
        seen += 1
        try:
            if os.readlink(f"/proc/{p}/ns/pid") != ours:
                return p
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(x) for x in children]
    return 0


@dataclass
class Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    netns: str
    log_path: Path
    restart_policy: str
    proc: asyncio.subprocess.Process | None = None
    restart_count: int = 0
    log_offset: int = 0  # where this run's output starts in log_path (the file keeps earlier runs' output too)
    stdin: bool = False  # the container spec's stdin: its input stays open for `kubectl attach`
    tty: bool = False  # the container spec's tty: it runs on a pseudo-terminal whose output goes to log_path
    input_fd: int = -1  # the pty master (tty) or the write end of the stdin pipe, while running
    pump: asyncio.Task[None] | None = None  # tty: copies the pty's output into log_path
    uts: str = ""  # the pod's UTS namespace file ("" = the runtime's own, for hostNetwork pods)
    mounts: list[list[Any]] = field(default_factory=list)  # [source, mountPath, readOnly]: see mounts.py
    stage: str = ""  # a private directory contain.py builds the container's view in ("": run unconfined)
    masks: list[str] = field(default_factory=list)  # paths the container must not see (contain.py)
    security: dict[str, Any] = field(default_factory=dict)  # uid, gid, groups, caps, ... (security.py)
    pidns: bool = False  # a PID namespace of its own (not hostPID)
    init_pid: int = 0  # the container's own first process (inside its namespaces), for exec to enter
    pod_pidns: int = 0  # shareProcessNamespace: a process in the pod's PID namespace (the pause's init)
    exit_code: int | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    reason: str = ""  # how the last run ended: Completed, Error, StartError
    message: str = ""
    last: dict[str, Any] | None = None  # the run before the current one, as it ended
    prev_log_offset: int = -1  # where the previous run's output starts in log_path (-1: no previous run)
    backoff: float = 0.0  # the next restart's delay (kubelet: none for the first, then 10 s doubling)
    backoff_until: float = 0.0  # while > now, the container waits in CrashLoopBackOff
    done: bool = False  # ended for good (restartPolicy Never, or OnFailure after success)
    task: asyncio.Task[None] | None = None
    stopping: bool = False

    def termination(self) -> dict[str, Any]:
        return {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "message": self.message,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }

    def status(self) -> dict[str, Any]:
        running = self.proc is not None and self.proc.returncode is None and self.finished_at == 0.0
        return {
            "running": running,
            "exitCode": self.exit_code,
            "reason": self.reason,
            "message": self.message,
            "restartCount": self.restart_count,
            # the container's init once it is known (exec enters its namespaces): not `unshare --fork`'s parent
            "pid": (self.init_pid or None) if running and self.proc else None,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "lastTermination": self.last,
            "backoffUntil": self.backoff_until,
            "backoffSeconds": self.backoff,
            "done": self.done,
            "logOffset": self.log_offset,
            "prevLogOffset": self.prev_log_offset,
            "tty": self.tty,
            "stdin": self.input_fd >= 0,
        }


@dataclass
class PodRecord:
    spec: dict[str, Any]
    containers: dict[str, Container] = field(default_factory=dict)
    # shareProcessNamespace: the pod's PID namespace, kept by a pause process (tini as its PID 1, which reaps)
    pause: asyncio.subprocess.Process | None = None
    pause_init: int = 0  # the pause's PID 1, as the node sees it: containers join its PID namespace


class Runtime:
    def __init__(self, state_dir: Path, *, responders: Responders | None = None) -> None:
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.responders = responders or Responders()
        self.pods: dict[str, PodRecord] = {}

    def _record_pids(self) -> None:
        """containers.json: the running container processes, for a successor runtime to end (see the docstring)."""
        pids = {}
        for rec in self.pods.values():
            for c in rec.containers.values():
                if c.proc is not None and c.proc.returncode is None and (started := _start_time(c.proc.pid)):
                    pids[str(c.proc.pid)] = started
            if rec.pause is not None and rec.pause.returncode is None and (started := _start_time(rec.pause.pid)):
                pids[str(rec.pause.pid)] = started
        atomic_write(self.state_dir / "containers.json", orjson.dumps(pids))

    def _container(self, pod: dict[str, Any], proc: dict[str, Any], restart_policy: str) -> Container:
        return Container(
            name=proc["name"],
            argv=list(proc["argv"]),
            env={str(k): str(v) for k, v in (proc.get("env") or {}).items()},
            netns=pod["netns"],
            uts=str(pod.get("uts") or ""),
            mounts=[list(m) for m in proc.get("mounts") or []],
            stage=str(pod.get("stage") or ""),
            masks=[str(m) for m in pod.get("masks") or []],
            security=dict(proc.get("security") or {}),
            pidns=bool(pod.get("stage")) and not pod.get("hostPID"),
            log_path=self.logs / f"{pod['namespace']}_{pod['name']}_{proc['name']}.log",
            restart_policy=str(proc.get("restartPolicy") or restart_policy),
            stdin=bool(proc.get("stdin")),
            tty=bool(proc.get("tty")),
        )

    async def ensure_pod(self, uid: str, spec: dict[str, Any]) -> None:
        """Make the pod run `spec`. When only its processes changed (a container whose configuration became
        available, an ephemeral container), only those containers are started or stopped: the others go on."""
        rec = self.pods.get(uid)
        if rec is not None and rec.spec == spec:
            return

        def frame(s: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in s.items() if k != "processes"}

        if rec is not None and frame(rec.spec) == frame(spec):
            old = {p["name"]: p for p in rec.spec.get("processes", [])}
            new = {p["name"]: p for p in spec.get("processes", [])}
            for name, proc in old.items():
                if new.get(name) != proc and name in rec.containers:
                    await self._stop_containers([rec.containers.pop(name)], grace=float(spec.get("grace", 5.0)))
            rec.spec = spec
            for name, proc in new.items():
                if old.get(name) != proc:
                    c = self._container(spec["pod"], proc, spec.get("restartPolicy", "Always"))
                    c.pod_pidns = rec.pause_init
                    target = rec.containers.get(str(proc.get("target") or ""))
                    if target is not None and target.init_pid and target.pidns:
                        c.pod_pidns = target.init_pid  # an ephemeral container joins its target's PID namespace
                    rec.containers[name] = c
                    c.task = asyncio.create_task(self._supervise(c))
            return
        if rec is not None:
            await self.remove_pod(uid)
        pod = spec["pod"]
        ident = PodIdentity(pod["name"], pod["namespace"], pod["node"], pod["podIP"], pod["netns"])
        await self.responders.ensure(uid, ident, [(int(p), str(proto)) for p, proto in spec.get("ports", [])])
        rec = PodRecord(spec)
        self.pods[uid] = rec
        if pod.get("sharePid") and pod.get("stage") and not pod.get("hostPID"):
            await self._start_pause(rec)
        for proc in spec.get("processes", []):
            c = self._container(pod, proc, spec.get("restartPolicy", "Always"))
            c.pod_pidns = rec.pause_init
            rec.containers[c.name] = c
            c.task = asyncio.create_task(self._supervise(c))

    async def _start(self, c: Container) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), **c.env}
        problem = start_problem(c.argv, env.get("PATH", ""))
        if problem:
            raise StartError(problem)
        # A hostNetwork pod has no namespace of its own: its processes run in the runtime's (the node's).
        prefix = [IP, "netns", "exec", c.netns] if c.netns else []
        if c.uts:
            prefix += [NSENTER, f"--uts={c.uts}", "--"]
        ready_r: socket.socket | None = None
        ready_w: socket.socket | None = None
        if c.stage:
            # The container's confinement (contain.py): its mounts, PID namespace, identity and capabilities. A
            # hostNetwork pod has no `ip netns exec` to give it a mount namespace: one of its own, first.
            if not c.netns:
                prefix += [UNSHARE, "--mount", "--propagation", "slave", "--"]
            if c.pidns and c.pod_pidns:
                prefix += [NSENTER, f"--pid=/proc/{c.pod_pidns}/ns/pid", "--"]  # forks into the pod's namespace
            elif c.pidns:
                prefix += [UNSHARE, "--pid", "--fork", "--"]
            # contain.py writes to `readyFd` as it execs the program, so the run counts as started (and a postStart
            # hook runs) only once the container sees its volumes
            Path(c.stage).mkdir(parents=True, exist_ok=True, mode=0o700)
            ready_r, ready_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)  # a byte, and a terminal
            ready_r.set_inheritable(False)
            spec = {
                **c.security,
                "stage": c.stage,
                "mounts": c.mounts,
                "masks": c.masks,
                "pidns": c.pidns,
                "readyFd": ready_w.fileno(),
                # `tty: true`: contain.py opens the terminal in the container's own devpts and sends its master
                # back with the ready byte (runc's console socket)
                "console": c.tty,
            }
            prefix += [sys.executable, "-S", CONTAIN_SCRIPT, orjson.dumps(spec).decode(), "--"]
        self._close_input(c)
        c.init_pid = 0
        with open(c.log_path, "ab") as logf:
            if c.started_at:
                c.prev_log_offset = c.log_offset
            c.log_offset = logf.tell()
            if c.tty and not c.stage:
                # `tty: true` (kubectl run -it): a pseudo-terminal is the process's stdin/stdout/stderr and its
                # controlling terminal (util-linux setsid --ctty, in a session of its own); the runtime copies
                # its output into the log, which attach and logs read.
                master, slave = os.openpty()
                try:
                    c.proc = await asyncio.create_subprocess_exec(
                        SETSID,
                        "--ctty",
                        "--wait",
                        *prefix,
                        *c.argv,
                        stdin=slave,
                        stdout=slave,
                        stderr=slave,
                        env={**env, "TERM": "xterm"},
                    )
                finally:
                    os.close(slave)
                c.input_fd = master
                c.pump = asyncio.create_task(_copy_pty(master, c.log_path))
            else:
                # `stdin: true`: a pipe whose write end the runtime keeps for attach (closed at EOF).
                # A contained `tty: true` container's terminal comes from contain.py (below); the pipes then carry
                # only what goes wrong before it execs.
                read_end, write_end = os.pipe() if c.stdin and not c.tty else (-1, -1)
                try:
                    c.proc = await asyncio.create_subprocess_exec(
                        *prefix,
                        *c.argv,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                        stdin=read_end if read_end >= 0 else asyncio.subprocess.DEVNULL,
                        env={**env, "TERM": "xterm"} if c.tty else env,
                        start_new_session=True,
                        pass_fds=(ready_w.fileno(),) if ready_w is not None else (),
                    )
                except BaseException:
                    if write_end >= 0:
                        os.close(write_end)
                    if ready_r is not None and ready_w is not None:
                        ready_r.close()
                        ready_w.close()
                    raise
                finally:
                    if read_end >= 0:
                        os.close(read_end)
                c.input_fd = write_end
                c.pump = asyncio.create_task(_copy_pipes(c.proc.stdout, c.proc.stderr, c.log_path))
        if ready_r is not None and ready_w is not None:
            ready_w.close()
            master = -1
            with contextlib.suppress(TimeoutError):
                master = await asyncio.wait_for(asyncio.to_thread(_wait_ready, ready_r), 10.0)
            ready_r.close()
            if master >= 0:
                c.input_fd = master
                pipes = c.pump
                c.pump = asyncio.create_task(_copy_console(master, c.log_path, pipes))
        c.init_pid = _inner_pid(c.proc.pid) if c.pidns else c.proc.pid
        c.started_at = time.time()
        c.finished_at = 0.0
        c.exit_code = None
        c.reason = c.message = ""
        self._record_pids()

    @staticmethod
    def _close_input(c: Container) -> None:
        if c.input_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(c.input_fd)
            c.input_fd = -1

    async def write_stdin(self, uid: str, name: str, data: bytes, *, close: bool = False) -> bool:
        """Input for an attached container (False if it has none open). `close` ends it: EOF on a pipe, ^D on a
        terminal's line discipline."""
        rec = self.pods.get(uid)
        c = rec.containers.get(name) if rec else None
        if c is None or c.input_fd < 0 or c.proc is None or c.proc.returncode is not None:
            return False
        try:
            if data:
                await asyncio.to_thread(os.write, c.input_fd, data)
            if close:
                if c.tty:
                    await asyncio.to_thread(os.write, c.input_fd, b"\x04")
                else:
                    self._close_input(c)
        except OSError:
            return False
        return True

    async def _supervise(self, c: Container) -> None:
        while not c.stopping:
            if c.finished_at:
                c.last = c.termination()  # the run that ended becomes lastState
            try:
                await self._start(c)
            except (OSError, StartError) as exc:
                log.warning("runtime: cannot start %s: %s", c.name, exc)
                c.started_at = c.finished_at = time.time()
                c.exit_code, c.reason = 128, "StartError"
                c.message = str(exc) if isinstance(exc, StartError) else f"{CONTAINERD_START}: {exc}: unknown"
            else:
                assert c.proc is not None
                code = await c.proc.wait()
                if c.pump is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        # the last output (a terminal's EIO; pipes a forked child may hold open a while)
                        await asyncio.wait_for(c.pump, 2.0)
                    self._close_input(c)
                # A signal's death is 128+signal, as containerd reports it (asyncio gives -signal).
                c.exit_code = 128 - code if code < 0 else code
                c.finished_at = time.time()
                c.reason = "Completed" if c.exit_code == 0 else "Error"
            if c.stopping:
                return
            if c.restart_policy == "Never" or (c.restart_policy == "OnFailure" and c.exit_code == 0):
                c.done = True
                return
            if c.finished_at - c.started_at > BACKOFF_RESET:
                c.backoff = 0.0
            if c.backoff:
                log.info("runtime: %s exited with %s; restarting in %.0fs", c.name, c.exit_code, c.backoff)
                c.backoff_until = time.time() + c.backoff
                await asyncio.sleep(c.backoff)
                c.backoff_until = 0.0
            c.backoff = min(max(c.backoff * 2, BACKOFF_START), BACKOFF_MAX)
            c.restart_count += 1

    async def _stop_containers(self, containers: list[Container], *, grace: float) -> None:
        """SIGTERM to each container's process group, SIGKILL to those still running after `grace` seconds."""
        for c in containers:
            c.stopping = True
            if c.proc is not None and c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in containers:
            if c.proc is not None and c.proc.returncode is None:
                try:
                    await asyncio.wait_for(c.proc.wait(), max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(c.proc.pid, signal.SIGKILL)
                    await c.proc.wait()
            if c.task is not None:
                c.task.cancel()
            if c.pump is not None:
                c.pump.cancel()
            self._close_input(c)

    async def remove_pod(self, uid: str, *, grace: float = 5.0) -> None:
        rec = self.pods.pop(uid, None)
        await self.responders.remove(uid)
        if rec is None:
            return
        await self._stop_containers(list(rec.containers.values()), grace=grace)
        if rec.pause is not None and rec.pause.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rec.pause.pid, signal.SIGKILL)
            await rec.pause.wait()

    async def _start_pause(self, rec: PodRecord) -> None:
        """The pod's shared PID namespace (shareProcessNamespace), as the pause container holds it in Kubernetes:
        tini as its PID 1 (`sleep infinity` under it), in the pod's network and UTS namespaces."""
        pod = rec.spec["pod"]
        argv = [IP, "netns", "exec", pod["netns"]] if pod.get("netns") else []
        if pod.get("uts"):
            argv += [NSENTER, f"--uts={pod['uts']}", "--"]
        argv += [UNSHARE, "--pid", "--fork", "--", TINI, "--", "sleep", "infinity"]
        rec.pause = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10.0
        while not rec.pause_init and time.monotonic() < deadline and rec.pause.returncode is None:
            await asyncio.sleep(0.02)
            rec.pause_init = _inner_pid(rec.pause.pid)
        if not rec.pause_init:
            log.warning("runtime: the shared PID namespace of pod %s did not start", pod.get("name"))

    def status(self) -> dict[str, Any]:
        return {
            uid: {
                "ports": [list(p) for p in self.responders.pods().get(uid, [])],
                "containers": {name: c.status() for name, c in rec.containers.items()},
            }
            for uid, rec in self.pods.items()
        }

    async def close(self) -> None:
        for uid in list(self.pods):
            await self.remove_pod(uid, grace=2.0)
        await self.responders.close()

    # -- control API --------------------------------------------------------------------------------------
    async def handle(self, request: http11.Request) -> http11.Response:
        """The control API (see the module docstring); a bad request is a 4xx, never a dead runtime."""
        parts = [p for p in request.path.split("/") if p]
        if parts == ["pods"] and request.method == "GET":
            return http11.Response(200, orjson.dumps(self.status()))
        if len(parts) == 4 and parts[0] == "pods" and parts[2] == "kill" and request.method == "POST":
            rec = self.pods.get(parts[1])
            c = rec.containers.get(parts[3]) if rec else None
            if c is None or c.proc is None or c.proc.returncode is not None:
                return http11.Response(409, orjson.dumps({"error": "the container is not running"}))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.proc.pid, signal.SIGKILL)
            return http11.Response(200, b"{}")
        if len(parts) == 4 and parts[0] == "pods" and parts[2] == "stdin" and request.method == "POST":
            close = request.target.endswith("?close=1")
            if await self.write_stdin(parts[1], parts[3], request.body, close=close):
                return http11.Response(200, b"{}")
            return http11.Response(409, orjson.dumps({"error": "the container has no open input"}))
        if len(parts) == 2 and parts[0] == "pods" and request.method in ("PUT", "DELETE"):
            uid = parts[1]
            if request.method == "DELETE":
                grace = 5.0
                if "?grace=" in request.target:
                    with contextlib.suppress(ValueError):
                        grace = max(0.0, min(float(request.target.split("?grace=", 1)[1]), MAX_GRACE))
                await self.remove_pod(uid, grace=grace)
                return http11.Response(200, b"{}")
            try:
                spec = orjson.loads(request.body)
                if not isinstance(spec, dict) or not isinstance(spec.get("pod"), dict):
                    raise ValueError("the body must be an object with a 'pod' object")
                await self.ensure_pod(uid, spec)
            except (ValueError, KeyError, TypeError) as exc:
                return http11.Response(400, orjson.dumps({"error": f"bad pod spec: {exc}"}))
            return http11.Response(200, orjson.dumps(self.status().get(uid, {})))
        return http11.Response(404, orjson.dumps({"error": f"no route for {request.method} {request.path}"}))


async def serve(state_dir: Path, socket_path: Path) -> None:
    """Run the runtime until SIGTERM/SIGINT."""
    runtime = Runtime(state_dir)
    await asyncio.to_thread(reap_orphans, state_dir)  # before the API answers and the agent hands pods over
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    api = http11.HttpServer(runtime.handle)
    await api.start_unix(str(socket_path))
    os.chmod(socket_path, 0o600)
    pid_file = state_dir / "runtime.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    log.info("runtime serving on %s", socket_path)
    await process.wait_for_stop_signal()
    await api.close()
    await runtime.close()
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
