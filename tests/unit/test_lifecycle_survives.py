"""The in-server garbage collector and namespace deletion keep working after a burst of writes ends their store
watch (issue 17: after 60k creates in 15 s they used to stop for good until the server restarted)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import kwire.store.live as live_mod
from kwire.api.allocator import ServiceAllocator
from kwire.api.lifecycle import Lifecycle
from kwire.api.registry import by_path
from kwire.api.resources import Resources
from kwire.store.sqlite import SQLiteStore

CONFIGMAPS = by_path("", "v1", "configmaps")
NAMESPACES = by_path("", "v1", "namespaces")


async def _wait_gone(res: Resources, ns: str, name: str, *, kind=CONFIGMAPS, timeout: float = 5.0) -> None:
    assert kind is not None
    end = asyncio.get_running_loop().time() + timeout
    while res.get_or_none(kind, ns, name) is not None:
        assert asyncio.get_running_loop().time() < end, f"{ns}/{name} was never deleted"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _lifecycle(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, Resources]]:
    """Resources on a fresh SQLite store with the Lifecycle (garbage collector, namespace deletion) running;
    stopped and the store closed on exit."""
    store = SQLiteStore(tmp_path / "state.db")
    res = Resources(store, allocator=ServiceAllocator(service_cidr="10.43.0.0/16", node_port_range=(30000, 32767)))
    await res.load()
    lc = Lifecycle(res)
    await lc.start()
    try:
        yield store, res
    finally:
        await lc.stop()
        store._db.close()


async def test_gc_and_namespace_deletion_survive_an_overflowed_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert CONFIGMAPS is not None and NAMESPACES is not None
    monkeypatch.setattr(live_mod, "_MAX_PENDING", 50)  # the same overflow as 50,000 pending events, sooner
    async with _lifecycle(tmp_path) as (_store, res):
        await res.create(NAMESPACES, None, {"metadata": {"name": "burst"}})
        owner = await res.create(CONFIGMAPS, "burst", {"metadata": {"name": "owner"}})
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
        # A burst of writes with ownerReferences in one go, without yielding: far more than the watch buffers.
        for i in range(400):
            await res.create(CONFIGMAPS, "burst", {"metadata": {"name": f"dep{i}", "ownerReferences": [ref]}})
        await asyncio.sleep(0.2)
        # The garbage collector still acts: deleting the owner removes every dependent.
        await res.delete(CONFIGMAPS, "burst", "owner")
        for i in range(400):
            await _wait_gone(res, "burst", f"dep{i}")
        # And namespace deletion still acts.
        await res.create(CONFIGMAPS, "burst", {"metadata": {"name": "left"}})
        await res.delete(NAMESPACES, None, "burst")
        await _wait_gone(res, "burst", "left")
        await _wait_gone(res, None, "burst", kind=NAMESPACES)  # type: ignore[arg-type]


async def test_lifecycle_keeps_exactly_one_store_watch_and_reads_it(tmp_path: Path) -> None:
    """The soak bench's server memory leak: start() used to open a watch it never read, which kept every write's
    event (value and previous value) until 50,000 events or 64 MB were pending. One watch, caught up, and none
    left once stopped."""
    assert CONFIGMAPS is not None
    async with _lifecycle(tmp_path) as (store, res):
        assert NAMESPACES is not None
        await res.create(NAMESPACES, None, {"metadata": {"name": "steady"}})
        for i in range(300):
            await res.create(CONFIGMAPS, "steady", {"metadata": {"name": f"cm{i}"}})
        await asyncio.sleep(0.2)
        watchers = [w for w in store._state.watchers if w._prefix == "/registry/"]
        assert len(watchers) == 1
        assert watchers[0]._queue.qsize() == 0
    assert [w for w in store._state.watchers if w._prefix == "/registry/"] == []  # none left once stopped
