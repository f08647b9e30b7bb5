"""The NetworkPolicy controller (kube-router's network policy controller, on nftables): Pods, Namespaces and
NetworkPolicies -> the desired `ip kwire-netpol` table, kept up to date by the agent's one nft reconciler.

Informer events (all Pods, Namespaces, NetworkPolicies) are turned into typed views on receipt (`PodInfo`,
namespace labels, `Policy`; None for a deleted object) and mark a key dirty (`pod:ns/name`, `ns:name`,
`policy:ns/name`); the reconciler (`kwire/agent/nftsync.py`) syncs at most once per `min_sync_period` (30 ms) and
asks `compute` for the desired table: the views received since the last sync are fed to the `Compiler`,
which recompiles only the pieces they can affect; the reconciler applies the difference from what it applied last
as ONE transaction (through the long-lived libnftables context). A resync (the first sync, after a failure, when
the table vanished) and one every `full_resync_period` (kube-router's 5-minute periodic sync) rebuild everything
from the caches. Connections already accepted are never cut by a sync: the base chains accept
`ct state established,related` before any policy is consulted, whatever the table's contents.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from kwire.agent.netpol import ruleset
from kwire.agent.netpol.compiler import Compiler
from kwire.agent.netpol.model import PodInfo, Policy, namespace_labels, parse_policy, pod_info
from kwire.agent.nftsync import NftReconciler, SyncObserver
from kwire.base.keys import key_of
from kwire.client import Informer
from kwire.kernel import nft

log = logging.getLogger(__name__)

Obj = dict[str, Any]
V = TypeVar("V")


class Inbox(Generic[V]):
    """Typed views of one informer's objects received since the last sync, by key (None: the object is gone), made
    on receipt (CoreDNS's object.ToService idea); bounded by the number of objects."""

    def __init__(self, prefix: str, view: Callable[[Obj], V | None]) -> None:
        self.prefix = prefix
        self.view = view
        self.views: dict[str, V | None] = {}

    def watch(self, informer: Informer, mark: Callable[[str], None]) -> None:
        def put(obj: Obj, new: Obj | None = None) -> None:
            o = new if new is not None else obj
            self.views[key_of(o)] = self.view(o)
            mark(self.prefix + key_of(o))

        def gone(obj: Obj) -> None:
            self.views[key_of(obj)] = None
            mark(self.prefix + key_of(obj))

        informer.on_add(put)
        informer.on_update(put)
        informer.on_delete(gone)

    def refill(self, objs: Iterable[Obj]) -> None:
        """Every object of the cache (a resync)."""
        self.views = {key_of(o): self.view(o) for o in objs}

    def take(self) -> dict[str, V | None]:
        out, self.views = self.views, {}
        return out


def _policy_view(obj: Obj) -> Policy | None:
    try:
        return parse_policy(obj)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("netpol: ignoring malformed NetworkPolicy %s: %s", key_of(obj), exc)
        return None


def delete_table(applier: nft.Applier | None = None) -> None:
    """Remove `ip kwire-netpol` (network policy disabled): no pod is isolated any more."""
    (applier or nft.KernelApplier(library=False)).apply(nft.delete("ip", ruleset.TABLE))


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
        applier: nft.Applier | None = None,
        observer: SyncObserver | None = None,
    ) -> None:
        self.pods = pods
        self.namespaces = namespaces
        self.policies = policies
        self.node = node
        self.node_ips = node_ips
        self.full_resync_period = full_resync_period
        self.log_denied = log_denied
        self.compiler = Compiler(node, node_ips=node_ips, log=log_denied)
        self.current = ruleset.Ruleset(node_ips=node_ips, log=log_denied)  # as last computed
        self._pods_in: Inbox[PodInfo] = Inbox("pod:", pod_info)
        self._namespaces_in: Inbox[dict[str, str]] = Inbox("ns:", namespace_labels)
        self._policies_in: Inbox[Policy] = Inbox("policy:", _policy_view)
        self.reconciler = NftReconciler(
            name="netpol",
            compute=self.compute,
            applier=applier,
            min_period=min_sync_period,
            max_period=min(full_resync_period, table_check_period),
            table_check_period=table_check_period,
            resync_period=full_resync_period,  # kube-router's periodic full sync
            after=self._after_sync,
            observer=observer,  # kube-router's metrics (kwire/agent/metrics.py)
        )
        self.stats = self.reconciler.stats
        self.committed = self.reconciler.committed

    def start(self) -> None:
        for inf, inbox in (
            (self.pods, self._pods_in),
            (self.namespaces, self._namespaces_in),
            (self.policies, self._policies_in),
        ):
            inbox.watch(inf, self.reconciler.mark)
        self.reconciler.start()

    async def stop(self) -> None:
        await self.reconciler.stop()

    # -- the desired table --------------------------------------------------------------------------------------
    def compute(self, keys: set[str], *, resync: bool) -> nft.Table:
        """Feed the views received since the last sync (on a resync: every object, from the caches) to the
        compiler and build the table. `keys` only say that something changed; the views carry what."""
        if resync:
            self.compiler = Compiler(self.node, node_ips=self.node_ips, log=self.log_denied)
            self._namespaces_in.refill(self.namespaces.items())
            self._pods_in.refill(self.pods.items())
            self._policies_in.refill(self.policies.items())
        namespaces, pods, policies = self._namespaces_in.take(), self._pods_in.take(), self._policies_in.take()
        # Namespaces and pods first, so a policy's first selection already sees them.
        for name, labels in namespaces.items():
            self.compiler.set_namespace(name, labels)
        for key, info in pods.items():
            self.compiler.set_pod(key, info)
        for key, pol in policies.items():
            self.compiler.set_policy(key, pol)
        self.current = self.compiler.build()
        return self.current.table()

    async def _after_sync(self, _table: nft.Table, txn: nft.Transaction) -> None:
        if not txn.empty:
            log.debug("netpol: %s transaction of %d lines", txn.kind, len(txn.lines))
