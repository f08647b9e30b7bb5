"""The keyed work queue every controller runs on, and the `Controller` base class (start/stop, worker loop).

The queue is client-go's workqueue in small: a key that is added while already queued is queued once; a key
that is added while a worker is processing it is processed once more after that worker is done (never by two
workers at the same time); failed keys come back after a per-key exponential back-off; `add_after` schedules
a key for later (for things that become true with time, such as minReadySeconds or a node's grace period).

`Controller.sync(key)` reconciles one key from the informer caches. What it raises decides what happens:
API errors (a 409 Conflict from a stale cache included) and connection errors are retried with back-off
for as long as they happen; any other exception (a bug, or an object shaped in a way nobody expected) is
logged and retried a few times, then dropped until the object changes again. A worker never dies.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

import aiohttp

from kwire.client import ApiClient, ApiStatusError, Informers

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

MAX_UNEXPECTED_FAILURES = 5


class RetryLater(Exception):
    """Raised by a sync that made progress but must be retried with back-off (e.g. a pod could not be created)."""


class ShutDown(Exception):
    """Raised by `WorkQueue.get` once the queue is shut down."""


class WorkQueue(Generic[K]):
    """Deduplicating FIFO of keys with per-key failure back-off and delayed adds."""

    def __init__(self, *, name: str = "", base_delay: float = 0.05, max_delay: float = 30.0) -> None:
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()  # keys waiting to be processed
        self._processing: set[K] = set()  # keys a worker holds right now
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._shutdown = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: K) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # re-queued by done()
        self._queue.append(key)
        self._wake()

    def add_after(self, key: K, delay: float) -> None:
        """Queue `key` after `delay` seconds; an earlier pending timer for the key wins."""
        if self._shutdown:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled():
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K) -> float:
        """Queue `key` again after its back-off (base * 2^failures, capped); returns the delay used."""
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        delay = min(self.max_delay, self.base_delay * (2**n))
        self.add_after(key, delay)
        return delay

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """The key succeeded: its back-off starts over."""
        self._failures.pop(key, None)

    async def get(self) -> K:
        while not self._queue:
            if self._shutdown:
                raise ShutDown
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake()  # pass the wake-up on to another worker
                raise
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty and not self._shutdown:
            self._queue.append(key)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def shutdown(self) -> None:
        self._shutdown = True
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)


class Controller:
    """A reconciler over informer caches: subclasses register informer handlers and implement `sync`.

    `sync(key)` may return a number of seconds after which the key should be looked at again (or None).
    """

    name = "controller"
    workers = 1

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        self.client = client
        self.informers = informers
        self.queue: WorkQueue[str] = WorkQueue(name=self.name)
        self._tasks: list[asyncio.Task[None]] = []
        self.log = logging.getLogger(f"{type(self).__module__}")

    async def sync(self, key: str) -> float | None:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Runs once the informer caches are synced, before the workers start (e.g. to rebuild allocations)."""

    async def start(self) -> None:
        await self.prepare()
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}"))

    async def stop(self) -> None:
        self.queue.shutdown()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, ShutDown):
                pass
        self._tasks.clear()

    def enqueue(self, key: str | None) -> None:
        if key:
            self.queue.add(key)

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            try:
                again = await self.sync(key)
            except asyncio.CancelledError:
                self.queue.done(key)
                raise
            except (RetryLater, ApiStatusError, OSError, TimeoutError, aiohttp.ClientError) as exc:
                delay = self.queue.add_rate_limited(key)
                self.log.info("%s: %s: %s (retrying in %.2fs)", self.name, key, exc, delay)
            except Exception:
                n = self.queue.failures(key)
                if n < MAX_UNEXPECTED_FAILURES:
                    delay = self.queue.add_rate_limited(key)
                    self.log.exception("%s: syncing %s failed (retrying in %.2fs)", self.name, key, delay)
                else:
                    self.queue.forget(key)
                    self.log.exception("%s: syncing %s failed again; dropping it until it changes", self.name, key)
            else:
                self.queue.forget(key)
                if again is not None:
                    self.queue.add_after(key, again)
            finally:
                self.queue.done(key)
