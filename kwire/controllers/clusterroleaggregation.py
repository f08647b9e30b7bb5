"""ClusterRole aggregation (kube-controller-manager's clusterrole-aggregation controller).

Owns `rules` of every ClusterRole that has an `aggregationRule`: the union, in name order and without
duplicates, of the rules of the other ClusterRoles its `clusterRoleSelectors` match. Any ClusterRole change
re-queues every aggregated role, as kube does (there are few of them).
"""

from __future__ import annotations

from typing import Any

from kwire.base.labels import from_label_selector
from kwire.client import ApiClient, Informers
from kwire.client.client import CLUSTERROLES
from kwire.controllers.common import Obj, d, labels_of, lst, name_of, update_with_retry
from kwire.controllers.queue import Controller


def aggregated_rules(role: Obj, roles: list[Obj]) -> list[Any]:
    """The rules `role`'s aggregationRule selects from `roles` (kube's order: by role name, first wins)."""
    selectors = [from_label_selector(d(s)) for s in lst(d(role.get("aggregationRule")).get("clusterRoleSelectors"))]
    out: list[Any] = []
    for other in sorted(roles, key=name_of):
        if name_of(other) == name_of(role):
            continue
        if not any(sel.matches(labels_of(other)) for sel in selectors):
            continue
        for rule in lst(other.get("rules")):
            if rule not in out:
                out.append(rule)
    return out


class ClusterRoleAggregation(Controller):
    name = "clusterrole-aggregation"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.roles = self.informer(CLUSTERROLES)
        self.on_change(self.roles, lambda _role: self._requeue())

    def _requeue(self) -> None:
        for role in self.roles.items():
            if role.get("aggregationRule") is not None:
                self.enqueue(name_of(role))

    async def prepare(self) -> None:
        self._requeue()

    async def sync(self, key: str) -> float | None:
        role = self.roles.get(None, key)
        if role is None or role.get("aggregationRule") is None:
            return None
        want = aggregated_rules(role, self.roles.items())

        def mutate(obj: Obj) -> bool:
            if lst(obj.get("rules")) == want:
                return False
            obj["rules"] = want
            return True

        await update_with_retry(self.client, CLUSTERROLES, role, mutate)
        return None
