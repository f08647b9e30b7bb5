"""Keeps an in-memory index current from the store: list a prefix, then follow its watch; relist with back-off.

What the authorizers read (RBAC objects, pods for the node graph) and the webhook configurations admission calls
(kwire.api.webhookadmission) come from here, as kube-apiserver's RBAC authorizer and admission plugins read shared
informers: a decision never waits for the store. The pattern is the informers': a watch that ends or fails (410
Compacted, a store error, anything but cancellation) is followed by a relist after a Backoff of 0.5 s doubling to
30 s, reset by every event received; a relist that fails is retried the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import orjson

from kwire.base.backoff import Backoff
from kwire.base.tasks import cancel_and_wait
from kwire.store.base import DELETED, Compacted, Store

log = logging.getLogger(__name__)

Apply = Callable[[str, dict[str, Any] | None], None]


@dataclass(eq=False)
class Follower:
    """Feeds `apply(key, obj | None)` with every object under `prefix`; `reset()` before each relist."""

    store: Store
    prefix: str
    _: KW_ONLY
    apply: Apply
    reset: Callable[[], None]
    name: str
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0), init=False, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    async def start(self) -> None:
        revision = await self._relist()
        self._task = asyncio.create_task(self._follow(revision))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _relist(self) -> int:
        res = await self.store.range(self.prefix)
        self.reset()
        for kv in res.items:
            self._apply(kv.key, kv.value)
        return res.revision

    def _apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.apply(key, None)
            return
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            log.warning("%s: undecodable value at %s", self.name, key)
            return
        if isinstance(obj, dict):
            self.apply(key, obj)

    async def _follow(self, revision: int) -> None:
        backoff = self.backoff
        while True:
            try:
                async for ev in self.store.watch(self.prefix, from_revision=revision):
                    revision = ev.revision
                    self._apply(ev.key, None if ev.type == DELETED else ev.value)
                    backoff.reset()
                log.warning("%s: watch ended (cut off by the store); relisting", self.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any watch failure: relist, as informers do
                if not isinstance(exc, Compacted):
                    log.warning("%s: watch failed: %s; relisting", self.name, exc)
            await backoff.sleep()
            try:
                revision = await self._relist()
            except Exception:  # noqa: BLE001
                log.exception("%s: relisting failed", self.name)
