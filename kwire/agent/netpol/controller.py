"""The NetworkPolicy sync loop (kube-router's network policy controller, on nftables).

Informer events (all Pods, Namespaces, NetworkPolicies) only mark an object dirty; the runner syncs at most once
per `min_sync_period` (30 ms). A sync feeds the dirty objects, read from the informer caches, to the `Compiler`,
which recompiles only the pieces they can affect, and applies the difference from the last applied ruleset as ONE
nft transaction (through the long-lived libnftables context). The first sync, a sync after a failure, and one every
`full_resync_period` (kube-router's 5-minute periodic sync) rebuild everything from the caches and replace the
whole table in one transaction. Connections already accepted are never cut by a sync: the base chains accept
`ct state established,related` before any policy is consulted, whatever the table's contents.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kwire.agent.netpol import ruleset
from kwire.agent.netpol.compiler import Compiler
from kwire.agent.netpol.model import key_of, namespace_labels, parse_policy, pod_info
from kwire.agent.syncrunner import SyncRunner, TableCheck
from kwire.client import Informer
from kwire.kernel import nft

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass
class SyncStats:
    full: int = 0
    partial: int = 0
    failed: int = 0
    last_seconds: float = 0.0
    # Seconds from the first change a sync picked up being handed to the loop until its transaction committed.
    latencies: list[float] = field(default_factory=list)


def delete_table() -> None:
    """Remove `ip kwire-netpol` (network policy disabled): no pod is isolated any more."""
    nft.apply(nft.delete_table_script("ip", ruleset.TABLE))


class NetworkPolicyController:
    def __init__(
        self,
        *,
        pods: Informer,
        namespaces: Informer,
        policies: Informer,
        node: str,
        node_ips: tuple[str, ...],
        min_sync_period: float = 0.03,
        full_resync_period: float = 300.0,
        table_check_period: float = 5.0,
        log_denied: bool = True,
        apply: bool = True,
    ) -> None:
        self.pods = pods
        self.namespaces = namespaces
        self.policies = policies
        self.node = node
        self.node_ips = node_ips
        self.min_sync_period = min_sync_period
        self.full_resync_period = full_resync_period
        self.log_denied = log_denied
        self.apply = apply  # False in unit tests: compute and render only
        self.compiler = Compiler(node, node_ips=node_ips, log=log_denied)
        self.current = ruleset.Ruleset(node_ips=node_ips, log=log_denied)
        self.stats = SyncStats()
        self.committed = asyncio.Event()
        self.last_script = ""
        self._dirty_pods: set[str] = set()
        self._dirty_namespaces: set[str] = set()
        self._dirty_policies: set[str] = set()
        self._pending_since: float | None = None
        self._need_full = True
        self._last_full = 0.0
        self.table_check = TableCheck("ip", ruleset.TABLE, period=table_check_period, owner="netpol")
        self.runner = SyncRunner(
            name="netpol",
            sync=self._periodic_sync,
            on_failure=self._failed,
            min_period=min_sync_period,
            max_period=min(full_resync_period, table_check_period),
        )
        self._kick = self.runner.event

    # -- change tracking --------------------------------------------------------------------------------------
    def _mark(self, dirty: set[str], key: str) -> None:
        dirty.add(key)
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._kick.set()

    def _on_pod(self, obj: Obj, new: Obj | None = None) -> None:
        self._mark(self._dirty_pods, key_of(new if new is not None else obj))

    def _on_namespace(self, obj: Obj, new: Obj | None = None) -> None:
        self._mark(self._dirty_namespaces, str(((new if new is not None else obj).get("metadata") or {}).get("name")))

    def _on_policy(self, obj: Obj, new: Obj | None = None) -> None:
        self._mark(self._dirty_policies, key_of(new if new is not None else obj))

    def start(self) -> None:
        for inf, fn in (
            (self.pods, self._on_pod),
            (self.namespaces, self._on_namespace),
            (self.policies, self._on_policy),
        ):
            inf.on_add(fn)
            inf.on_update(fn)
            inf.on_delete(fn)
        self._need_full = True
        self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()

    # -- the runner ---------------------------------------------------------------------------------------------
    async def _periodic_sync(self) -> None:
        now = time.monotonic()
        if now - self._last_full >= self.full_resync_period:
            self._need_full = True  # kube-router's periodic full sync
        elif self.apply and await self.table_check.gone():
            # Checked every few seconds: a flushed table would leave every pod unisolated until the periodic sync.
            self._need_full = True
        if not self._need_full and not (self._dirty_pods or self._dirty_namespaces or self._dirty_policies):
            return  # a periodic wake-up with nothing to do
        await self.sync()

    def _failed(self, _exc: Exception) -> None:
        self.stats.failed += 1
        self._need_full = True

    def _feed_pod(self, key: str) -> None:
        ns, _, name = key.partition("/")
        self.compiler.set_pod(key, pod_info(self.pods.get(ns, name)))

    def _feed_namespace(self, name: str) -> None:
        self.compiler.set_namespace(name, namespace_labels(self.namespaces.get(None, name)))

    def _feed_policy(self, key: str) -> None:
        ns, _, name = key.partition("/")
        obj = self.policies.get(ns, name)
        try:
            pol = parse_policy(obj) if obj is not None else None
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("netpol: ignoring malformed NetworkPolicy %s: %s", key, exc)
            pol = None
        self.compiler.set_policy(key, pol)

    def compute(self, *, full: bool) -> ruleset.Ruleset:
        """Feed the dirty objects (or, for a full sync, every object) to the compiler and build the ruleset."""
        pods, namespaces, policies = self._dirty_pods, self._dirty_namespaces, self._dirty_policies
        self._dirty_pods, self._dirty_namespaces, self._dirty_policies = set(), set(), set()
        if full:
            self.compiler = Compiler(self.node, node_ips=self.node_ips, log=self.log_denied)
            namespaces = {str((o.get("metadata") or {}).get("name")) for o in self.namespaces.items()}
            pods = {key_of(o) for o in self.pods.items()}
            policies = {key_of(o) for o in self.policies.items()}
        # Namespaces and pods first, so a policy's first selection already sees them.
        for name in namespaces:
            self._feed_namespace(name)
        for key in pods:
            self._feed_pod(key)
        for key in policies:
            self._feed_policy(key)
        return self.compiler.build()

    async def sync(self) -> None:
        t0 = time.monotonic()
        full = self._need_full
        since, self._pending_since = self._pending_since, None
        new = self.compute(full=full)
        script = ruleset.render_full(new) if full else ruleset.render_partial(self.current, new)
        if script and self.apply:
            await asyncio.to_thread(functools.partial(nft.apply, script, use_library=True))
        done = time.monotonic()
        self.current = new
        self.last_script = script
        self._need_full = False
        if full:
            self._last_full = done
            self.stats.full += 1
        else:
            self.stats.partial += 1
        self.stats.last_seconds = done - t0
        if since is not None:
            self.stats.latencies.append(done - since)
            del self.stats.latencies[:-1000]
        self.committed.set()
        if script:
            log.debug("netpol: %s sync in %.1f ms", "full" if full else "partial", (done - t0) * 1e3)
