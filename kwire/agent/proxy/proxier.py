"""The service proxy's sync loop (kube-proxy's proxier): change tracking, one nft transaction per sync,
partial syncs for changed services, full syncs after a failure, stale UDP conntrack cleanup, health checks.

Events from the Service and EndpointSlice informers only mark a service dirty (the change tracker collapses any
number of events into one entry); the runner syncs at most once per `min_sync_period`. A sync recomputes the
rules of the dirty services, diffs them against what was applied, and applies the difference as ONE `nft -f`
transaction; if that fails, the next sync replaces the whole table. Restarting the agent replaces the table in
one transaction too, which leaves established connections alone (their NAT lives in conntrack).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from kwire.agent.proxy import ruleset
from kwire.agent.proxy.health import HealthChecks
from kwire.agent.proxy.model import ServicePort, service_ports
from kwire.agent.syncrunner import SyncRunner, TableCheck
from kwire.client import Informer
from kwire.kernel import nft

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CONNTRACK = shutil.which("conntrack") or "/usr/sbin/conntrack"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass
class SyncStats:
    full: int = 0
    partial: int = 0
    failed: int = 0
    last_seconds: float = 0.0
    history: list[float] = field(default_factory=list)


def _svc_key(obj: Obj) -> str:
    m = obj.get("metadata") or {}
    return f"{m.get('namespace')}/{m.get('name')}"


def _slice_service_key(obj: Obj) -> str:
    m = obj.get("metadata") or {}
    name = (m.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return f"{m.get('namespace')}/{name}" if name else ""


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
        apply: bool = True,
    ) -> None:
        self.services = services
        self.slices = slices
        self.node = node
        self.node_ips = node_ips
        self.cluster_cidr = cluster_cidr
        self.service_cidr = service_cidr
        self.min_sync_period = min_sync_period
        self.apply = apply  # False in unit tests: compute and render only
        self.pod_cidr = pod_cidr
        self.current = ruleset.Ruleset(cluster_cidr, service_cidr, node_ips, pod_cidr)
        self.ports: dict[str, list[ServicePort]] = {}  # service key -> its ports as last synced
        self._dirty: set[str] = set()
        self._need_full = True
        self.table_check = TableCheck("ip", ruleset.TABLE, period=table_check_period, owner="proxy")
        self.runner = SyncRunner(
            name="proxy",
            sync=self.sync,
            on_failure=self._failed,
            min_period=min_sync_period,
            max_period=table_check_period,
        )
        self._kick = self.runner.event
        self.stats = SyncStats()
        self.health = HealthChecks(node_ip=node_ips[0] if node_ips else "0.0.0.0")
        self.synced = asyncio.Event()
        slices.add_indexer("service", lambda o: [k] if (k := _slice_service_key(o)) else [])

    # -- change tracking --------------------------------------------------------------------------------------
    def mark(self, key: str) -> None:
        if key and key != "/":
            self._dirty.add(key)
            self._kick.set()

    async def _on_svc(self, obj: Obj) -> None:
        self.mark(_svc_key(obj))

    async def _on_svc_update(self, old: Obj, new: Obj) -> None:
        self.mark(_svc_key(new))

    async def _on_slice(self, obj: Obj) -> None:
        self.mark(_slice_service_key(obj))

    async def _on_slice_update(self, old: Obj, new: Obj) -> None:
        self.mark(_slice_service_key(old))
        self.mark(_slice_service_key(new))

    def start(self) -> None:
        self.services.on_add(self._on_svc)
        self.services.on_update(self._on_svc_update)
        self.services.on_delete(self._on_svc)
        self.slices.on_add(self._on_slice)
        self.slices.on_update(self._on_slice_update)
        self.slices.on_delete(self._on_slice)
        for svc in self.services.items():
            self.mark(_svc_key(svc))
        self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.health.close()

    def _failed(self, _exc: Exception) -> None:
        self.stats.failed += 1
        self._need_full = True

    def compute(self, keys: set[str]) -> tuple[ruleset.Ruleset, set[str], dict[str, list[ServicePort]]]:
        """The new ruleset after recomputing services `keys`, and which service-port keys changed."""
        new = ruleset.Ruleset(
            cluster_cidr=self.cluster_cidr,
            service_cidr=self.service_cidr,
            node_ips=self.node_ips,
            pod_cidr=self.pod_cidr,
            services=dict(self.current.services),
        )
        changed: set[str] = set()
        new_ports: dict[str, list[ServicePort]] = {}
        for key in keys:
            ns, _, name = key.partition("/")
            svc = self.services.get(ns, name)
            try:
                ports = service_ports(svc, self.slices.by_index("service", key)) if svc else []
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("proxy: ignoring malformed service %s: %s", key, exc)
                ports = []
            new_ports[key] = ports
            old_keys = {sp.key for sp in self.ports.get(key, [])}
            for k in old_keys:
                new.services.pop(k, None)
            for sp in ports:
                new.services[sp.key] = ruleset.service_rules(sp, node=self.node, cluster_cidr=self.cluster_cidr)
            for k in old_keys | {sp.key for sp in ports}:
                if self.current.services.get(k) != new.services.get(k):
                    changed.add(k)
        return new, changed, new_ports

    async def sync(self) -> None:
        t0 = time.monotonic()
        if not self._need_full and self.apply and await self.table_check.gone():
            self._need_full = True
        if not self._need_full and not self._dirty:
            return  # a periodic wake-up with nothing to do
        full = self._need_full
        keys = set(self._dirty)
        self._dirty.clear()
        if full:
            keys |= {_svc_key(s) for s in self.services.items()} | set(self.ports)
        new, changed, new_ports = self.compute(keys)
        if full:
            script = ruleset.render_full(new)
        elif changed:
            script = ruleset.render_partial(self.current, new, changed)
        else:
            script = ""
        if script and self.apply:
            try:
                await asyncio.to_thread(functools.partial(nft.apply, script, use_library=True))
            except nft.NftError:
                self._dirty |= keys
                raise
        old_ports = dict(self.ports)  # a copy: self.ports is updated in place below
        self.current = new
        for key, ports in new_ports.items():
            if ports:
                self.ports[key] = ports
            else:
                self.ports.pop(key, None)
        self._need_full = False
        if self.apply:
            await self._clear_udp_conntrack(old_ports, new_ports)
        await self.health.sync(self.ports.values(), node=self.node)
        dt = time.monotonic() - t0
        self.stats.last_seconds = dt
        self.stats.history.append(dt)
        del self.stats.history[:-100]
        if full:
            self.stats.full += 1
        else:
            self.stats.partial += 1
        self.synced.set()
        if script:
            log.debug(
                "proxy: %s sync of %d service ports in %.1f ms", "full" if full else "partial", len(changed), dt * 1e3
            )

    # -- conntrack -----------------------------------------------------------------------------------------------
    async def _clear_udp_conntrack(self, old: dict[str, list[ServicePort]], new: dict[str, list[ServicePort]]) -> None:
        """kube-proxy's stale UDP cleanup: UDP has no connection to end, so conntrack entries that still point at
        a removed endpoint (or were made while the service had none) would black-hole clients until they expire."""
        cmds: list[list[str]] = []
        for key, ports in new.items():
            before = {sp.key: sp for sp in old.get(key, [])}
            for sp in ports:
                if sp.protocol != "UDP":
                    continue
                prev = before.get(sp.key)
                prev_eps = {(e.ip, e.port) for e in prev.usable()} if prev else set()
                now_eps = {(e.ip, e.port) for e in sp.usable()}
                vips = [v for v in (sp.cluster_ip, *sp.external_ips, *sp.lb_ips) if v]
                for ip, _port in prev_eps - now_eps:
                    for vip in vips:
                        cmds.append(["-D", "-p", "udp", "--orig-dst", vip, "--dst-nat", ip])
                    if sp.node_port:
                        cmds.append(["-D", "-p", "udp", "--orig-port-dst", str(sp.node_port), "--dst-nat", ip])
                if now_eps and not prev_eps:
                    for vip in vips:
                        cmds.append(["-D", "-p", "udp", "--orig-dst", vip, "--orig-port-dst", str(sp.port)])
        for args in cmds:
            # Exit status 1 means "no entries matched": normal.
            await asyncio.to_thread(subprocess.run, [CONNTRACK, *args], capture_output=True, check=False)
