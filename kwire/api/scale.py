"""The `scale` subresource of Deployments, ReplicaSets and StatefulSets (autoscaling/v1 Scale), which `kubectl scale` uses.

GET answers a Scale built from the object; PUT and PATCH change only spec.replicas of the parent object, through
the normal update path (validation, optimistic concurrency on the Scale's resourceVersion, generation bump).
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


def to_scale(obj: Obj) -> Obj:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
        },
        "spec": {"replicas": int(spec.get("replicas", 1))},
        "status": {"replicas": int(status.get("replicas", 0)), "selector": _selector_string(spec.get("selector"))},
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
    out.setdefault("spec", {})["replicas"] = replicas
    rv = (scale.get("metadata") or {}).get("resourceVersion")
    if rv:
        out["metadata"]["resourceVersion"] = str(rv)
    return out
