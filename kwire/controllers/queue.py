"""The `Controller` base class every controller runs on (start/stop, worker loop over `kwire.base.workqueue`).

A controller declares what it is (`name`, `workers`, the Events' `component`) as class attributes and, in its
constructor, which shared informers it reads (`informer(resource, indexed=...)`) and which of their events become
keys (`enqueue_on_change`, `on_change`, or its own handlers): kube-controller-manager's controllers share one
informer factory and each owns a rate-limited workqueue the same way. The base gives every controller its
`EventRecorder` for that component.

`Controller.sync(key)` reconciles one key from the informer caches. What it raises decides what happens:
API errors (a 409 Conflict from a stale cache included) and connection errors are retried with back-off
for as long as they happen; any other exception (a bug, or an object shaped in a way nobody expected) is
logged and retried a few times, then dropped until the object changes again. A worker never dies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from kwire.base.keys import key_of
from kwire.base.tasks import cancel_and_wait
from kwire.base.workqueue import WorkQueue
from kwire.client import ApiClient, ApiStatusError, Informer, Informers, Resource
from kwire.client.events import EventRecorder
from kwire.controllers.common import add_indexes

log = logging.getLogger(__name__)

MAX_UNEXPECTED_FAILURES = 5


class RetryLater(Exception):
    """Raised by a sync that made progress but must be retried with back-off (e.g. a pod could not be created)."""


# What a sync raises when the API or the connection is in the way: retried with back-off for as long as it lasts.
RETRIED = (RetryLater, ApiStatusError, OSError, TimeoutError, aiohttp.ClientError)


class Controller:
    """A reconciler over informer caches: subclasses register informer handlers and implement `sync`.

    `sync(key)` may return a number of seconds after which the key should be looked at again (or None).
    """

    name = "controller"
    workers = 1
    component = ""  # the `source.component` of its Events (kube's "deployment-controller"); "" means `name`

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        self.client = client
        self.informers = informers
        self.recorder = EventRecorder(client, component=self.component or self.name)
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
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()

    def enqueue(self, key: str | None) -> None:
        if key:
            self.queue.add(key)

    def informer(
        self,
        resource: Resource,
        *,
        indexed: bool = False,
        namespace: str | None = None,
        field_selector: str | None = None,
    ) -> Informer:
        """The shared informer of `resource` (one per resource and selector for all controllers, as kube's
        SharedInformerFactory); `indexed` registers the controllers' namespace, owner and node indexes on it."""
        inf = self.informers.get(resource, namespace=namespace, field_selector=field_selector)
        if indexed:
            add_indexes(inf)
        return inf

    def on_change(self, informer: Informer, handler: Callable[[Any], object], *, deletes: bool = True) -> None:
        """Call `handler(obj)` when an object of `informer` is added, updated (with the new object) and, unless
        `deletes=False`, deleted: kube's ResourceEventHandlerFuncs with one function for all three events."""
        informer.on_add(handler)
        informer.on_update(lambda _old, new: handler(new))
        if deletes:
            informer.on_delete(handler)

    def enqueue_on_change(self, informer: Informer) -> None:
        """Sync an object of `informer` (by its namespace/name key) whenever it is added or updated: the AddFunc
        and UpdateFunc every kube controller registers for the kind it owns."""
        self.on_change(informer, lambda obj: self.enqueue(key_of(obj)), deletes=False)

    async def _worker(self) -> None:
        await self.queue.process(self.sync, failed=self._failed, give_up=self._give_up)

    def _give_up(self, key: str, exc: Exception) -> bool:
        """API and connection errors are retried for as long as they happen; anything else a few times."""
        return not isinstance(exc, RETRIED) and self.queue.failures(key) >= MAX_UNEXPECTED_FAILURES

    def _failed(self, key: str, exc: Exception, delay: float | None) -> None:
        if isinstance(exc, RETRIED):
            self.log.info("%s: %s: %s (retrying in %.2fs)", self.name, key, exc, delay)
        elif delay is not None:
            self.log.exception("%s: syncing %s failed (retrying in %.2fs)", self.name, key, delay)
        else:
            self.log.exception("%s: syncing %s failed again; dropping it until it changes", self.name, key)
