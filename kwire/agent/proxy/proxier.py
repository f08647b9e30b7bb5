"""The service proxy (kube-proxy's proxier): Services and EndpointSlices -> the desired `ip kwire-proxy` table,
kept up to date by the agent's one nft reconciler; stale UDP conntrack cleanup; health check servers.

Informer events only mark a service dirty (any number of events for a service collapse into one key); the
reconciler (`kwire/agent/nftsync.py`) syncs at most once per `min_sync_period`, asks `compute` for the desired
table, and applies the difference from what it applied last as ONE transaction through the long-lived libnftables
context; after a failure or when the table vanished it replaces the whole table in one transaction (established
connections keep their NAT in conntrack). `compute` recomputes only the dirty services' rules and merges them
into the `ProxyTable`, which is what keeps one more Service at 10,000 cheap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from kwire.agent.metrics import ProxyMetrics
from kwire.agent.nftsync import NftReconciler
from kwire.agent.proxy import ruleset
from kwire.agent.proxy.health import HealthChecks
from kwire.agent.proxy.model import ServicePort, ServiceView, SliceView, service_ports, service_view, slice_view
from kwire.base.keys import key_of
from kwire.client import Informer
from kwire.kernel import nft
from kwire.kernel.conntrack import Conntrack, NetlinkConntrack, StaleUdp

log = logging.getLogger(__name__)

Obj = dict[str, Any]
V = TypeVar("V")


def _parse(kind: str, obj: Obj, parse: Callable[[Obj], V]) -> V | None:
    """The typed view of an object, or None (logged) when it is malformed."""
    try:
        return parse(obj)
    except (ValueError, TypeError) as exc:
        log.warning("proxy: ignoring malformed %s %s: %s", kind, key_of(obj), exc)
        return None


def stale_udp(old: list[ServicePort], new: list[ServicePort]) -> list[StaleUdp]:
    """kube-proxy's stale UDP cleanup for one service: entries that still point at a removed endpoint, and entries
    made while the service had no endpoint (they hold the reject), would black-hole clients until they expire."""
    out: list[StaleUdp] = []
    before = {sp.key: sp for sp in old}
    for sp in new:
        if sp.protocol != "UDP":
            continue
        prev = before.get(sp.key)
        prev_eps = {e.ip for e in prev.usable()} if prev else set()
        now_eps = {e.ip for e in sp.usable()}
        vips = [v for v in (sp.service.cluster_ip, *sp.service.external_ips, *sp.service.lb_ips) if v]
        for ip in sorted(prev_eps - now_eps):
            out += [StaleUdp(orig_dst=vip, dnat_to=ip) for vip in vips]
            if sp.node_port:
                out.append(StaleUdp(orig_dport=sp.node_port, dnat_to=ip))
        if now_eps and not prev_eps:
            out += [StaleUdp(orig_dst=vip, orig_dport=sp.port) for vip in vips]
    return out


class Proxier:
    def __init__(
        self,
        *,
        services: Informer,
        slices: Informer,
        node: str,
        node_ips: tuple[str, ...],
        cluster_cidr: str,
        service_cidr: str,
        pod_cidr: str = "",
        min_sync_period: float = 0.05,
        table_check_period: float = 5.0,
        applier: nft.Applier | None = None,
        conntrack: Conntrack | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.metrics = metrics  # kube-proxy's metrics (kwire/agent/metrics.py)
        self.services = services
        self.slices = slices
        self.node = node
        self.node_ips = node_ips
        self.cluster_cidr = cluster_cidr
        self.service_cidr = service_cidr
        self.pod_cidr = pod_cidr
        self.desired = self._empty()
        self.ports: dict[str, list[ServicePort]] = {}  # service key -> its ports as last computed
        # Service key -> its ports as last applied, for services whose change is not in the kernel yet.
        self._unapplied: dict[str, list[ServicePort]] = {}
        # Typed views of the informers' objects, made when an event hands them over.
        self._services: dict[str, ServiceView] = {}
        self._slices: dict[str, SliceView] = {}  # slice key -> view
        self._slices_of: dict[str, set[str]] = {}  # service key -> its slices' keys (entries go with their slices)
        self.conntrack = conntrack if conntrack is not None else NetlinkConntrack()
        self.reconciler = NftReconciler(
            name="proxy",
            compute=self.compute,
            applier=applier,
            min_period=min_sync_period,
            table_check_period=table_check_period,
            after=self._after_sync,
            observer=metrics,
        )
        self.stats = self.reconciler.stats
        self.health = HealthChecks(node_ip=node_ips[0] if node_ips else "0.0.0.0")
        self.synced = self.reconciler.committed

    def set_pod_cidr(self, pod_cidr: str) -> None:
        """This node's pod subnet (known once Flannel has its lease; before `start`): hairpin pairs come from it."""
        self.pod_cidr = pod_cidr
        self.desired = self._empty()
        self.ports.clear()

    def _empty(self) -> ruleset.ProxyTable:
        return ruleset.ProxyTable(
            cluster_cidr=self.cluster_cidr,
            service_cidr=self.service_cidr,
            node_ips=self.node_ips,
            pod_cidr=self.pod_cidr,
        )

    # -- change tracking --------------------------------------------------------------------------------------
    def mark(self, key: str) -> None:
        if key and key != "/":
            self.reconciler.mark(key)

    def _put_service(self, obj: Obj) -> None:
        key = key_of(obj)
        view = _parse("Service", obj, service_view)
        if view is None:
            self._services.pop(key, None)
        else:
            self._services[key] = view
        self.mark(key)

    def _drop_service(self, obj: Obj) -> None:
        key = key_of(obj)
        self._services.pop(key, None)
        self.mark(key)

    def _put_slice(self, obj: Obj) -> None:
        self._drop_slice(obj)
        view = _parse("EndpointSlice", obj, slice_view)
        if view is None:
            return
        self._slices[view.key] = view
        if view.service:
            self._slices_of.setdefault(view.service, set()).add(view.key)
            self.mark(view.service)

    def _drop_slice(self, obj: Obj) -> None:
        old = self._slices.pop(key_of(obj), None)
        if old is not None and old.service:
            keys = self._slices_of.get(old.service, set())
            keys.discard(old.key)
            if not keys:
                self._slices_of.pop(old.service, None)
            self.mark(old.service)

    def _follow(self, informer: Informer, what: str, put: Callable[[Obj], None], drop: Callable[[Obj], None]) -> None:
        """Route the informer's adds and updates to `put`, its deletes to `drop`; each counts as a `what`
        ("service" or "endpoints") change in the metrics (kube-proxy's *_changes_total)."""

        def changed() -> None:
            if self.metrics is not None:
                (self.metrics.service_changed if what == "service" else self.metrics.endpoints_changed)()

        def on_add(obj: Obj) -> None:
            changed()
            put(obj)

        def on_update(_old: Obj, new: Obj) -> None:
            changed()
            put(new)

        def on_delete(obj: Obj) -> None:
            changed()
            drop(obj)

        informer.on_add(on_add)
        informer.on_update(on_update)
        informer.on_delete(on_delete)

    def start(self) -> None:
        self._follow(self.services, "service", self._put_service, self._drop_service)
        self._follow(self.slices, "endpoints", self._put_slice, self._drop_slice)
        for sl in self.slices.items():
            self._put_slice(sl)
        for svc in self.services.items():
            self._put_service(svc)
        self.reconciler.start()

    async def stop(self) -> None:
        await self.reconciler.stop()
        await self.health.close()

    # -- the desired table --------------------------------------------------------------------------------------
    def _service(self, key: str) -> list[ServicePort]:
        svc = self._services.get(key)
        if svc is None:
            return []
        return service_ports(svc, (self._slices[k] for k in sorted(self._slices_of.get(key, ()))))

    def compute(self, keys: set[str], *, resync: bool) -> nft.Table:
        """The desired table after recomputing services `keys` (every service on a resync)."""
        if resync:
            keys = keys | set(self._services) | set(self.ports)
        for key in keys:
            old = self.ports.get(key, [])
            ports = self._service(key)
            if ports == old:
                continue
            self._unapplied.setdefault(key, old)
            for sp in old:
                self.desired.remove(sp.key)
            for sp in ports:
                self.desired.set(ruleset.service_rules(sp, node=self.node, cluster_cidr=self.cluster_cidr))
            if ports:
                self.ports[key] = ports
            else:
                self.ports.pop(key, None)
        return self.desired.table()

    async def _after_sync(self, _table: nft.Table, _txn: nft.Transaction) -> None:
        changed, self._unapplied = self._unapplied, {}
        flows = [f for key, old in changed.items() for f in stale_udp(old, self.ports.get(key, []))]
        if flows:
            try:
                await asyncio.to_thread(self.conntrack.delete_udp, flows)
            except OSError as exc:
                log.warning("proxy: conntrack cleanup failed: %s", exc)
        await self.health.sync(self.ports.values(), node=self.node)
