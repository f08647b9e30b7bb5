"""ResourceQuota status (kube-controller-manager's resourcequota controller).

Owns `status` of every ResourceQuota: `status.hard` is `spec.hard`, `status.used` what the namespace uses of each
resource named there, recomputed when an object it counts changes (ConfigMaps and Secrets, which nothing else
caches and which can be many, are listed per namespace when a quota names them and recounted every 10 s). Evaluated: object counts (`pods`,
`services`, `services.nodeports`, `services.loadbalancers`, `configmaps`, `secrets`, `persistentvolumeclaims`,
`resourcequotas` and `count/<plural>[.<group>]` for those and Deployments/ReplicaSets/DaemonSets), compute
resources of non-terminal pods (`requests.cpu|memory`, `cpu`, `memory`, `limits.cpu|memory`; a pod asks for the
larger of its containers' sum and any init container), `requests.storage` and the per-class claim counts and
storage (`<class>.storageclass.storage.k8s.io/...`). Pod scopes BestEffort/NotBestEffort/Terminating/
NotTerminating filter which pods count (evaluation in `kwire/base/quota.py`, shared with quota admission).
"""

from __future__ import annotations

from kwire.base.quota import usage
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
    Obj,
    d,
    key_of,
    lst,
    namespace_of,
    spec,
    split_key,
    status,
    update_with_retry,
)
from kwire.controllers.queue import Controller

RESOURCEQUOTAS = Resource("", "v1", "resourcequotas", "ResourceQuota")
# Kinds other controllers watch anyway: counted from the shared caches, recounted on every change.
WATCHED = (PODS, SERVICES, PERSISTENTVOLUMECLAIMS, DEPLOYMENTS, REPLICASETS, DAEMONSETS)
# Kinds nothing else caches (they can be many): listed per namespace only when a quota names them, and
# recounted on a short resync rather than followed by a watch of every ConfigMap and Secret of the cluster.
LISTED = (CONFIGMAPS, SECRETS)
LISTED_RESYNC = 10.0


class ResourceQuotaController(Controller):
    name = "resourcequota"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.quotas = self.informer(RESOURCEQUOTAS)
        self.counted = {res.plural: self.informer(res) for res in WATCHED}
        self.enqueue_on_change(self.quotas)
        for inf in self.counted.values():
            self.on_change(inf, self._on_object)

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
        listed = [res for res in LISTED if res.plural in hard or f"count/{res.plural}" in hard]
        for res in listed:
            objects[res.plural] = lst((await self.client.list(res, ns)).get("items"))
        used = usage(hard, [str(s) for s in lst(spec(quota).get("scopes"))], objects)

        def mutate(obj: Obj) -> bool:
            want = {"hard": hard, "used": used}
            if {k: status(obj).get(k) for k in ("hard", "used")} == want:
                return False
            obj["status"] = {**status(obj), **want}
            return True

        await update_with_retry(self.client, RESOURCEQUOTAS, quota, mutate, subresource_status=True)
        return LISTED_RESYNC if listed else 300.0  # kube's quota controller also resyncs every five minutes
