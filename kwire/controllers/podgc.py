"""Pod garbage collection of orphaned pods (kube's PodGC, gcOrphaned): pods bound to a Node that does not exist.

Owns nothing but their removal. A bound pod is deleted gracefully: it keeps a deletionTimestamp until the
agent of its node confirms it is stopped. When the node itself is gone nobody ever will, so such pods are
force-deleted (grace period 0). The node's absence is confirmed with a fresh GET first, so a pod bound to a
node the cache has not seen yet is left alone.
"""

from __future__ import annotations

import logging
from typing import Any

from kwire.client import ApiClient, Informers, NotFound
from kwire.client.client import NODES, PODS
from kwire.controllers.common import BY_NODE, add_indexes, key_of, name_of, spec, split_key, uid_of
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class PodGC(Controller):
    name = "pod-gc"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.pods = informers.get(PODS)
        self.nodes = informers.get(NODES)
        add_indexes(self.pods)
        self.pods.on_add(self._on_pod)
        self.pods.on_update(lambda old, new: self._on_pod(new))
        self.nodes.on_delete(self._on_node_delete)

    def _on_pod(self, pod: Obj) -> None:
        node = spec(pod).get("nodeName")
        if node and self.nodes.has_synced and self.nodes.get(None, str(node)) is None:
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
        if not node or self.nodes.get(None, node) is not None:
            return None
        try:
            await self.client.get(NODES, node)
            return None  # the node exists; the cache is behind
        except NotFound:
            pass
        log.info("pod GC: deleting %s: its node %s no longer exists", key, node)
        try:
            await self.client.delete(PODS, name, ns, grace_period=0, preconditions={"uid": uid_of(pod)})
        except NotFound:
            pass
        return None
