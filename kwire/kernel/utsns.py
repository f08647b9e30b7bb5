"""Persistent UTS namespaces: a pod's hostname, held by a bind mount of the namespace on a file.

The same convention as `ip netns` for network namespaces (a namespace lives as long as a bind mount of
/proc/<pid>/ns/uts does), under `/run/kwire/uts/<name>`; a container enters it with `nsenter --uts=<file>`. This is
what the pause container's UTS namespace is to a Kubernetes pod: every container of the pod sees the hostname the
kubelet set (the pod's name or `spec.hostname`). util-linux's `unshare --uts=<file>` does the unshare, the
sethostname and the bind mount in one exec (hand-written setns/mount calls would need a forked child anyway,
since unshare(2) changes the calling thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

RUN_DIR = Path("/run/kwire/uts")
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
HOSTNAME = shutil.which("hostname") or "/usr/bin/hostname"
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def path(name: str) -> Path:
    return RUN_DIR / name


def create(name: str, hostname: str) -> Path:
    """A UTS namespace named `name` whose hostname is `hostname` (idempotent: an existing one is re-used)."""
    p = path(name)
    if p.exists() and os.path.ismount(p):
        return p
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    p.touch(exist_ok=True)
    res = subprocess.run(
        [UNSHARE, f"--uts={p}", HOSTNAME, hostname], capture_output=True, text=True, timeout=10, check=False
    )
    if res.returncode != 0:
        with contextlib.suppress(OSError):
            p.unlink()
        raise OSError(f"cannot create UTS namespace {name}: {res.stderr.strip()}")
    return p


def remove(name: str) -> None:
    """Unmount and remove the namespace's file (idempotent); processes inside keep it until they exit."""
    p = path(name)
    if os.path.ismount(p):
        _libc.umount2(str(p).encode(), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        p.unlink()


def remove_prefixed(prefix: str) -> list[str]:
    """Remove every namespace whose name starts with `prefix` (a lab's teardown)."""
    if not RUN_DIR.is_dir():
        return []
    names = [p.name for p in RUN_DIR.iterdir() if p.name.startswith(prefix)]
    for n in names:
        remove(n)
    return names
