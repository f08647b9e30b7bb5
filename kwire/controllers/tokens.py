"""The tokens controller: kube-controller-manager's TokensController for legacy service-account token Secrets.

A Secret of type `kubernetes.io/service-account-token` annotated `kubernetes.io/service-account.name: <sa>` gets
`data.token` (a never-expiring JWT signed with the server's service-account key, issuer `kubernetes/serviceaccount`),
`data["ca.crt"]` (the cluster CA) and `data.namespace`, and the annotation `kubernetes.io/service-account.uid`; such
a token authenticates as the ServiceAccount for as long as the Secret holds it. A Secret naming a ServiceAccount
that does not exist (or an older one of the same name, by uid) is deleted, as kube does; so are a ServiceAccount's
token Secrets when it is deleted. The signing happens in the server (`sign`), which owns the key.
"""

from __future__ import annotations

import base64
import copy
import logging
from collections.abc import Callable

from kwire.client import ApiClient, Informers, NotFound
from kwire.client.client import SECRETS, SERVICEACCOUNTS
from kwire.controllers.common import Obj, name_of, namespace_of
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)

# (namespace, service account name, service account uid, secret name) -> token
LegacySigner = Callable[[str, str, str, str], str]

TOKEN_TYPE = "kubernetes.io/service-account-token"
SA_NAME = "kubernetes.io/service-account.name"
SA_UID = "kubernetes.io/service-account.uid"
BY_ACCOUNT = "service-account"


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _annotations(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


class TokensController(Controller):
    name = "serviceaccount-tokens"

    def __init__(self, client: ApiClient, informers: Informers, *, sign: LegacySigner, ca_pem: bytes) -> None:
        super().__init__(client, informers)
        self.sign = sign
        self.ca_pem = ca_pem
        self.secrets = self.informer(SECRETS, field_selector=f"type={TOKEN_TYPE}")
        self.accounts = self.informer(SERVICEACCOUNTS)
        self.secrets.add_indexer(BY_ACCOUNT, lambda s: [f"{namespace_of(s)}/{_annotations(s).get(SA_NAME, '')}"])
        self.enqueue_on_change(self.secrets)
        self.accounts.on_add(self._account_changed)
        self.accounts.on_delete(self._account_changed)

    def _account_changed(self, sa: Obj) -> None:
        for s in self.secrets.by_index(BY_ACCOUNT, f"{namespace_of(sa)}/{name_of(sa)}"):
            self.enqueue(f"{namespace_of(s)}/{name_of(s)}")

    async def sync(self, key: str) -> float | None:
        namespace, _, name = key.partition("/")
        secret = self.secrets.get(namespace, name)
        if secret is None or secret.get("type") != TOKEN_TYPE:
            return None
        notes = _annotations(secret)
        sa_name = notes.get(SA_NAME, "")
        sa = self.accounts.get(namespace, sa_name)
        if sa is None:
            try:  # the cache may lag behind a ServiceAccount created a moment ago
                sa = await self.client.get(SERVICEACCOUNTS, sa_name, namespace)
            except NotFound:
                await self._delete(secret, why=f"service account {namespace}/{sa_name} does not exist")
                return None
        sa_uid = str((sa.get("metadata") or {}).get("uid", ""))
        if notes.get(SA_UID) and notes[SA_UID] != sa_uid:
            await self._delete(secret, why=f"it belongs to an earlier service account {namespace}/{sa_name}")
            return None
        data = dict(secret.get("data") or {})
        if data.get("token") and data.get("ca.crt") and data.get("namespace") and notes.get(SA_UID):
            return None
        new = copy.deepcopy(secret)
        token = self.sign(namespace, sa_name, sa_uid, name)
        new["data"] = {**data, "token": _b64(token), "ca.crt": _b64(self.ca_pem), "namespace": _b64(namespace)}
        new["metadata"].setdefault("annotations", {})[SA_UID] = sa_uid
        await self.client.update(SECRETS, new)
        log.info("tokens: filled the token of secret %s for service account %s", key, sa_name)
        return None

    async def _delete(self, secret: Obj, *, why: str) -> None:
        log.info("tokens: deleting secret %s/%s: %s", namespace_of(secret), name_of(secret), why)
        uid = (secret.get("metadata") or {}).get("uid")
        try:
            await self.client.delete(SECRETS, name_of(secret), namespace_of(secret), preconditions={"uid": uid})
        except NotFound:
            pass
