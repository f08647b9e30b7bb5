"""The in-memory side every store backend shares: the live keys, the recent history, and watch fan-out.

A backend (SQLite, etcd) is the source of truth; `LiveState` mirrors its live state (key -> KV and a sorted key
list, so reads and ranges never leave memory), keeps a ring of recent events for watches that resume from a
revision, and hands every event to the watchers (`Watch`), each of which replays history first and then follows.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Callable

from kwire.store.base import KV, Compacted, Event, RangeResult, Store

# A watcher this far behind (in events, or in bytes of the values its queue keeps alive) is ended, as
# kube-apiserver's cacher ends an unresponsive watcher; the client watches again from its last resourceVersion
# (or relists on 410). Events are shared by all watchers, so what a slow watcher costs is what it keeps alive.
_MAX_PENDING = 50000
_MAX_PENDING_BYTES = 64 * 1024 * 1024


def _size(event: Event) -> int:
    return len(event.value) + (len(event.prev_value) if event.prev_value else 0)


class Watch:
    """An async iterator of events for one watcher; replays history, then follows live writes."""

    def __init__(self, store: LiveState, prefix: str, from_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._last = from_revision
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._overflowed = False
        self._pending_bytes = 0
        self._backlog: deque[Event] = deque(store.history(prefix, from_revision))
        store.watchers.append(self)

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

    def __aiter__(self) -> Watch:
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
            self._store.watchers.remove(self)
        except ValueError:
            pass


class LiveState:
    """Live keys, recent events and watchers of one store. `older` answers history the ring no longer holds
    (SQLite reads its table; a backend without one raises Compacted, and the client relists)."""

    def __init__(self, *, history: int, older: Callable[[str, int], list[Event]] | None = None) -> None:
        self.live: dict[str, KV] = {}
        self.keys: list[str] = []
        self.recent: deque[Event] = deque(maxlen=history)
        self.watchers: list[Watch] = []
        self.revision = 0
        self.compacted = 0
        self.ring_start = 0  # the ring holds every event after this revision
        self._older = older

    def load(self, kvs: list[KV], *, revision: int) -> None:
        self.live = {kv.key: kv for kv in kvs}
        self.keys = sorted(self.live)
        self.revision = revision
        self.recent.clear()
        self.ring_start = revision

    def get(self, key: str) -> KV | None:
        return self.live.get(key)

    def range(self, prefix: str, *, start_after: str = "", limit: int = 0) -> RangeResult:
        keys = self.keys
        lo = bisect.bisect_right(keys, start_after) if start_after >= prefix else bisect.bisect_left(keys, prefix)
        items: list[KV] = []
        i = lo
        n = len(keys)
        while i < n:
            k = keys[i]
            if not k.startswith(prefix):
                break
            if limit and len(items) >= limit:
                return RangeResult(items, self.revision, True)
            items.append(self.live[k])
            i += 1
        return RangeResult(items, self.revision, False)

    def put(self, kv: KV) -> None:
        if kv.key not in self.live:
            bisect.insort(self.keys, kv.key)
        self.live[kv.key] = kv

    def remove(self, key: str) -> None:
        if self.live.pop(key, None) is not None:
            i = bisect.bisect_left(self.keys, key)
            if i < len(self.keys) and self.keys[i] == key:
                del self.keys[i]

    def publish(self, event: Event) -> None:
        self.revision = max(self.revision, event.revision)
        if len(self.recent) == self.recent.maxlen:
            self.ring_start = self.recent[0].revision  # about to be dropped
        self.recent.append(event)
        for w in self.watchers:
            w._offer(event)

    def history(self, prefix: str, from_revision: int) -> list[Event]:
        if from_revision < self.compacted:
            raise Compacted(from_revision, self.compacted)
        if from_revision >= self.revision:
            return []
        if from_revision >= self.ring_start:
            return [e for e in self.recent if e.revision > from_revision and e.key.startswith(prefix)]
        if self._older is None:  # the backend keeps no history of its own here: the client relists
            raise Compacted(from_revision, self.ring_start)
        return self._older(prefix, from_revision)

    def watch(self, prefix: str, *, from_revision: int) -> Watch:
        return Watch(self, prefix, from_revision)

    def close_watchers(self) -> None:
        for w in list(self.watchers):
            w.close()


class MirroredStore(Store):
    """A store whose live state is mirrored in a `LiveState` (`self._state`): reads, ranges and watches are
    answered from it; the backend implements the writes, compaction and how the mirror is fed."""

    _state: LiveState

    @property
    def revision(self) -> int:
        return self._state.revision

    @property
    def compacted_revision(self) -> int:
        return self._state.compacted

    async def get(self, key: str) -> KV | None:
        return self._state.get(key)

    def get_now(self, key: str) -> KV | None:
        return self._state.get(key)

    async def range(self, prefix: str, *, start_after: str = "", limit: int = 0) -> RangeResult:
        return self._state.range(prefix, start_after=start_after, limit=limit)

    def watch(self, prefix: str, *, from_revision: int) -> Watch:
        return self._state.watch(prefix, from_revision=from_revision)
