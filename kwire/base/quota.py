"""ResourceQuota evaluation as kube's quota evaluators do it: what a namespace's objects use of each resource a
quota names (object counts, pod compute requests/limits, claim storage, per-StorageClass claims), with the pod
scopes. Shared by the quota status controller and quota admission.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from kwire.base import quantity
from kwire.base.fields import as_dict, as_list, spec

Obj = dict[str, Any]

COMPUTE = ("requests.cpu", "cpu", "requests.memory", "memory", "limits.cpu", "limits.memory")


def pod_finished(pod: Obj) -> bool:
    return as_dict(pod.get("status")).get("phase") in ("Succeeded", "Failed")


CLASS_SUFFIX = ".storageclass.storage.k8s.io/"


def pod_resources(pod: Obj, which: str) -> dict[str, Fraction]:
    """A pod's requests or limits: the sum over containers, raised to any init container's (kube's rule)."""
    total: dict[str, Fraction] = {}
    for c in as_list(spec(pod).get("containers")):
        for name, raw in as_dict(as_dict(as_dict(c).get("resources")).get(which)).items():
            q = quantity.parse(raw)
            if q is not None:
                total[name] = total.get(name, Fraction(0)) + q
    for c in as_list(spec(pod).get("initContainers")):
        for name, raw in as_dict(as_dict(as_dict(c).get("resources")).get(which)).items():
            q = quantity.parse(raw)
            if q is not None and q > total.get(name, Fraction(0)):
                total[name] = q
    return total


def _best_effort(pod: Obj) -> bool:
    return not any(
        as_dict(as_dict(c).get("resources")).get("requests") or as_dict(as_dict(c).get("resources")).get("limits")
        for c in as_list(spec(pod).get("containers")) + as_list(spec(pod).get("initContainers"))
    )


def _pod_in_scope(pod: Obj, scopes: list[str]) -> bool:
    for scope in scopes:
        terminating = spec(pod).get("activeDeadlineSeconds") is not None
        if scope == "BestEffort" and not _best_effort(pod):
            return False
        if scope == "NotBestEffort" and _best_effort(pod):
            return False
        if scope == "Terminating" and not terminating:
            return False
        if scope == "NotTerminating" and terminating:
            return False
    return True


def usage(hard: dict[str, Any], scopes: list[str], objects: dict[str, list[Obj]]) -> dict[str, str]:
    """status.used for `hard`, from the namespace's objects by plural (`pods`, `deployments`, ...)."""
    pods = [p for p in objects.get("pods", []) if not pod_finished(p) and _pod_in_scope(p, scopes)]
    claims = objects.get("persistentvolumeclaims", [])
    services = objects.get("services", [])
    sums: dict[str, Fraction] = {}
    for name in hard:
        if name in ("pods", "count/pods"):
            sums[name] = Fraction(len(pods))
        elif name in ("requests.cpu", "cpu", "requests.memory", "memory", "limits.cpu", "limits.memory"):
            which = "limits" if name.startswith("limits.") else "requests"
            resource = name.split(".")[-1]
            sums[name] = sum((pod_resources(p, which).get(resource, Fraction(0)) for p in pods), Fraction(0))
        elif name == "services.nodeports":
            sums[name] = Fraction(
                sum(
                    len(as_list(spec(s).get("ports")))
                    for s in services
                    if spec(s).get("type") in ("NodePort", "LoadBalancer")
                )
            )
        elif name == "services.loadbalancers":
            sums[name] = Fraction(sum(1 for s in services if spec(s).get("type") == "LoadBalancer"))
        elif name == "requests.storage":
            sums[name] = _storage(claims)
        elif CLASS_SUFFIX in name:
            cls, what = name.split(CLASS_SUFFIX, 1)
            mine = [c for c in claims if spec(c).get("storageClassName") == cls]
            if what == "persistentvolumeclaims":
                sums[name] = Fraction(len(mine))
            elif what == "requests.storage":
                sums[name] = _storage(mine)
        else:
            plural = name.removeprefix("count/").split(".")[0]
            if plural in objects and (name == plural or name.startswith("count/")):
                sums[name] = Fraction(len(objects[plural]))
    return {name: quantity.format_like(value, str(hard[name])) for name, value in sums.items()}


def _storage(claims: Iterable[Obj]) -> Fraction:
    total = Fraction(0)
    for c in claims:
        q = quantity.parse(as_dict(as_dict(spec(c).get("resources")).get("requests")).get("storage"))
        if q is not None:
            total += q
    return total
