"""Conversion between a served version and the shape it is stored in, for kinds kube serves in two versions.

kube-apiserver stores one version of a resource and converts on every read and write. Two pairs matter here:

- events.k8s.io/v1 Event is stored as a core/v1 Event (`pkg/apis/events/v1/conversion.go`): regarding <->
  involvedObject, note <-> message, deprecatedSource/FirstTimestamp/LastTimestamp/Count <-> source/firstTimestamp/
  lastTimestamp/count, reportingController <-> reportingComponent.
- autoscaling/v1 HorizontalPodAutoscaler is stored as autoscaling/v2 (`pkg/apis/autoscaling/v1/conversion.go`):
  targetCPUUtilizationPercentage <-> a Resource cpu Utilization metric; the v2 metrics and conditions v1 cannot
  express ride in the `autoscaling.alpha.kubernetes.io/metrics` / `.../conditions` / `.../current-metrics`
  annotations, as kube keeps them, so a v1 round trip loses nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson

from kwire.api.registry import Kind

Obj = dict[str, Any]

_EVENT_RENAMES = (
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
)

ANN_METRICS = "autoscaling.alpha.kubernetes.io/metrics"
ANN_CONDITIONS = "autoscaling.alpha.kubernetes.io/conditions"
ANN_CURRENT = "autoscaling.alpha.kubernetes.io/current-metrics"


def _rename(obj: Obj, pairs: tuple[tuple[str, str], ...], *, api_version: str, kind: str) -> Obj:
    out = {k: v for k, v in obj.items() if k not in {a for a, _ in pairs}}
    for src, dst in pairs:
        if src in obj:
            out[dst] = obj[src]
    out["apiVersion"] = api_version
    out["kind"] = kind
    return out


def event_to_core(obj: Obj) -> Obj:
    return _rename(obj, _EVENT_RENAMES, api_version="v1", kind="Event")


def event_from_core(obj: Obj) -> Obj:
    back = tuple((b, a) for a, b in _EVENT_RENAMES)
    return _rename(obj, back, api_version="events.k8s.io/v1", kind="Event")


def _is_cpu_utilization(m: Any) -> bool:
    res = (m or {}).get("resource") or {} if isinstance(m, dict) else {}
    target = res.get("target") or {}
    return (
        isinstance(m, dict)
        and m.get("type") == "Resource"
        and res.get("name") == "cpu"
        and target.get("type") == "Utilization"
    )


def _annotations(obj: Obj) -> dict[str, str]:
    meta = obj.setdefault("metadata", {})
    return meta.setdefault("annotations", {}) if isinstance(meta, dict) else {}


def _load_annotation(meta: Obj, key: str) -> list[Any]:
    raw = (meta.get("annotations") or {}).get(key)
    if not raw:
        return []
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def hpa_v1_to_v2(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    out["apiVersion"] = "autoscaling/v2"
    meta = out.setdefault("metadata", {})
    spec = out.get("spec") if isinstance(out.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    metrics: list[Any] = []
    cpu = spec.pop("targetCPUUtilizationPercentage", None)
    if cpu is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}},
            }
        )
    metrics += _load_annotation(meta, ANN_METRICS)
    if metrics:
        spec["metrics"] = metrics
    status = out.get("status")
    if isinstance(status, dict):
        current: list[Any] = []
        cur_cpu = status.pop("currentCPUUtilizationPercentage", None)
        if cur_cpu is not None:
            current.append(
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cur_cpu}}}
            )
        current += _load_annotation(meta, ANN_CURRENT)
        if current:
            status["currentMetrics"] = current
        conditions = _load_annotation(meta, ANN_CONDITIONS)
        if conditions:
            status["conditions"] = conditions
    anns = meta.get("annotations") or {}
    for key in (ANN_METRICS, ANN_CONDITIONS, ANN_CURRENT):
        anns.pop(key, None)
    if "annotations" in meta and not anns:
        del meta["annotations"]
    return out


def hpa_v2_to_v1(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    out["apiVersion"] = "autoscaling/v1"
    spec = out.get("spec") if isinstance(out.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    metrics = spec.pop("metrics", None) or []
    spec.pop("behavior", None)
    others = []
    for m in metrics:
        if _is_cpu_utilization(m) and "targetCPUUtilizationPercentage" not in spec:
            spec["targetCPUUtilizationPercentage"] = m["resource"]["target"].get("averageUtilization")
        else:
            others.append(m)
    if others:
        _annotations(out)[ANN_METRICS] = orjson.dumps(others).decode()
    status = out.get("status")
    if isinstance(status, dict):
        current = status.pop("currentMetrics", None) or []
        rest = []
        for m in current:
            res = (m or {}).get("resource") or {}
            avg = (res.get("current") or {}).get("averageUtilization")
            if m.get("type") == "Resource" and res.get("name") == "cpu" and avg is not None:
                status["currentCPUUtilizationPercentage"] = avg
            else:
                rest.append(m)
        if rest:
            _annotations(out)[ANN_CURRENT] = orjson.dumps(rest).decode()
        conditions = status.pop("conditions", None)
        if conditions:
            _annotations(out)[ANN_CONDITIONS] = orjson.dumps(conditions).decode()
    return out


_TO_STORAGE: dict[str, Callable[[Obj], Obj]] = {
    "events.k8s.io/v1": event_to_core,
    "autoscaling/v1": hpa_v1_to_v2,
}
_FROM_STORAGE: dict[str, Callable[[Obj], Obj]] = {
    "events.k8s.io/v1": event_from_core,
    "autoscaling/v1": hpa_v2_to_v1,
}


def to_storage(kind: Kind, obj: Obj) -> Obj:
    """`obj` (in `kind`'s version) in the stored version's shape."""
    fn = _TO_STORAGE.get(kind.api_version) if kind.stored_as is not None else None
    return fn(obj) if fn is not None else obj


def from_storage(kind: Kind, obj: Obj) -> Obj:
    """A stored object in `kind`'s version."""
    fn = _FROM_STORAGE.get(kind.api_version) if kind.stored_as is not None else None
    return fn(obj) if fn is not None else obj
