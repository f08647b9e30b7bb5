"""The node lifecycle controller: notices nodes whose agent stopped reporting (kube's node lifecycle controller;
the eviction itself is the taint manager's, `taintmanager.py`).

Owns, on Nodes, the Ready condition's switch to Unknown and the taints kube derives from the Ready condition:
`node.kubernetes.io/unreachable` (Ready Unknown: no heartbeat) and `node.kubernetes.io/not-ready` (Ready False),
each with effect NoSchedule and NoExecute (the NoExecute one stamped with `timeAdded`); and the Ready=False
condition of the pods on an unreachable node.

A node's heartbeat is its Lease in kube-node-lease (same name as the node; spec.renewTime) or a new
lastHeartbeatTime on its Ready condition. As kube does, the controller times heartbeats with its own clock
(when it saw the renewTime change), so clock skew between machines does not matter, and a node it has just
started watching gets a full grace period. When no heartbeat came for node-monitor-grace-period seconds:
- the Ready condition becomes status Unknown, reason NodeStatusUnknown, "Kubelet stopped posting node status."
  (MemoryPressure, DiskPressure and PIDPressure too; a node that never reported gets Ready=Unknown with reason
  NodeStatusNeverUpdated);
- the node gets the taint node.kubernetes.io/unreachable with effects NoSchedule and NoExecute (pods that do not
  tolerate it are evicted by the taint manager, the others after their tolerationSeconds, 300 s by default);
- every pod on it gets its Ready condition set to False (status subresource), including pods that report
  Ready again while the node stays silent.
When heartbeats come back the taints are removed; the agent sets Ready=True itself. A node that reports
Ready=False gets the not-ready taints instead, until it reports Ready=True.
"""

from __future__ import annotations

import logging
import time

from kwire.client import ApiClient, Informers
from kwire.client.client import LEASES, NODES, PODS
from kwire.controllers.common import (
    BY_NODE,
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    Obj,
    condition,
    lst,
    name_of,
    node_ready_status,
    now_rfc3339,
    pod_ready,
    set_or_omit,
    spec,
    taints_of,
    update_with_retry,
)
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)


LEASE_NAMESPACE = "kube-node-lease"
UNKNOWN_REASON = "NodeStatusUnknown"
UNKNOWN_MESSAGE = "Kubelet stopped posting node status."
NEVER_REASON = "NodeStatusNeverUpdated"
NEVER_MESSAGE = "Kubelet never posted node status."
PRESSURE_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure")


def _heartbeat_of_node(node: Obj) -> str:
    return str((condition(node, "Ready") or {}).get("lastHeartbeatTime") or "")


def _renew_of_lease(lease: Obj) -> str:
    return str(spec(lease).get("renewTime") or "")


