"""The waits of the retry loops on kwire.base.backoff's Backoff (client-go's wait.Backoff): each loop's failures
wait its initial delay doubling to its cap, a success starts again from the initial delay, and no failure (an
expected one or not) ends the loop. The sleep is injected (`Backoff.sleep_fn`), so nothing really waits; the
loops run against a real SQLite store where they read one, with the failures scripted."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kwire.agent.credentials import RENEW_CHECK_SECONDS, CertReloader, CredentialsError, NodeCredentials
from kwire.agent.flannel.flannel import masquerade_table
from kwire.agent.nftsync import NftReconciler
from kwire.api.aggregator import CHECK_PERIOD, Aggregator
from kwire.api.allocator import ServiceAllocator
from kwire.api.follow import Follower
from kwire.api.lifecycle import Lifecycle
from kwire.api.masterleases import MasterLeases
from kwire.api.resources import Resources
from kwire.api.webhookadmission import WebhookAdmission
from kwire.base.tasks import cancel_and_wait
from kwire.client.client import ApiStatusError
from kwire.kernel import nft
from kwire.metricsserver.delegated import REFRESH_SECONDS, DelegatedAuth
from kwire.metricsserver.server import MetricsServer, Settings
from kwire.store.base import Compacted, StoreError
from kwire.store.sqlite import SQLiteStore

PREFIX = "/registry/test/things/"


class Enough(BaseException):
    """Ends a loop under test from its sleep (the loops retry every Exception, as they must)."""


def recording(waits: list[float], *, stop_after: int) -> Callable[[float], Awaitable[None]]:
    """A sleep_fn that records each wait instead of waiting, and ends the loop at the `stop_after`th."""

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) >= stop_after:
            raise Enough
        await asyncio.sleep(0)

    return sleep


@pytest.fixture
def resources(tmp_path: Path) -> Iterator[Resources]:
    """The API's Resources on a SQLite store of its own, closed after the test."""
    store = SQLiteStore(tmp_path / "state.db")
    try:
        yield Resources(store, allocator=ServiceAllocator(service_cidr="10.43.0.0/16", node_port_range=(1, 2)))
    finally:
        store._db.close()


def scripted(outcomes: list[BaseException | Any]) -> Callable[..., Awaitable[Any]]:
    """An attempt that raises or returns the next outcome each time it is called."""
    it = iter(outcomes)

    async def attempt(*_: Any, **__: Any) -> Any:
        outcome = next(it)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return attempt


class FlakyStore(SQLiteStore):
    """A real store whose n-th watch passes on `script[n]` events and then fails (410 or a broken connection)."""

    def __init__(self, path: Path, script: list[int]) -> None:
        super().__init__(path)
        self.script = script
        self.watches = 0
        self.passing = asyncio.Event()  # set when a watch that passes events on has started

    def watch(self, prefix: str, *, from_revision: int) -> Any:
        passing = self.script[self.watches] if self.watches < len(self.script) else 0
        self.watches += 1
        if passing:
            self.passing.set()
        inner = super().watch(prefix, from_revision=from_revision)

        async def events() -> AsyncIterator[Any]:
            try:
                for _ in range(passing):
                    yield await anext(aiter(inner))
            finally:
                inner.close()
            raise Compacted(from_revision, from_revision) if self.watches % 2 else OSError("store connection reset")

        return events()


async def test_follower_relists_after_0_5s_doubling_to_30s_and_an_event_resets_it(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "state.db", script=[0] * 8 + [1])
    seen: dict[str, Any] = {}
    follower = Follower(store, PREFIX, apply=seen.__setitem__, reset=seen.clear, name="test")
    waits: list[float] = []
    follower.backoff.sleep_fn = recording(waits, stop_after=10)
    try:
        await follower.start()
        await asyncio.wait_for(store.passing.wait(), 10)  # the ninth watch passes an event on before it fails
        await store.create(PREFIX + "a", orjson.dumps({"metadata": {"name": "a"}}))
        assert follower._task is not None
        with pytest.raises(Enough):
            await asyncio.wait_for(follower._task, 10)
    finally:
        if follower._task is not None and not follower._task.done():  # only a failed test leaves it running
            await follower.stop()
        store._db.close()
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 0.5, 1.0]
    assert seen[PREFIX + "a"] == {"metadata": {"name": "a"}}


async def test_webhook_configurations_are_followed_by_the_same_follower(tmp_path: Path) -> None:
    """Admission's configuration watch is a Follower: the same waits, and what was written while its watch was
    failing is there after the relist."""
    store = FlakyStore(tmp_path / "state.db", script=[0] * 3)
    res = Resources(store, allocator=ServiceAllocator(service_cidr="10.43.0.0/16", node_port_range=(30000, 32767)))
    admission = WebhookAdmission(store, lookup=res, namespace_labels=res.namespace_labels)
    key = "/registry/admissionregistration.k8s.io/validatingwebhookconfigurations/late"
    waits: list[float] = []
    sleep = recording(waits, stop_after=4)

    async def write_then_sleep(seconds: float) -> None:
        if not waits:
            await store.create(key, orjson.dumps({"metadata": {"name": "late"}, "webhooks": []}))
        await sleep(seconds)

    admission.follower.backoff.sleep_fn = write_then_sleep
    try:
        await admission.start()
        assert admission.follower._task is not None
        with pytest.raises(Enough):
            await asyncio.wait_for(admission.follower._task, 10)
    finally:
        if admission.follower._task is not None and not admission.follower._task.done():
            await admission.stop()
        store._db.close()
    assert waits == [0.5, 1.0, 2.0, 4.0]
    assert list(admission._configs) == [key]


