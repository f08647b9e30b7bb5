"""Moving a SQLite server's data into its new embedded etcd (K3s does this when `--cluster-init` is added).

Every live key under /registry/ is copied with its value, in key order; history is not: etcd numbers the copies
with its own revisions, so resourceVersions change once (clients' watches get 410 Gone and relist, as after any
server restart). The SQLite file is then renamed `state.db.migrated`, so a later restart does not copy again;
a migration interrupted half-way runs again on the next start (keys already copied are kept: the server served
nothing in between).
"""

from __future__ import annotations

import logging
from pathlib import Path

from kwire.store.base import KeyExists, Store
from kwire.store.sqlite import SQLiteStore

log = logging.getLogger(__name__)

PREFIX = "/registry/"


async def migrate_sqlite(sqlite_path: Path, target: Store) -> int:
    """Copy every key of the SQLite store at `sqlite_path` into `target`; returns how many were copied."""
    sqlite_path = Path(sqlite_path)
    if not sqlite_path.exists():
        return 0
    source = SQLiteStore(sqlite_path)
    try:
        items = (await source.range(PREFIX)).items
        for kv in items:
            try:
                await target.create(kv.key, kv.value)
            except KeyExists:  # copied by an earlier run that was interrupted (the server served nothing since)
                pass
    finally:
        await source.close()
    for suffix in ("-wal", "-shm", ""):  # closing checkpointed the WAL; the main file goes last
        part = Path(f"{sqlite_path}{suffix}")
        if part.exists():
            part.rename(f"{part}.migrated")
    log.info("migrated %d keys from %s into etcd (revisions renumbered)", len(items), sqlite_path)
    return len(items)
