"""kwire.client against a real (in-process) kwire server: CRUD errors, paging, informers, relist on 410."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kwire.client import AlreadyExists, ApiClient, Conflict, Informer, Invalid, NotFound, load_kubeconfig
from kwire.client.client import CONFIGMAPS, NAMESPACES
from kwire.server import Server, start
from tests.integration.apiserver import server_config
from tests.polling import until


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start(server_config(tmp_path, token="client-test"))
    try:
        yield srv
    finally:
        await srv.close()


async def test_crud_errors_and_paging(server: Server) -> None:
    async with ApiClient(load_kubeconfig(server.kubeconfig)) as c:
        ns = await c.list(NAMESPACES)
        assert {n["metadata"]["name"] for n in ns["items"]} >= {"default", "kube-system"}
        cm = await c.create(CONFIGMAPS, {"metadata": {"name": "a"}, "data": {"x": "1"}}, "default")
        with pytest.raises(AlreadyExists):
            await c.create(CONFIGMAPS, {"metadata": {"name": "a"}}, "default")
        with pytest.raises(NotFound):
            await c.get(CONFIGMAPS, "missing", "default")
        with pytest.raises(Invalid) as inv:
            await c.create(CONFIGMAPS, {"metadata": {"name": "Bad_Name"}}, "default")
        assert inv.value.status["details"]["causes"][0]["field"] == "metadata.name"
        stale = dict(cm)
        await c.patch(CONFIGMAPS, "a", {"data": {"x": "2"}}, namespace="default")
        with pytest.raises(Conflict):
            await c.update(CONFIGMAPS, stale)
        for i in range(7):
            await c.create(CONFIGMAPS, {"metadata": {"name": f"p{i}", "labels": {"page": "1"}}}, "default")
        full = await c.list_all(CONFIGMAPS, "default", label_selector="page=1", page=3)
        assert [o["metadata"]["name"] for o in full["items"]] == [f"p{i}" for i in range(7)]
        await c.delete(CONFIGMAPS, "a", "default")
        with pytest.raises(NotFound):
            await c.delete(CONFIGMAPS, "a", "default")


async def test_informer_follows_and_relists_after_410(server: Server) -> None:
    async with ApiClient(load_kubeconfig(server.kubeconfig)) as c:
        await c.create(CONFIGMAPS, {"metadata": {"name": "pre", "labels": {"tier": "a"}}}, "default")
        inf = Informer(c, CONFIGMAPS, namespace="default")
        inf.add_indexer("tier", lambda o: [(o["metadata"].get("labels") or {}).get("tier", "")])
        events: list[tuple[str, str]] = []
        inf.on_add(lambda o: events.append(("add", o["metadata"]["name"])))
        inf.on_update(lambda old, new: events.append(("update", new["metadata"]["name"])))

        async def deleted(o: dict) -> None:  # type: ignore[type-arg]
            events.append(("delete", o["metadata"]["name"]))

        inf.on_delete(deleted)
        inf.start()
        await inf.wait_synced(5)
        assert events == [("add", "pre")]
        await c.create(CONFIGMAPS, {"metadata": {"name": "live", "labels": {"tier": "b"}}}, "default")
        await c.patch(CONFIGMAPS, "pre", {"metadata": {"labels": {"tier": "b"}}}, namespace="default")
        await until(lambda: len(events) >= 3)
        assert events[1:] == [("add", "live"), ("update", "pre")]
        assert sorted(o["metadata"]["name"] for o in inf.by_index("tier", "b")) == ["live", "pre"]
        assert inf.by_index("tier", "a") == []

        # Stop the informer, change things, compact the store past its resourceVersion: the restarted
        # informer's watch gets 410 Gone, it relists and reports the difference.
        await inf.stop()
        events.clear()
        await c.delete(CONFIGMAPS, "live", "default")
        await c.create(CONFIGMAPS, {"metadata": {"name": "later"}}, "default")
        await server.store.compact(server.store.revision)
        inf.start()
        await until(lambda: len(events) >= 2)
        assert sorted(events) == [("add", "later"), ("delete", "live")]
        assert sorted(o["metadata"]["name"] for o in inf.items()) == ["later", "pre"]
        await inf.stop()
