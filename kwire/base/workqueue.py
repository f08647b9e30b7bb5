"""client-go's workqueue in small: the one keyed queue every reconcile loop in kwire runs on.

A key that is added while already queued is queued once; a key that is added while a worker is processing it is
processed once more after that worker is done (never by two workers at the same time); failed keys come back after
a per-key exponential back-off (`forget` on success clears it, so no per-key state outlives its key); `add_after`
schedules a key for later (for things that become true with time, such as minReadySeconds or a grace period).

`process` is the worker loop every user runs on it (client-go's processNextWorkItem): the controllers, the
kubelet's pod workers and Flannel's route loop differ only in what they sync and how they report a failure.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


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

    async def process(
        self,
        sync: Callable[[K], Awaitable[float | None]],
        *,
        failed: Callable[[K, Exception, float | None], None],
        give_up: Callable[[K, Exception], bool] | None = None,
    ) -> None:
        """A worker: take a key, `sync(key)`, repeat until the queue is shut down; one worker holds a key at a time.

        A sync that returns forgets the key's back-off, and when it returns a number of seconds the key is looked
        at again after that long. A sync that raises puts the key back after its exponential back-off, or drops it
        until it is added again when `give_up(key, exc)` says so; `failed(key, exc, delay)` reports it (delay None:
        dropped), inside the `except` so that it may log the traceback."""
        while True:
            try:
                key = await self.get()
            except ShutDown:
                return
            try:
                again = await sync(key)
            except Exception as exc:
                if give_up is not None and give_up(key, exc):
                    self.forget(key)
                    failed(key, exc, None)
                else:
                    failed(key, exc, self.add_rate_limited(key))
            else:
                self.forget(key)
                if again is not None:
                    self.add_after(key, again)
            finally:
                self.done(key)

    def shutdown(self) -> None:
        self._shutdown = True
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
