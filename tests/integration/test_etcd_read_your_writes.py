"""Read-your-writes on etcd: a client that got 201/200 from a write to a server on etcd reads that write back at
once from the same server (get and list), as kube-apiserver guarantees with its quorum reads and its consistent
lists from the watch cache. kwire serves reads from the mirror the etcd watch feeds, so a write returns only once
the mirror has it (kwire/store/etcd.py `_visible`); writers race here so that some txn responses arrive before
the watch delivered them (most do not need the wait on a quiet machine, some always do under load)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.integration.apiserver import ServerProcess, free_port, running_server

WRITERS = 24
ROUNDS = 10  # per writer: create, read, update, read, delete, read


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("kwire-ryw")
    args = ["--disable", "coredns,servicelb,traefik,metrics-server", "--etcd-disable-snapshots", "--cluster-init"]
    args += ["--etcd-client-port", str(free_port()), "--etcd-peer-port", str(free_port())]
    with running_server(Path(data), extra_args=args, timeout=120) as s:
        yield s


async def _writer(session: aiohttp.ClientSession, base: str, w: int) -> None:
    url = f"{base}/api/v1/namespaces/default/configmaps"
    for i in range(ROUNDS):
        name = f"ryw-{w}-{i}"
        body = {"metadata": {"name": name, "labels": {"ryw": str(w)}}, "data": {"v": "1"}}
        async with session.post(url, data=orjson.dumps(body)) as r:
            assert r.status == 201, await r.text()
            created = await r.json()
        rv = created["metadata"]["resourceVersion"]
        async with session.get(f"{url}/{name}") as r:
            assert r.status == 200, f"{name} created at {rv} but not found right after"
            assert (await r.json())["metadata"]["resourceVersion"] == rv
        async with session.get(url, params={"labelSelector": f"ryw={w}"}) as r:
            listed = await r.json()
            assert int(listed["metadata"]["resourceVersion"]) >= int(rv)
            assert name in {o["metadata"]["name"] for o in listed["items"]}

        created["data"] = {"v": "2"}
        async with session.put(f"{url}/{name}", data=orjson.dumps(created)) as r:
            assert r.status == 200, await r.text()
            updated_rv = (await r.json())["metadata"]["resourceVersion"]
        async with session.get(f"{url}/{name}") as r:
            got = await r.json()
            assert (got["data"], got["metadata"]["resourceVersion"]) == ({"v": "2"}, updated_rv)

        async with session.delete(f"{url}/{name}") as r:
            assert r.status == 200, await r.text()
        async with session.get(f"{url}/{name}") as r:
            assert r.status == 404, f"{name} deleted but still served"


async def test_a_client_reads_its_own_writes_at_once(server: ServerProcess) -> None:
    conn = aiohttp.TCPConnector(ssl=server.admin_ssl_context(), limit=WRITERS + 2)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
        await asyncio.gather(*(_writer(session, server.url, w) for w in range(WRITERS)))
