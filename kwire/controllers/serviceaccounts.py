"""The service account controller: a `default` ServiceAccount in every namespace (kube's serviceaccounts-controller).

Owns nothing but that object's existence: it is created in each namespace that is not being deleted, and
created again when someone deletes it. Like kube since 1.24, no token Secret is made for it.
"""

from __future__ import annotations

import logging

from kwire.client import ApiClient, ApiStatusError, Conflict, Informers
from kwire.client.client import NAMESPACES, SERVICEACCOUNTS
from kwire.controllers.common import Obj, name_of, namespace_of, status, terminating
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)


DEFAULT = "default"


class ServiceAccountsController(Controller):
    name = "serviceaccounts"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.namespaces = self.informer(NAMESPACES)
        self.accounts = self.informer(SERVICEACCOUNTS)
        self.enqueue_on_change(self.namespaces)
        self.accounts.on_delete(self._on_delete)

    def _on_delete(self, sa: Obj) -> None:
        if name_of(sa) == DEFAULT:
            self.enqueue(namespace_of(sa))

    async def sync(self, key: str) -> float | None:
        ns = self.namespaces.get(None, key)
        if ns is None or terminating(ns) or status(ns).get("phase") == "Terminating":
            return None
        if self.accounts.get(key, DEFAULT) is not None:
            return None
        try:
            await self.client.create(SERVICEACCOUNTS, {"metadata": {"name": DEFAULT, "namespace": key}}, key)
            log.info("serviceaccounts: created %s/%s", key, DEFAULT)
        except Conflict:
            pass  # it exists already (the cache lags)
        except ApiStatusError as err:
            if err.code != 403:
                raise
            # 403: the namespace is being deleted
        return None
