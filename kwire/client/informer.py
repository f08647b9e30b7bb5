"""Informers: a local cache of one resource kept current by list + watch (client-go's reflector, in small).

List first, then watch from the list's resourceVersion; a dropped watch resumes from the last resourceVersion
seen (BOOKMARK events included); 410 Gone means relist, and the relist is delivered to handlers as the
difference (add/update/delete) against the cache. Handlers may be sync or async; indexers map an object to
index values for fast lookups (e.g. pods by node).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

from kwire.base.backoff import Backoff
from kwire.base.keys import key_of
from kwire.base.tasks import cancel_and_wait
from kwire.client.client import ApiClient, ApiStatusError, Gone, Resource

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Handler = Callable[..., Any]


@dataclass(eq=False, repr=False)
class Informer:
    client: ApiClient
    resource: Resource
    _: KW_ONLY
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None

    def __post_init__(self) -> None:
        self._cache: dict[str, Obj] = {}
        self._indexers: dict[str, Callable[[Obj], list[str]]] = {}
        self._indices: dict[str, dict[str, set[str]]] = {}
        self._on_add: list[Handler] = []
        self._on_update: list[Handler] = []
        self._on_delete: list[Handler] = []
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.resource_version = ""  # the last seen: a restarted informer resumes from it

    # -- registration --------------------------------------------------------------------------------------
    def on_add(self, fn: Handler) -> None:
        self._on_add.append(fn)

    def on_update(self, fn: Handler) -> None:
        self._on_update.append(fn)

    def on_delete(self, fn: Handler) -> None:
        self._on_delete.append(fn)

    def add_indexer(self, name: str, fn: Callable[[Obj], list[str]]) -> None:
        self._indexers[name] = fn
        idx: dict[str, set[str]] = {}
        for k, obj in self._cache.items():
            for v in fn(obj):
                idx.setdefault(v, set()).add(k)
        self._indices[name] = idx

    # -- reads ---------------------------------------------------------------------------------------------
    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._synced.wait(), timeout)

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self._cache.get(f"{namespace}/{name}" if namespace else name)

    def items(self) -> list[Obj]:
        return list(self._cache.values())

    def by_index(self, name: str, value: str) -> list[Obj]:
        return [self._cache[k] for k in sorted(self._indices.get(name, {}).get(value, ())) if k in self._cache]

    # -- cache ---------------------------------------------------------------------------------------------
    def _index(self, key: str, obj: Obj | None, old: Obj | None) -> None:
        for name, fn in self._indexers.items():
            idx = self._indices[name]
            if old is not None:
                for v in fn(old):
                    s = idx.get(v)
                    if s is not None:
                        s.discard(key)
                        if not s:
                            del idx[v]
            if obj is not None:
                for v in fn(obj):
                    idx.setdefault(v, set()).add(key)

    async def _call(self, handlers: list[Handler], *args: Obj) -> None:
        for fn in handlers:
            try:
                res = fn(*args)
                if inspect.isawaitable(res):
                    await res
            except Exception:
                log.exception("informer %s: handler failed", self.resource.plural)

    async def _apply(self, etype: str, obj: Obj) -> None:
        key = key_of(obj)
        old = self._cache.get(key)
        if etype == "DELETED":
            if old is not None:
                del self._cache[key]
                self._index(key, None, old)
                await self._call(self._on_delete, obj)
            return
        self._cache[key] = obj
        self._index(key, obj, old)
        if old is None:
            await self._call(self._on_add, obj)
        elif old.get("metadata", {}).get("resourceVersion") != obj.get("metadata", {}).get("resourceVersion"):
            await self._call(self._on_update, old, obj)

    async def _relist(self) -> None:
        out = await self.client.list_all(
            self.resource, self.namespace, label_selector=self.label_selector, field_selector=self.field_selector
        )
        fresh = {key_of(o): o for o in out.get("items") or []}
        for key in list(self._cache):
            if key not in fresh:
                await self._apply("DELETED", self._cache[key])
        for obj in fresh.values():
            await self._apply("MODIFIED", obj)
        self.resource_version = str((out.get("metadata") or {}).get("resourceVersion", ""))
        self._synced.set()

    async def run(self) -> None:
        backoff = Backoff(0.2, 5.0)
        # A restarted informer resumes from where it was; only a fresh one (or a 410) lists.
        need_list = not self.resource_version
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                async for etype, obj in self.client.watch(
                    self.resource,
                    self.namespace,
                    resource_version=self.resource_version,
                    label_selector=self.label_selector,
                    field_selector=self.field_selector,
                    timeout_seconds=300,
                ):
                    backoff.reset()
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        self.resource_version = str(rv)
                    if etype != "BOOKMARK":
                        await self._apply(etype, obj)
            except asyncio.CancelledError:
                raise
            except Gone:
                log.info(
                    "informer %s: resourceVersion %s is gone; relisting", self.resource.plural, self.resource_version
                )
                need_list = True
            except (TimeoutError, ApiStatusError, OSError, ValueError) as exc:
                log.debug("informer %s: watch ended: %s", self.resource.plural, exc)
                await backoff.sleep()
            except Exception as exc:  # aiohttp client errors and anything unexpected: retry, never die
                log.warning("informer %s: %s", self.resource.plural, exc)
                await backoff.sleep()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


class Informers:
    """One shared informer per (resource, namespace, selectors)."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self._informers: dict[tuple[Any, ...], Informer] = {}

    def get(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Informer:
        key = (resource, namespace, label_selector, field_selector)
        inf = self._informers.get(key)
        if inf is None:
            inf = Informer(
                self.client, resource, namespace=namespace, label_selector=label_selector, field_selector=field_selector
            )
            self._informers[key] = inf
        return inf

    def start(self) -> None:
        for inf in self._informers.values():
            inf.start()

    async def wait_synced(self, timeout: float = 30.0) -> None:
        await asyncio.gather(*(inf.wait_synced(timeout) for inf in self._informers.values()))

    async def stop(self) -> None:
        for inf in self._informers.values():
            await inf.stop()
