"""K3s's local-path provisioner (rancher/local-path-provisioner) and the PV binder's part for its claims.

Owns PersistentVolumes of the `rancher.io/local-path` provisioner. A claim of such a class whose pod the
scheduler has placed (annotation `volume.kubernetes.io/selected-node`, WaitForFirstConsumer) gets a PV
`pvc-<claim uid>` with `hostPath` `/var/lib/kwire/storage/pvc-<uid>_<namespace>_<name>` (the provisioner's
`<dir>/<pv>_<ns>_<claim>` layout under kwire's data root), node affinity to that node, the class's reclaim policy
and a claimRef; then both are bound as kube's PV controller binds them (claim spec.volumeName and status Bound
with capacity and access modes, PV status Bound). When a claim goes, its Delete-policy PV is deleted and a
Retain-policy PV becomes Released. Creating and removing the directory is the kubelet's (as the provisioner's
helper pod does it on the node).
"""

from __future__ import annotations

import logging

from kwire.client import ApiClient, Informers, NotFound
from kwire.client.client import PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, STORAGECLASSES
from kwire.controllers.common import (
    Obj,
    annotations_of,
    d,
    key_of,
    lst,
    name_of,
    namespace_of,
    spec,
    split_key,
    status,
    uid_of,
    update_with_retry,
)
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)


PROVISIONER = "rancher.io/local-path"
STORAGE_ROOT = "/var/lib/kwire/storage"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANN_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
PV_KEY = "pv/"


def volume_name(claim: Obj) -> str:
    return f"pvc-{uid_of(claim)}"


def host_path(claim: Obj) -> str:
    return f"{STORAGE_ROOT}/{volume_name(claim)}_{namespace_of(claim)}_{name_of(claim)}"


def desired_volume(claim: Obj, cls: Obj, node: str) -> Obj:
    """The PV the provisioner creates for `claim` on `node`."""
    cspec = spec(claim)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name(claim),
            "annotations": {ANN_PROVISIONED_BY: PROVISIONER, "local.path.provisioner/selected-node": node},
        },
        "spec": {
            "capacity": {"storage": d(d(cspec.get("resources")).get("requests")).get("storage", "0")},
            "accessModes": lst(cspec.get("accessModes")),
            "persistentVolumeReclaimPolicy": cls.get("reclaimPolicy") or "Delete",
            "storageClassName": name_of(cls),
            "volumeMode": cspec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": host_path(claim), "type": "DirectoryOrCreate"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
                    ]
                }
            },
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": namespace_of(claim),
                "name": name_of(claim),
                "uid": uid_of(claim),
            },
        },
    }


