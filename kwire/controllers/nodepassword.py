"""K3s's node-password cleanup: when a Node is deleted, its `kube-system/<node>.node-password.k3s` Secret goes too
(K3s's node controller does this on node removal), so a machine may register that name again afterwards.

The Secret is what the server's node-credential endpoints (kwire/api/nodecerts.py) store at a node's first join:
the hash of the node's password, which a later join under the same name must match. Removal is confirmed with a
fresh GET of the Node first, so a node that was deleted and at once registered again keeps its password.
"""

from __future__ import annotations

import logging

from kwire.client import ApiClient, Informers, NotFound
from kwire.client.client import NODES, SECRETS
from kwire.controllers.common import name_of
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)


NAMESPACE = "kube-system"
SUFFIX = ".node-password.k3s"  # as kwire/api/nodecerts.py names them (K3s's nodepassword.getSecretName)


def secret_name(node: str) -> str:
    return f"{node}{SUFFIX}".lower()


class NodePasswordController(Controller):
    name = "node-password"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.nodes = self.informer(NODES)
        self.nodes.on_delete(lambda node: self.enqueue(name_of(node)))

    async def sync(self, key: str) -> float | None:
        try:
            await self.client.get(NODES, key)
            return None  # registered again: its password stays
        except NotFound:
            pass
        try:
            await self.client.delete(SECRETS, secret_name(key), NAMESPACE)
            log.info("node-password: node %s deleted; removed its password secret", key)
        except NotFound:
            pass
        return None
