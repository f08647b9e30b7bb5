"""One store contract, three backends: the embedded SQLite store, etcd v3 (Debian's etcd-server, run here on
127.0.0.1) and PostgreSQL (Debian's, a private cluster per module: `pgkit.Postgres`). Revisions,
compare-and-swap, ranges, watches that replay and follow, compaction and 410."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kwire.store.base import ADDED, DELETED, MODIFIED, Compacted, KeyExists, KeyNotFound, RevisionMismatch, Store
from kwire.store.etcd import EtcdStore
from kwire.store.postgres import PostgresStore
from kwire.store.sqlite import SQLiteStore
from tests.integration.apiserver import free_port
from tests.integration.etcdkit import etcd_server
from tests.integration.pgkit import Postgres


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_server(tmp_path_factory.mktemp("kwire-etcd"), name="kwire-test") as url:
        yield url


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


_prefix_counter = iter(range(1000))


@pytest.fixture(params=["sqlite", "etcd", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s: Store = SQLiteStore(tmp_path / "state.db")
    elif request.param == "postgres":
        pg: Postgres = request.getfixturevalue("postgres")
        # Each test gets its own database, which the store creates (kine's createDBIfNotExist).
        ps = PostgresStore(pg.url(f"t{next(_prefix_counter)}"))
        await ps.start()
        s = ps
    else:
        endpoint = request.getfixturevalue("etcd")
        # Each test gets its own key prefix in the shared etcd, as each kwire cluster would use its own etcd.
        es = EtcdStore([endpoint], prefix=f"/t{next(_prefix_counter)}/")
        await es.start()
        s = es
    try:
        yield s
    finally:
        await s.close()


def k(store: Store, name: str) -> str:
    prefix = getattr(store, "_prefix", "/registry/")
    return f"{prefix}{name}"


async def test_revisions_increase_and_cas(store: Store) -> None:
    r1 = await store.create(k(store, "a/1"), b"one")
    r2 = await store.create(k(store, "b/1"), b"two")
    assert r2 > r1 and store.revision >= r2
    with pytest.raises(KeyExists):
        await store.create(k(store, "a/1"), b"again")
    r3 = await store.update(k(store, "a/1"), b"one'", expected_revision=r1)
    assert r3 > r2
    with pytest.raises(RevisionMismatch) as exc:
        await store.update(k(store, "a/1"), b"stale", expected_revision=r1)
    assert exc.value.current is not None and exc.value.current.mod_revision == r3
    with pytest.raises(KeyNotFound):
        await store.update(k(store, "nope"), b"x", expected_revision=0)
    kv = store.get_now(k(store, "a/1"))  # type: ignore[attr-defined]
    assert kv is not None and (kv.value, kv.mod_revision, kv.create_revision) == (b"one'", r3, r1)
    await store.delete(k(store, "a/1"), expected_revision=r3)
    assert await store.get(k(store, "a/1")) is None
    with pytest.raises(KeyNotFound):
        await store.delete(k(store, "a/1"))


async def test_recreate_after_delete_and_unconditional_writes(store: Store) -> None:
    """A key deleted and created again starts a new life (new create_revision, ADDED); an update or delete without
    an expected revision applies to whatever is there, and a CAS delete with a stale revision is refused."""
    r1 = await store.create(k(store, "life/x"), b"first")
    r2 = await store.update(k(store, "life/x"), b"any", expected_revision=0)
    with pytest.raises(RevisionMismatch):
        await store.delete(k(store, "life/x"), expected_revision=r1)
    r3 = await store.delete(k(store, "life/x"))
    w = store.watch(k(store, "life/"), from_revision=r3)
    r4 = await store.create(k(store, "life/x"), b"second")
    assert r1 < r2 < r3 < r4
    kv = await store.get(k(store, "life/x"))
    assert kv is not None and (kv.value, kv.create_revision, kv.mod_revision) == (b"second", r4, r4)
    ev = await asyncio.wait_for(anext(w), 5)  # type: ignore[arg-type]
    assert (ev.type, ev.revision, ev.value, ev.prev_value) == (ADDED, r4, b"second", None)
    w.close()  # type: ignore[attr-defined]


async def test_range_prefix_limit_and_continue(store: Store) -> None:
    for i in range(5):
        await store.create(k(store, f"r/{i}"), str(i).encode())
    await store.create(k(store, "rr/x"), b"other")
    page = await store.range(k(store, "r/"), limit=2)
    assert [kv.value for kv in page.items] == [b"0", b"1"] and page.more
    rest = await store.range(k(store, "r/"), start_after=page.items[-1].key)
    assert [kv.value for kv in rest.items] == [b"2", b"3", b"4"] and not rest.more


async def test_watch_replays_then_follows_with_prev_values(store: Store) -> None:
    r0 = await store.create(k(store, "w/a"), b"1")
    w = store.watch(k(store, "w/"), from_revision=r0 - 1)
    r1 = await store.update(k(store, "w/a"), b"2", expected_revision=r0)
    await store.create(k(store, "x/other"), b"not watched")
    r2 = await store.delete(k(store, "w/a"))
    got = [await asyncio.wait_for(anext(w), 5) for _ in range(3)]  # type: ignore[arg-type]
    assert [(e.type, e.revision) for e in got] == [(ADDED, r0), (MODIFIED, r1), (DELETED, r2)]
    assert got[1].prev_value == b"1" and got[2].value == b"2"
    w.close()  # type: ignore[attr-defined]


async def test_compaction_answers_too_old(store: Store) -> None:
    r = 0
    for i in range(5):
        r = await store.create(k(store, f"c/{i}"), b"v")
    await store.compact(r - 1)
    assert store.compacted_revision == r - 1
    with pytest.raises(Compacted):
        store.watch(k(store, "c/"), from_revision=r - 3)
    assert len((await store.range(k(store, "c/"))).items) == 5  # live keys survive compaction


async def test_a_second_server_sees_the_first_ones_writes(etcd: str) -> None:
    """Several kwire servers share one etcd: each one's state follows every write, and etcd decides conflicts."""
    first, second = EtcdStore([etcd], prefix="/two/"), EtcdStore([etcd], prefix="/two/")
    await first.start()
    await second.start()
    try:
        w = second.watch("/two/s/", from_revision=second.revision)
        rev = await first.create("/two/s/1", b"from the first")
        ev = await asyncio.wait_for(anext(w), 5)
        assert (ev.type, ev.revision, ev.value) == (ADDED, rev, b"from the first")
        assert second.get_now("/two/s/1") is not None
        with pytest.raises(KeyExists):
            await second.create("/two/s/1", b"second")
        w.close()
    finally:
        await first.close()
        await second.close()


def test_kwire_server_on_etcd_with_kubectl(etcd: str, tmp_path: Path) -> None:
    """`kwire server --datastore-endpoint` (K3s's flag) keeps the cluster in etcd: what kubectl wrote is there
    after the server restarts with an empty data directory of its own."""
    from tests.integration.apiserver import ServerProcess

    args = ["--datastore-endpoint", etcd, "--disable", "coredns"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    s = ServerProcess(data_dir=tmp_path / "one", port=free_port(), extra_args=args)
    s.start(timeout=60)
    try:
        s.kubectl("create", "configmap", "kept", "--from-literal=k=v")
        s.kubectl("create", "namespace", "etcd-ns")
        rv = s.kubectl("get", "configmap", "kept", "-o", "jsonpath={.metadata.resourceVersion}").stdout
        assert int(rv) > 0
    finally:
        s.stop()
    again = ServerProcess(data_dir=tmp_path / "two", port=free_port(), extra_args=args)
    again.start(timeout=60)
    try:
        assert again.kubectl("get", "configmap", "kept", "-o", "jsonpath={.data.k}").stdout == "v"
        assert "etcd-ns" in again.kubectl("get", "namespaces").stdout
    finally:
        again.stop()
