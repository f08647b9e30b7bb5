"""Client-certificate authentication: kube-apiserver's x509 authenticator (`--client-ca-file`, K3s's client-ca.crt).

The TLS layer requests an optional client certificate and verifies it against the client CA (a certificate from
another CA fails the handshake; Python's ssl module cannot request a certificate without verifying it, so such a
client sees a TLS alert rather than kube's 401). What reaches here is verified: user = the subject's CommonName,
groups = its Organization values in order, plus `system:authenticated` (x509's CommonNameUserConversion,
`kwire.api.user.from_peercert`, which the kubelet's API uses too).
"""

from __future__ import annotations

import weakref
from typing import Any

from aiohttp import web

from kwire.api.user import UserInfo, from_peercert

# The user of each TLS connection, worked out once (a connection's certificate never changes; keep-alive clients
# send many requests on one), dropped with the connection.
_BY_CONNECTION: weakref.WeakKeyDictionary[Any, UserInfo | None] = weakref.WeakKeyDictionary()


def _ssl_object(request: web.Request) -> Any:
    transport = request.transport
    return None if transport is None else transport.get_extra_info("ssl_object")


def certificate_user(request: web.Request) -> UserInfo | None:
    """The user the request's verified client certificate names (cached per connection), or None."""
    ssl_object = _ssl_object(request)
    if ssl_object is None:
        return None
    try:
        return _BY_CONNECTION[ssl_object]
    except KeyError:
        pass
    cert = ssl_object.getpeercert()
    user = from_peercert(dict(cert) if cert else None)
    _BY_CONNECTION[ssl_object] = user
    return user
