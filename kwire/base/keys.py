"""The one spelling of an object's cache key and of a Pod's readiness, shared by the client's informers, the
controllers and the node agent (client-go's `cache.MetaNamespaceKeyFunc` and `podutil.IsPodReady`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def key_of(obj: Mapping[str, Any]) -> str:
    """`namespace/name`, or `name` for a cluster-scoped object."""
    m = _meta(obj)
    ns = m.get("namespace")
    return f"{ns}/{m.get('name')}" if ns else str(m.get("name"))


def split_key(key: str) -> tuple[str | None, str]:
    """The inverse of `key_of`: (namespace or None, name)."""
    ns, _, name = key.rpartition("/")
    return (ns or None), name


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """The Pod's Ready condition is True."""
    status = pod.get("status")
    conds = status.get("conditions") if isinstance(status, Mapping) else None
    return any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True" for c in conds or ())
