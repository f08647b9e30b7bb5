"""Leader election through a coordination.k8s.io Lease, as client-go's `leaderelection` runs it for
kube-controller-manager: only the holder of `kube-system/kube-controller-manager` runs controllers.

client-go's rules: a candidate tries every `retry_period`; it takes the Lease when there is none, when it holds
it already (same identity: a restarted server re-takes its own lease at once), or when the holder has not renewed
it for `lease_duration` as observed on the candidate's own clock (the record's timestamps are never compared
across machines). Every take and renewal is an update with the Lease's resourceVersion, so two candidates cannot
both win. The leader renews every `retry_period`; if it cannot renew for `renew_deadline` it stops leading.
On a clean stop it gives the Lease up (holderIdentity cleared, client-go's ReleaseOnCancel) so another server
takes over without waiting for the lease to expire. Defaults are kube-controller-manager's: 15 s, 10 s, 2 s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field

from kwire.base.tasks import cancel_and_wait
from kwire.base.timefmt import now_micro
from kwire.client import ApiClient
from kwire.client.client import LEASES, ApiStatusError, Conflict, NotFound
from kwire.controllers.common import Obj

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ElectionTiming:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass(eq=False)
class LeaderElector:
    client: ApiClient
    _: KW_ONLY
    identity: str
    on_started_leading: Callable[[], Awaitable[None]]
    on_stopped_leading: Callable[[], Awaitable[None]]
    namespace: str = "kube-system"
    name: str = "kube-controller-manager"
    timing: ElectionTiming = field(default_factory=ElectionTiming)
    leading: bool = field(default=False, init=False)
    _observed: tuple[str, str] | None = field(default=None, init=False)  # (holder, renewTime) last seen
    _observed_at: float = field(default=0.0, init=False)  # our monotonic time when `_observed` last changed
    _last_renew: float = field(default=0.0, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def _spec(self, current: Obj | None) -> Obj:
        now = now_micro()
        old = (current or {}).get("spec") or {}
        same = old.get("holderIdentity") == self.identity
        spec: Obj = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.lease_duration)),
            "acquireTime": old.get("acquireTime", now) if same else now,
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions", 0))
            + (0 if same or not old.get("holderIdentity") else 1),
        }
        return spec

    async def try_acquire_or_renew(self) -> bool:
        """One round of client-go's tryAcquireOrRenew: True when this candidate holds the Lease afterwards."""
        loop = asyncio.get_running_loop()
        try:
            current = await self.client.get(LEASES, self.name, self.namespace)
        except NotFound:
            try:
                await self.client.create(
                    LEASES,
                    {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None)},
                    self.namespace,
                )
            except Conflict:  # another candidate created it first
                return False
            self._observed, self._observed_at = None, loop.time()
            return True
        spec = current.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, loop.time()
        duration = float(spec.get("leaseDurationSeconds") or self.timing.lease_duration)
        if holder and holder != self.identity and loop.time() < self._observed_at + duration:
            return False  # someone else holds a lease that has not expired on our clock
        try:
            await self.client.update(LEASES, {**current, "spec": self._spec(current)})
        except Conflict:  # someone else wrote it since we read it
            return False
        return True

    def mark_renewed(self) -> None:
        """Record a successful take or renewal made outside the loop (the renew deadline counts from it)."""
        self._last_renew = asyncio.get_running_loop().time()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"leader-election-{self.name}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                ok = await self.try_acquire_or_renew()
            except asyncio.CancelledError:
                raise
            except (ApiStatusError, OSError, TimeoutError, Exception) as exc:  # noqa: BLE001 - API away: retry
                log.warning("leader election %s/%s: %s", self.namespace, self.name, exc)
                ok = False
            now = loop.time()
            if ok:
                self.mark_renewed()
                if not self.leading:
                    self.leading = True
                    log.info("leader election: %s became the leader of %s/%s", self.identity, self.namespace, self.name)
                    await self.on_started_leading()
            elif self.leading and now - self._last_renew >= self.timing.renew_deadline:
                self.leading = False
                log.error(
                    "leader election: %s lost %s/%s (not renewed for %.0fs)",
                    self.identity,
                    self.namespace,
                    self.name,
                    now - self._last_renew,
                )
                await self.on_stopped_leading()
            await asyncio.sleep(self.timing.retry_period)

    async def stop(self) -> None:
        """Stop campaigning; a leader stops leading and gives the Lease up."""
        await cancel_and_wait(self._task)
        if self.leading:
            self.leading = False
            await self.on_stopped_leading()
            await self._release()

    async def _release(self) -> None:
        try:
            current = await self.client.get(LEASES, self.name, self.namespace)
            spec = current.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            released = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now_micro()}
            await self.client.update(LEASES, {**current, "spec": released})
        except (ApiStatusError, OSError, TimeoutError) as exc:
            log.warning("leader election: releasing %s/%s: %s", self.namespace, self.name, exc)
