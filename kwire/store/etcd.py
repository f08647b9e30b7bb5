"""etcd v3 backend of the revisioned store (`--datastore-endpoint http(s)://...`), as kube-apiserver uses etcd.

The client speaks etcd's gRPC API (KV Range/Txn/Compact, the Watch stream) with grpcio and the stubs the aetcd
package generates from etcd's rpc.proto (kube-apiserver's client is gRPC too). Measured before choosing
(bench/ha.py, README): through etcd's JSON gateway a txn cost the member serving it about twice the CPU (0.8 vs
0.4 ms, one member, 16 in flight) and each write an extra hop inside etcd; through the API, gRPC took a
one-member etcd from 170-314 to 354-595 writes/s and three members from 145-192 to 282-288 (p99 333-409 ms ->
142-153 ms), alternated in one run. Its price: importing grpcio and the stubs adds ~30 MB to a server, so only a
server on etcd imports this module. Every call in flight is its own HTTP/2 stream on one channel, so concurrent
writes reach etcd together and share its raft entries and fsyncs. The gateway is still used where nothing is hot
(cluster membership, snapshots: etcdcluster.py, snapshots.py).

Revisions are etcd's: a write's resourceVersion is the etcd revision of its transaction, a watch resumes from a
revision, compaction is etcd's (older revisions: 410 Gone). Writes are transactions with compare-and-swap on
`create_revision` (create), `mod_revision` (update, delete). As kube-apiserver's watch cache does, the server keeps
the live state in memory (`LiveState`), fed only by one etcd watch on the whole prefix, so reads, lists and
watches never wait for etcd; a write returns once the watch has delivered it, so a client reads its own writes
and a list's resourceVersion is always one the watch has passed (other servers' writes arrive the same way): most
writes are already there when the txn response arrives, the others wait a few ms (kube-apiserver instead returns
on the txn response and makes reads consistent; here reads would then have to wait instead). The watch does not
ask for prev_kv: an event's previous value is the mirror's, which holds every live key. If the watch falls off
the compaction window (etcd compacted past it), the state is reloaded and every local watcher ends, so clients
relist. Events' TTL leases are not used (kwire keeps Events like any object).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

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
WRITE_VISIBLE_TIMEOUT = 10.0  # a write not seen on the watch by then: the caller gets a StoreError
CALL_TIMEOUT = 10.0  # one request; etcd's own request timeout is 5 s + 2 election timeouts
# The largest message accepted from etcd: a watch response carries the events of a revision (values up to etcd's
# 1.5 MiB --max-request-bytes each) and a range page up to PAGE values; grpc's own default is 4 MiB.
MAX_MESSAGE = 64 * 1024 * 1024
# Worth trying the call on the next endpoint: the request never reached a member (a txn that timed out may have
# been applied, so it is not retried; the next call goes to the next endpoint).
_RETRY_CODES = (grpc.StatusCode.UNAVAILABLE,)
_MOVE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class ClientTls:
    """PEM bytes for a TLS connection to etcd: the CA to trust (None: the system's) and a client certificate."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @staticmethod
    def from_files(ca: str | Path | None, cert: str | Path | None, key: str | Path | None) -> ClientTls:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        ca_pem = read(ca) or read(ssl.get_default_verify_paths().cafile)
        cert_pem = read(cert)
        return ClientTls(ca_pem, cert_pem, read(key) or cert_pem)  # no key file: the key is in the certificate's


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for every key starting with `prefix` (its last byte plus one)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision)


def _target(endpoint: str) -> str:
    return endpoint.split("://", 1)[1].rstrip("/")


class _Stubs:
    """One endpoint's channel and the stubs on it."""

    def __init__(self, endpoint: str, tls: ClientTls | None) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
        if endpoint.startswith("https://"):
            tls = tls or ClientTls.from_files(None, None, None)
            creds = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
            self.channel = grpc.aio.secure_channel(_target(endpoint), creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(_target(endpoint), options=options)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)


