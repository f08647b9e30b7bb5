"""Impersonation headers: acting as another user when allowed to `impersonate` it.

Mirrors k8s.io/apiserver/pkg/endpoints/filters/impersonation.go: `Impersonate-User` (a service account's user
name is checked as verb impersonate on `serviceaccounts` in its namespace; any other as `users`),
`Impersonate-Group` (repeatable; `groups`), `Impersonate-Uid` (`uids`) and `Impersonate-Extra-<key>`
(`userextras/<key>` in authentication.k8s.io). Each is authorized for the requesting user; the first refusal is
kube's 403 (`users "jane" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the
cluster scope`). The impersonated user gets `system:authenticated` (and a service account its
`system:serviceaccounts` groups when no groups were asked for); groups, uid or extra without a user is a 400
as kube answers (`requested [...] without impersonating a user`).
"""

from __future__ import annotations

from urllib.parse import unquote

from multidict import CIMultiDictProxy

from kwire.api.authz.attributes import Attributes
from kwire.api.authz.chain import Authorization, forbidden
from kwire.api.errors import bad_request
from kwire.api.user import (
    AUTHENTICATED,
    SERVICE_ACCOUNT_PREFIX,
    SERVICE_ACCOUNTS,
    UNAUTHENTICATED,
    UserInfo,
)

USER, GROUP, UID, EXTRA_PREFIX = "Impersonate-User", "Impersonate-Group", "Impersonate-Uid", "Impersonate-Extra-"


def requested(headers: CIMultiDictProxy[str]) -> bool:
    """Whether the request impersonates (checked on every request, so three lookups rather than a scan of every
    header: extra fields alone, without a user, are not looked at; with a user they are)."""
    return USER in headers or GROUP in headers or UID in headers


def impersonate(headers: CIMultiDictProxy[str], requester: UserInfo, authz: Authorization) -> UserInfo:
    """The user a request acts as after its impersonation headers (each checked for `requester`)."""
    username = headers.get(USER, "")
    groups = list(headers.getall(GROUP, []))
    uid = headers.get(UID, "")
    extra: dict[str, list[str]] = {}
    for k in set(headers):
        if k.lower().startswith(EXTRA_PREFIX.lower()):
            name = unquote(k[len(EXTRA_PREFIX) :]).lower()
            extra.setdefault(name, [])
            for v in headers.getall(k, []):
                if v not in extra[name]:
                    extra[name].append(v)
    if not username:
        wanted = [f"{{Group {g}}}" for g in groups] + [f"{{UID {uid}}}" for _ in [uid] if uid]
        wanted += [f"{{Extra {k} {v}}}" for k, vs in extra.items() for v in vs]
        raise bad_request(f"requested [{' '.join(wanted)}] without impersonating a user")

    def check(resource: str, name: str, *, namespace: str = "", group: str = "", subresource: str = "") -> None:
        a = Attributes(
            user=requester,
            verb="impersonate",
            resource_request=True,
            api_group=group,
            resource=resource,
            subresource=subresource,
            namespace=namespace,
            name=name,
        )
        decision = authz.authorize(a)
        if not decision.allowed:
            raise forbidden(a, decision.reason)

    out_groups = list(groups)
    if username.startswith(SERVICE_ACCOUNT_PREFIX) and username.count(":") == 3:
        _, _, ns, sa = username.split(":")
        check("serviceaccounts", sa, namespace=ns)
        if not groups:
            out_groups = [SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{ns}"]
    else:
        check("users", username)
    for g in groups:
        check("groups", g)
    if uid:
        check("uids", uid, group="authentication.k8s.io")
    for k, vs in extra.items():
        for v in vs:
            check("userextras", v, group="authentication.k8s.io", subresource=k)
    if username == "system:anonymous":
        if UNAUTHENTICATED not in out_groups:
            out_groups.append(UNAUTHENTICATED)
    elif AUTHENTICATED not in out_groups:
        out_groups.append(AUTHENTICATED)
    return UserInfo(name=username, groups=tuple(out_groups), uid=uid, extra={k: tuple(v) for k, v in extra.items()})
