"""Admission plugins kube-apiserver enables by default that change or refuse objects on create, for the kinds
kwire serves: DefaultStorageClass (a claim without `storageClassName` gets the default class, the newest when
several are marked), Priority (a pod's `spec.priority` and `preemptionPolicy` come from its PriorityClass, or
the global default; an unknown class is refused), the one-global-default rule for PriorityClasses, and
ResourceQuota (a create that would take a namespace past a quota's hard limit is refused, and a pod must state
the compute resources a quota limits).

Refusals are kube's 403 Forbidden with the plugin's words. Objects are looked up through `list_objects`, so
this module needs no storage of its own. (`admission.py` holds the plugins that need no lookups.)
"""

from __future__ import annotations

from collections.abc import Awaitable
from fractions import Fraction
from typing import Any, Protocol

from kwire.api.errors import ApiError
from kwire.api.registry import Kind, by_path
from kwire.base import quantity
from kwire.base.quota import COMPUTE, usage

Obj = dict[str, Any]


class ListObjects(Protocol):
    """The stored objects of a kind, in one namespace or (namespace None) in all of them."""

    def __call__(self, kind: Kind, /, *, namespace: str | None = None) -> Awaitable[list[Obj]]: ...


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
    if kind.namespaced and kind.plural in QUOTA_COUNTED:
        await _quota(kind, name, obj, list_objects)


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


# What quota admission counts on create: (group, plural) of the kinds the evaluators know.
QUOTA_COUNTED = {
    "pods": "",
    "services": "",
    "configmaps": "",
    "secrets": "",
    "persistentvolumeclaims": "",
    "resourcequotas": "",
    "deployments": "apps",
    "replicasets": "apps",
    "daemonsets": "apps",
}


def _pretty(values: dict[str, str]) -> str:
    return ",".join(f"{k}={values[k]}" for k in sorted(values))


def _unspecified(pod: Obj, hard: dict[str, Any]) -> str:
    """kube's pod evaluator constraint: every container states each compute resource a quota limits."""
    missing: dict[str, list[str]] = {}
    for res in sorted(r for r in hard if r in COMPUTE):
        which = "limits" if res.startswith("limits.") else "requests"
        name = res.split(".")[-1]
        for c in (pod.get("spec") or {}).get("containers") or []:
            if name not in ((c.get("resources") or {}).get(which) or {}):
                missing.setdefault(f"{which}.{name}", []).append(str(c.get("name")))
    return "; ".join(f"{res} for: {','.join(names)}" for res, names in sorted(missing.items()))


async def _quota(kind: Kind, name: str, obj: Obj, list_objects: ListObjects) -> None:
    ns = (obj.get("metadata") or {}).get("namespace")
    if not isinstance(ns, str) or not ns:
        return
    # Only the namespace's own keys are read: a create in a namespace without quotas costs one empty range.
    quotas = await list_objects(_kind("", "resourcequotas"), namespace=ns)
    if not quotas:
        return
    objects: dict[str, list[Obj]] = {}
    for plural, group in QUOTA_COUNTED.items():
        counted = by_path(group, "v1", plural)
        assert counted is not None
        objects[plural] = await list_objects(counted, namespace=ns)
    with_new = {**objects, kind.plural: [*objects[kind.plural], obj]}
    for q in sorted(quotas, key=lambda q: str(q["metadata"].get("name"))):
        qname = q["metadata"].get("name")
        hard = dict((q.get("spec") or {}).get("hard") or {})
        scopes = [str(x) for x in (q.get("spec") or {}).get("scopes") or []]
        before, after = usage(hard, scopes, objects), usage(hard, scopes, with_new)
        if kind.plural == "pods" and after != before:
            missing = _unspecified(obj, hard)
            if missing:
                raise _forbidden(kind, name, f"failed quota: {qname}: must specify {missing}")
        exceeded = []
        for res, value in after.items():
            limit, now = quantity.parse(hard[res]), quantity.parse(value)
            if limit is not None and now is not None and now > limit and value != before.get(res):
                exceeded.append(res)
        if exceeded:
            requested = {}
            for res in exceeded:
                delta = (quantity.parse(after[res]) or 0) - (quantity.parse(before.get(res, "0")) or 0)
                requested[res] = quantity.format_like(Fraction(delta), str(hard[res]))
            raise _forbidden(
                kind,
                name,
                f"exceeded quota: {qname}, requested: {_pretty(requested)}, "
                f"used: {_pretty({r: before.get(r, '0') for r in exceeded})}, "
                f"limited: {_pretty({r: str(hard[r]) for r in exceeded})}",
            )