async def test_aggregator_rounds_back_off_from_the_check_period_to_a_minute(resources: Resources) -> None:
    agg = Aggregator(resources)
    agg.check_all = scripted([OSError("store away")] * 5 + [None, KeyError("unexpected"), None])  # type: ignore[method-assign]
    waits: list[float] = []
    agg.backoff.sleep_fn = recording(waits, stop_after=8)
    with pytest.raises(Enough):
        await agg._run()
    assert CHECK_PERIOD == 5.0
    assert waits == [5.0, 10.0, 20.0, 40.0, 60.0, CHECK_PERIOD, 5.0, CHECK_PERIOD]


class _EndedWatch:
    """A store watch that has already ended (as one cut off by a burst of writes)."""

    def __aiter__(self) -> _EndedWatch:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration

    def close(self) -> None:
        pass


async def test_lifecycle_relists_after_0_1s_doubling_to_5s_and_a_finished_watch_resets_it(resources: Resources) -> None:
    lc = Lifecycle(resources)
    failure = RuntimeError("store away")
    lc._relist = scripted([failure] * 7 + [_EndedWatch(), _EndedWatch(), failure])  # type: ignore[method-assign]
    waits: list[float] = []
    lc.backoff.sleep_fn = recording(waits, stop_after=8)
    with pytest.raises(Enough):
        await lc._supervise()
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 0.1]  # an ended watch relists at once


async def test_metrics_server_authentication_configmap_is_retried_from_1s_to_its_refresh() -> None:
    auth = DelegatedAuth(client=None, ctx=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))  # type: ignore[arg-type]
    away = ApiStatusError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
    auth.load = scripted([away] * 3 + [TypeError("malformed"), None, OSError("reset"), None])  # type: ignore[method-assign]
    waits: list[float] = []
    auth.backoff.sleep_fn = recording(waits, stop_after=7)
    with pytest.raises(Enough):
        await auth.follow()
    assert waits == [1.0, 2.0, 4.0, 8.0, REFRESH_SECONDS, 1.0, REFRESH_SECONDS]


async def test_metrics_server_scrape_rounds_back_off_from_1s_to_the_resolution() -> None:
    ms = MetricsServer(client=None, settings=Settings(resolution=15.0))  # type: ignore[arg-type]
    ms.scrape_once = scripted([OSError("API away")] * 5 + [None, ValueError("bad metrics"), None])  # type: ignore[method-assign]
    waits: list[float] = []
    ms.backoff.sleep_fn = recording(waits, stop_after=8)
    with pytest.raises(Enough):
        await ms._scrape_rounds()
    assert waits[:5] == [1.0, 2.0, 4.0, 8.0, 15.0]
    assert 14.0 < waits[5] <= 15.0 and waits[6] == 1.0 and 14.0 < waits[7] <= 15.0  # the rest of the resolution


async def test_certificate_renewal_is_retried_from_5s_doubling_to_the_hour(tmp_path: Path) -> None:
    creds = NodeCredentials(data_dir=tmp_path, server="", node_name="n1", node_ips=("127.0.0.1",), server_ca=b"")
    failures: list[BaseException] = [CredentialsError("server away")] * 10 + [LookupError("unexpected")]
    creds.ensure = scripted([*failures, [], OSError("reset"), []])  # type: ignore[method-assign]
    reloader = CertReloader(creds)
    waits: list[float] = []
    reloader.backoff.sleep_fn = recording(waits, stop_after=15)
    with pytest.raises(Enough):
        await reloader.run()
    hour = RENEW_CHECK_SECONDS
    assert waits == [hour, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0, hour, hour, 5.0, hour]


async def test_failed_nft_syncs_are_retried_from_1s_doubling_to_kube_proxys_sync_period() -> None:
    rec = nft.RecordingApplier()
    want = masquerade_table(cluster_cidr="10.42.0.0/16", subnet="10.42.3.0/24")
    r = NftReconciler(name="proxy", compute=lambda keys, *, resync: want, applier=rec, min_period=0.01, max_period=5)
    for _ in range(7):
        rec.fail_next("table busy")
    waits: list[float] = []
    r.backoff.sleep_fn = recording(waits, stop_after=8)
    r.start()
    try:
        await asyncio.wait_for(r.committed.wait(), 10)  # the eighth attempt
        assert len(rec.transactions) == 1
        rec.fail_next("table busy")
        r.resync()  # a whole-table replace: a transaction the kernel refuses again
        assert r._task is not None
        with pytest.raises(Enough):
            await asyncio.wait_for(r._task, 10)
    finally:
        if r._task is not None and not r._task.done():
            await r.stop()
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 1.0]
    assert r.stats.failed == 8


async def test_the_master_lease_reconciler_survives_any_failure(resources: Resources) -> None:
    """A fixed-period loop (kube's endpoint reconciler): a failed round, expected or not, waits for the next one."""
    leases = MasterLeases(resources, address="10.0.0.1", port=6443, interval=0.01)
    rounds = asyncio.Event()
    outcomes: list[BaseException | None] = [KeyError("unexpected"), StoreError("store away"), None]

    async def reconcile_once() -> list[str]:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        rounds.set()
        return ["10.0.0.1"]

    leases.reconcile_once = reconcile_once  # type: ignore[method-assign]
    task = asyncio.create_task(leases._run())
    try:
        await asyncio.wait_for(rounds.wait(), 10)  # the third round came: the first two did not end the loop
        assert not task.done()
    finally:
        await cancel_and_wait(task)
