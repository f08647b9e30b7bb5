"""A lab's recorded state: `/var/lib/kwire/labs/<name>/state.json` (PIDs, the cluster token, settings) and its lock.

`lab up` writes it, `lab down` and the supervisor read it, and every read-modify-write holds the lab's lock file,
so a `node stop` and the supervisor's restart of a process never race. The file holds the cluster token: 0600 in
a 0700 directory. This module imports nothing heavy: the supervisor process lives on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kwire.base.files import atomic_write
from kwire.lab import topology

SUPERVISOR = "supervisor"  # its PID's key in LabState.pids


@dataclass
class LabState:
    name: str
    nodes: int
    api_port: int
    token: str
    flannel_backend: str
    config_file: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    created: float = 0.0
    stopped: list[str] = field(default_factory=list)  # nodes stopped on purpose: the supervisor leaves them
    servers: int = 1  # servers on nodes 1..servers: one on SQLite, or several on embedded etcd (K3s HA)

    @staticmethod
    def path(name: str) -> Path:
        return topology.STATE_ROOT / name / "state.json"

    def save(self) -> None:
        """state.json holds the cluster token: readable by root only, in a directory only root can enter."""
        path = self.path(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        atomic_write(path, json.dumps(asdict(self), indent=2), mode=0o600)

    @staticmethod
    @contextlib.contextmanager
    def locked(name: str) -> Iterator[None]:
        """Hold the lab's lock for a read-modify-write of its state (the supervisor writes it too)."""
        lock = topology.STATE_ROOT / name / "state.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @classmethod
    def load(cls, name: str) -> LabState | None:
        try:
            return cls(**json.loads(cls.path(name).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def server_procs(st: LabState) -> dict[str, str]:
    """Process key -> node of every server: `server` on node1 (the first, `--cluster-init` when there are
    several), `server2`... on node2... (joined with `--server`)."""
    return {("server" if i == 1 else f"server{i}"): f"node{i}" for i in range(1, st.servers + 1)}
