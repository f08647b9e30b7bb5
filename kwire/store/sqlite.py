"""SQLite (WAL) backend of the revisioned store: the embedded default, like K3s's kine on SQLite.

One table holds every revision (kine's layout: revision, key, create_revision, prev_revision, deleted, value).
The live state is also kept in memory (key -> KV, plus a sorted key list for ranges) so reads never touch disk;
the table is the source of truth and is reloaded on start. Each write is one INSERT in autocommit mode: in WAL
mode with synchronous=NORMAL a committed write is in the WAL file before we acknowledge it, so it survives the
process being killed (not a power cut, which needs synchronous=FULL; `durable=True` selects that).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sqlite3
from collections import deque
from pathlib import Path

from kwire.store.base import (
    ADDED,
    DELETED,
    KV,
    MODIFIED,
    Compacted,
    Event,
    KeyExists,
    KeyNotFound,
    RangeResult,
    RevisionMismatch,
    Store,
)

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


# A watcher this far behind (in events, or in bytes of the values its queue keeps alive) is ended, as
# kube-apiserver's cacher ends an unresponsive watcher; the client watches again from its last resourceVersion
# (or relists on 410). Events are shared by all watchers, so what a slow watcher costs is what it keeps alive.
_MAX_PENDING = 50000
_MAX_PENDING_BYTES = 64 * 1024 * 1024


def _size(event: Event) -> int:
    return len(event.value) + (len(event.prev_value) if event.prev_value else 0)


class _Watch:
    """An async iterator of events for one watcher; replays history, then follows live writes."""

    def __init__(self, store: SQLiteStore, prefix: str, from_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._last = from_revision
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._overflowed = False
        self._pending_bytes = 0
        self._backlog: deque[Event] = deque(store._history(prefix, from_revision))
        store._watchers.append(self)

    def _offer(self, event: Event) -> None:
        if self._overflowed or not event.key.startswith(self._prefix):
            return
        size = _size(event)
        if self._queue.qsize() >= _MAX_PENDING or self._pending_bytes + size > _MAX_PENDING_BYTES:
            self._overflowed = True
            self._queue.put_nowait(None)
            return
        self._pending_bytes += size
        self._queue.put_nowait(event)

    def __aiter__(self) -> _Watch:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._backlog:
                event = self._backlog.popleft()
            else:
                got = await self._queue.get()
                if got is None:
                    raise StopAsyncIteration
                event = got
                self._pending_bytes -= _size(event)
            # Live events written while the backlog was read arrive twice; the revision orders them.
            if event.revision <= self._last:
                continue
            self._last = event.revision
            return event

    def ready(self) -> list[Event]:
        """Events available now, without waiting (empty when the watcher is caught up or ended)."""
        out: list[Event] = []
        while self._backlog or not self._queue.empty():
            if self._backlog:
                event = self._backlog.popleft()
            else:
                got = self._queue.get_nowait()
                if got is None:
                    self._queue.put_nowait(None)  # keep the end marker for __anext__
                    break
                event = got
                self._pending_bytes -= _size(event)
            if event.revision > self._last:
                self._last = event.revision
                out.append(event)
        return out

    def close(self) -> None:
        self._queue.put_nowait(None)
        try:
            self._store._watchers.remove(self)
        except ValueError:
            pass


class SQLiteStore(Store):
    def __init__(self, path: Path | str, *, durable: bool = False, history: int = 20000) -> None:
        self._path = str(path)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._live: dict[str, KV] = {}
        self._keys: list[str] = []
        self._recent: deque[Event] = deque(maxlen=history)
        self._watchers: list[_Watch] = []
        self._revision = 0
        self._compacted = 0
        self._load()

    def _load(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()
        self._compacted = int(row[0]) if row else 0
        row = self._db.execute("SELECT MAX(revision) FROM kv").fetchone()
        self._revision = max(int(row[0] or 0), self._compacted)
        cur = self._db.execute(
            "SELECT kv.key, kv.value, kv.revision, kv.create_revision FROM kv "
            "JOIN (SELECT key, MAX(revision) AS r FROM kv GROUP BY key) last "
            "ON kv.key = last.key AND kv.revision = last.r WHERE kv.deleted = 0"
        )
        for key, value, revision, create_revision in cur:
            self._live[key] = KV(key, bytes(value), revision, create_revision)
        self._keys = sorted(self._live)
        log.info("store %s loaded: %d keys at revision %d", self._path, len(self._live), self._revision)

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compacted_revision(self) -> int:
        return self._compacted

    async def get(self, key: str) -> KV | None:
        return self._live.get(key)

    def get_now(self, key: str) -> KV | None:
        """Synchronous read of the live state (for callers already on the loop that need no await)."""
        return self._live.get(key)

    async def range(self, prefix: str, *, start_after: str = "", limit: int = 0) -> RangeResult:
        keys = self._keys
        lo = bisect.bisect_right(keys, start_after) if start_after >= prefix else bisect.bisect_left(keys, prefix)
        items: list[KV] = []
        i = lo
        n = len(keys)
        while i < n:
            k = keys[i]
            if not k.startswith(prefix):
                break
            if limit and len(items) >= limit:
                return RangeResult(items, self._revision, True)
            items.append(self._live[k])
            i += 1
        return RangeResult(items, self._revision, False)

    def _write(self, key: str, value: bytes, *, create_revision: int, prev_revision: int, deleted: bool) -> int:
        revision = self._revision + 1
        self._db.execute(
            "INSERT INTO kv (revision, key, create_revision, prev_revision, deleted, value) VALUES (?, ?, ?, ?, ?, ?)",
            (revision, key, create_revision or revision, prev_revision, 1 if deleted else 0, value),
        )
        self._revision = revision
        return revision

    def _publish(self, event: Event) -> None:
        self._recent.append(event)
        for w in self._watchers:
            w._offer(event)

    async def create(self, key: str, value: bytes) -> int:
        if key in self._live:
            raise KeyExists(key)
        rev = self._write(key, value, create_revision=0, prev_revision=0, deleted=False)
        self._live[key] = KV(key, value, rev, rev)
        bisect.insort(self._keys, key)
        self._publish(Event(ADDED, key, rev, value, None))
        return rev

    async def update(self, key: str, value: bytes, *, expected_revision: int) -> int:
        cur = self._live.get(key)
        if cur is None:
            raise KeyNotFound(key)
        if expected_revision and cur.mod_revision != expected_revision:
            raise RevisionMismatch(key, cur)
        rev = self._write(
            key, value, create_revision=cur.create_revision, prev_revision=cur.mod_revision, deleted=False
        )
        self._live[key] = KV(key, value, rev, cur.create_revision)
        self._publish(Event(MODIFIED, key, rev, value, cur.value))
        return rev

    async def delete(self, key: str, *, expected_revision: int = 0) -> int:
        cur = self._live.get(key)
        if cur is None:
            raise KeyNotFound(key)
        if expected_revision and cur.mod_revision != expected_revision:
            raise RevisionMismatch(key, cur)
        # Like kine, the tombstone row carries the last value so watchers can report the deleted object.
        rev = self._write(
            key, cur.value, create_revision=cur.create_revision, prev_revision=cur.mod_revision, deleted=True
        )
        del self._live[key]
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            del self._keys[i]
        self._publish(Event(DELETED, key, rev, cur.value, cur.value))
        return rev

    def _history(self, prefix: str, from_revision: int) -> list[Event]:
        if from_revision < self._compacted:
            raise Compacted(from_revision, self._compacted)
        if from_revision >= self._revision:
            return []
        recent = self._recent
        if recent and recent[0].revision <= from_revision + 1:
            return [e for e in recent if e.revision > from_revision and e.key.startswith(prefix)]
        return self._history_from_disk(prefix, from_revision)

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

    def watch(self, prefix: str, *, from_revision: int) -> _Watch:
        return _Watch(self, prefix, from_revision)

    async def compact(self, revision: int) -> None:
        revision = min(revision, self._revision)
        if revision <= self._compacted:
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
        self._compacted = revision
        log.info("store compacted at revision %d", revision)

    async def close(self) -> None:
        for w in list(self._watchers):
            w.close()
        self._db.close()
