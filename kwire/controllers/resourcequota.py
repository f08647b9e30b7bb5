"""ResourceQuota status (kube-controller-manager's resourcequota controller).

Owns `status` of every ResourceQuota: `status.hard` is `spec.hard`, `status.used` what the namespace uses of each
resource named there, recomputed when an object it counts changes. Evaluated: object counts (`pods`,
`services`, `services.nodeports`, `services.loadbalancers`, `configmaps`, `secrets`, `persistentvolumeclaims`,
`resourcequotas` and `count/<plural>[.<group>]` for those and Deployments/ReplicaSets/DaemonSets), compute
resources of non-terminal pods (`requests.cpu|memory`, `cpu`, `memory`, `limits.cpu|memory`; a pod asks for the
larger of its containers' sum and any init container), `requests.storage` and the per-class claim counts and
storage (`<class>.storageclass.storage.k8s.io/...`). Pod scopes BestEffort/NotBestEffort/Terminating/
NotTerminating filter which pods count. Refusing creates over quota (the admission half) is not done.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from kwire.base import quantity
from kwire.client import ApiClient, Informers
from kwire.client.client import (
    CONFIGMAPS,
    DAEMONSETS,
    DEPLOYMENTS,
    PERSISTENTVOLUMECLAIMS,
    PODS,
    REPLICASETS,
    SECRETS,
    SERVICES,
    Resource,
)
from kwire.controllers.common import (
    d,
    key_of,
    lst,
    namespace_of,
    pod_finished,
    spec,
    split_key,
    status,
    update_with_retry,
)
from kwire.controllers.queue import Controller

Obj = dict[str, Any]

RESOURCEQUOTAS = Resource("", "v1", "resourcequotas", "ResourceQuota")
COUNTED = (PODS, SERVICES, CONFIGMAPS, SECRETS, PERSISTENTVOLUMECLAIMS, DEPLOYMENTS, REPLICASETS, DAEMONSETS)
CLASS_SUFFIX = ".storageclass.storage.k8s.io/"


def _count_name(res: Resource) -> str:
    return f"count/{res.plural}" + (f".{res.group}" if res.group else "")


def _pod_resources(pod: Obj, which: str) -> dict[str, Fraction]:
    """A pod's requests or limits: the sum over containers, raised to any init container's (kube's rule)."""
    total: dict[str, Fraction] = {}
    for c in lst(spec(pod).get("containers")):
        for name, raw in d(d(d(c).get("resources")).get(which)).items():
            q = quantity.parse(raw)
            if q is not None:
                total[name] = total.get(name, Fraction(0)) + q
    for c in lst(spec(pod).get("initContainers")):
        for name, raw in d(d(d(c).get("resources")).get(which)).items():
            q = quantity.parse(raw)
            if q is not None and q > total.get(name, Fraction(0)):
                total[name] = q
    return total


def _best_effort(pod: Obj) -> bool:
    return not any(
        d(d(c).get("resources")).get("requests") or d(d(c).get("resources")).get("limits")
        for c in lst(spec(pod).get("containers")) + lst(spec(pod).get("initContainers"))
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
            sums[name] = sum((_pod_resources(p, which).get(resource, Fraction(0)) for p in pods), Fraction(0))
        elif name == "services.nodeports":
            sums[name] = Fraction(
                sum(
                    len(lst(spec(s).get("ports")))
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
        q = quantity.parse(d(d(spec(c).get("resources")).get("requests")).get("storage"))
        if q is not None:
            total += q
    return total


class ResourceQuotaController(Controller):
    name = "resourcequota"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.quotas = informers.get(RESOURCEQUOTAS)
        self.counted = {res.plural: informers.get(res) for res in COUNTED}
        self.quotas.on_add(lambda q: self.enqueue(key_of(q)))
        self.quotas.on_update(lambda old, new: self.enqueue(key_of(new)))
        for inf in self.counted.values():
            inf.on_add(self._on_object)
            inf.on_update(lambda old, new: self._on_object(new))
            inf.on_delete(self._on_object)

    def _on_object(self, obj: Obj) -> None:
        ns = namespace_of(obj)
        for q in self.quotas.items():
            if namespace_of(q) == ns:
                self.enqueue(key_of(q))

    async def prepare(self) -> None:
        for q in self.quotas.items():
            self.enqueue(key_of(q))

    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        quota = self.quotas.get(ns, name)
        if quota is None:
            return None
        hard = dict(d(spec(quota).get("hard")))
        objects = {plural: [o for o in inf.items() if namespace_of(o) == ns] for plural, inf in self.counted.items()}
        objects["resourcequotas"] = [q for q in self.quotas.items() if namespace_of(q) == ns]
        used = usage(hard, [str(s) for s in lst(spec(quota).get("scopes"))], objects)

        def mutate(obj: Obj) -> bool:
            want = {"hard": hard, "used": used}
            if {k: status(obj).get(k) for k in ("hard", "used")} == want:
                return False
            obj["status"] = {**status(obj), **want}
            return True

        await update_with_retry(self.client, RESOURCEQUOTAS, quota, mutate, subresource_status=True)
        return 300.0  # kube's quota controller also resyncs every five minutes
