"""The `kubernetes` Service's endpoints with several servers: kube-apiserver's lease endpoint reconciler
(`--endpoint-reconciler-type=lease`, the default).

Every server keeps a lease key `/registry/masterleases/<ip>` (kube-apiserver's own key) fresh every `interval`
seconds and sets the `default/kubernetes` Endpoints and EndpointSlice to the addresses whose lease is younger
than `ttl` (kube: 10 s and 15 s), so clients and agents that learn the servers from them (as K3s's agent load
balancer does) see every live server; a killed server drops out once its lease is stale, a stopped one at once
(it deletes its lease). kube-apiserver's leases expire through etcd TTLs; here the lease value carries its
write time, compared with the reader's clock (the servers of one cluster are expected to keep time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import orjson

from kwire.api.errors import ApiError
from kwire.api.registry import by_path
from kwire.api.resources import Resources
from kwire.base.tasks import cancel_and_wait
from kwire.store.base import KeyExists, KeyNotFound, RevisionMismatch, StoreError

log = logging.getLogger(__name__)

PREFIX = "/registry/masterleases/"
LEAVE_TIMEOUT = 2.0  # seconds a stopping server spends taking itself out of the endpoints


async def write_kubernetes_endpoints(resources: Resources, *, addresses: list[str], port: int) -> None:
    """Set default/kubernetes Endpoints and EndpointSlice to `addresses` (sorted), written only when changed."""
    ep_kind = by_path("", "v1", "endpoints")
    eps_kind = by_path("discovery.k8s.io", "v1", "endpointslices")
    assert ep_kind and eps_kind
    endpoints: dict[str, Any] = {
        "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [
            {
                "addresses": [{"ip": a} for a in addresses],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }
        ],
    }
    slice_: dict[str, Any] = {
        "metadata": {
            "name": "kubernetes",
            "labels": {
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True, "serving": True, "terminating": False}} for a in addresses
        ],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }
    for kind, desired in ((ep_kind, endpoints), (eps_kind, slice_)):
        current = resources.get_or_none(kind, "default", "kubernetes")
        if current is None:
            try:
                await resources.create(kind, "default", desired)
            except ApiError as err:  # another server created it a moment ago: the next round compares
                log.info("kubernetes %s: %s", kind.plural, err.message)
            continue
        body = {k: v for k, v in desired.items() if k != "metadata"}
        labels = desired["metadata"]["labels"]
        if all(current.get(k) == v for k, v in body.items()) and current["metadata"].get("labels") == labels:
            continue
        merged = {**current, **body}
        merged["metadata"] = {**current["metadata"], "labels": labels}
        try:
            await resources.update(kind, "default", "kubernetes", merged)
        except ApiError as err:  # 409: another server wrote it; the next round compares again
            log.info("updating %s default/kubernetes: %s", kind.plural, err.message)


@dataclass(eq=False)
class MasterLeases:
    resources: Resources
    _: KW_ONLY
    address: str
    port: int
    interval: float = 10.0
    ttl: float = 15.0
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @property
    def _key(self) -> str:
        return PREFIX + self.address

    async def _renew(self) -> None:
        store = self.resources.store
        value = orjson.dumps({"ip": self.address, "port": self.port, "time": time.time()})
        kv = store.get_now(self._key)
        try:
            if kv is None:
                await store.create(self._key, value)
            else:
                await store.update(self._key, value, expected_revision=kv.mod_revision)
        except (KeyExists, RevisionMismatch, KeyNotFound):
            pass  # a restarted twin at the same address wrote it; the next round writes again

    async def reconcile_once(self) -> list[str]:
        """Renew our lease, drop stale ones, and point the kubernetes Endpoints at the live servers."""
        await self._renew()
        store = self.resources.store
        now = time.time()
        live = []
        for kv in (await store.range(PREFIX)).items:
            try:
                written = float(orjson.loads(kv.value).get("time") or 0)
            except (orjson.JSONDecodeError, AttributeError):
                written = 0
            if now - written <= self.ttl:
                live.append(kv.key[len(PREFIX) :])
            else:
                try:
                    await store.delete(kv.key, expected_revision=kv.mod_revision)
                except (KeyNotFound, RevisionMismatch):
                    pass
        live = sorted(set(live) | {self.address})
        await write_kubernetes_endpoints(self.resources, addresses=live, port=self.port)
        return live

    async def start(self) -> None:
        await self.reconcile_once()
        self._task = asyncio.create_task(self._run(), name="master-leases")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reconcile_once()
            except Exception as exc:  # noqa: BLE001 - the next period retries; nothing but cancellation ends the loop
                expected = isinstance(exc, (StoreError, ApiError))
                log.warning("apiserver endpoint reconciler: %s", exc, exc_info=not expected)

    async def stop(self) -> None:
        """A server stopping cleanly takes itself out of the endpoints at once (kube-apiserver does the same)."""
        await cancel_and_wait(self._task)
        store = self.resources.store
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT):  # a cluster shutting down may have lost its quorum
                await store.delete(self._key)
                remaining = sorted(k.key[len(PREFIX) :] for k in (await store.range(PREFIX)).items)
                if remaining:
                    await write_kubernetes_endpoints(self.resources, addresses=remaining, port=self.port)
        except (StoreError, ApiError, TimeoutError) as exc:
            log.warning("apiserver endpoint reconciler: leaving: %s", exc or "timed out")
