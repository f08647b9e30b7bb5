"""etcd snapshots of an embedded-etcd server: K3s's `etcd-snapshot save|ls|delete|prune`, its scheduled
snapshots and `--cluster-reset --cluster-reset-restore-path`.

A snapshot is etcd's own (`/v3/maintenance/snapshot` over the JSON gateway, streamed in base64 blobs), written to
`<data-dir>/db/snapshots/<name>-<node>-<unix time>` as K3s names them (`on-demand` for `save`, `etcd-snapshot`
for scheduled ones), mode 0600 since it holds every Secret. Restoring uses `etcdctl snapshot restore` (Debian's
etcd-client: the offline restore is etcdctl's job in etcd 3.4) into a fresh member directory; the old one is kept
beside it as `etcd-old-<unix time>`, as K3s keeps `etcd-old-<time>`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from croniter import croniter

from kwire.base.ndjson import json_lines
from kwire.store.base import StoreError

log = logging.getLogger(__name__)

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ON_DEMAND = "on-demand"
SCHEDULED = "etcd-snapshot"


@dataclass(frozen=True)
class Snapshot:
    name: str
    path: Path
    size: int
    created: float


def snapshot_name(prefix: str, node: str, *, now: float | None = None) -> str:
    return f"{prefix}-{node}-{int(now if now is not None else time.time())}"


async def save(client_url: str, *, ssl_context: ssl.SSLContext, path: Path) -> int:
    """Stream a snapshot of the etcd at `client_url` into `path` (atomically); returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + ".part")
    size = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(client_url + "/v3/maintenance/snapshot", data=b"{}", ssl=ssl_context) as r:
            if r.status != 200:
                raise StoreError(f"etcd snapshot: {r.status} {(await r.read())[:300]!r}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                async for msg in json_lines(r.content.iter_any()):
                    if "error" in msg:
                        raise StoreError(f"etcd snapshot: {msg['error']}")
                    blob = base64.b64decode((msg.get("result") or {}).get("blob") or "")
                    os.write(fd, blob)
                    size += len(blob)
                os.fsync(fd)
            finally:
                os.close(fd)
    if size == 0:
        tmp.unlink(missing_ok=True)
        raise StoreError("etcd snapshot: etcd sent nothing")
    tmp.replace(path)
    return size


def list_snapshots(directory: Path) -> list[Snapshot]:
    """Snapshots in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        if p.is_file() and not p.name.endswith(".part"):
            st = p.stat()
            out.append(Snapshot(p.name, p, st.st_size, st.st_mtime))
    return sorted(out, key=lambda s: (s.created, s.name))


def delete(directory: Path, names: list[str]) -> list[str]:
    """Remove the named snapshots; returns the names removed (a name with a path in it is refused)."""
    removed = []
    for name in names:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"{name!r} is not a snapshot name")
        p = directory / name
        if p.is_file():
            p.unlink()
            removed.append(name)
    return removed


def prune(directory: Path, *, prefix: str, retention: int) -> list[str]:
    """Keep the newest `retention` snapshots whose name starts with `prefix-`; remove the older ones."""
    mine = [s for s in list_snapshots(directory) if s.name.startswith(prefix + "-")]
    old = mine[: max(0, len(mine) - retention)]
    return delete(directory, [s.name for s in old])


def restore(snapshot: Path, *, etcd_dir: Path, name: str, peer_url: str) -> Path:
    """Replace the member in `etcd_dir` by one restored from `snapshot` as a one-member cluster; returns where the
    old member directory was moved."""
    if not snapshot.is_file():
        raise StoreError(f"{snapshot}: no such snapshot")
    fresh = etcd_dir.with_name(etcd_dir.name + "-restore")
    shutil.rmtree(fresh, ignore_errors=True)
    res = subprocess.run(
        [
            ETCDCTL,
            "snapshot",
            "restore",
            str(snapshot),
            f"--name={name}",
            f"--data-dir={fresh}",
            f"--initial-cluster={name}={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
        timeout=300,
    )
    if res.returncode != 0:
        shutil.rmtree(fresh, ignore_errors=True)
        raise StoreError(f"etcdctl snapshot restore {snapshot}: {res.stderr.strip() or res.stdout.strip()}")
    old = etcd_dir.with_name(f"etcd-old-{int(time.time())}")
    if etcd_dir.exists():
        etcd_dir.rename(old)
    fresh.rename(etcd_dir)
    os.chmod(etcd_dir, 0o700)
    (etcd_dir / "name").write_text(name + "\n")
    return old


async def run_schedule(
    *,
    cron: str,
    retention: int,
    directory: Path,
    node: str,
    client_url: str,
    ssl_context: ssl.SSLContext,
) -> None:
    """K3s's scheduled snapshots: one at each time `cron` names (croniter: 5 fields, or 6 with seconds last),
    then the scheduled ones beyond the newest `retention` are pruned. Failures are logged and retried at the
    next time; the loop runs until cancelled."""
    it = croniter(cron, dt.datetime.now(dt.UTC))
    while True:
        at = it.get_next(float)
        await asyncio.sleep(max(0.0, at - time.time()))
        path = directory / snapshot_name(SCHEDULED, node, now=at)
        try:
            size = await save(client_url, ssl_context=ssl_context, path=path)
            pruned = prune(directory, prefix=SCHEDULED, retention=retention)
            log.info("etcd snapshot %s saved (%d bytes); pruned %d", path.name, size, len(pruned))
        except (StoreError, OSError, aiohttp.ClientError) as exc:
            log.error("scheduled etcd snapshot %s failed: %s", path.name, exc)
