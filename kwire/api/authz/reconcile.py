"""Reconciles the bootstrap ClusterRoles and ClusterRoleBindings at server start (kube's RBAC post-start hook).

A missing object is created; one annotated `rbac.authorization.kubernetes.io/autoupdate: "true"` gets the rules,
aggregation rule, labels and subjects it lacks added (kube's reconciliation with union semantics, so what an
administrator added stays); one set to `"false"` is left as the administrator made it. The rules of aggregated
roles (admin, edit, view) belong to the aggregation controller and are not touched here.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from kwire.api.authz.bootstrappolicy import AUTOUPDATE, cluster_role_bindings, cluster_roles, namespaced_roles
from kwire.api.errors import ApiError
from kwire.api.registry import Kind, by_path
from kwire.api.resources import Resources

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def _merged(current: Obj, wanted: Obj) -> Obj | None:
    """`current` with what `wanted` has and it lacks, or None when nothing is missing."""
    new = copy.deepcopy(current)
    meta = new.setdefault("metadata", {})
    for field in ("labels", "annotations"):
        have = meta.get(field) or {}
        meta[field] = {**wanted["metadata"].get(field, {}), **have}
    if "aggregationRule" in wanted:
        new["aggregationRule"] = wanted["aggregationRule"]
    elif "rules" in wanted:
        rules = list(new.get("rules") or [])
        rules.extend(r for r in wanted["rules"] if r not in rules)
        new["rules"] = rules
    if "subjects" in wanted:
        subjects = list(new.get("subjects") or [])
        subjects.extend(s for s in wanted["subjects"] if s not in subjects)
        new["subjects"] = subjects
    return None if new == current else new


async def _reconcile_one(resources: Resources, kind: Kind, wanted: Obj) -> str:
    name = wanted["metadata"]["name"]
    namespace = wanted["metadata"].get("namespace")
    current = resources.get_or_none(kind, namespace, name)
    if current is None:
        await resources.create(kind, namespace, copy.deepcopy(wanted))
        return "created"
    if ((current.get("metadata") or {}).get("annotations") or {}).get(AUTOUPDATE) != "true":
        return "kept"
    new = _merged(current, wanted)
    if new is None:
        return "unchanged"
    await resources.update(kind, namespace, name, new)
    return "updated"


async def reconcile(resources: Resources) -> None:
    croles = by_path("rbac.authorization.k8s.io", "v1", "clusterroles")
    cbindings = by_path("rbac.authorization.k8s.io", "v1", "clusterrolebindings")
    roles = by_path("rbac.authorization.k8s.io", "v1", "roles")
    assert croles is not None and cbindings is not None and roles is not None
    counts: dict[str, int] = {}
    for kind, objs in ((croles, cluster_roles()), (cbindings, cluster_role_bindings()), (roles, namespaced_roles())):
        for obj in objs:
            try:
                outcome = await _reconcile_one(resources, kind, obj)
            except ApiError as err:  # another server created it first, or a conflict: the next start retries
                log.warning("rbac bootstrap: %s %s: %s", kind.kind, obj["metadata"]["name"], err.message)
                continue
            counts[outcome] = counts.get(outcome, 0) + 1
    log.info("rbac bootstrap policy reconciled: %s", counts)
