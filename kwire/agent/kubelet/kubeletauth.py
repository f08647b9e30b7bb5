"""Who may use the kubelet API on :10250, decided as kubelet decides it (pkg/kubelet/server/auth.go and the
apiserver's webhook authenticator/authorizer that kubelet runs with K3s's settings).

Authentication: a client certificate the TLS layer verified against the cluster's client CA (CN user, O groups),
else a bearer token checked with a TokenReview to the API (kubelet's --authentication-token-webhook), else
anonymous, which is refused with 401 (K3s runs kubelet with --anonymous-auth=false).

Authorization: every request becomes a SubjectAccessReview to the API for the node object: verb from the HTTP
method, resource `nodes`, name the node, subresource from the path (`/stats/` stats, `/metrics` metrics, `/logs/`
log, `/spec/` spec, `/checkpoint/` checkpoint, anything else — containerLogs, exec, attach, portForward, run — proxy).
Decisions are cached as kubelet's webhook authorizer caches them (allowed 5 minutes, denied 30 seconds) in a
bounded cache; a denial is kubelet's 403 `Forbidden (user=..., verb=..., resource=nodes, subresource(s)=[...])`.
While the API server does not serve authorization.k8s.io (SubjectAccessReview answers 404), only members of
`system:masters` — the API server's own kubelet-client identity, which every authorizer allows — are let in.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kwire.api.user import MASTERS, UserInfo, authenticated, from_peercert
from kwire.client import ApiClient, ApiStatusError

log = logging.getLogger(__name__)

SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
ALLOWED_TTL = 300.0
DENIED_TTL = 30.0
TOKEN_TTL = 120.0  # kubelet's --authentication-token-webhook-cache-ttl default
CACHE_SIZE = 4096

METHOD_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
PATH_SUBRESOURCES = (("/stats/", "stats"), ("/metrics", "metrics"), ("/logs/", "log"), ("/spec/", "spec"))


@dataclass(frozen=True)
class Attributes:
    """What a kubelet request asks to do, in SubjectAccessReview terms (resource `nodes`, the node's name)."""

    verb: str
    subresource: str
    node: str

    def review(self, user: UserInfo) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "user": user.name,
            "groups": list(user.groups),
            "resourceAttributes": {
                "verb": self.verb,
                "group": "",
                "version": "v1",
                "resource": "nodes",
                "subresource": self.subresource,
                "name": self.node,
            },
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra.items()}
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def _under(path: str, prefix: str) -> bool:
    """kubelet's isSubpath: `path` is `prefix` or below it."""
    return path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")


def attributes_for(method: str, path: str, *, node: str) -> Attributes:
    """kubelet's GetRequestAttributes: the SubjectAccessReview a request on `path` needs."""
    verb = METHOD_VERBS.get(method.upper(), method.lower())
    sub = "proxy"
    for prefix, name in PATH_SUBRESOURCES:
        if _under(path, prefix):
            sub = name
            break
    if _under(path, "/checkpoint/"):
        sub = "checkpoint"
    return Attributes(verb=verb, subresource=sub, node=node)


def forbidden_message(user: UserInfo, attrs: Attributes) -> str:
    return f"Forbidden (user={user.name}, verb={attrs.verb}, resource=nodes, subresource(s)=[{attrs.subresource}])"


class _TtlCache:
    """A bounded map whose entries expire: least recently used ones go first when full."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> Any:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        self._items.move_to_end(key)
        return hit[1]

    def put(self, key: Any, value: Any, ttl: float) -> None:
        self._items[key] = (time.monotonic() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class KubeletAuth:
    """The authenticator and authorizer in front of every kubelet API handler (`check`)."""

    def __init__(self, client: ApiClient, *, node: str) -> None:
        self.client = client
        self.node = node
        self._decisions = _TtlCache(CACHE_SIZE)
        self._tokens = _TtlCache(CACHE_SIZE)

    async def authenticate(self, request: web.Request) -> UserInfo | None:
        if request.transport is not None:
            user = from_peercert(request.transport.get_extra_info("peercert"))
            if user is not None:
                return user
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:].strip():
            return await self._token_review(auth[7:].strip())
        return None

    async def _token_review(self, token: str) -> UserInfo | None:
        cached = self._tokens.get(token)
        if cached is not None:
            return cached if isinstance(cached, UserInfo) else None
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        try:
            out = await self.client.request("POST", TOKENREVIEW_PATH, body=review)
        except (ApiStatusError, OSError, TimeoutError) as exc:
            log.info("kubelet: TokenReview failed: %s", exc)
            return None  # not cached: the next request asks again
        status = out.get("status") or {}
        user: UserInfo | bool = False
        if status.get("authenticated"):
            u = status.get("user") or {}
            user = authenticated(
                str(u.get("username") or ""), tuple(u.get("groups") or ()), uid=str(u.get("uid") or "")
            )
        self._tokens.put(token, user, TOKEN_TTL)
        return user if isinstance(user, UserInfo) else None

    async def authorize(self, user: UserInfo, attrs: Attributes) -> bool:
        key = (user.name, user.groups, user.uid, attrs)
        cached = self._decisions.get(key)
        if cached is not None:
            return bool(cached)
        try:
            out = await self.client.request("POST", SAR_PATH, body=attrs.review(user))
            allowed = bool((out.get("status") or {}).get("allowed"))
        except ApiStatusError as exc:
            if exc.code != 404:
                log.warning("kubelet: SubjectAccessReview failed: %s", exc)
                return False
            allowed = MASTERS in user.groups  # no authorization API on this server yet: see the module doc
        except (OSError, TimeoutError) as exc:
            log.warning("kubelet: SubjectAccessReview failed: %s", exc)
            return False  # no opinion is a denial, and it is not cached
        self._decisions.put(key, allowed, ALLOWED_TTL if allowed else DENIED_TTL)
        return allowed

    async def check(self, request: web.Request) -> UserInfo:
        """The caller, or kubelet's 401 / 403."""
        user = await self.authenticate(request)
        if user is None:
            raise web.HTTPUnauthorized(text="Unauthorized")
        attrs = attributes_for(request.method, request.path, node=self.node)
        if not await self.authorize(user, attrs):
            raise web.HTTPForbidden(text=forbidden_message(user, attrs))
        return user
