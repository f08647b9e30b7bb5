"""PostgreSQL backend of the revisioned store (`--datastore-endpoint postgres://...`), as K3s's kine on Postgres.

The table is kine's (`kine`: id = revision, name, created, deleted, create_revision, prev_revision, lease, value,
old_value; the newest row of a name is its state, a tombstone row has deleted=1 and the last value; the
`compact_rev_key` row's prev_revision is the compaction point), with kine's indexes, including its unique
(name, prev_revision) index, and kine's compaction (rows superseded at or below the point, and tombstones, are
deleted). The URL is kine's: `postgres://user:pass@host:port/db?sslmode=...` (`postgresql://` too), database
`kubernetes` when none is named, created when missing; `--datastore-cafile/-certfile/-keyfile` become the DSN's
sslrootcert/sslcert/sslkey with sslmode=verify-full unless the URL sets one (kine's prepareDSN), which asyncpg
(the maintained asyncio driver) turns into its TLS context. The password may be in the URL, in PGPASSWORD or in a
passfile (libpq's rules, which asyncpg follows); it is never logged (`redact`).

Where kwire differs from kine: a write is one call of a PL/pgSQL function (`kwire_write`) that takes a
transaction-scoped advisory lock, checks the name's newest row (exists / expected revision) and inserts the new
row. Holding the lock until commit makes ids commit in id order, so a reader that has seen id N has seen every id
below it and following the table is `id > last seen` (kine instead waits for and fills gaps left by concurrent
transactions); the price is one write transaction at a time per database, like SQLite's single writer.

As the etcd store does (kube-apiserver's watch cache), the live state is mirrored in memory (`LiveState`) and fed
only by following the table: one connection polls `id > last` every second and LISTENs on `kwire_kine`, which the
write function NOTIFYs on commit, to poll at once (kine polls; the notification is what etcd's watch gives for
free). A write returns once the follower has applied it, so a client reads its own writes, and several servers on
one database see every write in the same order. A follower that fell behind a compaction (rows it never saw were
deleted) reloads the state and ends its watchers, who relist. Watches older than the in-memory ring of recent
events get 410 (no history is read back from the table: the ring holds 20,000 events, as the etcd store's does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

from kwire.store.base import (
    ADDED,
    DELETED,
    KV,
    MODIFIED,
    Event,
    KeyExists,
    KeyNotFound,
    RevisionMismatch,
    StoreError,
)
from kwire.store.live import LiveState, MirroredStore

log = logging.getLogger(__name__)

SCHEMES = ("postgres://", "postgresql://")
DEFAULT_DATABASE = "kubernetes"  # kine's, when the URL names none
CHANNEL = "kwire_kine"
COMPACT_KEY = "compact_rev_key"
POLL_INTERVAL = 1.0  # kine's poll interval; a NOTIFY wakes the follower sooner
PAGE = 2000  # rows per poll
BATCH = 256  # writes per transaction at most (group commit)
WRITE_VISIBLE_TIMEOUT = 10.0
_WRITE_LOCK = 0x6B77697265  # "kwire": the advisory lock every write transaction holds until its commit
_SCHEMA_LOCK = _WRITE_LOCK + 1

# kine's table and indexes (ids and revisions as BIGINT rather than kine's INTEGER).
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS kine (
        id BIGSERIAL PRIMARY KEY,
        name VARCHAR(630),
        created INTEGER,
        deleted INTEGER,
        create_revision BIGINT,
        prev_revision BIGINT,
        lease INTEGER,
        value bytea,
        old_value bytea
    )""",
    "CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)",
    "CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name, id)",
    "CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id, deleted)",
    "CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision)",
    f"""INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
        SELECT '{COMPACT_KEY}', 0, 0, 0, 0, 0, '', '' WHERE NOT EXISTS (SELECT 1 FROM kine WHERE name = '{COMPACT_KEY}')""",
    # One write: op is create, update or delete; expected 0 = any revision. Returns the outcome, the new row's id,
    # and the name's current row when the write was refused (for RevisionMismatch). A created row stores
    # create_revision 0 (its own id, as kine does); a re-create's prev_revision is the tombstone's id.
    f"""CREATE OR REPLACE FUNCTION kwire_write(op text, key text, val bytea, expected bigint)
    RETURNS TABLE (o_status text, o_id bigint, o_cur_id bigint, o_cur_create bigint, o_cur_value bytea)
    LANGUAGE plpgsql AS $fn$
    DECLARE
        cur kine%ROWTYPE;
        live boolean;
        created_at bigint;
        new_id bigint;
    BEGIN
        PERFORM pg_advisory_xact_lock({_WRITE_LOCK});
        SELECT * INTO cur FROM kine WHERE kine.name = key ORDER BY kine.id DESC LIMIT 1;
        live := FOUND AND cur.deleted = 0;
        IF live THEN
            created_at := CASE WHEN cur.created = 1 THEN cur.id ELSE cur.create_revision END;
        END IF;
        IF op = 'create' THEN
            IF live THEN
                RETURN QUERY SELECT 'exists'::text, 0::bigint, cur.id, created_at, cur.value;
                RETURN;
            END IF;
            INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
                VALUES (key, 1, 0, 0, COALESCE(cur.id, 0), 0, val, NULL) RETURNING kine.id INTO new_id;
        ELSE
            IF NOT live THEN
                RETURN QUERY SELECT 'missing'::text, 0::bigint, 0::bigint, 0::bigint, NULL::bytea;
                RETURN;
            END IF;
            IF expected <> 0 AND cur.id <> expected THEN
                RETURN QUERY SELECT 'mismatch'::text, 0::bigint, cur.id, created_at, cur.value;
                RETURN;
            END IF;
            INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
                VALUES (key, 0, CASE WHEN op = 'delete' THEN 1 ELSE 0 END, created_at, cur.id, 0,
                        CASE WHEN op = 'delete' THEN cur.value ELSE val END, cur.value)
                RETURNING kine.id INTO new_id;
        END IF;
        PERFORM pg_notify('{CHANNEL}', new_id::text);
        RETURN QUERY SELECT 'ok'::text, new_id, 0::bigint, 0::bigint, NULL::bytea;
    END
    $fn$""",
]

