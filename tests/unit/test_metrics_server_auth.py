"""The metrics-server's delegated authentication (kwire/metricsserver/delegated.py): front-proxy headers are believed
only on a connection with the request-header CA's certificate whose CN is allowed."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

from aiohttp.test_utils import make_mocked_request

from kwire.api import certs
from kwire.metricsserver.delegated import Caller, DelegatedAuth, forbidden_message


class _Transport:
    def __init__(self, peer: dict[str, Any] | None) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peercert" else default


def _peer(issuer: str, cn: str, orgs: tuple[str, ...] = ()) -> dict[str, Any]:
    subject = tuple((("organizationName", o),) for o in orgs) + ((("commonName", cn),),)
    return {"issuer": ((("commonName", issuer),),), "subject": subject}


def _auth(tmp_path: Path) -> tuple[DelegatedAuth, str, str]:
    proxy_ca = certs.ensure_request_header_ca(tmp_path)
    client_ca = certs.ensure_client_ca(tmp_path)
    auth = DelegatedAuth(client=None, ctx=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))  # type: ignore[arg-type]
    auth.apply(
        {
            "requestheader-client-ca-file": proxy_ca.pem.decode(),
            "client-ca-file": client_ca.pem.decode(),
            "requestheader-allowed-names": json.dumps(["system:auth-proxy"]),
        }
    )
    proxy_cn = next(iter(auth.proxy_ca_cns))
    client_cn = next(iter(auth.client_ca_cns))
    return auth, proxy_cn, client_cn


def _request(peer: dict[str, Any] | None, headers: dict[str, str]) -> Any:
    return make_mocked_request("GET", "/apis/metrics.k8s.io/v1beta1/pods", headers=headers, transport=_Transport(peer))


def test_front_proxy_headers_only_with_the_proxy_certificate(tmp_path: Path) -> None:
    auth, proxy_cn, client_cn = _auth(tmp_path)
    assert auth.ctx.verify_mode == ssl.CERT_OPTIONAL
    headers = {"X-Remote-User": "jane", "X-Remote-Group": "devs", "X-Remote-Extra-Scopes": "a"}
    got = auth.authenticate(_request(_peer(proxy_cn, "system:auth-proxy"), headers))
    assert got == Caller("jane", ("devs",), {"scopes": ["a"]})
    # No certificate (or one that did not verify: OpenSSL then reports none): anonymous, headers ignored.
    assert auth.authenticate(_request(None, headers)) is None
    # The right CA but a CN not in requestheader-allowed-names.
    assert auth.authenticate(_request(_peer(proxy_cn, "someone-else"), headers)) is None
    # A client certificate of the cluster is its own user, whatever headers it sends.
    own = auth.authenticate(_request(_peer(client_cn, "system:admin", ("system:masters",)), headers))
    assert own == Caller("system:admin", ("system:masters", "system:authenticated"))


def test_forbidden_in_kubes_words() -> None:
    msg = forbidden_message(Caller("jane"), verb="list", resource="pods", namespace="prod")
    assert msg == (
        'pods.metrics.k8s.io is forbidden: User "jane" cannot list resource "pods" in API group "metrics.k8s.io" '
        'in the namespace "prod"'
    )
