"""The sync loop shared by the agent's reconcilers (service proxy, NetworkPolicy): kube-proxy's
BoundedFrequencyRunner in small.

`kick` asks for a sync; the runner syncs at most once per `min_period` (events arriving meanwhile join that sync),
optionally at least once per `max_period` even without events, and on a failed sync it tells the owner (who then
makes the next sync a full one), waits a second and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from kwire.kernel import nft

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE = 1.0


class SyncRunner:
    def __init__(
        self,
        *,
        name: str,
        sync: Callable[[], Awaitable[None]],
        on_failure: Callable[[Exception], None],
        min_period: float,
        max_period: float | None = None,
    ) -> None:
        self.name = name
        self._sync = sync
        self._on_failure = on_failure
        self.min_period = min_period
        self.max_period = max_period
        self.event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        self.event.set()

    def start(self) -> None:
        self.event.set()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

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
                await self._sync()
            except Exception as exc:
                self._on_failure(exc)
                log.warning("%s: sync failed (%s); the next sync is a full one", self.name, exc)
                await asyncio.sleep(RETRY_AFTER_FAILURE)
                self.event.set()


class TableCheck:
    """Notices, at most every `period` seconds, that an nft table of ours was removed behind our back (a host
    firewall's `flush ruleset`, say); the owner then makes its next sync a full one. kube-proxy's iptables mode
    keeps canary chains for this; a table of our own is its own canary."""

    def __init__(self, family: str, table: str, *, period: float, owner: str) -> None:
        self.family = family
        self.table = table
        self.period = period
        self.owner = owner
        self._last = time.monotonic()

    async def gone(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.period:
            return False
        self._last = now
        if await asyncio.to_thread(nft.table_exists, self.family, self.table):
            return False
        log.warning(
            "%s: table %s %s is gone (flushed by someone else?); restoring it", self.owner, self.family, self.table
        )
        return True
