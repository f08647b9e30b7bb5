"""Processes of a lab: started inside a node's network namespace, recorded by PID, and stopped by PID.

Lab processes enter only the node's *network* namespace (`nsenter --net`), not a new mount namespace as
`ip netns exec` would: the pod namespaces an agent creates are bind mounts under /run/netns, and they must be
visible to the whole machine (for `kwire lab exec`, for cleanup), which a private mount namespace would prevent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kwire.kernel import netns

log = logging.getLogger(__name__)

NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"


def spawn(
    ns: str | None,
    args: list[str],
    *,
    log_path: Path,
    pass_fds: tuple[int, ...] = (),
    secret_env: dict[str, str] | None = None,
) -> int:
    """Start `python -m kwire <args>` inside network namespace `ns` (None: the machine's own, for the lab's
    supervisor, which only holds the 127.0.0.1 listener), detached; returns its PID. Secrets go in `secret_env`
    (e.g. KWIRE_TOKEN): a process's environment is readable by its owner only, its command line by everyone."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PYTHONUNBUFFERED": "1",
        **(secret_env or {}),
    }
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [*([NSENTER, f"--net={netns.path(ns)}", "--"] if ns else []), sys.executable, "-m", "kwire", *args],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=pass_fds,
            env=env,
        )
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def reap_children() -> None:
    """Collect every child of ours that has ended (a supervisor's restarted processes), so none stays a zombie."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(pids: list[int], *, grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace`, then SIGKILL; only the PIDs given."""
    live = [p for p in pids if p > 0 and alive(p)]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    end = time.monotonic() + grace
    while live and time.monotonic() < end:
        for p in live:
            _reap(p)
        live = [p for p in live if alive(p)]
        if live:
            time.sleep(0.05)
    for p in live:
        log.warning("process %d did not stop on SIGTERM; killing it", p)
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
        _reap(p)


def pids_in_namespaces(names: list[str]) -> list[int]:
    """PIDs of processes whose network namespace is one of the named ones (a lab's own namespaces)."""
    inodes = set()
    for n in names:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(netns.path(n)).st_ino)
    if not inodes:
        return []
    out = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                out.append(int(entry))
    return out


def read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