class LocalPathProvisioner(Controller):
    name = "local-path-provisioner"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.claims = self.informer(PERSISTENTVOLUMECLAIMS)
        self.volumes = self.informer(PERSISTENTVOLUMES)
        self.classes = self.informer(STORAGECLASSES)
        self.enqueue_on_change(self.claims)
        self.claims.on_delete(self._on_claim_delete)
        self.on_change(self.volumes, self._on_volume, deletes=False)

    def _on_claim_delete(self, claim: Obj) -> None:
        for pv in self.volumes.items():
            if d(spec(pv).get("claimRef")).get("uid") == uid_of(claim):
                self.enqueue(PV_KEY + name_of(pv))

    def _on_volume(self, pv: Obj) -> None:
        if annotations_of(pv).get(ANN_PROVISIONED_BY) != PROVISIONER:
            return
        self.enqueue(PV_KEY + name_of(pv))
        ref = d(spec(pv).get("claimRef"))
        if ref.get("name"):
            self.enqueue(f"{ref.get('namespace')}/{ref['name']}")

    async def prepare(self) -> None:
        for claim in self.claims.items():
            self.enqueue(key_of(claim))
        for pv in self.volumes.items():
            self._on_volume(pv)

    def _class_of(self, claim: Obj) -> Obj | None:
        cls = self.classes.get(None, str(spec(claim).get("storageClassName") or ""))
        return cls if cls is not None and cls.get("provisioner") == PROVISIONER else None

    async def sync(self, key: str) -> float | None:
        if key.startswith(PV_KEY):
            return await self._sync_volume(key[len(PV_KEY) :])
        ns, name = split_key(key)
        claim = self.claims.get(ns, name)
        if claim is None or claim["metadata"].get("deletionTimestamp"):
            return None
        cls = self._class_of(claim)
        if cls is None:
            return None
        if annotations_of(claim).get(ANN_STORAGE_PROVISIONER) != PROVISIONER and not spec(claim).get("volumeName"):
            await self._annotate_claim(claim)
        node = annotations_of(claim).get(ANN_SELECTED_NODE)
        pv = self.volumes.get(None, volume_name(claim))
        if pv is None:
            if not node:
                return None  # WaitForFirstConsumer: nothing until the scheduler picks a node
            pv = await self._create_volume(claim, cls, node)
            if pv is None:
                return None
        if d(spec(pv).get("claimRef")).get("uid") != uid_of(claim):
            return None
        await self._bind(claim, pv)
        return None

    async def _annotate_claim(self, claim: Obj) -> None:
        def mutate(obj: Obj) -> bool:
            anns = obj["metadata"].setdefault("annotations", {})
            if anns.get(ANN_STORAGE_PROVISIONER) == PROVISIONER:
                return False
            anns[ANN_STORAGE_PROVISIONER] = PROVISIONER
            anns["volume.beta.kubernetes.io/storage-provisioner"] = PROVISIONER
            return True

        await update_with_retry(self.client, PERSISTENTVOLUMECLAIMS, claim, mutate)

    async def _create_volume(self, claim: Obj, cls: Obj, node: str) -> Obj | None:
        want = desired_volume(claim, cls, node)
        log.info("local-path: provisioning %s for %s on %s", name_of(want), key_of(claim), node)
        try:
            return await self.client.create(PERSISTENTVOLUMES, want)
        except NotFound:
            return None

    async def _bind(self, claim: Obj, pv: Obj) -> None:
        if status(pv).get("phase") != "Bound":
            await self._set_volume_phase(pv, "Bound")
        if spec(claim).get("volumeName") != name_of(pv):

            def set_volume(obj: Obj) -> bool:
                if spec(obj).get("volumeName"):
                    return False
                obj.setdefault("spec", {})["volumeName"] = name_of(pv)
                anns = obj["metadata"].setdefault("annotations", {})
                anns[ANN_BIND_COMPLETED] = "yes"
                anns[ANN_BOUND_BY_CONTROLLER] = "yes"
                return True

            updated = await update_with_retry(self.client, PERSISTENTVOLUMECLAIMS, claim, set_volume)
            claim = updated or claim
        if status(claim).get("phase") != "Bound":

            def bound(obj: Obj) -> bool:
                st = obj.setdefault("status", {})
                if st.get("phase") == "Bound":
                    return False
                st["phase"] = "Bound"
                st["accessModes"] = lst(spec(pv).get("accessModes"))
                st["capacity"] = dict(d(spec(pv).get("capacity")))
                return True

            await update_with_retry(self.client, PERSISTENTVOLUMECLAIMS, claim, bound, subresource_status=True)

    async def _sync_volume(self, name: str) -> float | None:
        pv = self.volumes.get(None, name)
        if pv is None or annotations_of(pv).get(ANN_PROVISIONED_BY) != PROVISIONER:
            return None
        ref = d(spec(pv).get("claimRef"))
        claim = self.claims.get(str(ref.get("namespace") or ""), str(ref.get("name") or ""))
        if claim is not None and uid_of(claim) == ref.get("uid"):
            return None
        try:  # the cache may be behind: confirm the claim is gone
            live = await self.client.get(PERSISTENTVOLUMECLAIMS, str(ref.get("name")), str(ref.get("namespace")))
            if uid_of(live) == ref.get("uid"):
                return None
        except NotFound:
            pass
        if spec(pv).get("persistentVolumeReclaimPolicy") == "Delete":
            log.info("local-path: claim of %s is gone: deleting the volume", name)
            try:
                await self.client.delete(PERSISTENTVOLUMES, name)
            except NotFound:
                pass
            return None
        await self._set_volume_phase(pv, "Released")
        return None

    async def _set_volume_phase(self, pv: Obj, phase: str) -> None:
        """status.phase of the PersistentVolume (status subresource), unless it already is `phase`."""

        def set_phase(obj: Obj) -> bool:
            if status(obj).get("phase") == phase:
                return False
            obj.setdefault("status", {})["phase"] = phase
            return True

        await update_with_retry(self.client, PERSISTENTVOLUMES, pv, set_phase, subresource_status=True)
