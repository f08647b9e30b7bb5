"""Pod garbage collection (kube's PodGC): gcOrphaned — pods bound to a Node that does not exist — and
gcTerminating — terminating pods on a node that is not Ready and carries the `node.kubernetes.io/out-of-service`
taint (what an admin adds to say a dead node will not come back, so its pods may be released).

Owns nothing but their removal. A bound pod is deleted gracefully: it keeps a deletionTimestamp until the
agent of its node confirms it is stopped. When the node itself is gone nobody ever will, so such pods are
force-deleted (grace period 0). The node's absence is confirmed with a fresh GET first, so a pod bound to a
node the cache has not seen yet is left alone.
"""

from __future__ import annotations

import logging

from kwire.client import ApiClient, Informers, NotFound
from kwire.client.client import NODES, PODS
from kwire.controllers.common import (
    BY_NODE,
    Obj,
    key_of,
    name_of,
    namespace_of,
    node_ready_status,
    spec,
    split_key,
    taints_of,
    terminating,
    uid_of,
)
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)


TAINT_OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


def out_of_service(node: Obj) -> bool:
    """Not Ready and tainted node.kubernetes.io/out-of-service:NoExecute (kube's gcTerminating condition)."""
    return node_ready_status(node) != "True" and any(
        t.get("key") == TAINT_OUT_OF_SERVICE and t.get("effect") == "NoExecute" for t in taints_of(node)
    )


class PodGC(Controller):
    name = "pod-gc"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.pods = self.informer(PODS, indexed=True)
        self.nodes = self.informer(NODES)
        self.on_change(self.pods, self._on_pod, deletes=False)
        self.nodes.on_delete(self._on_node_delete)
        self.nodes.on_update(self._on_node_update)

    def _on_pod(self, pod: Obj) -> None:
        node = spec(pod).get("nodeName")
        if not node or not self.nodes.has_synced:
            return
        known = self.nodes.get(None, str(node))
        if known is None or (terminating(pod) and out_of_service(known)):
            self.enqueue(key_of(pod))

    def _on_node_update(self, old: Obj, new: Obj) -> None:
        if out_of_service(new) and not out_of_service(old):
            for pod in self.pods.by_index(BY_NODE, name_of(new)):
                if terminating(pod):
                    self.enqueue(key_of(pod))

    def _on_node_delete(self, node: Obj) -> None:
        for pod in self.pods.by_index(BY_NODE, name_of(node)):
            self.enqueue(key_of(pod))

    async def prepare(self) -> None:
        for pod in self.pods.items():
            self._on_pod(pod)

    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        pod = self.pods.get(ns, name)
        if pod is None:
            return None
        node = str(spec(pod).get("nodeName") or "")
        if not node:
            return None
        known = self.nodes.get(None, node)
        if known is not None:
            if terminating(pod) and out_of_service(known):
                await self._force_delete(pod, f"terminating on out-of-service node {node}")
            return None
        try:
            await self.client.get(NODES, node)
            return None  # the node exists; the cache is behind
        except NotFound:
            pass
        await self._force_delete(pod, f"its node {node} no longer exists")
        return None

    async def _force_delete(self, pod: Obj, why: str) -> None:
        """Delete the pod now (grace period 0), only if it is still the same pod (uid precondition)."""
        log.info("pod GC: force-deleting %s: %s", key_of(pod), why)
        try:
            await self.client.delete(
                PODS, name_of(pod), namespace_of(pod), grace_period=0, preconditions={"uid": uid_of(pod)}
            )
        except NotFound:
            pass
