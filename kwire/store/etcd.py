"""etcd v3 backend of the revisioned store (`--datastore-endpoint http(s)://...`), as kube-apiserver uses etcd.

The client is etcd's own JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/kv/deleterange`, `/v3/kv/compaction`,
`/v3/watch`), spoken over aiohttp, which kwire already depends on; every request in flight has its own keep-alive
connection, so concurrent writes reach etcd together and it commits them in one raft entry and fsync. Why not
gRPC, by measurement: a grpcio client (stubs from the maintained aetcd package; python-etcd3 is unmaintained)
halves the CPU a txn costs the member serving it (0.4 vs 0.8 ms, one member, 16 in flight), but this store built
on it and run through the API against this one, alternated in one run, moved the CPU into the kwire servers
instead (grpc.aio's cost per message in every server's watch): on three members 1.7-2.0 ms of etcd CPU per write
against 2.2-2.4, and 1.9-2.1 ms of kwire CPU against 1.4-1.5, with 18-19 MB more RSS per server. Keys and values
travel base64-encoded; int64 fields are JSON strings.

Revisions are etcd's: a write's resourceVersion is the etcd revision of its transaction, a watch resumes from a
revision, compaction is etcd's (older revisions: 410 Gone). Writes are transactions with compare-and-swap on
`create_revision` (create), `mod_revision` (update, delete). As kube-apiserver's watch cache does, the server keeps
the live state in memory (`LiveState`), fed only by one etcd watch on the whole prefix, so reads, lists and
watches never wait for etcd; a write returns once the watch has delivered it, so a client reads its own writes
and a list's resourceVersion is always one the watch has passed (other servers' writes arrive the same way): most
writes are already there when the txn response arrives, the others wait a few ms (kube-apiserver instead returns
on the txn response and makes reads consistent; here reads would then have to wait instead). The watch does not
ask for prev_kv: an event's previous value is the mirror's, which holds every live key. If
the watch falls off the compaction window (etcd compacted past it), the state is reloaded and every local watcher
ends, so clients relist. Events' TTL leases are not used (kwire keeps Events like any object).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import logging
import ssl
from typing import Any

import aiohttp
import orjson

from kwire.base.backoff import Backoff
from kwire.base.ndjson import json_lines
from kwire.store.base import (
    ADDED,
    DELETED,
    KV,
    MODIFIED,
    Event,
    KeyExists,
    KeyNotFound,
    RevisionMismatch,
    StoreError,
)
from kwire.store.live import LiveState, MirroredStore

log = logging.getLogger(__name__)

PREFIX = "/registry/"
PAGE = 1000  # keys per range request while loading
# Requests in flight at once, each on its own keep-alive connection (HTTP/1.1 has one request per connection at a
# time; aiohttp has no HTTP/2). etcd batches what arrives together into one raft entry and one fsync, so writes
# must not queue here: this is above what one server's API puts in flight, and only bounds a runaway.
MAX_IN_FLIGHT = 256
WRITE_VISIBLE_TIMEOUT = 10.0  # a write not seen on the watch by then: the caller gets a StoreError
# One watch response of the gateway: the events of a revision, their values base64 in JSON.
# etcd caps a request at 1.5 MiB (--max-request-bytes), so this bounds the buffer with room to spare.
MAX_WATCH_MESSAGE = 64 * 1024 * 1024


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def _prefix_end(prefix: str) -> str:
    """etcd's range end for every key starting with `prefix` (its last byte plus one)."""
    raw = prefix.encode()
    return _b64(raw[:-1] + bytes([raw[-1] + 1]))


def _kv(obj: dict[str, Any]) -> KV:
    return KV(
        _unb64(obj["key"]).decode(),
        _unb64(obj.get("value")),
        int(obj.get("mod_revision", 0)),
        int(obj.get("create_revision", 0)),
    )


