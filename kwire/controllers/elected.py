"""Controllers that run only on the elected server: kube-controller-manager's `--leader-elect` in kwire.

Every server campaigns for the `kube-system/kube-controller-manager` Lease (`leaderelection.py`); the holder runs
a `ControllerManager` (controllers, scheduler, node IPAM, add-ons). Each term gets a fresh manager, built when
leadership is won and stopped when it is lost, so no cache or queue of an earlier term leaks into the next
(kube-controller-manager exits when it loses its lease and is restarted; kwire keeps the server serving the API).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kwire.client import ApiClient, Config
from kwire.controllers.leaderelection import ElectionTiming, LeaderElector
from kwire.controllers.manager import ControllerManager

log = logging.getLogger(__name__)


class ElectedControllers:
    def __init__(
        self,
        config: Config,
        *,
        identity: str,
        build: Callable[[], ControllerManager],
        timing: ElectionTiming | None = None,
    ) -> None:
        timing = timing or ElectionTiming()
        self._client = ApiClient(config, timeout=max(1.0, timing.retry_period))
        self._build = build
        self.current: ControllerManager | None = None
        self.elector = LeaderElector(
            self._client,
            identity=identity,
            on_started_leading=self._lead,
            on_stopped_leading=self._follow,
            timing=timing,
        )

    async def _lead(self) -> None:
        self.current = self._build()
        self.current.start()

    async def _follow(self) -> None:
        manager, self.current = self.current, None
        if manager is not None:
            await manager.stop()

    async def start(self, *, first_attempt_timeout: float = 10.0) -> None:
        """Campaign; the first round runs before this returns, so a lone server leads (and has controllers) at
        once, and a restarted server re-takes the lease its identity still holds."""
        try:
            async with asyncio.timeout(first_attempt_timeout):
                if await self.elector.try_acquire_or_renew():
                    self.elector.leading = True
                    self.elector.mark_renewed()
                    await self._lead()
        except Exception as exc:  # noqa: BLE001 - the campaign loop keeps trying
            log.warning("leader election: first attempt: %s", exc)
        self.elector.start()

    async def stop(self) -> None:
        await self.elector.stop()
        await self._follow()
        await self._client.close()