class NodeLifecycle(Controller):
    name = "node-lifecycle"

    def __init__(self, client: ApiClient, informers: Informers, *, grace_period: float = 40.0) -> None:
        super().__init__(client, informers)
        self.grace_period = grace_period
        self.nodes = self.informer(NODES)
        self.leases = self.informer(LEASES, namespace=LEASE_NAMESPACE)
        self.pods = self.informer(PODS, indexed=True)
        # node name -> (last seen lease renewTime, last seen Ready heartbeat, monotonic time of the last change)
        self._probe: dict[str, tuple[str, str, float]] = {}
        self.on_change(self.nodes, self._on_node, deletes=False)
        self.nodes.on_delete(lambda n: self._probe.pop(name_of(n), None))
        self.on_change(self.leases, self._on_lease, deletes=False)
        self.on_change(self.pods, self._on_pod, deletes=False)

    # -- heartbeats --------------------------------------------------------------------------------------------
    def _observe(self, node_name: str, *, renew: str | None = None, heartbeat: str | None = None) -> None:
        old = self._probe.get(node_name)
        now = time.monotonic()
        if old is None:
            self._probe[node_name] = (renew or "", heartbeat or "", now)
            return
        new_renew = old[0] if renew is None else renew
        new_beat = old[1] if heartbeat is None else heartbeat
        if (new_renew, new_beat) != (old[0], old[1]):
            self._probe[node_name] = (new_renew, new_beat, now)

    def _on_node(self, node: Obj) -> None:
        self._observe(name_of(node), heartbeat=_heartbeat_of_node(node))
        self.enqueue(name_of(node))

    def _on_lease(self, lease: Obj) -> None:
        node_name = name_of(lease)
        if self.nodes.get(None, node_name) is None:
            return
        self._observe(node_name, renew=_renew_of_lease(lease))
        self.enqueue(node_name)

    def _on_pod(self, pod: Obj) -> None:
        node_name = spec(pod).get("nodeName")
        if node_name and pod_ready(pod):
            self.enqueue(str(node_name))

    def silent_for(self, node_name: str) -> float:
        probe = self._probe.get(node_name)
        if probe is None:
            return 0.0
        return time.monotonic() - probe[2]

    async def prepare(self) -> None:
        for lease in self.leases.items():
            if self.nodes.get(None, name_of(lease)) is not None:
                self._observe(name_of(lease), renew=_renew_of_lease(lease))

    # -- reconcile ---------------------------------------------------------------------------------------------
    async def sync(self, key: str) -> float | None:
        node = self.nodes.get(None, key)
        if node is None:
            self._probe.pop(key, None)
            return None
        if key not in self._probe:
            self._observe(key, heartbeat=_heartbeat_of_node(node))
        silent = self.silent_for(key)
        if silent < self.grace_period:
            want = {TAINT_NOT_READY} if node_ready_status(node) == "False" else set()
            await self._set_taints(node, want)
            return self.grace_period - silent + 0.05
        if (condition(node, "Ready") or {}).get("status") != "Unknown":
            log.warning("node %s: no heartbeat for %.0fs: marking it NotReady (Unknown)", key, silent)
            await self._mark_unknown(node)
        await self._set_taints(node, {TAINT_UNREACHABLE})
        for pod in self.pods.by_index(BY_NODE, key):
            if pod_ready(pod):
                await self._pod_not_ready(pod)
        return None

    async def _mark_unknown(self, node: Obj) -> None:
        def apply(o: Obj) -> bool:
            st = o.setdefault("status", {})
            conds = [c for c in lst(st.get("conditions")) if isinstance(c, dict)]
            now = now_rfc3339()
            changed = False
            ready = next((c for c in conds if c.get("type") == "Ready"), None)
            if ready is None:
                conds.append(
                    {
                        "type": "Ready",
                        "status": "Unknown",
                        "reason": NEVER_REASON,
                        "message": NEVER_MESSAGE,
                        "lastTransitionTime": now,
                    }
                )
                changed = True
            for c in conds:
                if c.get("type") in ("Ready", *PRESSURE_CONDITIONS) and c.get("status") != "Unknown":
                    c.update(
                        {
                            "status": "Unknown",
                            "reason": UNKNOWN_REASON,
                            "message": UNKNOWN_MESSAGE,
                            "lastTransitionTime": now,
                        }
                    )
                    changed = True
            st["conditions"] = conds
            return changed

        await update_with_retry(self.client, NODES, node, apply, subresource_status=True)

    async def _set_taints(self, node: Obj, want: set[str]) -> None:
        """Make the node's lifecycle taints (not-ready / unreachable, NoSchedule + NoExecute) exactly `want`'s keys;
        every other taint is left as it is."""
        lifecycle = (TAINT_NOT_READY, TAINT_UNREACHABLE)

        def apply(o: Obj) -> bool:
            s = o.setdefault("spec", {})
            taints = [t for t in lst(s.get("taints")) if isinstance(t, dict)]
            kept = [t for t in taints if t.get("key") not in lifecycle or t.get("key") in want]
            have = {(t.get("key"), t.get("effect")) for t in kept}
            for key in sorted(want):
                if (key, "NoSchedule") not in have:
                    kept.append({"key": key, "effect": "NoSchedule"})
                if (key, "NoExecute") not in have:
                    kept.append({"key": key, "effect": "NoExecute", "timeAdded": now_rfc3339()})
            if kept == taints:
                return False
            set_or_omit(s, "taints", kept)
            for key in lifecycle:
                if (key in want) != any(t.get("key") == key for t in taints):
                    log.info("node %s: %s the %s taints", name_of(o), "adding" if key in want else "removing", key)
            return True

        if any(t.get("key") in lifecycle for t in taints_of(node)) or want:
            await update_with_retry(self.client, NODES, node, apply)

    async def _pod_not_ready(self, pod: Obj) -> None:
        def apply(o: Obj) -> bool:
            st = o.setdefault("status", {})
            changed = False
            for c in lst(st.get("conditions")):
                if isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") != "False":
                    c["status"] = "False"
                    c["lastTransitionTime"] = now_rfc3339()
                    changed = True
            return changed

        await update_with_retry(self.client, PODS, pod, apply, subresource_status=True)
