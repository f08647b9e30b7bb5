"""The `scale` subresource (autoscaling/v1 Scale) of Deployments, ReplicaSets, StatefulSets and custom resources
whose CRD declares one, which `kubectl scale` uses.

GET answers a Scale built from the object; PUT and PATCH change only the replicas of the parent object, through
the normal update path (validation, optimistic concurrency on the Scale's resourceVersion, generation bump).
For a custom resource the CRD's specReplicasPath, statusReplicasPath and labelSelectorPath say where the
numbers and the selector string live (apiextensions-apiserver's scale subresource).
"""

from __future__ import annotations

import copy
from typing import Any

from kwire.api.errors import invalid, invalid_object
from kwire.api.registry import Kind

Obj = dict[str, Any]

SCALE_KINDS = ("Deployment", "ReplicaSet", "StatefulSet")


def _selector_string(sel: Any) -> str:
    if not isinstance(sel, dict):
        return ""
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for req in sel.get("matchExpressions") or []:
        key, op, values = req.get("key", ""), req.get("operator", ""), req.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def _get_path(obj: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _set_path(obj: Obj, path: str, value: Any) -> None:
    parts = [p for p in path.split(".") if p]
    for part in parts[:-1]:
        nxt = obj.get(part)
        if not isinstance(nxt, dict):
            nxt = obj[part] = {}
        obj = nxt
    obj[parts[-1]] = value


def to_scale(obj: Obj, kind: Kind | None = None) -> Obj:
    """The autoscaling/v1 Scale of `obj`: a custom resource's from the paths its CRD's scale subresource names."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if kind is not None and kind.custom is not None:
        c = kind.custom
        wanted = _get_path(obj, c.spec_replicas_path)
        current = _get_path(obj, c.status_replicas_path)
        selector = _get_path(obj, c.label_selector_path) if c.label_selector_path else None
        replicas = int(wanted) if isinstance(wanted, int) else 0
        scale_status: Obj = {"replicas": int(current) if isinstance(current, int) else 0}
        if isinstance(selector, str) and selector:
            scale_status["selector"] = selector
    else:
        replicas = int(spec.get("replicas", 1))
        scale_status = {"replicas": int(status.get("replicas", 0)), "selector": _selector_string(spec.get("selector"))}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
        },
        "spec": {"replicas": replicas},
        "status": scale_status,
    }


def apply_scale(kind: Kind, obj: Obj, scale: Obj) -> Obj:
    """The parent object with the Scale's spec.replicas (and its resourceVersion as a precondition, if set)."""
    replicas = (scale.get("spec") or {}).get("replicas")
    name = (obj.get("metadata") or {}).get("name", "")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise invalid_object(
            "autoscaling",
            "Scale",
            name,
            [invalid("spec.replicas", replicas, "must be greater than or equal to 0")],
        )
    out = copy.deepcopy(obj)
    if kind.custom is not None:
        _set_path(out, kind.custom.spec_replicas_path, replicas)
    else:
        out.setdefault("spec", {})["replicas"] = replicas
    rv = (scale.get("metadata") or {}).get("resourceVersion")
    if rv:
        out["metadata"]["resourceVersion"] = str(rv)
    return out
