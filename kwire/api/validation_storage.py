"""Validation of storage kinds: storage.k8s.io/v1 StorageClass, core PersistentVolume and PersistentVolumeClaim.

Mirrors `pkg/apis/storage/validation` (provisioner required, reclaim policy and binding mode values, parameters/
provisioner/reclaimPolicy immutable) and `pkg/apis/core/validation` for volumes (capacity, access modes, one
volume source, reclaim policy; a claim's spec is immutable except resources.requests of a bound claim and a
volumeName set once).
"""

from __future__ import annotations

import copy
from typing import Any

from kwire.api.errors import FieldError, forbidden, invalid, not_supported, required
from kwire.base import quantity

Obj = dict[str, Any]
Errs = list[FieldError]

RECLAIM = ("Delete", "Retain")
PV_RECLAIM = ("Delete", "Recycle", "Retain")
BINDING_MODES = ("Immediate", "WaitForFirstConsumer")
ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")
VOLUME_SOURCES = (
    "hostPath",
    "local",
    "nfs",
    "csi",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "glusterfs",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
    "vsphereVolume",
    "flexVolume",
    "cinder",
    "flocker",
    "quobyte",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "photonPersistentDisk",
)


def storage_class(obj: Obj, old: Obj | None) -> Errs:
    errs: Errs = []
    if not obj.get("provisioner"):
        errs.append(required("provisioner"))
    if obj.get("reclaimPolicy") not in RECLAIM:
        errs.append(not_supported("reclaimPolicy", obj.get("reclaimPolicy") or "", RECLAIM))
    if obj.get("volumeBindingMode") not in BINDING_MODES:
        errs.append(not_supported("volumeBindingMode", obj.get("volumeBindingMode") or "", BINDING_MODES))
    if old is not None:
        if obj.get("parameters") != old.get("parameters"):
            errs.append(forbidden("parameters", "updates to parameters are forbidden."))
        if obj.get("provisioner") != old.get("provisioner"):
            errs.append(forbidden("provisioner", "updates to provisioner are forbidden."))
        if obj.get("reclaimPolicy") != old.get("reclaimPolicy"):
            errs.append(forbidden("reclaimPolicy", "updates to reclaimPolicy are forbidden."))
        if obj.get("volumeBindingMode") != old.get("volumeBindingMode"):
            errs.append(invalid("volumeBindingMode", obj.get("volumeBindingMode"), "field is immutable"))
    return errs


def _access_modes(modes: Any, path: str, *, required_text: str) -> Errs:
    if not isinstance(modes, list) or not modes:
        return [required(path, required_text)]
    return [not_supported(path, m, ACCESS_MODES) for m in modes if m not in ACCESS_MODES]


def _quantities(values: Any, path: str) -> Errs:
    errs: Errs = []
    for name, value in (values or {}).items() if isinstance(values, dict) else ():
        q = quantity.parse(value)
        if q is None:
            errs.append(invalid(f"{path}[{name}]", value, quantity.MSG))
        elif q < 0:
            errs.append(invalid(f"{path}[{name}]", value, "must be greater than or equal to 0"))
    return errs


def persistent_volume(obj: Obj, old: Obj | None) -> Errs:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    errs: Errs = []
    errs += _access_modes(spec.get("accessModes"), "spec.accessModes", required_text="")
    cap = spec.get("capacity")
    if not isinstance(cap, dict) or not cap:
        errs.append(required("spec.capacity"))
    else:
        if "storage" not in cap or len(cap) > 1:
            errs.append(not_supported("spec.capacity", ",".join(k for k in cap if k != "storage"), ("storage",)))
        errs += _quantities(cap, "spec.capacity")
    sources = [s for s in VOLUME_SOURCES if spec.get(s)]
    if not sources:
        errs.append(required("spec", "must specify a volume type"))
    elif len(sources) > 1:
        errs.append(forbidden(f"spec.{sources[1]}", "may not specify more than 1 volume type"))
    if spec.get("hostPath") is not None and not (spec["hostPath"] or {}).get("path"):
        errs.append(required("spec.hostPath.path"))
    policy = spec.get("persistentVolumeReclaimPolicy")
    if policy not in PV_RECLAIM:
        errs.append(not_supported("spec.persistentVolumeReclaimPolicy", policy or "", PV_RECLAIM))
    if old is not None:
        old_spec = old.get("spec") or {}
        for src in VOLUME_SOURCES:
            if src in old_spec and spec.get(src) != old_spec.get(src):
                errs.append(forbidden(f"spec.{src}", "spec.persistentvolumesource is forbidden."))
    return errs


def persistent_volume_claim(obj: Obj, old: Obj | None) -> Errs:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    errs: Errs = []
    errs += _access_modes(
        spec.get("accessModes"), "spec.accessModes", required_text="at least 1 access mode is required"
    )
    requests = (spec.get("resources") or {}).get("requests") or {}
    if "storage" not in requests:
        errs.append(required("spec.resources[storage]"))
    else:
        q = quantity.parse(requests["storage"])
        if q is None:
            errs.append(invalid("spec.resources.requests[storage]", requests["storage"], quantity.MSG))
        elif q <= 0:
            errs.append(invalid("spec.resources.requests[storage]", requests["storage"], "must be greater than zero"))
    if old is not None:
        errs += _claim_update(obj, old)
    return errs


def _claim_update(obj: Obj, old: Obj) -> Errs:
    new_spec = copy.deepcopy(obj.get("spec") or {})
    old_spec = copy.deepcopy(old.get("spec") or {})
    if not old_spec.get("volumeName"):
        old_spec.pop("volumeName", None)
        new_spec.pop("volumeName", None)
    bound = (old.get("status") or {}).get("phase") == "Bound"
    if bound:
        for s in (new_spec, old_spec):
            (s.get("resources") or {}).pop("requests", None)
    for s in (new_spec, old_spec):
        s.pop("volumeAttributesClassName", None)
        if s.get("resources") == {}:
            s.pop("resources")
    errs: Errs = []
    if new_spec != old_spec:
        errs.append(
            forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            )
        )
    elif bound:
        new_q = quantity.parse(((obj.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage"))
        old_q = quantity.parse(((old.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage"))
        if new_q is not None and old_q is not None and new_q < old_q:
            errs.append(forbidden("spec.resources.requests.storage", "field can not be less than previous value"))
    return errs
