"""A private single-member etcd for tests (Debian's etcd-server): on 127.0.0.1, free ports, a data directory the
caller owns, its log in `<data>/etcd.log`; stopped (SIGTERM) when the context ends. The tests use it as the
external etcd a user would give `--datastore-endpoint`."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.integration.apiserver import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


@contextlib.contextmanager
def etcd_server(data: Path, *, name: str) -> Iterator[str]:
    """Run etcd member `name` with its data under `data`; yields its client URL."""
    client, peer = free_port(), free_port()
    cmd = [
        ETCD,
        f"--name={name}",
        f"--data-dir={data / 'data'}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster={name}=http://127.0.0.1:{peer}",
    ]
    with open(data / "etcd.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{client}"
    finally:
        proc.terminate()
        proc.wait(10)
