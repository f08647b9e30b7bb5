"""The one nftables reconciler of the node agent, shared by the service proxy, NetworkPolicy and Flannel's
masquerade table: dirty keys -> desired Table -> diff against what was applied -> ONE transaction -> table-presence
check -> metrics. kube-proxy's BoundedFrequencyRunner plus its nftables proxier's sync, in small.

- `mark(key)` records what changed (any number of events for a key collapse into one) and asks for a sync; the
  reconciler syncs at most once per `min_period` (events arriving meanwhile join that sync), and wakes at least once
  per `max_period` (by default the presence check's period) for the presence check and periodic resyncs.
- The owner's `compute(keys, resync=...)` returns the whole desired `Table` from its caches; `resync` asks it to
  recompute everything, and the table is then replaced whole (first sync, after a failure, after the table vanished,
  and every `resync_period` when one is given: kube-router's periodic full sync). The owner never tracks what was
  applied: the reconciler keeps the last applied Table, and a failed transaction simply makes the next one a
  whole-table replace (`applied` is forgotten) after a `Backoff` of `RETRY_AFTER_FAILURE` (1 s) doubling to
  `RETRY_CAP` (30 s, kube-proxy's default sync period, the longest it waits to retry a failed sync), reset by the
  next sync that succeeds: a transaction the kernel keeps refusing is not retried (nor reported as a Node Event)
  every second.
- After each sync attempt the `observer` (kwire/agent/metrics.py: kube-proxy's or kube-router's metrics) hears of
  it, and a failed one is handed to `on_failure` (the agent records it as an Event on its Node).
- Every `table_check_period` the reconciler asks the applier whether the table is still there (kube-proxy's canary
  chains; a table of our own is its own canary); a vanished table is restored by a replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from kwire.base.backoff import Backoff
from kwire.base.tasks import cancel_and_wait
from kwire.kernel import nft

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE = 1.0  # the first wait after a failed sync
RETRY_CAP = 30.0  # the longest (kube-proxy's default --iptables-sync-period / nftables sync period)


class Compute(Protocol):
    def __call__(self, keys: set[str], *, resync: bool) -> nft.Table: ...


class SyncObserver(Protocol):
    """Told of every sync attempt: a committed one (whole-table or partial, its duration, the seconds since the
    first change it picked up was marked, the table's chain count) or a failed one."""

    def synced(self, *, full: bool, seconds: float, latency: float | None, rules: int) -> None: ...

    def failed(self) -> None: ...


@dataclass
class SyncStats:
    full: int = 0
    partial: int = 0
    failed: int = 0
    last_seconds: float = 0.0
    history: deque[float] = field(default_factory=lambda: deque(maxlen=100))  # seconds per sync
    # Seconds from the first change a sync picked up being marked until its transaction committed.
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


class NftReconciler:
    def __init__(
        self,
        *,
        name: str,
        compute: Compute,
        applier: nft.Applier | None = None,
        min_period: float,
        max_period: float | None = None,
        table_check_period: float = 5.0,
        resync_period: float | None = None,
        after: Callable[[nft.Table, nft.Transaction], Awaitable[None]] | None = None,
        observer: SyncObserver | None = None,
    ) -> None:
        self.observer = observer
        self.on_failure: Callable[[Exception], Awaitable[None]] | None = None
        self.name = name
        self._compute = compute
        self.applier: nft.Applier = applier if applier is not None else nft.KernelApplier()
        self.min_period = min_period
        self.max_period = max_period if max_period is not None else table_check_period
        self.table_check_period = table_check_period
        self.resync_period = resync_period
        self._after = after
        self.applied: nft.Table | None = None  # what the kernel holds as far as we know (None: replace next)
        self.last: nft.Transaction | None = None
        self.stats = SyncStats()
        self.event = asyncio.Event()
        self.committed = asyncio.Event()  # set after every successful sync
        self._dirty: set[str] = set()
        self._pending_since: float | None = None
        self._resync = True
        self._last_check = time.monotonic()
        self._last_resync = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.backoff = Backoff(RETRY_AFTER_FAILURE, RETRY_CAP)  # after a failed sync

    # -- what owners call ---------------------------------------------------------------------------------------
    def mark(self, key: str) -> None:
        self._dirty.add(key)
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self.event.set()

    def resync(self) -> None:
        """Recompute everything and replace the whole table at the next sync."""
        self._resync = True
        self.event.set()

    @property
    def pending(self) -> bool:
        return bool(self._dirty) or self._resync or self.event.is_set()

    def start(self) -> None:
        self.event.set()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-nft")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    # -- the loop -----------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        last = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), timeout=self.max_period)
            wait = self.min_period - (time.monotonic() - last)
            if wait > 0:
                await asyncio.sleep(wait)  # rate limit: events arriving meanwhile join this sync
            self.event.clear()
            last = time.monotonic()
            try:
                await self.sync()
                self.backoff.reset()
            except Exception as exc:
                self.stats.failed += 1
                self.applied = None
                self._resync = True
                log.warning("%s: sync failed (%s); the next sync replaces the whole table", self.name, exc)
                if self.observer is not None:
                    self.observer.failed()
                if self.on_failure is not None:
                    with contextlib.suppress(Exception):  # reporting must never stop the loop
                        await self.on_failure(exc)
                await self.backoff.sleep()
                self.event.set()

    async def _table_gone(self) -> bool:
        now = time.monotonic()
        if self.applied is None or now - self._last_check < self.table_check_period:
            return False
        self._last_check = now
        family, table = self.applied.ident
        if await asyncio.to_thread(self.applier.exists, family, table):
            return False
        log.warning("%s: table %s %s is gone (flushed by someone else?); restoring it", self.name, family, table)
        return True

    async def sync(self) -> None:
        """One reconcile step: compute, diff, apply, record. Raises when the transaction fails (dirty keys kept)."""
        t0 = time.monotonic()
        if await self._table_gone():
            self.applied = None
            self._resync = True
        if self.resync_period is not None and t0 - self._last_resync >= self.resync_period:
            self._resync = True
        if self.applied is not None and not self._dirty and not self._resync:
            return  # a periodic wake-up with nothing to do
        keys, self._dirty = self._dirty, set()
        since, self._pending_since = self._pending_since, None
        resync = self._resync or self.applied is None
        try:
            desired = self._compute(keys, resync=resync)
            txn = nft.diff(None if resync else self.applied, desired)
            if not txn.empty:
                await asyncio.to_thread(self.applier.apply, txn)
        except Exception:
            self._dirty |= keys
            if since is not None:
                self._pending_since = since
            raise
        done = time.monotonic()
        self.applied = desired
        self._resync = False
        if resync:
            self._last_resync = done
        self.last = txn
        dt = done - t0
        self.stats.last_seconds = dt
        self.stats.history.append(dt)
        if since is not None:
            self.stats.latencies.append(done - since)
        if txn.kind == "replace":
            self.stats.full += 1
        else:
            self.stats.partial += 1
        if self.observer is not None and not txn.empty:
            latency = done - since if since is not None else None
            self.observer.synced(full=txn.kind == "replace", seconds=dt, latency=latency, rules=len(desired.chains))
        if self._after is not None:
            await self._after(desired, txn)
        self.committed.set()
        if not txn.empty:
            log.debug("%s: %s sync in %.1f ms", self.name, txn.kind, dt * 1e3)
