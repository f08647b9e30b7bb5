"""Admission plugins kube-apiserver enables by default that change or refuse objects on create, for the kinds
kwire serves: DefaultStorageClass (a claim without `storageClassName` gets the default class, the newest when
several are marked), Priority (a pod's `spec.priority` and `preemptionPolicy` come from its PriorityClass, or
the global default; an unknown class is refused) and the one-global-default rule for PriorityClasses.

Refusals are kube's 403 Forbidden with the plugin's words. Objects are looked up through `list_objects`, so
this module needs no storage of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from kwire.api.errors import ApiError
from kwire.api.registry import Kind, by_path

Obj = dict[str, Any]
ListObjects = Callable[[Kind], Awaitable[list[Obj]]]

DEFAULT_CLASS_ANNOTATIONS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)


def _kind(group: str, plural: str) -> Kind:
    kind = by_path(group, "v1", plural)
    assert kind is not None
    return kind


def _forbidden(kind: Kind, name: str, why: str) -> ApiError:
    resource = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
    return ApiError(403, "Forbidden", f'{resource} "{name}" is forbidden: {why}')


async def default_storage_class(list_objects: ListObjects) -> str | None:
    best: tuple[str, str] | None = None
    for sc in await list_objects(_kind("storage.k8s.io", "storageclasses")):
        anns = sc["metadata"].get("annotations") or {}
        if any(anns.get(a) == "true" for a in DEFAULT_CLASS_ANNOTATIONS):
            cand = (str(sc["metadata"].get("creationTimestamp", "")), str(sc["metadata"]["name"]))
            if best is None or cand > best:
                best = cand
    return best[1] if best else None


async def admit_create(kind: Kind, obj: Obj, *, list_objects: ListObjects) -> None:
    """Run the plugins for a create of `obj` (changed in place); raises the plugin's refusal."""
    spec = obj.get("spec")
    name = str((obj.get("metadata") or {}).get("name") or "")
    if kind.group == "" and kind.kind == "PersistentVolumeClaim" and isinstance(spec, dict):
        if spec.get("storageClassName") is None:
            default = await default_storage_class(list_objects)
            if default is not None:
                spec["storageClassName"] = default
    elif kind.group == "" and kind.kind == "Pod" and isinstance(spec, dict):
        await _pod_priority(kind, name, spec, list_objects)
    elif kind.kind == "PriorityClass" and obj.get("globalDefault"):
        await _one_default(kind, name, list_objects)


async def admit_update(kind: Kind, obj: Obj, *, list_objects: ListObjects) -> None:
    if kind.kind == "PriorityClass" and obj.get("globalDefault"):
        await _one_default(kind, str(obj["metadata"].get("name") or ""), list_objects)


async def _pod_priority(kind: Kind, name: str, spec: Obj, list_objects: ListObjects) -> None:
    classes = await list_objects(_kind("scheduling.k8s.io", "priorityclasses"))
    wanted = spec.get("priorityClassName")
    if wanted:
        cls = next((c for c in classes if c["metadata"].get("name") == wanted), None)
        if cls is None:
            raise _forbidden(kind, name, f"no PriorityClass with name {wanted} was found")
    else:
        cls = next((c for c in classes if c.get("globalDefault")), None)
        if cls is not None:
            spec["priorityClassName"] = cls["metadata"]["name"]
    value = int(cls.get("value") or 0) if cls is not None else 0
    if spec.get("priority") is not None and spec["priority"] != value:
        raise _forbidden(
            kind,
            name,
            f"the integer value of priority ({spec['priority']}) must not be provided in pod spec; priority "
            f"admission controller computed {value} from the given PriorityClass name",
        )
    spec["priority"] = value
    if cls is not None:
        spec["preemptionPolicy"] = cls.get("preemptionPolicy") or "PreemptLowerPriority"


async def _one_default(kind: Kind, name: str, list_objects: ListObjects) -> None:
    for other in await list_objects(kind):
        other_name = other["metadata"].get("name")
        if other.get("globalDefault") and other_name != name:
            raise _forbidden(
                kind, name, f"PriorityClass {other_name} is already marked as default. Only one default can exist"
            )
