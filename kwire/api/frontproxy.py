"""The front proxy of the aggregation layer: what the API server presents to aggregated API servers, and the
`kube-system/extension-apiserver-authentication` ConfigMap from which those servers learn whom to trust.

As kube-apiserver (`--proxy-client-cert-file`, `--requestheader-*` flags, the ClusterAuthenticationTrustController)
and K3s (`client-auth-proxy.crt` from `request-header-ca.crt`, CN `system:auth-proxy`): requests proxied to an
APIService carry the caller in `X-Remote-User` / `X-Remote-Group` / `X-Remote-Extra-*` over a TLS connection on
which the API server presents its front-proxy client certificate. An aggregated server (kwire's metrics-server)
believes those headers only on such a connection: a verified certificate from the request-header CA whose CN is in
`requestheader-allowed-names`. Anyone else setting the headers is anonymous there.

Servers of one cluster each keep their own request-header CA; each adds its CA to the ConfigMap's bundle (never
removing another's), so an aggregated server trusts whichever server proxies to it.
"""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from typing import Any

from kwire.api import certs
from kwire.api.errors import ApiError
from kwire.api.registry import by_path
from kwire.api.resources import Resources

log = logging.getLogger(__name__)

CONFIGMAP = "extension-apiserver-authentication"
PROXY_USER = "system:auth-proxy"
USERNAME_HEADERS = ["X-Remote-User"]
GROUP_HEADERS = ["X-Remote-Group"]
EXTRA_PREFIXES = ["X-Remote-Extra-"]


class FrontProxy:
    """The API server's front-proxy client credentials (K3s's file names under `<data-dir>/tls/`)."""

    def __init__(self, data_dir: Path) -> None:
        self.ca = certs.ensure_request_header_ca(data_dir)
        tls = Path(data_dir) / "tls"
        self.cert, self.key = tls / "client-auth-proxy.crt", tls / "client-auth-proxy.key"
        certs.ensure_client_cert(self.ca, cert_path=self.cert, key_path=self.key, common_name=PROXY_USER)

    def present(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        """`ctx` with the front-proxy client certificate loaded (for connections to aggregated servers)."""
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def _merge_bundle(current: str, pem: str) -> str:
    """`current` PEM bundle plus `pem` when it is not in it yet (other servers' CAs are kept)."""
    pem = pem.strip() + "\n"
    if pem.strip() in current:
        return current
    return (current.rstrip() + "\n" + pem) if current.strip() else pem


async def publish(resources: Resources, *, client_ca_pem: str, request_header_ca_pem: str) -> None:
    """Write (or extend) `kube-system/extension-apiserver-authentication` with this server's CAs, as
    kube-apiserver's ClusterAuthenticationTrustController keeps it."""
    kind = by_path("", "v1", "configmaps")
    assert kind is not None
    for _ in range(5):
        current = resources.get_or_none(kind, "kube-system", CONFIGMAP)
        data: dict[str, Any] = dict((current or {}).get("data") or {})
        want = dict(data)
        want["client-ca-file"] = _merge_bundle(str(data.get("client-ca-file") or ""), client_ca_pem)
        want["requestheader-client-ca-file"] = _merge_bundle(
            str(data.get("requestheader-client-ca-file") or ""), request_header_ca_pem
        )
        want["requestheader-allowed-names"] = json.dumps([PROXY_USER])
        want["requestheader-username-headers"] = json.dumps(USERNAME_HEADERS)
        want["requestheader-group-headers"] = json.dumps(GROUP_HEADERS)
        want["requestheader-extra-headers-prefix"] = json.dumps(EXTRA_PREFIXES)
        if current is not None and want == data:
            return
        try:
            if current is None:
                obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIGMAP}, "data": want}
                await resources.create(kind, "kube-system", obj, manager="kube-apiserver")
            else:
                await resources.update(
                    kind, "kube-system", CONFIGMAP, {**current, "data": want}, manager="kube-apiserver"
                )
            return
        except ApiError as exc:
            if exc.code != 409:
                raise
    log.warning("%s: could not be written after 5 conflicts", CONFIGMAP)
