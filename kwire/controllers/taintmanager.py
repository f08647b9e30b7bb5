"""NoExecute taint eviction (kube's taint-eviction-controller, formerly the node lifecycle controller's taint
manager).

Owns the eviction of pods from nodes with NoExecute taints — the not-ready / unreachable ones the node lifecycle
controller adds, and any a user adds (`kubectl taint node n key=value:NoExecute`). A pod that does not tolerate
every NoExecute taint of its node is evicted at once; one that tolerates them all is evicted once the smallest
`tolerationSeconds` among the tolerations it uses has passed (counted from when the taint was added, or from the
pod's creation if it came later), and never when those tolerations have no `tolerationSeconds`. Evicting is
what kube does: the pod gets the `DisruptionTarget` condition (reason `DeletionByTaintManager`), a
`TaintManagerEviction` Event, and a graceful delete. On a node whose kubelet is gone the pod then stays
Terminating (nobody confirms it), but it no longer counts for its ReplicaSet, so the replacement is created at
once and the scheduler places it on a node without the taint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kwire.client import ApiClient, Informers, NotFound
from kwire.client.client import NODES, PODS
from kwire.controllers.common import (
    BY_NODE,
    Obj,
    lst,
    meta,
    name_of,
    namespace_of,
    now_rfc3339,
    parse_time,
    spec,
    taints_of,
    terminating,
    tolerates,
    uid_of,
    untolerated_taint,
    update_with_retry,
)
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)


def no_execute_taints(node: Obj) -> list[Obj]:
    return [t for t in taints_of(node) if t.get("effect") == "NoExecute"]


def eviction_delay(taints: list[Obj], tolerations: list[Any], *, since: float, now: float) -> float | None:
    """Seconds until a pod with `tolerations` must be evicted from a node with NoExecute `taints` (0: now), or
    None when it may stay. `since` is when the count started (the taint's timeAdded, or the pod's creation)."""
    if not taints:
        return None
    if untolerated_taint(taints, tolerations, effects=("NoExecute",)) is not None:
        return 0.0
    used = [t for t in tolerations if isinstance(t, dict) and any(tolerates(t, taint) for taint in taints)]
    seconds = [
        t["tolerationSeconds"]
        for t in used
        if isinstance(t.get("tolerationSeconds"), int) and not isinstance(t.get("tolerationSeconds"), bool)
    ]
    if not seconds:
        return None
    return max(0.0, since + max(0, min(seconds)) - now)


class TaintManager(Controller):
    name = "taint-eviction"
    component = "taint-eviction-controller"

    def __init__(self, client: ApiClient, informers: Informers, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(client, informers)
        self.clock = clock
        self.nodes = self.informer(NODES)
        self.pods = self.informer(PODS, indexed=True)
        self._seen: dict[str, dict[tuple[str, str], float]] = {}  # node -> NoExecute taint -> since when
        self.nodes.on_add(lambda n: self.enqueue(name_of(n)))
        self.nodes.on_update(self._on_node_update)
        self.on_change(self.pods, self._on_pod, deletes=False)

    def _on_node_update(self, old: Obj, new: Obj) -> None:
        if no_execute_taints(old) != no_execute_taints(new):
            self.enqueue(name_of(new))

    def _on_pod(self, pod: Obj) -> None:
        node_name = spec(pod).get("nodeName")
        if node_name and not terminating(pod):
            node = self.nodes.get(None, str(node_name))
            if node is not None and no_execute_taints(node):
                self.enqueue(str(node_name))

    async def sync(self, key: str) -> float | None:
        node = self.nodes.get(None, key)
        if node is None:
            self._seen.pop(key, None)
            return None  # pod GC removes pods of nodes that are gone
        taints = no_execute_taints(node)
        if not taints:
            self._seen.pop(key, None)
            return None
        now = self.clock()
        # When each taint appeared: its timeAdded, or when this controller first saw it (a user's taint may have none).
        seen = self._seen.setdefault(key, {})
        current = {(str(t.get("key")), str(t.get("value") or "")) for t in taints}
        for gone in set(seen) - current:
            del seen[gone]
        for t in taints:
            ident = (str(t.get("key")), str(t.get("value") or ""))
            seen.setdefault(ident, parse_time(t.get("timeAdded")) or now)
        taint_since = min(seen.values())
        waits: list[float] = []
        for pod in self.pods.by_index(BY_NODE, key):
            if terminating(pod):
                continue
            created = parse_time(meta(pod).get("creationTimestamp")) or taint_since
            delay = eviction_delay(taints, lst(spec(pod).get("tolerations")), since=max(taint_since, created), now=now)
            if delay is None:
                continue
            if delay > 0:
                waits.append(delay)
                continue
            await self._evict(pod)
        return min(waits) + 0.05 if waits else None

    async def _evict(self, pod: Obj) -> None:
        log.info(
            "taint eviction: deleting pod %s/%s from node %s",
            namespace_of(pod),
            name_of(pod),
            spec(pod).get("nodeName"),
        )
        await self.recorder.event(
            {**pod, "kind": "Pod", "apiVersion": "v1"},
            "Normal",
            "TaintManagerEviction",
            f"Marking for deletion Pod {namespace_of(pod)}/{name_of(pod)}",
        )

        def disruption(o: Obj) -> bool:
            conds = [c for c in lst(o.setdefault("status", {}).get("conditions")) if isinstance(c, dict)]
            if any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conds):
                return False
            conds = [c for c in conds if c.get("type") != "DisruptionTarget"]
            conds.append(
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "DeletionByTaintManager",
                    "message": "Taint manager: deleting due to NoExecute taint",
                    "lastTransitionTime": now_rfc3339(),
                }
            )
            o["status"]["conditions"] = conds
            return True

        await update_with_retry(self.client, PODS, pod, disruption, subresource_status=True)
        try:
            await self.client.delete(PODS, name_of(pod), namespace_of(pod), preconditions={"uid": uid_of(pod)})
        except NotFound:
            pass
