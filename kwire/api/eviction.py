"""The `pods/eviction` subresource (policy/v1 Eviction): a pod deletion that honours PodDisruptionBudgets, as
kube-apiserver's pkg/registry/core/pod/storage/eviction.go does (what `kubectl drain` calls).

POST an Eviction {metadata: {name}, deleteOptions} for a pod:
- a pod that is already terminating, or Pending / Succeeded / Failed, is deleted without looking at budgets;
- no PodDisruptionBudget selects the pod: it is deleted;
- more than one does: 500, kube's "more than one PodDisruptionBudget" message;
- one does: if its status is stale (observedGeneration behind) or allows no disruption, 429 TooManyRequests
  "Cannot evict pod as it would violate the pod's disruption budget." with a DisruptionBudget cause naming the
  budget and its numbers; a pod that is not Ready may go anyway when the budget is healthy
  (unhealthyPodEvictionPolicy IfHealthyBudget, the default) or always (AlwaysAllow). Otherwise the budget's
  status.disruptionsAllowed is decremented and the pod recorded in status.disruptedPods (compare-and-swap on the
  budget, so two evictions never spend one disruption twice), then the pod is deleted with the Eviction's
  deleteOptions. Success is 201 with a Status.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kwire.api.errors import ApiError, bad_request
from kwire.api.registry import by_path
from kwire.api.resources import Resources
from kwire.base.labels import SelectorError, from_label_selector

Obj = dict[str, Any]

PODS = by_path("", "v1", "pods")
PDBS = by_path("policy", "v1", "poddisruptionbudgets")
VIOLATION = "Cannot evict pod as it would violate the pod's disruption budget."
ATTEMPTS = 5


def _success() -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}


def _too_many(cause: str) -> ApiError:
    return ApiError(
        429, "TooManyRequests", VIOLATION, details={"causes": [{"reason": "DisruptionBudget", "message": cause}]}
    )


def _pod_ready(pod: Obj) -> bool:
    return any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _budgets_for(pdbs: list[Obj], pod: Obj) -> list[Obj]:
    labels = {str(k): str(v) for k, v in ((pod.get("metadata") or {}).get("labels") or {}).items()}
    out = []
    for pdb in pdbs:
        sel = (pdb.get("spec") or {}).get("selector")
        if not isinstance(sel, dict) or not sel:
            continue  # policy/v1: a nil or empty selector selects no pods
        try:
            if from_label_selector(sel).matches(labels):
                out.append(pdb)
        except (SelectorError, AttributeError, TypeError):
            continue
    return out


async def evict(resources: Resources, namespace: str, name: str, eviction: Obj, *, dry_run: bool = False) -> Obj:
    assert PODS is not None and PDBS is not None
    ev_name = (eviction.get("metadata") or {}).get("name")
    if ev_name and ev_name != name:
        raise bad_request("name in URL does not match name in Eviction object")
    opts = eviction.get("deleteOptions") or {}
    if not isinstance(opts, dict):
        raise bad_request("deleteOptions must be an object")
    for _ in range(ATTEMPTS):
        pod = await resources.get(PODS, namespace, name)
        meta = pod.get("metadata") or {}
        phase = (pod.get("status") or {}).get("phase")
        preconditions = {"uid": meta.get("uid"), **(opts.get("preconditions") or {})}
        if meta.get("deletionTimestamp") or phase in ("Pending", "Succeeded", "Failed"):
            await _delete(resources, namespace, name, opts, preconditions, dry_run=dry_run)
            return _success()
        budgets = _budgets_for(await resources.list(PDBS, namespace), pod)
        if not budgets:
            await _delete(resources, namespace, name, opts, preconditions, dry_run=dry_run)
            return _success()
        if len(budgets) > 1:
            raise ApiError(
                500,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            )
        pdb = budgets[0]
        pmeta, pspec, pst = pdb["metadata"], pdb.get("spec") or {}, pdb.get("status") or {}
        healthy, desired = int(pst.get("currentHealthy") or 0), int(pst.get("desiredHealthy") or 0)
        if not _pod_ready(pod):
            policy = pspec.get("unhealthyPodEvictionPolicy") or "IfHealthyBudget"
            if policy == "AlwaysAllow" or healthy >= desired > 0:
                await _delete(resources, namespace, name, opts, preconditions, dry_run=dry_run)
                return _success()
        if int(pst.get("observedGeneration") or 0) < int(pmeta.get("generation") or 0):
            raise _too_many(f"The disruption budget {pmeta['name']} is still being processed by the server.")
        allowed = int(pst.get("disruptionsAllowed") or 0)
        if allowed < 0:
            raise ApiError(403, "Forbidden", "pdb disruptions allowed is negative")
        if allowed == 0:
            raise _too_many(
                f"The disruption budget {pmeta['name']} needs {desired} healthy pods and has {healthy} currently"
            )
        if dry_run:
            return _success()
        new = {**pdb, "status": {**pst, "disruptionsAllowed": allowed - 1}}
        disrupted = dict(pst.get("disruptedPods") or {})
        disrupted[name] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        new["status"]["disruptedPods"] = disrupted
        try:
            await resources.update(PDBS, namespace, pmeta["name"], new, subresource="status")
        except ApiError as err:
            if err.code == 409:
                continue  # another eviction spent a disruption meanwhile: look again
            raise
        await _delete(resources, namespace, name, opts, preconditions, dry_run=False)
        return _success()
    raise _too_many("The disruption budget is being updated by other evictions; try again.")


async def _delete(
    resources: Resources, namespace: str, name: str, opts: Obj, preconditions: Obj, *, dry_run: bool
) -> None:
    assert PODS is not None
    grace = opts.get("gracePeriodSeconds")
    await resources.delete(
        PODS,
        namespace,
        name,
        propagation=opts.get("propagationPolicy"),
        grace_period=grace if isinstance(grace, int) and not isinstance(grace, bool) else None,
        preconditions=preconditions,
        dry_run=dry_run or bool(opts.get("dryRun")),
    )
