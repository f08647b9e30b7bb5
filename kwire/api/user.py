"""Who a request is from: kube's `user.Info` (name, uid, groups, extra), as authentication leaves it on a request.

Authentication (bearer tokens, client certificates, service-account JWTs) puts a `UserInfo` on every request under
`USER_KEY`; authorization, admission (webhooks' `userInfo`, CSR's `spec.username`) and audit read it from there.
Mirrors k8s.io/apiserver/pkg/authentication/user: the `system:authenticated` group is added to every
authenticated user, `system:unauthenticated` to the anonymous one.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kwire.base.peercert import cn_and_orgs

AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
MASTERS = "system:masters"
NODES = "system:nodes"
NODE_PREFIX = "system:node:"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
SERVICE_ACCOUNTS = "system:serviceaccounts"


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def as_review(self) -> dict[str, Any]:
        """The `userInfo` of an AdmissionReview / the `user` fields of a SubjectAccessReview status."""
        out: dict[str, Any] = {"username": self.name, "groups": list(self.groups)}
        if self.uid:
            out["uid"] = self.uid
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out

    @property
    def node_name(self) -> str | None:
        """The node this identity is (`system:node:<name>` in group `system:nodes`), else None."""
        if NODES in self.groups and self.name.startswith(NODE_PREFIX):
            return self.name[len(NODE_PREFIX) :]
        return None


USER_KEY = web.RequestKey("kwire.user", UserInfo)


def authenticated(name: str, groups: tuple[str, ...] = (), *, uid: str = "") -> UserInfo:
    """A user as an authenticator returns it: `system:authenticated` added once."""
    return UserInfo(name=name, groups=(*[g for g in groups if g != AUTHENTICATED], AUTHENTICATED), uid=uid)


ADMIN = authenticated("system:admin", (MASTERS,))
ANONYMOUS = UserInfo(name="system:anonymous", groups=(UNAUTHENTICATED,))
# The API server's own writes outside any request (bootstrap, garbage collection, namespace cleanup): kube's
# loopback identity.
APISERVER = authenticated("system:apiserver", (MASTERS,))

_CURRENT: ContextVar[UserInfo] = ContextVar("kwire_current_user", default=APISERVER)


def current_user() -> UserInfo:
    """The user of the request being served (admission reads it in the write path: webhooks' `userInfo`,
    NodeRestriction, RBAC escalation checks); the API server itself outside a request."""
    return _CURRENT.get()


def set_current_user(user: UserInfo) -> Token[UserInfo]:
    """Set by the API's middleware for the request's task (each aiohttp request runs in its own context)."""
    return _CURRENT.set(user)


def reset_current_user(token: Token[UserInfo]) -> None:
    _CURRENT.reset(token)


def user_of(request: web.Request) -> UserInfo:
    """The authenticated user of `request` (anonymous when authentication left none)."""
    user = request.get(USER_KEY)
    return user if isinstance(user, UserInfo) else ANONYMOUS


def from_peercert(peercert: Any) -> UserInfo | None:
    """The user of a verified TLS client certificate (`ssl.SSLSocket.getpeercert()`'s dict): CN the name, each
    O a group, as kube-apiserver's x509 authenticator reads them. None without a certificate or a CN."""
    if not isinstance(peercert, dict):
        return None
    cn, groups = cn_and_orgs(peercert)
    return authenticated(cn, groups) if cn else None