class EtcdStore(MirroredStore):
    def __init__(
        self,
        endpoints: list[str],
        *,
        ssl_context: ssl.SSLContext | None = None,
        history: int = 20000,
        prefix: str = PREFIX,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self._endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0
        self._ssl = ssl_context
        self._prefix = prefix
        self._state = LiveState(history=history)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        # Writers waiting for the watch to reach their revision: a heap of (revision, seq, future), so the watch
        # wakes only those whose revision it passed (a Condition's notify_all woke every waiter per message).
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self, *, timeout: float = 30.0) -> None:
        """Connect (trying every endpoint), load the live state, and follow it."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl else False, limit=MAX_IN_FLIGHT),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            try:
                await self._load()
                break
            except (aiohttp.ClientError, OSError, StoreError) as exc:
                if loop.time() > end:
                    raise StoreError(f"etcd at {', '.join(self._endpoints)} did not answer: {exc}") from exc
                await asyncio.sleep(0.5)
        self._task = asyncio.create_task(self._follow())

    def healthy(self) -> bool:
        """The watch that mirrors etcd's state is running (it retries etcd on its own)."""
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._state.close_watchers()
        if self._session:
            await self._session.close()

    # -- HTTP --------------------------------------------------------------------------------------------------
    async def _call(self, path: str, body: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
        assert self._session is not None, "EtcdStore.start() first"
        last: Exception | None = None
        for _ in range(len(self._endpoints)):
            url = self._endpoints[self._current] + path
            try:
                async with self._session.post(
                    url, data=orjson.dumps(body), timeout=aiohttp.ClientTimeout(total=timeout)
                ) as r:
                    data = await r.read()
                    if r.status != 200:
                        raise StoreError(f"etcd {path}: {r.status} {data[:200]!r}")
                    out: dict[str, Any] = orjson.loads(data)
                    return out
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = exc
                self._current = (self._current + 1) % len(self._endpoints)  # the next member
        raise StoreError(f"etcd unreachable: {last}")

    async def _load(self) -> None:
        kvs: list[KV] = []
        key = _b64(self._prefix)
        end = _prefix_end(self._prefix)
        revision = 0
        while True:
            body: dict[str, Any] = {"key": key, "range_end": end, "limit": PAGE}
            if revision:
                body["revision"] = revision  # every page at the first page's revision: one consistent snapshot
            res = await self._call("/v3/kv/range", body)
            revision = revision or int(res["header"]["revision"])
            page = [_kv(o) for o in res.get("kvs", [])]
            kvs.extend(page)
            if not res.get("more") or not page:
                break
            key = _b64(page[-1].key.encode() + b"\0")
        self._state.close_watchers()  # watchers of a previous state cannot be continued
        self._state.load(kvs, revision=revision)
        self._wake()
        log.info("etcd store loaded: %d keys at revision %d", len(kvs), revision)

    # -- the watch that feeds the state ----------------------------------------------------------------------
    async def _follow(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await self._watch_once()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except _CompactedAway as exc:
                log.warning("etcd compacted past revision %d (now %d): reloading", self._state.revision, exc.compacted)
                self._state.compacted = exc.compacted
                await self._load()
            except Exception as exc:  # noqa: BLE001 - etcd restarts, a member goes away: watch again
                log.warning("etcd watch ended (%s); resuming from revision %d", exc, self._state.revision)
                await backoff.sleep()
                self._current = (self._current + 1) % len(self._endpoints)

    async def _watch_once(self) -> None:
        assert self._session is not None
        body = {
            "create_request": {
                "key": _b64(self._prefix),
                "range_end": _prefix_end(self._prefix),
                "start_revision": self._state.revision + 1,
                "progress_notify": True,
            }
        }
        url = self._endpoints[self._current] + "/v3/watch"
        forever = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
        async with self._session.post(url, data=orjson.dumps(body), timeout=forever) as r:
            if r.status != 200:
                raise StoreError(f"etcd watch: {r.status}")
            async for msg in json_lines(r.content.iter_any(), max_line=MAX_WATCH_MESSAGE):
                self._on_watch_message(msg)
        raise StoreError("watch stream closed")

    def _on_watch_message(self, msg: dict[str, Any]) -> None:
        if "error" in msg:
            raise StoreError(f"etcd watch error: {msg['error']}")
        result = msg.get("result") or {}
        compact = int(result.get("compact_revision") or 0)
        if compact:
            raise _CompactedAway(compact)
        if result.get("canceled"):
            raise StoreError(f"etcd canceled the watch: {result.get('cancel_reason', '')}")
        for ev in result.get("events") or []:
            kv = _kv(ev["kv"])
            # The previous value is the mirror's: it holds every live key at the revision before this event, so
            # the watch does not ask etcd for prev_kv (a backend read per event on the member, and the value
            # again, base64 in JSON, in every message).
            prev = self._state.get(kv.key)
            if ev.get("type") == "DELETE":
                value = prev.value if prev else b""
                self._state.remove(kv.key)
                self._state.publish(Event(DELETED, kv.key, kv.mod_revision, value, value))
            else:
                self._state.put(kv)
                kind = ADDED if kv.create_revision == kv.mod_revision else MODIFIED
                self._state.publish(Event(kind, kv.key, kv.mod_revision, kv.value, prev.value if prev else None))
        header_rev = int((result.get("header") or {}).get("revision") or 0)
        if not result.get("events") and header_rev > self._state.revision and not result.get("created"):
            self._state.revision = header_rev  # a progress notification: nothing under our prefix until then
        self._wake()

    def _wake(self) -> None:
        """Release the writers whose revision the state has reached."""
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._state.revision:
            fut = heapq.heappop(waiters)[2]
            if not fut.done():
                fut.set_result(None)

    async def _visible(self, revision: int) -> None:
        """Wait until the watch has applied `revision` (read-your-writes for the caller)."""
        if self._state.revision >= revision:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (revision, next(self._seq), fut)
        heapq.heappush(self._waiters, entry)
        try:
            async with asyncio.timeout(WRITE_VISIBLE_TIMEOUT):
                await fut
        except TimeoutError:
            raise StoreError(
                f"etcd write {revision} was not seen on the watch within {WRITE_VISIBLE_TIMEOUT}s"
            ) from None
        finally:
            if fut.cancelled():  # timed out or the caller was cancelled: out of the heap, which stays bounded
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                    heapq.heapify(self._waiters)

    # -- Store -------------------------------------------------------------------------------------------------
    async def _caught_up(self, revision: int) -> None:
        """Before a conflict is reported: the state here has reached the write that won (maybe another server's),
        so the caller's next read, as kube's clients do on 409, gets the newer object rather than the stale one."""
        with contextlib.suppress(StoreError):
            await self._visible(revision)

    async def _txn(self, key: str, compare: dict[str, Any], success: dict[str, Any]) -> tuple[bool, int, KV | None]:
        body = {
            "compare": [{"key": _b64(key), "result": "EQUAL", **compare}],
            "success": [success],
            "failure": [{"request_range": {"key": _b64(key)}}],
        }
        res = await self._call("/v3/kv/txn", body)
        rev = int(res["header"]["revision"])
        if res.get("succeeded"):
            return True, rev, None
        kvs = ((res.get("responses") or [{}])[0].get("response_range") or {}).get("kvs") or []
        return False, rev, _kv(kvs[0]) if kvs else None

    async def create(self, key: str, value: bytes) -> int:
        ok, rev, _ = await self._txn(
            key,
            {"target": "CREATE", "create_revision": 0},
            {"request_put": {"key": _b64(key), "value": _b64(value)}},
        )
        if not ok:
            raise KeyExists(key)
        await self._visible(rev)
        return rev

    async def update(self, key: str, value: bytes, *, expected_revision: int) -> int:
        return await self._write_existing(
            key, expected_revision, {"request_put": {"key": _b64(key), "value": _b64(value)}}
        )

    async def delete(self, key: str, *, expected_revision: int = 0) -> int:
        return await self._write_existing(key, expected_revision, {"request_delete_range": {"key": _b64(key)}})

    async def _write_existing(self, key: str, expected_revision: int, success: dict[str, Any]) -> int:
        """Update or delete an existing key: compare-and-swap on its mod_revision when `expected_revision` is
        given, else only on its existence (create_revision unchanged, so a key deleted and re-created in between
        counts as a conflict); raises KeyNotFound or RevisionMismatch (after catching up with the winner)."""
        if expected_revision:
            compare = {"target": "MOD", "mod_revision": expected_revision}
        else:
            cur = self._state.get(key)
            if cur is None:
                raise KeyNotFound(key)
            compare = {"target": "CREATE", "create_revision": cur.create_revision}
        ok, rev, current = await self._txn(key, compare, success)
        if not ok:
            if current is None:
                raise KeyNotFound(key)
            await self._caught_up(current.mod_revision)
            raise RevisionMismatch(key, current)
        await self._visible(rev)
        return rev

    async def compact(self, revision: int) -> None:
        revision = min(revision, self._state.revision)
        if revision <= self._state.compacted:
            return
        try:
            await self._call("/v3/kv/compaction", {"revision": revision}, timeout=60)
        except StoreError as exc:
            if "compacted" not in str(exc):  # another server compacted further already
                raise
        self._state.compacted = revision
        log.info("etcd compacted at revision %d", revision)


class _CompactedAway(Exception):
    def __init__(self, compacted: int) -> None:
        super().__init__(f"compacted at {compacted}")
        self.compacted = compacted
