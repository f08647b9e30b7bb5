"""Client-certificate authentication: kube-apiserver's x509 authenticator (`--client-ca-file`, K3s's client-ca.crt).

The TLS layer requests an optional client certificate and verifies it against the client CA (a certificate from
another CA fails the handshake; Python's ssl module cannot request a certificate without verifying it, so such a
client sees a TLS alert rather than kube's 401). What reaches here is verified: user = the subject's CommonName,
groups = its Organization values in order, plus `system:authenticated` (x509's CommonNameUserConversion).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from kwire.api.user import UserInfo, authenticated


def user_from_peercert(cert: Mapping[str, Any] | None) -> UserInfo | None:
    """The user a verified peer certificate (as `ssl.SSLObject.getpeercert()` returns it) names; None without one
    or without a CommonName (kube refuses a certificate with an empty CN)."""
    if not cert:
        return None
    name = ""
    groups: list[str] = []
    for rdn in cert.get("subject") or ():
        for key, value in rdn:
            if key == "commonName" and not name:
                name = str(value)
            elif key == "organizationName":
                groups.append(str(value))
    if not name:
        return None
    return authenticated(name, tuple(groups))


def peer_certificate(request: web.Request) -> dict[str, Any] | None:
    """The verified client certificate of the request's TLS connection, if any."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    return dict(cert) if cert else None
