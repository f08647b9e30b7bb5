"""An in-memory stand-in for `kwire.client.Informer` (cache, event handlers, indexers), for unit tests and
benchmarks that drive a reconciler without an API server."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from kwire.base.keys import key_of

Obj = dict[str, Any]


class FakeInformer:
    def __init__(self) -> None:
        self.objs: dict[str, Obj] = {}
        self.handlers: dict[str, list[Callable[..., Any]]] = {"add": [], "update": [], "delete": []}
        self.indexers: dict[str, Callable[[Obj], list[str]]] = {}

    # -- the Informer interface reconcilers use ------------------------------------------------------------------
    def on_add(self, fn: Callable[..., Any]) -> None:
        self.handlers["add"].append(fn)

    def on_update(self, fn: Callable[..., Any]) -> None:
        self.handlers["update"].append(fn)

    def on_delete(self, fn: Callable[..., Any]) -> None:
        self.handlers["delete"].append(fn)

    def add_indexer(self, name: str, fn: Callable[[Obj], list[str]]) -> None:
        self.indexers[name] = fn

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self.objs.get(f"{namespace}/{name}" if namespace else name)

    def items(self) -> list[Obj]:
        return list(self.objs.values())

    def by_index(self, name: str, value: str) -> list[Obj]:
        return [o for o in self.objs.values() if value in self.indexers[name](o)]

    # -- driving it ----------------------------------------------------------------------------------------------
    def _fire(self, event: str, *args: Obj) -> list[Awaitable[Any]]:
        pending = []
        for fn in self.handlers[event]:
            res = fn(*args)
            if inspect.isawaitable(res):
                pending.append(res)
        return pending

    def put(self, obj: Obj) -> list[Awaitable[Any]]:
        """Add or update `obj` and call the handlers; returns what async handlers still have to run."""
        key = key_of(obj)
        old = self.objs.get(key)
        self.objs[key] = obj
        return self._fire("update", old, obj) if old is not None else self._fire("add", obj)

    def remove(self, obj: Obj) -> list[Awaitable[Any]]:
        gone = self.objs.pop(key_of(obj))
        return self._fire("delete", gone)

    async def aput(self, obj: Obj) -> None:
        for a in self.put(obj):
            await a

    async def aremove(self, obj: Obj) -> None:
        for a in self.remove(obj):
            await a
