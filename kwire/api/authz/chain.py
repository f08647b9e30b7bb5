"""The authorizer chain kube-apiserver runs with `--authorization-mode=Node,RBAC`, and its 403 in kube's words.

Order as kube-apiserver builds it: the privileged group `system:masters` is always allowed (kube's
privilegedGroups authorizer), then the Node authorizer, then RBAC; the first allow wins; reasons of the others
are joined with ", " as kube's union authorizer joins them. `forbidden(attrs, reason)` is kube's
responsewriters.Forbidden: `pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the
namespace "prod"`, `... at the cluster scope`, `forbidden: User "jane" cannot get path "/metrics"`.

`Authorization` owns the in-memory state the authorizers read (the RBAC index, the node graph) and the store
watches that keep it current.
"""

from __future__ import annotations

import logging
from typing import Any

from kwire.api.authz.attributes import Attributes, Decision, Verdict
from kwire.api.authz.node import PODS_PREFIX, NodeAuthorizer, NodeGraph
from kwire.api.authz.rbac import PREFIX as RBAC_PREFIX
from kwire.api.authz.rbac import RbacAuthorizer, RbacIndex
from kwire.api.authz.rules import Rule, rule
from kwire.api.errors import ApiError, object_error
from kwire.api.follow import Follower
from kwire.api.user import MASTERS, UserInfo
from kwire.store.base import Store

log = logging.getLogger(__name__)

PVCS_PREFIX = "/registry/core/persistentvolumeclaims/"


def forbidden_message(a: Attributes) -> str:
    """kube's forbiddenMessage."""
    user = a.user.name
    if not a.resource_request:
        return f'User "{user}" cannot {a.verb} path "{a.path}"'
    resource = a.combined_resource
    if a.namespace:
        return (
            f'User "{user}" cannot {a.verb} resource "{resource}" in API group "{a.api_group}" '
            f'in the namespace "{a.namespace}"'
        )
    return f'User "{user}" cannot {a.verb} resource "{resource}" in API group "{a.api_group}" at the cluster scope'


def forbidden_error(group: str, resource: str, name: str, detail: str) -> ApiError:
    """apierrors.NewForbidden: `<resource>[.<group>] ["<name>"] is forbidden: <detail>`, reason Forbidden."""
    qualified = f"{resource}.{group}" if group else resource
    if not qualified:
        message = f"forbidden: {detail}"
    elif name:
        message = f'{qualified} "{name}" is forbidden: {detail}'
    else:
        message = f"{qualified} is forbidden: {detail}"
    return object_error(403, "Forbidden", message, group=group, plural=resource, name=name)


def forbidden(a: Attributes, reason: str) -> ApiError:
    detail = forbidden_message(a)
    if reason:
        detail = f"{detail}: {reason}"
    if not a.resource_request:
        return forbidden_error("", "", "", detail)
    return forbidden_error(a.api_group, a.resource, a.name, detail)


class Authorization:
    """Node,RBAC over state kept from the store."""

    def __init__(self, store: Store) -> None:
        self.index = RbacIndex()
        self.graph = NodeGraph()
        self._pv_of_claim: dict[tuple[str, str], str] = {}
        self.rbac = RbacAuthorizer(self.index)
        self.node = NodeAuthorizer(self.graph, pvc_volume=lambda ns, name: self._pv_of_claim.get((ns, name)))
        self._followers = [
            Follower(store, RBAC_PREFIX, apply=self.index.apply, reset=self.index.reset, name="authz: rbac"),
            Follower(store, PODS_PREFIX, apply=self.graph.apply, reset=self.graph.reset, name="authz: node graph"),
            Follower(store, PVCS_PREFIX, apply=self._claim, reset=self._pv_of_claim.clear, name="authz: claims"),
        ]

    def _claim(self, key: str, obj: dict[str, Any] | None) -> None:
        parts = key[len(PVCS_PREFIX) :].split("/")
        if len(parts) != 2:
            return
        where = (parts[0], parts[1])
        volume = ((obj or {}).get("spec") or {}).get("volumeName") if obj is not None else None
        if isinstance(volume, str) and volume:
            self._pv_of_claim[where] = volume
        else:
            self._pv_of_claim.pop(where, None)

    async def start(self) -> None:
        for f in self._followers:
            await f.start()

    async def stop(self) -> None:
        for f in self._followers:
            await f.stop()

    def authorize(self, a: Attributes) -> Decision:
        if MASTERS in a.user.groups:
            return Decision(Verdict.ALLOW)
        reasons: list[str] = []
        for authorizer in (self.node, self.rbac):
            decision = authorizer.authorize(a)
            if decision.verdict is not Verdict.NO_OPINION:
                return decision
            if decision.reason:
                reasons.append(decision.reason)
        return Decision(Verdict.NO_OPINION, ", ".join(reasons))

    def check(self, a: Attributes) -> None:
        """Raise kube's 403 unless `a` is allowed."""
        decision = self.authorize(a)
        if not decision.allowed:
            raise forbidden(a, decision.reason)

    def rules_for(self, user: UserInfo, namespace: str) -> tuple[list[Rule], list[str]]:
        """What `user` may do in `namespace` as RBAC says (kube's rule resolver, used by SelfSubjectRulesReview
        and escalation checks); `system:masters` and nodes get what their authorizers grant them."""
        rules, errors = self.index.rules_for(user, namespace)
        if MASTERS in user.groups:
            rules = [rule(("*",), ("*",), ("*",)), rule(("*",), urls=("*",)), *rules]
        return rules, errors