_WRITE_ONE = "SELECT * FROM kwire_write($1, $2, $3, $4)"
# Several writes in one statement (one transaction), in their order: each call sees the rows the earlier ones wrote.
_WRITE_MANY = """
    SELECT w.* FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[])
        WITH ORDINALITY AS a(op, key, val, expected, n)
    CROSS JOIN LATERAL kwire_write(a.op, a.key, a.val, a.expected) AS w
    ORDER BY a.n"""
# The rows after the last one seen and, in the same snapshot, the compaction point (two index scans: an OR of the
# two conditions would let the planner walk the primary key from the start for the compact_rev_key row).
_COLUMNS = "id, name, created, deleted, create_revision, prev_revision, value, old_value"
_POLL = (
    f"(SELECT {_COLUMNS} FROM kine WHERE name = '{COMPACT_KEY}') UNION ALL "
    f"(SELECT {_COLUMNS} FROM kine WHERE id > $1 ORDER BY id LIMIT $2)"
)
_LIVE = (
    "SELECT id, name, created, create_revision, value FROM ("
    "  SELECT DISTINCT ON (name) id, name, created, deleted, create_revision, value FROM kine"
    f"  WHERE name <> '{COMPACT_KEY}' ORDER BY name, id DESC"
    ") AS newest WHERE deleted = 0"
)
# kine's compaction: rows superseded by a row at or below the point, and tombstones at or below it.
_COMPACT = f"""
    DELETE FROM kine AS kv USING (
        SELECT kp.prev_revision AS id FROM kine AS kp
        WHERE kp.name != '{COMPACT_KEY}' AND kp.prev_revision != 0 AND kp.id <= $1
        UNION
        SELECT kd.id AS id FROM kine AS kd WHERE kd.deleted != 0 AND kd.id <= $1
    ) AS ks WHERE kv.id = ks.id"""


