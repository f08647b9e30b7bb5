"""SQLite (WAL) backend of the revisioned store: the embedded default, like K3s's kine on SQLite.

One table holds every revision (kine's layout: revision, key, create_revision, prev_revision, deleted, value).
The live state is also kept in memory (key -> KV, plus a sorted key list for ranges) so reads never touch disk;
the table is the source of truth and is reloaded on start. Each write is one INSERT in autocommit mode: in WAL
mode with synchronous=NORMAL a committed write is in the WAL file before we acknowledge it, so it survives the
process being killed (not a power cut, which needs synchronous=FULL; `durable=True` selects that).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from kwire.base.files import private_file
from kwire.store.base import (
    ADDED,
    DELETED,
    KV,
    MODIFIED,
    Event,
    KeyExists,
    KeyNotFound,
    RevisionMismatch,
)
from kwire.store.live import LiveState, MirroredStore

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
  revision INTEGER PRIMARY KEY,
  key TEXT NOT NULL,
  create_revision INTEGER NOT NULL,
  prev_revision INTEGER NOT NULL,
  deleted INTEGER NOT NULL,
  value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_key_revision ON kv (key, revision);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SQLiteStore(MirroredStore):
    def __init__(self, path: Path | str, *, durable: bool = False, history: int = 2000) -> None:
        self._path = str(path)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            # the datastore holds every Secret: 0600, as K3s's state.db (SQLite gives -wal and -shm its mode)
            private_file(self._path, "-wal", "-shm")
        self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._state = LiveState(history=history, older=self._history_from_disk)
        self._load()

    def _load(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()
        compacted = int(row[0]) if row else 0
        row = self._db.execute("SELECT MAX(revision) FROM kv").fetchone()
        revision = max(int(row[0] or 0), compacted)
        cur = self._db.execute(
            "SELECT kv.key, kv.value, kv.revision, kv.create_revision FROM kv "
            "JOIN (SELECT key, MAX(revision) AS r FROM kv GROUP BY key) last "
            "ON kv.key = last.key AND kv.revision = last.r WHERE kv.deleted = 0"
        )
        kvs = [KV(key, bytes(value), rev, create_revision) for key, value, rev, create_revision in cur]
        self._state.load(kvs, revision=revision)
        self._state.compacted = compacted
        log.info("store %s loaded: %d keys at revision %d", self._path, len(kvs), revision)

    def _write(self, key: str, value: bytes, *, create_revision: int, prev_revision: int, deleted: bool) -> int:
        revision = self._state.revision + 1
        self._db.execute(
            "INSERT INTO kv (revision, key, create_revision, prev_revision, deleted, value) VALUES (?, ?, ?, ?, ?, ?)",
            (revision, key, create_revision or revision, prev_revision, 1 if deleted else 0, value),
        )
        return revision

    async def create(self, key: str, value: bytes) -> int:
        if self._state.get(key) is not None:
            raise KeyExists(key)
        rev = self._write(key, value, create_revision=0, prev_revision=0, deleted=False)
        self._state.put(KV(key, value, rev, rev))
        self._state.publish(Event(ADDED, key, rev, value, None))
        return rev

    def _current(self, key: str, expected_revision: int) -> KV:
        """The key's live value for an update or delete; KeyNotFound, or RevisionMismatch when `expected_revision`
        is given and is not its mod_revision."""
        cur = self._state.get(key)
        if cur is None:
            raise KeyNotFound(key)
        if expected_revision and cur.mod_revision != expected_revision:
            raise RevisionMismatch(key, cur)
        return cur

    async def update(self, key: str, value: bytes, *, expected_revision: int) -> int:
        cur = self._current(key, expected_revision)
        rev = self._write(
            key, value, create_revision=cur.create_revision, prev_revision=cur.mod_revision, deleted=False
        )
        self._state.put(KV(key, value, rev, cur.create_revision))
        self._state.publish(Event(MODIFIED, key, rev, value, cur.value))
        return rev

    async def delete(self, key: str, *, expected_revision: int = 0) -> int:
        cur = self._current(key, expected_revision)
        # Like kine, the tombstone row carries the last value so watchers can report the deleted object.
        rev = self._write(
            key, cur.value, create_revision=cur.create_revision, prev_revision=cur.mod_revision, deleted=True
        )
        self._state.remove(key)
        self._state.publish(Event(DELETED, key, rev, cur.value, cur.value))
        return rev

    def _history_from_disk(self, prefix: str, from_revision: int) -> list[Event]:
        rows = self._db.execute(
            "SELECT revision, key, create_revision, prev_revision, deleted, value FROM kv "
            "WHERE revision > ? AND key >= ? AND key < ? ORDER BY revision",
            (from_revision, prefix, prefix + "\U0010ffff"),
        ).fetchall()
        out: list[Event] = []
        for revision, key, create_revision, prev_revision, deleted, value in rows:
            prev = None
            if prev_revision:
                r = self._db.execute("SELECT value FROM kv WHERE revision = ?", (prev_revision,)).fetchone()
                prev = bytes(r[0]) if r else None
            if deleted:
                kind = DELETED
            elif create_revision == revision:
                kind = ADDED
            else:
                kind = MODIFIED
            out.append(Event(kind, key, revision, bytes(value), prev))
        return out

    async def compact(self, revision: int) -> None:
        revision = min(revision, self._state.revision)
        if revision <= self._state.compacted:
            return
        # Keep, for each key, its newest row at or below the compaction point (unless it is a tombstone):
        # it is the live value or the prev_value of a later event.
        self._db.execute("BEGIN")
        try:
            self._db.execute(
                "DELETE FROM kv WHERE revision <= ? AND (deleted = 1 OR revision NOT IN "
                "(SELECT MAX(revision) FROM kv WHERE revision <= ? GROUP BY key))",
                (revision, revision),
            )
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES ('compact_revision', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (revision,),
            )
            self._db.execute("COMMIT")
        except Exception:
            self._db.execute("ROLLBACK")
            raise
        self._state.compacted = revision
        log.info("store compacted at revision %d", revision)

    def healthy(self) -> bool:
        """The database answers (the API server's `etcd` health check)."""
        self._db.execute("SELECT 1").fetchone()
        return True

    async def close(self) -> None:
        self._state.close_watchers()
        self._db.close()
