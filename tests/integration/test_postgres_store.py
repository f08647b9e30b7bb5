"""PostgreSQL as K3s's external datastore (kine's table), beyond the store contract every backend passes
(test_store_contract.py): several stores (servers) on one database, a follower the compaction overtook, the
database going away and coming back, TLS with K3s's --datastore-cafile, clear errors without the password, and
`kwire server --datastore-endpoint postgres://...` with kubectl: two servers on one database, the controller
Lease moving on kill -9, the data kept across a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import count
from pathlib import Path

import asyncpg
import pytest

from kwire.api.certs import ensure_pki
from kwire.lab.start import FAST_LEADER_ELECTION
from kwire.store.base import ADDED, KeyExists, RevisionMismatch, StoreError
from kwire.store.postgres import PostgresStore, prepare_dsn, redact
from tests.integration.apiserver import ServerProcess, free_port
from tests.integration.pgkit import PASSWORD, Postgres

_db = count()


async def _eventually(check: Callable[[], bool], timeout: float) -> bool:
    for _ in range(int(timeout / 0.1)):
        if check():
            return True
        await asyncio.sleep(0.1)
    return check()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a serving certificate for 127.0.0.1 (kwire's own PKI code), for PostgreSQL's TLS."""
    root = tmp_path_factory.mktemp("kwire-pg-tls")
    ensure_pki(root, sans_dns=[], sans_ip=["127.0.0.1"])
    return root / "tls"


@pytest.fixture(scope="module")
def pg(pki: Path) -> Iterator[Postgres]:
    db = Postgres(ssl_cert=pki / "serving-kube-apiserver.crt", ssl_key=pki / "serving-kube-apiserver.key")
    try:
        db.start()
        yield db
    finally:
        db.stop()


def test_kines_dsn_rules() -> None:
    """kine's prepareDSN: database `kubernetes` by default; the TLS files become DSN parameters with
    sslmode=verify-full unless the URL says otherwise; the password never shows in what is logged."""
    dsn = prepare_dsn("postgres://u:p%40ss@db:5432", cafile="/ca.crt", certfile="/c.crt", keyfile="/c.key")
    assert dsn.startswith("postgres://u:p%40ss@db:5432/kubernetes?")
    assert "sslmode=verify-full" in dsn and "sslrootcert=%2Fca.crt" in dsn and "sslkey=%2Fc.key" in dsn
    assert "sslmode=require" in prepare_dsn("postgresql://u@db/k?sslmode=require", cafile="/ca.crt")
    assert redact("postgres://user:s3cret@db:5432/k?sslmode=disable") == "postgres://user:***@db:5432/k?sslmode=disable"
    assert redact("postgres://user@db/k?password=s3cret&sslmode=disable") == (
        "postgres://user@db/k?password=***&sslmode=disable"
    )
    with pytest.raises(ValueError):
        prepare_dsn("mysql://u:p@db/k")


@contextlib.asynccontextmanager
async def _started(*urls: str, cafile: str = "") -> AsyncIterator[list[PostgresStore]]:
    """A started store on each URL (one per kwire server; the same URL twice: two servers on one database),
    closed on exit."""
    stores: list[PostgresStore] = []
    try:
        for url in urls:
            store = PostgresStore(url, cafile=cafile)
            stores.append(store)
            await store.start()
        yield stores
    finally:
        for store in stores:
            await store.close()