def redact(url: str) -> str:
    """The URL without its password (in the user part or a `password=` parameter), for logs and errors."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name == "password" for name, _ in pairs):
        query = urlencode([(n, "***" if n == "password" else v) for n, v in pairs], quote_via=quote, safe="*/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def prepare_dsn(url: str, *, cafile: str = "", certfile: str = "", keyfile: str = "") -> str:
    """kine's prepareDSN: database `kubernetes` when none is named; the TLS files as sslrootcert/sslcert/sslkey,
    with sslmode=verify-full when any is given and the URL sets no sslmode."""
    if not url.startswith(SCHEMES):
        raise ValueError(f"{redact(url)}: not a postgres:// URL")
    parts = urlsplit(url)
    path = parts.path if parts.path not in ("", "/") else "/" + DEFAULT_DATABASE
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    tls = False
    for param, path_value in (("sslcert", certfile), ("sslkey", keyfile), ("sslrootcert", cafile)):
        if path_value and param not in query:
            query[param] = path_value
            tls = True
    if tls and "sslmode" not in query:
        query["sslmode"] = "verify-full"
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query, quote_via=quote), parts.fragment))


def _database(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _event(row: asyncpg.Record) -> Event:
    rev = int(row["id"])
    if row["deleted"]:
        value = bytes(row["value"] or b"")
        return Event(DELETED, row["name"], rev, value, value)
    old = row["old_value"]
    kind = ADDED if row["created"] else MODIFIED
    return Event(kind, row["name"], rev, bytes(row["value"] or b""), bytes(old) if old is not None else None)


def _create_revision(row: asyncpg.Record) -> int:
    return int(row["id"]) if row["created"] else int(row["create_revision"])


# Errors that mean "the database did not answer" (as opposed to refusing us): retried while starting.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)


class PostgresStore(MirroredStore):
    def __init__(
        self,
        url: str,
        *,
        cafile: str = "",
        certfile: str = "",
        keyfile: str = "",
        history: int = 20000,
        pool_size: int = 4,
    ) -> None:
        self._dsn = prepare_dsn(url, cafile=cafile, certfile=certfile, keyfile=keyfile)
        self._where = redact(self._dsn)
        self._pool_size = pool_size
        self._state = LiveState(history=history)
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._pending: list[_Write] = []
        self._pending_added = asyncio.Event()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._following = False

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self, *, timeout: float = 30.0) -> None:
        """Connect (retrying while the database does not answer), create the database and schema if missing,
        load the live state and follow it. A refusal (wrong password, no such role) fails at once."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            try:
                await self._ensure_database()
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self._pool_size, command_timeout=60
                )
                break
            except _UNREACHABLE as exc:
                if loop.time() > end:
                    raise StoreError(f"postgres at {self._where} did not answer: {exc}") from exc
                await asyncio.sleep(0.5)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise StoreError(f"postgres at {self._where}: {exc}") from exc
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")  # servers starting together
                for statement in _SCHEMA:
                    await conn.execute(statement)
            await self._load()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:  # e.g. no right to create tables
            await self._pool.close()
            raise StoreError(f"postgres at {self._where}: {exc}") from exc
        except BaseException:
            await self._pool.close()
            raise
        self._task = asyncio.create_task(self._follow())
        self._writer = asyncio.create_task(self._write_batches())

    async def _ensure_database(self) -> None:
        """kine's createDBIfNotExist: a missing database is created through the `postgres` database."""
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10)
        except asyncpg.InvalidCatalogNameError:
            name = _database(self._dsn)
            admin = await asyncpg.connect(_with_database(self._dsn, "postgres"), timeout=10)
            try:
                await admin.execute(f"CREATE DATABASE {_quote_ident(name)}")
                log.info("postgres: created database %s", name)
            except asyncpg.DuplicateDatabaseError:
                pass  # another server created it first
            finally:
                await admin.close()
            return
        await conn.close()

    def healthy(self) -> bool:
        """The follower's connection to the database works (it reconnects on its own)."""
        return self._task is not None and not self._task.done() and self._following

    async def close(self) -> None:
        for task in (self._task, self._writer):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        _fail(self._pending, StoreError("the store is closed"))
        self._state.close_watchers()
        if self._pool is not None:
            await self._pool.close()

    # -- loading and following -----------------------------------------------------------------------------------
    async def _load(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            revision = int(await conn.fetchval("SELECT COALESCE(MAX(id), 0) FROM kine"))
            compacted = await conn.fetchval(f"SELECT prev_revision FROM kine WHERE name = '{COMPACT_KEY}'")
            rows = await conn.fetch(_LIVE)
        kvs = [KV(r["name"], bytes(r["value"] or b""), int(r["id"]), _create_revision(r)) for r in rows]
        self._state.close_watchers()  # watchers of a previous state cannot be continued
        self._state.load(kvs, revision=revision)
        self._state.compacted = int(compacted or 0)
        log.info("postgres store %s loaded: %d keys at revision %d", self._where, len(kvs), revision)

    async def _follow(self) -> None:
        delay = 0.2
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                await conn.add_listener(CHANNEL, self._on_notify)
                while True:
                    self._wake.clear()
                    await self._poll(conn)
                    self._following = True
                    delay = 0.2
                    try:
                        async with asyncio.timeout(POLL_INTERVAL):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
            except asyncio.CancelledError:
                raise
            except _CompactedAway as exc:
                log.warning("postgres compacted past revision %d (now %d): reloading", self._state.revision, exc.at)
                await self._reload_after_compaction(delay)
            except Exception as exc:  # noqa: BLE001 - the database restarts, the network drops: follow again
                self._following = False
                log.warning("postgres follower: %s; resuming from revision %d", exc, self._state.revision)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None:
                    conn.terminate()

    async def _reload_after_compaction(self, delay: float) -> None:
        try:
            await self._load()
        except Exception as exc:  # noqa: BLE001 - retried by the follower's next round
            log.warning("postgres reload failed: %s", exc)
            await asyncio.sleep(delay)
            return
        async with self._progress:  # writes waiting to be seen may be in what was loaded
            self._progress.notify_all()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()

    async def _poll(self, conn: asyncpg.Connection) -> None:
        """Apply every row after the last one seen, in id order (a page at a time)."""
        while True:
            rows: Sequence[asyncpg.Record] = await conn.fetch(_POLL, self._state.revision, PAGE)
            changes = [r for r in rows if r["name"] != COMPACT_KEY]
            for row in rows:
                if row["name"] == COMPACT_KEY:
                    at = int(row["prev_revision"] or 0)
                    if at > self._state.revision:
                        raise _CompactedAway(at)  # rows this server never saw may be gone
                    self._state.compacted = max(self._state.compacted, at)
            for row in changes:
                event = _event(row)
                if event.type == DELETED:
                    self._state.remove(event.key)
                else:
                    self._state.put(KV(event.key, event.value, event.revision, _create_revision(row)))
                self._state.publish(event)
            if changes:
                async with self._progress:
                    self._progress.notify_all()
            if len(changes) < PAGE:
                return

    async def _visible(self, revision: int) -> None:
        """Wait until the follower has applied `revision` (read-your-writes for the caller)."""
        self._wake.set()  # our own commit: poll now rather than on the NOTIFY's round trip
        try:
            async with asyncio.timeout(WRITE_VISIBLE_TIMEOUT):
                async with self._progress:
                    await self._progress.wait_for(lambda: self._state.revision >= revision)
        except TimeoutError:
            raise StoreError(
                f"postgres write {revision} was not seen by the follower within {WRITE_VISIBLE_TIMEOUT}s"
            ) from None

    # -- Store -------------------------------------------------------------------------------------------------
    async def _write(self, op: str, key: str, value: bytes, expected: int) -> int:
        if self._writer is None:
            raise StoreError("PostgresStore.start() first")
        done: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(op, key, value, expected, done))
        self._pending_added.set()
        row = await done
        status = row["o_status"]
        if status == "exists":
            raise KeyExists(key)
        if status == "missing":
            raise KeyNotFound(key)
        if status == "mismatch":
            current = KV(key, bytes(row["o_cur_value"] or b""), int(row["o_cur_id"]), int(row["o_cur_create"]))
            # The writer that won may be another server: a caller told of the conflict then reads the newer
            # object here, as kube's clients do on 409, instead of retrying against the stale one.
            with contextlib.suppress(StoreError):
                await self._visible(current.mod_revision)
            raise RevisionMismatch(key, current)
        rev = int(row["o_id"])
        await self._visible(rev)
        return rev

    async def _write_batches(self) -> None:
        """Group commit: the writes waiting when the previous transaction ends go in the next one (a batch of
        one is the common case when the API is quiet). Writes are one transaction at a time anyway (the advisory
        lock), so a batch costs one commit, one fsync, instead of one each. `_pending` holds only writes whose
        callers are awaiting them, so it is bounded by the requests in flight."""
        while True:
            await self._pending_added.wait()
            self._pending_added.clear()
            while self._pending:
                batch = self._pending[:BATCH]
                del self._pending[:BATCH]
                await self._commit(batch)

    async def _commit(self, batch: list[_Write]) -> None:
        assert self._pool is not None
        try:
            if len(batch) == 1:
                w = batch[0]
                rows = [await self._pool.fetchrow(_WRITE_ONE, w.op, w.key, w.value, w.expected)]
            else:
                rows = list(
                    await self._pool.fetch(
                        _WRITE_MANY,
                        [w.op for w in batch],
                        [w.key for w in batch],
                        [w.value for w in batch],
                        [w.expected for w in batch],
                    )
                )
        except asyncpg.PostgresError as exc:
            if len(batch) > 1:  # one bad write (e.g. a name too long) fails the transaction: each on its own
                for w in batch:
                    await self._commit([w])
                return
            _fail(batch, StoreError(f"postgres write: {exc}"))
            return
        except (asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            _fail(batch, StoreError(f"postgres write: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - the callers get it; the batcher keeps running
            _fail(batch, StoreError(f"postgres write: {exc!r}"))
            return
        for w, row in zip(batch, rows, strict=True):
            if not w.done.done():  # a caller that went away (its request was cancelled)
                w.done.set_result(row)

    async def create(self, key: str, value: bytes) -> int:
        return await self._write("create", key, value, 0)

    async def update(self, key: str, value: bytes, *, expected_revision: int) -> int:
        return await self._write("update", key, value, expected_revision)

    async def delete(self, key: str, *, expected_revision: int = 0) -> int:
        return await self._write("delete", key, b"", expected_revision)

    async def compact(self, revision: int) -> None:
        revision = min(revision, self._state.revision)
        if revision <= self._state.compacted or self._pool is None:
            return
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")  # one compaction at a time
                done = int(await conn.fetchval(f"SELECT prev_revision FROM kine WHERE name = '{COMPACT_KEY}'") or 0)
                if done < revision:
                    await conn.execute(_COMPACT, revision)
                    await conn.execute(f"UPDATE kine SET prev_revision = $1 WHERE name = '{COMPACT_KEY}'", revision)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"postgres compaction: {exc}") from exc
        self._state.compacted = max(self._state.compacted, revision)
        log.info("postgres compacted at revision %d", revision)


@dataclass(frozen=True, slots=True)
class _Write:
    op: str
    key: str
    value: bytes
    expected: int
    done: asyncio.Future[asyncpg.Record]


def _fail(batch: list[_Write], exc: StoreError) -> None:
    for w in batch:
        if not w.done.done():
            w.done.set_exception(exc)


class _CompactedAway(Exception):
    def __init__(self, at: int) -> None:
        super().__init__(f"compacted at {at}")
        self.at = at
