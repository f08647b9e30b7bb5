"""Each pod's service-account files, as kubelet's token manager and projected volume keep them
(pkg/kubelet/token, the `kube-api-access-*` projected volume).

For every pod that mounts a service-account token (all but `automountServiceAccountToken: false`) the kubelet
asks the TokenRequest API (`serviceaccounts/<name>/token`) for a token bound to the pod, with kubelet's lifetime
of 3607 s, and writes `token`, `ca.crt` and `namespace` into the pod's directory (0644 in a 0755 directory, as
kube's kube-api-access volume's defaultMode 420, so a container's non-root user reads them; on the node they sit in
the agent's 0700 data dir; the runtime bind-mounts the directory read-only at
/var/run/secrets/kubernetes.io/serviceaccount in the pod's mount namespace). A token is requested again once 80 % of its lifetime has
passed (kubelet's `requiresRefresh`); a failed refresh keeps the old, still valid token and is retried. The token
is bound to the pod, so it stops authenticating when the pod is deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kwire.base.files import write_if_changed
from kwire.client import ApiClient

log = logging.getLogger(__name__)

Obj = dict[str, Any]

TOKEN_SECONDS = 3607  # kubelet's default for the projected service-account token
REFRESH_AT = 0.8  # of the lifetime
RETRY = 10.0  # seconds before a failed refresh is tried again


def mounts_token(pod: Obj) -> bool:
    """Whether the pod gets service-account files (kube's ServiceAccount admission adds the projected volume
    unless the pod opts out)."""
    return (pod.get("spec") or {}).get("automountServiceAccountToken") is not False


@dataclass
class _Token:
    value: str
    issued: float
    expires: float

    def refresh_due(self) -> float:
        return self.issued + REFRESH_AT * (self.expires - self.issued)


class ServiceAccountTokens:
    def __init__(self, client: ApiClient, *, ca_pem: bytes, seconds: int = TOKEN_SECONDS) -> None:
        self.client = client
        self.ca_pem = ca_pem
        self.seconds = seconds
        self._tokens: dict[str, _Token] = {}

    async def _request(self, pod: Obj) -> _Token:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        sa = str(spec.get("serviceAccountName") or "default")
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": self.seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            },
        }
        now = time.time()
        answer = await self.client.request(
            "POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body=body
        )
        status = answer.get("status") or {}
        expires = now + int((answer.get("spec") or {}).get("expirationSeconds") or self.seconds)
        return _Token(str(status.get("token", "")), now, expires)

    async def ensure(self, pod: Obj, directory: Path) -> float:
        """Write the pod's service-account files into `directory` (a new token when there is none or its refresh
        is due); returns the seconds until the next refresh. Raises when the pod has no token at all yet."""
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        current = self._tokens.get(uid)
        now = time.time()
        if current is None or now >= current.refresh_due():
            try:
                current = self._tokens[uid] = await self._request(pod)
            except Exception as exc:
                if current is None or now >= current.expires:
                    raise
                log.warning("kubelet: refreshing the service-account token of %s failed: %s", uid, exc)
                return RETRY
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        files = {
            "token": current.value,
            "ca.crt": self.ca_pem.decode(),
            "namespace": str((pod.get("metadata") or {}).get("namespace", "")),
        }
        for name, text in files.items():
            write_if_changed(directory / name, text, mode=0o644)
        return max(1.0, current.refresh_due() - now)

    def forget(self, uid: str) -> None:
        self._tokens.pop(uid, None)