async def test_two_stores_share_one_database(pg: Postgres) -> None:
    """Several kwire servers on one database: each one's state follows every write (woken by NOTIFY, well
    before the 1 s poll), and the database decides conflicts."""
    url = pg.url(f"share{next(_db)}")
    async with _started(url, url) as (first, second):
        w = second.watch("/registry/s/", from_revision=second.revision)
        start = time.monotonic()
        rev = await first.create("/registry/s/1", b"from the first")
        ev = await asyncio.wait_for(anext(w), 5)
        assert (ev.type, ev.revision, ev.value) == (ADDED, rev, b"from the first")
        assert time.monotonic() - start < 0.9, "the other server saw the write only on its poll, not on NOTIFY"
        assert second.get_now("/registry/s/1") is not None
        with pytest.raises(KeyExists):
            await second.create("/registry/s/1", b"second")
        # The same compare-and-swap from both servers at once: exactly one wins.
        results = await asyncio.gather(
            first.update("/registry/s/1", b"a", expected_revision=rev),
            second.update("/registry/s/1", b"b", expected_revision=rev),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["RevisionMismatch", "int"]
        won = next(r for r in results if isinstance(r, int))
        for s in (first, second):
            kv = s.get_now("/registry/s/1")
            assert kv is not None and kv.mod_revision == won and kv.create_revision == rev
        w.close()


async def test_concurrent_writers_on_two_servers_are_followed_in_order_without_gaps(pg: Postgres) -> None:
    """Two servers writing at once: a watcher on either sees every committed row exactly once in revision order
    (ids commit in id order, so following `id > last` misses nothing), and both mirrors end identical."""
    url = pg.url(f"order{next(_db)}")
    async with _started(url, url) as (first, second):
        start = second.revision
        watches = [s.watch("/registry/o/", from_revision=start) for s in (first, second)]
        revs = await asyncio.gather(
            *[first.create(f"/registry/o/a{i}", b"a") for i in range(150)],
            *[second.create(f"/registry/o/b{i}", b"b") for i in range(150)],
        )
        seen = [[(await asyncio.wait_for(anext(w), 10)).revision for _ in range(300)] for w in watches]
        conn = await asyncpg.connect(url)
        try:
            table = [r["id"] for r in await conn.fetch("SELECT id FROM kine WHERE id > $1 ORDER BY id", start)]
        finally:
            await conn.close()
        assert sorted(revs) == table
        assert seen[0] == table and seen[1] == table
        assert first._state.live == second._state.live and len(first._state.live) == 300
        for w in watches:
            w.close()


async def test_a_row_without_notify_is_found_by_the_poll(pg: Postgres) -> None:
    """NOTIFY only wakes the follower early: a row committed without one (a notification lost while the follower
    reconnected, or another writer of kine's table) is applied by the next poll, within about a second."""
    url = pg.url(f"poll{next(_db)}")
    async with _started(url) as (store,):
        conn = await asyncpg.connect(url)
        try:
            rev = await conn.fetchval(
                "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) "
                "VALUES ('/registry/p/quiet', 1, 0, 0, 0, 0, 'v', NULL) RETURNING id"
            )
        finally:
            await conn.close()
        start = time.monotonic()
        assert await _eventually(lambda: store.get_now("/registry/p/quiet") is not None, 5)
        kv = store.get_now("/registry/p/quiet")
        assert kv is not None and (kv.mod_revision, kv.create_revision, kv.value) == (rev, rev, b"v")
        assert time.monotonic() - start < 2.5


async def test_concurrent_writes_commit_together_and_keep_their_meaning(pg: Postgres) -> None:
    """Writes waiting together go in one transaction (group commit), each with its own outcome: of 20 updates
    with the same expected revision exactly one wins, and a write the database rejects (a name longer than kine's
    VARCHAR(630)) fails alone."""
    async with _started(pg.url(f"batch{next(_db)}")) as (store,):
        rev = await store.create("/registry/b/key", b"0")
        results = await asyncio.gather(
            *[store.update("/registry/b/key", str(i).encode(), expected_revision=rev) for i in range(20)],
            store.create("/registry/b/" + "x" * 700, b"too long a name"),
            *[store.create(f"/registry/b/new-{i}", b"v") for i in range(20)],
            return_exceptions=True,
        )
        updates, too_long, creates = results[:20], results[20], results[21:]
        assert sum(isinstance(r, int) for r in updates) == 1
        assert all(isinstance(r, RevisionMismatch) for r in updates if not isinstance(r, int))
        assert isinstance(too_long, StoreError) and "too long" in str(too_long)
        assert all(isinstance(r, int) for r in creates), creates
        assert len((await store.range("/registry/b/new-")).items) == 20


async def test_a_follower_overtaken_by_compaction_reloads(pg: Postgres) -> None:
    """A server that was cut off while another deleted a key and compacted the tombstone away must not keep the
    key: it reloads the table, and its watchers end (their clients relist)."""
    url = pg.url(f"compact{next(_db)}")
    async with _started(url, url) as (first, second):
        rev = await first.create("/registry/c/gone", b"v")
        await first.create("/registry/c/kept", b"v")
        await asyncio.sleep(0.1)
        assert second.get_now("/registry/c/gone") is not None
        # Cut the second server's follower off (its connection), as a network partition would.
        follower = second._task
        assert follower is not None
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
        w = second.watch("/registry/c/", from_revision=second.revision)
        await first.delete("/registry/c/gone", expected_revision=rev)
        last = await first.update("/registry/c/kept", b"v2", expected_revision=0)
        await first.compact(last)
        second._task = asyncio.create_task(second._follow())  # the partition heals
        assert await _eventually(lambda: second.get_now("/registry/c/gone") is None, 10)
        kept = second.get_now("/registry/c/kept")
        assert kept is not None and kept.value == b"v2"
        assert second.compacted_revision == last
        assert [e async for e in w] == []  # ended without events: the client relists


async def test_the_database_going_away_and_back(pg: Postgres) -> None:
    """The API's `etcd` health check fails while the database is down, writes fail with a StoreError (a 500,
    never a hang), and the store follows again once it is back, without a restart of its own."""
    url = pg.url(f"restart{next(_db)}")
    async with _started(url) as (store,):
        await store.create("/registry/r/before", b"1")
        assert store.healthy()
        await asyncio.to_thread(pg.kill)
        with pytest.raises(StoreError):
            await store.create("/registry/r/during", b"2")
        assert await _eventually(lambda: not store.healthy(), 10)
        await asyncio.to_thread(pg.start)
        deadline = time.monotonic() + 20
        while True:
            try:
                rev = await store.create("/registry/r/after", b"3")
                break
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        assert store.get_now("/registry/r/after") is not None and store.revision >= rev
        assert store.healthy()


async def test_tls_with_the_datastore_cafile(pg: Postgres, pki: Path) -> None:
    """K3s's --datastore-cafile: the connection is TLS, verified against that CA (verify-full); a server whose
    certificate that CA did not sign is refused."""
    url = f"postgres://postgres:{PASSWORD}@127.0.0.1:{pg.port}/tls{next(_db)}"
    async with _started(url, cafile=str(pki / "server-ca.crt")) as (store,):
        await store.create("/registry/t/1", b"over tls")
        conn = await asyncpg.connect(prepare_dsn(url, cafile=str(pki / "server-ca.crt")))
        try:
            ssl_flags = await conn.fetch(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid WHERE a.datname = $1",
                url.rsplit("/", 1)[1],
            )
        finally:
            await conn.close()
        assert ssl_flags and all(r["ssl"] for r in ssl_flags)
    other = pki.parent / "other"
    ensure_pki(other, sans_dns=[], sans_ip=["127.0.0.1"])
    wrong = PostgresStore(url, cafile=str(other / "tls" / "server-ca.crt"))
    with pytest.raises((StoreError, OSError)) as exc:
        await wrong.start(timeout=2)
    assert "certificate verify failed" in str(exc.value)


async def test_clear_errors_without_the_password(pg: Postgres) -> None:
    nobody = f"postgres://postgres:{PASSWORD}@127.0.0.1:{free_port()}/kubernetes?sslmode=disable"
    with pytest.raises(StoreError) as exc:
        await PostgresStore(nobody).start(timeout=1)
    assert "did not answer" in str(exc.value) and PASSWORD not in str(exc.value)
    start = time.monotonic()
    with pytest.raises(StoreError) as exc:
        await PostgresStore(pg.url("kubernetes", password="wrong-" + PASSWORD)).start(timeout=30)
    assert time.monotonic() - start < 10, "a refused password is not retried"
    assert "password authentication failed" in str(exc.value) and PASSWORD not in str(exc.value)


# -- kwire server on Postgres -----------------------------------------------------------------------------------
def test_kwire_server_refused_by_the_database_says_so(pg: Postgres, tmp_path: Path) -> None:
    """A wrong password: `kwire server` exits 1 with the database's reason, no traceback and no password."""
    conf = tmp_path / "wrong.yaml"
    conf.write_text(f"datastore-endpoint: {pg.url('kubernetes', password='not-' + PASSWORD)}\n")
    conf.chmod(0o600)
    cmd = [sys.executable, "-m", "kwire", "server", "--data-dir", str(tmp_path / "data"), "--config", str(conf)]
    cmd += ["--bind-address", "127.0.0.1", "--https-listen-port", str(free_port()), "--token", "t"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "kwire server: datastore: postgres at postgres://postgres:***@127.0.0.1" in res.stderr
    assert "password authentication failed" in res.stderr
    assert "Traceback" not in res.stderr and PASSWORD not in res.stderr + res.stdout


TIMING = list(FAST_LEADER_ELECTION)


def _server(root: Path, name: str, pg: Postgres, database: str) -> ServerProcess:
    """A server whose datastore URL (with its password) is in a 0600 config file, not on its command line."""
    data = root / name
    data.mkdir(exist_ok=True)
    conf = pg.config_file(root / f"{name}.yaml", database)
    args = ["--config", str(conf), "--disable", "coredns,servicelb,traefik,metrics-server", *TIMING]
    return ServerProcess(data_dir=data, port=free_port(), extra_args=args)


def _holder(s: ServerProcess) -> str:
    out = s.kubectl("get", "lease", "-n", "kube-system", "kube-controller-manager", "-o", "json").stdout
    return str(json.loads(out)["spec"].get("holderIdentity", ""))


def _identity(s: ServerProcess) -> str:
    return (s.data_dir / "cred" / "leader-identity").read_text().strip()


def _wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen in {timeout}s")


def test_kwire_servers_on_postgres_with_kubectl(pg: Postgres, tmp_path: Path) -> None:
    """Two `kwire server --datastore-endpoint postgres://...` on one database: what kubectl wrote through one is
    read through the other; one holds the controller Lease, and after kill -9 of it the other takes the Lease and
    acts on a new Deployment; the killed server comes back with its data dir and sees everything."""
    database = f"cluster{next(_db)}"
    one, two = _server(tmp_path, "one", pg, database), _server(tmp_path, "two", pg, database)
    one.start(timeout=90)
    try:
        two.start(timeout=90)
        try:
            one.kubectl("create", "configmap", "kept", "--from-literal=k=v")
            one.kubectl("create", "namespace", "pg-ns")
            assert two.kubectl("get", "configmap", "kept", "-o", "jsonpath={.data.k}").stdout == "v"
            assert "pg-ns" in two.kubectl("get", "namespaces").stdout
            for s in (one, two):
                log = s.log_path.read_text()
                assert PASSWORD not in log, "the datastore password is in the server log"
                assert "***" in log
            ids = {_identity(one): one, _identity(two): two}
            _wait("a server takes the controller Lease", lambda: _holder(one) in ids, 30)
            leader = ids[_holder(one)]
            other = two if leader is one else one
            leader.stop(sig=signal.SIGKILL)
            took = _wait("the other server takes the Lease", lambda: _holder(other) == _identity(other), 30)
            other.kubectl("create", "deployment", "after-kill", "--image=registry.k8s.io/pause:3.9")

            def replicaset() -> bool:
                out = other.kubectl("get", "replicasets", "-l", "app=after-kill", "-o", "name").stdout
                return bool(out.strip())

            _wait("the new leader's controllers create the ReplicaSet", replicaset, 30)
            print(f"controller Lease moved {took:.1f} s after kill -9 (lease 4 s)")
            leader.start(timeout=90)  # its data dir as it was: it shares the CA through the database
            assert leader.kubectl("get", "configmap", "kept", "-o", "jsonpath={.data.k}").stdout == "v"
            assert "after-kill" in leader.kubectl("get", "deployments").stdout
        finally:
            two.stop()
    finally:
        one.stop()
