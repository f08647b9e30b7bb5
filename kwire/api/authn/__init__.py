"""Authentication: kube-apiserver's authenticator chain as K3s configures it.

`Authenticator.authenticate(request)` tries, in kube's order, the client certificate (x509.py, verified by TLS
against the client CA) and then a bearer token (a service-account JWT, bound or legacy: serviceaccount.py). No
credentials: None (the request is anonymous; the API answers 401 except on the public health and version paths).
Credentials that do not authenticate (a wrong or expired bearer token) raise kube's 401 even on public paths, as
kube's union authenticator fails on error before it would fall back to anonymous. The cluster join tokens
(tokens.py) are not API credentials.
"""

from __future__ import annotations

import logging

from aiohttp import web

from kwire.api.authn.serviceaccount import InvalidToken, Lookup, Obj, TokenValidator
from kwire.api.authn.x509 import certificate_user
from kwire.api.errors import unauthorized
from kwire.api.registry import by_path
from kwire.api.resources import Resources
from kwire.api.user import UserInfo

log = logging.getLogger(__name__)

__all__ = ["Authenticator", "bearer_token", "lookup_in"]


def bearer_token(request: web.Request) -> str | None:
    """The request's bearer token (kube's bearertoken authenticator: `Authorization: Bearer <token>`)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() != "bearer ":
        return None
    token = auth[7:].strip()
    return token or None


class Authenticator:
    def __init__(self, *, tokens: TokenValidator | None) -> None:
        self.tokens = tokens

    def authenticate(self, request: web.Request) -> UserInfo | None:
        """The request's user; None when it brings no credentials; kube's 401 ApiError when they are invalid."""
        user = certificate_user(request)
        if user is not None:
            return user
        token = bearer_token(request)
        if token is None:
            return None
        if self.tokens is not None:
            try:
                return self.tokens.authenticate(token).user
            except InvalidToken as exc:
                log.debug("authentication failed: %s", exc)
        raise unauthorized()


def lookup_in(resources: Resources) -> Lookup:
    """Core v1 objects by (plural, namespace, name) from the server's live state (what token validation reads)."""

    def lookup(plural: str, namespace: str | None, name: str) -> Obj | None:
        kind = by_path("", "v1", plural)
        if kind is None or not name:
            return None
        return resources.get_or_none(kind, namespace, name)

    return lookup
