"""The SQLite revisioned store: revisions, CAS, ranges, watch replay/live, compaction, reload from disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kwire.store.base import ADDED, DELETED, MODIFIED, Compacted, KeyExists, KeyNotFound, RevisionMismatch
from kwire.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "state.db")
    yield s
    asyncio.get_event_loop_policy()  # keep fixture sync; close below
    s._db.close()


async def test_revisions_are_global_and_increasing(store: SQLiteStore) -> None:
    r1 = await store.create("/a/1", b"one")
    r2 = await store.create("/b/1", b"two")
    r3 = await store.update("/a/1", b"one'", expected_revision=r1)
    assert (r1, r2, r3) == (1, 2, 3)
    kv = await store.get("/a/1")
    assert kv is not None and kv.value == b"one'" and kv.mod_revision == 3 and kv.create_revision == 1
    assert store.revision == 3


async def test_create_existing_and_cas(store: SQLiteStore) -> None:
    r1 = await store.create("/a/1", b"x")
    with pytest.raises(KeyExists):
        await store.create("/a/1", b"y")
    await store.update("/a/1", b"y", expected_revision=r1)
    with pytest.raises(RevisionMismatch) as exc:
        await store.update("/a/1", b"z", expected_revision=r1)
    assert exc.value.current is not None and exc.value.current.value == b"y"
    with pytest.raises(KeyNotFound):
        await store.update("/nope", b"z", expected_revision=1)
    with pytest.raises(RevisionMismatch):
        await store.delete("/a/1", expected_revision=r1)
    await store.delete("/a/1")
    assert await store.get("/a/1") is None
    with pytest.raises(KeyNotFound):
        await store.delete("/a/1")


async def test_range_prefix_limit_continue(store: SQLiteStore) -> None:
    for i in range(5):
        await store.create(f"/p/ns1/o{i}", b"v")
    await store.create("/p/ns2/o0", b"v")
    await store.create("/q/x", b"v")
    res = await store.range("/p/ns1/")
    assert [kv.key for kv in res.items] == [f"/p/ns1/o{i}" for i in range(5)]
    page = await store.range("/p/", limit=4)
    assert page.more and len(page.items) == 4
    rest = await store.range("/p/", start_after=page.items[-1].key, limit=4)
    assert not rest.more
    assert [kv.key for kv in rest.items] == ["/p/ns1/o4", "/p/ns2/o0"]


async def test_watch_replays_then_follows(store: SQLiteStore) -> None:
    r1 = await store.create("/w/a", b"1")
    await store.update("/w/a", b"2", expected_revision=r1)
    await store.create("/other", b"x")
    w = store.watch("/w/", from_revision=0)
    e1 = await anext(w)
    e2 = await anext(w)
    assert (e1.type, e1.value) == (ADDED, b"1")
    assert (e2.type, e2.value, e2.prev_value) == (MODIFIED, b"2", b"1")
    await store.delete("/w/a")
    e3 = await asyncio.wait_for(anext(w), 1)
    assert (e3.type, e3.value, e3.revision) == (DELETED, b"2", 4)
    w.close()


async def test_watch_from_disk_after_restart_and_compaction(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SQLiteStore(path, history=2)
    r = await s.create("/k/a", b"1")
    for i in range(5):
        r = await s.update("/k/a", str(i).encode(), expected_revision=r)
    await s.create("/k/b", b"b")
    await s.delete("/k/b")
    s._db.close()

    s2 = SQLiteStore(path, history=2)
    assert s2.revision == 8
    assert (await s2.get("/k/a")).value == b"4"  # type: ignore[union-attr]
    assert await s2.get("/k/b") is None
    events = []
    w = s2.watch("/k/", from_revision=2)
    for _ in range(6):
        events.append(await asyncio.wait_for(anext(w), 1))
    assert [e.revision for e in events] == [3, 4, 5, 6, 7, 8]
    assert events[0].prev_value == b"0"
    assert [e.type for e in events[-2:]] == [ADDED, DELETED]
    w.close()

    await s2.compact(6)
    with pytest.raises(Compacted):
        s2.watch("/k/", from_revision=5)
    # The newest value of a live key survives compaction, on disk too.
    s2._db.close()
    s3 = SQLiteStore(path)
    assert (await s3.get("/k/a")).value == b"4"  # type: ignore[union-attr]
    assert s3.compacted_revision == 6 and s3.revision == 8
    w = s3.watch("/k/", from_revision=6)
    e = await asyncio.wait_for(anext(w), 1)
    assert (e.revision, e.type) == (7, ADDED)
    s3._db.close()


async def test_slow_watcher_is_ended_not_unbounded(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import kwire.store.live as mod

    monkeypatch.setattr(mod, "_MAX_PENDING", 3)
    w = store.watch("/s/", from_revision=store.revision)
    for i in range(10):
        await store.create(f"/s/{i}", b"v")
    got = [e async for e in w]
    assert len(got) == 3


async def test_slow_watcher_is_ended_by_the_bytes_it_keeps_alive(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kwire.store.live as mod

    monkeypatch.setattr(mod, "_MAX_PENDING_BYTES", 2500)
    w = store.watch("/s/", from_revision=store.revision)
    for i in range(10):
        await store.create(f"/s/{i}", b"v" * 1000)
    got = [e async for e in w]
    assert len(got) == 2  # the third 1000-byte event would pass 2500 bytes: the watcher ends there


async def test_pending_bytes_drain_as_a_watcher_reads(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import kwire.store.live as mod

    monkeypatch.setattr(mod, "_MAX_PENDING_BYTES", 2500)
    w = store.watch("/s/", from_revision=store.revision)
    for i in range(10):  # 10 KB in all, but never more than 1 KB waiting: the watcher keeps up
        await store.create(f"/s/{i}", b"v" * 1000)
        assert len(w.ready()) == 1
    await store.create("/s/last", b"v")
    w.close()