class EtcdStore(MirroredStore):
    def __init__(
        self,
        endpoints: list[str],
        *,
        tls: ClientTls | None = None,
        history: int = 20000,
        prefix: str = PREFIX,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self._endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0
        self._tls = tls
        self._prefix = prefix
        self._key_prefix = prefix.encode()
        self._state = LiveState(history=history)
        self._channels: dict[int, _Stubs] = {}  # endpoint index -> its channel, opened when first used
        self._task: asyncio.Task[None] | None = None
        # Writers waiting for the watch to reach their revision: a heap of (revision, seq, future), so the watch
        # wakes only those whose revision it passed (a Condition's notify_all woke every waiter per message).
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self, *, timeout: float = 30.0) -> None:
        """Connect (trying every endpoint), load the live state, and follow it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            try:
                await self._load()
                break
            except StoreError as exc:
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
        for stubs in self._channels.values():
            await stubs.channel.close()
        self._channels.clear()

    # -- gRPC --------------------------------------------------------------------------------------------------
    def _stubs(self, index: int) -> _Stubs:
        """The channel to endpoint `index`: one per endpoint, kept open (grpc reconnects it by itself), so moving
        to another endpoint never cuts the calls still running on this one."""
        stubs = self._channels.get(index)
        if stubs is None:
            stubs = self._channels[index] = _Stubs(self._endpoints[index], self._tls)
        return stubs

    def _next_endpoint(self, failed: int) -> None:
        """Move to the next endpoint, unless another call already moved off the failed one."""
        if self._current == failed:
            self._current = (failed + 1) % len(self._endpoints)

    async def _unary(self, method: str, request: Any, *, timeout: float = CALL_TIMEOUT) -> Any:
        """One KV call, tried on every endpoint in turn while the members cannot be reached."""
        last: grpc.aio.AioRpcError | None = None
        for _ in range(len(self._endpoints)):
            index = self._current
            try:
                return await getattr(self._stubs(index).kv, method)(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                last = exc
                if exc.code() in _MOVE_CODES:
                    self._next_endpoint(index)
                # etcd's own errors ("etcdserver: request timed out ...") come from a member that had the request
                # and may have applied it; only a request that never reached one is sent again.
                if exc.code() not in _RETRY_CODES or (exc.details() or "").startswith("etcdserver:"):
                    break
        assert last is not None
        raise StoreError(f"etcd {method}: {last.code().name} {last.details()}")

    async def _load(self) -> None:
        kvs: list[KV] = []
        key = self._key_prefix
        end = _prefix_end(self._key_prefix)
        revision = 0
        while True:
            # Every page at the first page's revision: one consistent snapshot.
            res = await self._unary(
                "Range", rpc_pb2.RangeRequest(key=key, range_end=end, limit=PAGE, revision=revision)
            )
            revision = revision or res.header.revision
            page = [_kv(o) for o in res.kvs]
            kvs.extend(page)
            if not res.more or not page:
                break
            key = page[-1].key.encode() + b"\0"
        self._state.close_watchers()  # watchers of a previous state cannot be continued
        self._state.load(kvs, revision=revision)
        self._wake()
        log.info("etcd store loaded: %d keys at revision %d", len(kvs), revision)

    # -- the watch that feeds the state ----------------------------------------------------------------------
    async def _follow(self) -> None:
        delay = 0.2
        while True:
            index = self._current
            try:
                await self._watch_once(self._stubs(index))
                delay = 0.2
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # closing the store; otherwise grpc cancelled the call (its channel went away): again
                log.warning("etcd watch cancelled; resuming from revision %d", self._state.revision)
                await asyncio.sleep(delay)
            except _CompactedAway as exc:
                log.warning("etcd compacted past revision %d (now %d): reloading", self._state.revision, exc.compacted)
                self._state.compacted = exc.compacted
                try:
                    await self._load()
                except StoreError as err:
                    log.warning("etcd reload failed (%s); retrying", err)
                    await asyncio.sleep(delay)
            except Exception as exc:  # noqa: BLE001 - etcd restarts, a member goes away: watch again
                log.warning("etcd watch ended (%s); resuming from revision %d", exc, self._state.revision)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._next_endpoint(index)

    async def _watch_once(self, stubs: _Stubs) -> None:
        create = rpc_pb2.WatchCreateRequest(
            key=self._key_prefix,
            range_end=_prefix_end(self._key_prefix),
            start_revision=self._state.revision + 1,
            progress_notify=True,
        )
        call = stubs.watch.Watch()
        try:
            await call.write(rpc_pb2.WatchRequest(create_request=create))
            async for resp in call:
                self._on_watch_response(resp)
        finally:
            call.cancel()
        raise StoreError("watch stream closed")

    def _on_watch_response(self, resp: Any) -> None:
        if resp.compact_revision:
            raise _CompactedAway(resp.compact_revision)
        if resp.canceled:
            raise StoreError(f"etcd canceled the watch: {resp.cancel_reason}")
        for ev in resp.events:
            kv = _kv(ev.kv)
            # The previous value is the mirror's: it holds every live key at the revision before this event, so
            # the watch does not ask etcd for prev_kv (a backend read per event on the member, and the value
            # again in every message).
            prev = self._state.get(kv.key)
            if ev.type == _DELETE:
                value = prev.value if prev else b""
                self._state.remove(kv.key)
                self._state.publish(Event(DELETED, kv.key, kv.mod_revision, value, value))
            else:
                self._state.put(kv)
                kind = ADDED if kv.create_revision == kv.mod_revision else MODIFIED
                self._state.publish(Event(kind, kv.key, kv.mod_revision, kv.value, prev.value if prev else None))
        if not resp.events and resp.header.revision > self._state.revision and not resp.created:
            self._state.revision = resp.header.revision  # a progress notification: nothing under our prefix until then
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
    async def _txn(self, key: str, compare: Any, success: Any) -> tuple[bool, int, KV | None]:
        """One compare-and-swap on `key`; on failure etcd returns the key's current state (if any)."""
        k = key.encode()
        failure = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))
        res = await self._unary("Txn", rpc_pb2.TxnRequest(compare=[compare], success=[success], failure=[failure]))
        rev = res.header.revision
        if res.succeeded:
            return True, rev, None
        kvs = res.responses[0].response_range.kvs if res.responses else []
        return False, rev, _kv(kvs[0]) if kvs else None

    @staticmethod
    def _compare(key: str, *, create_revision: int | None = None, mod_revision: int | None = None) -> Any:
        if mod_revision is not None:
            return rpc_pb2.Compare(
                key=key.encode(), result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD, mod_revision=mod_revision
            )
        return rpc_pb2.Compare(
            key=key.encode(),
            result=rpc_pb2.Compare.EQUAL,
            target=rpc_pb2.Compare.CREATE,
            create_revision=create_revision or 0,
        )

    @staticmethod
    def _put(key: str, value: bytes) -> Any:
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key.encode(), value=value))

    def _existing(self, key: str, expected_revision: int) -> Any:
        """The compare of an update or delete: the expected mod_revision, or (unconditional) that the key still
        is the one the mirror holds, i.e. exists."""
        if expected_revision:
            return self._compare(key, mod_revision=expected_revision)
        cur = self._state.get(key)
        if cur is None:
            raise KeyNotFound(key)
        return self._compare(key, create_revision=cur.create_revision)

    async def create(self, key: str, value: bytes) -> int:
        ok, rev, _ = await self._txn(key, self._compare(key, create_revision=0), self._put(key, value))
        if not ok:
            raise KeyExists(key)
        await self._visible(rev)
        return rev

    async def update(self, key: str, value: bytes, *, expected_revision: int) -> int:
        ok, rev, current = await self._txn(key, self._existing(key, expected_revision), self._put(key, value))
        if not ok:
            if current is None:
                raise KeyNotFound(key)
            raise RevisionMismatch(key, current)
        await self._visible(rev)
        return rev

    async def delete(self, key: str, *, expected_revision: int = 0) -> int:
        op = rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key.encode()))
        ok, rev, current = await self._txn(key, self._existing(key, expected_revision), op)
        if not ok:
            if current is None:
                raise KeyNotFound(key)
            raise RevisionMismatch(key, current)
        await self._visible(rev)
        return rev

    async def compact(self, revision: int) -> None:
        revision = min(revision, self._state.revision)
        if revision <= self._state.compacted:
            return
        try:
            await self._unary("Compact", rpc_pb2.CompactionRequest(revision=revision), timeout=60)
        except StoreError as exc:
            if "compacted" not in str(exc):  # another server compacted further already
                raise
        self._state.compacted = revision
        log.info("etcd compacted at revision %d", revision)


_DELETE = 1  # mvccpb.Event.DELETE


class _CompactedAway(Exception):
    def __init__(self, compacted: int) -> None:
        super().__init__(f"compacted at {compacted}")
        self.compacted = compacted
