"""Helpers the controllers share: reading Kubernetes objects (conditions, owners, readiness, taints and
tolerations), writing them with optimistic concurrency, and the shared informer indexes.

Everything here reads plain dicts defensively: a field of the wrong type counts as absent, so one malformed
object never stops a controller.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from kwire.base.fields import Obj as Obj  # re-exported: the controllers' one spelling
from kwire.base.fields import as_dict, as_list, meta, spec, status
from kwire.base.fields import set_or_omit as set_or_omit
from kwire.base.keys import key_of as key_of  # re-exported: the controllers' one spelling
from kwire.base.keys import pod_ready as pod_ready
from kwire.base.keys import split_key as split_key
from kwire.base.timefmt import now_rfc3339
from kwire.client import ApiClient, Conflict, Informer, NotFound, Resource
from kwire.client.events import EventRecorder as EventRecorder  # re-exported; it lives in the client layer

log = logging.getLogger(__name__)


# Taints the node lifecycle controller and the scheduler use (k8s.io/api/core/v1 well-known taints).
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"

# Index names registered on the shared informers (see `add_indexes`).
BY_NODE = "nodeName"
BY_NAMESPACE = "namespace"
BY_CONTROLLER = "controllerUID"

NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's rand.String / SafeEncodeString alphabet


# -- plain reads -------------------------------------------------------------------------------------------------
# The controllers' short names for kwire.base.fields' readers (a malformed field counts as absent).
d = as_dict
lst = as_list


def name_of(obj: Obj) -> str:
    return str(meta(obj).get("name") or "")


def namespace_of(obj: Obj) -> str:
    return str(meta(obj).get("namespace") or "")


def uid_of(obj: Obj) -> str:
    return str(meta(obj).get("uid") or "")


def annotations_of(obj: Obj) -> dict[str, str]:
    return d(meta(obj).get("annotations"))


def labels_of(obj: Obj) -> dict[str, str]:
    return {str(k): str(v) for k, v in d(meta(obj).get("labels")).items()}


def terminating(obj: Obj) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def int_field(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def created_at(obj: Obj) -> float:
    """The object's creationTimestamp as a Unix time (0 when missing): the sort key kube's controllers use."""
    return parse_time(meta(obj).get("creationTimestamp")) or 0.0


def parse_time(value: Any) -> float | None:
    """RFC 3339 (Time or MicroTime) to a UNIX timestamp; None when absent or unparsable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def condition(obj: Obj, ctype: str) -> Obj | None:
    for c in lst(status(obj).get("conditions")):
        if isinstance(c, dict) and c.get("type") == ctype:
            return c
    return None


def set_condition(conditions: list[Obj], new: Obj, *, now: str | None = None) -> bool:
    """Set a condition in a list in place; lastTransitionTime changes only with the status. True if changed."""
    now = now or now_rfc3339()
    for i, c in enumerate(conditions):
        if isinstance(c, dict) and c.get("type") == new["type"]:
            merged = {**c, **new}
            if c.get("status") != new.get("status"):
                merged["lastTransitionTime"] = now
            else:
                merged.setdefault("lastTransitionTime", c.get("lastTransitionTime") or now)
            if merged == c:
                return False
            conditions[i] = merged
            return True
    conditions.append({"lastTransitionTime": now, **new})
    return True


# -- owners ------------------------------------------------------------------------------------------------------
def controller_ref(obj: Obj) -> Obj | None:
    for ref in lst(meta(obj).get("ownerReferences")):
        if isinstance(ref, dict) and ref.get("controller") is True:
            return ref
    return None


def owner_reference(owner: Obj, *, api_version: str, kind: str) -> Obj:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name_of(owner),
        "uid": uid_of(owner),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_uid_index(obj: Obj) -> list[str]:
    ref = controller_ref(obj)
    return [str(ref.get("uid"))] if ref and ref.get("uid") else []


def add_indexes(inf: Informer) -> None:
    """The indexes the controllers look objects up by; registering them twice is harmless."""
    inf.add_indexer(BY_NAMESPACE, lambda o: [namespace_of(o)])
    inf.add_indexer(BY_CONTROLLER, controller_uid_index)
    if inf.resource.kind == "Pod":
        inf.add_indexer(BY_NODE, lambda o: [str(spec(o).get("nodeName"))] if spec(o).get("nodeName") else [])


# -- pods --------------------------------------------------------------------------------------------------------
def pod_available(pod: Obj, min_ready_seconds: int, now: float) -> bool:
    """Ready for at least min_ready_seconds (podutil.IsPodAvailable)."""
    if not pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    return since is not None and since + min_ready_seconds <= now


def available_in(pod: Obj, min_ready_seconds: int, now: float) -> float | None:
    """Seconds until a ready pod becomes available, or None (not ready, or already available)."""
    if not pod_ready(pod) or min_ready_seconds <= 0:
        return None
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    if since is None:
        return None
    left = since + min_ready_seconds - now
    return left if left > 0 else None


def pod_finished(pod: Obj) -> bool:
    return status(pod).get("phase") in ("Succeeded", "Failed")


def pod_active(pod: Obj) -> bool:
    """controller.IsPodActive: not finished and not being deleted."""
    return not pod_finished(pod) and not terminating(pod)


# -- taints and tolerations ---------------------------------------------------------------------------------------
def taints_of(node: Obj) -> list[Obj]:
    return [t for t in lst(spec(node).get("taints")) if isinstance(t, dict) and t.get("key")]


def tolerates(toleration: Obj, taint: Obj) -> bool:
    """v1.Toleration.ToleratesTaint: effect (empty matches all), key (empty + Exists matches all), operator."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    op = toleration.get("operator") or "Equal"
    if key and key != taint.get("key"):
        return False
    if op == "Exists":
        return True
    if op == "Equal":
        return bool(key) and (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def untolerated_taint(taints: Iterable[Obj], tolerations: list[Any], *, effects: tuple[str, ...]) -> Obj | None:
    """The first taint with one of `effects` that no toleration tolerates (FindMatchingUntoleratedTaint)."""
    tols = [t for t in tolerations if isinstance(t, dict)]
    for taint in taints:
        if taint.get("effect") not in effects:
            continue
        if not any(tolerates(t, taint) for t in tols):
            return taint
    return None


def node_ready_status(node: Obj) -> str:
    """The Ready condition's status: "True", "False", or "Unknown" (also when the node never reported)."""
    c = condition(node, "Ready")
    return str(c.get("status")) if c and c.get("status") in ("True", "False") else "Unknown"


# -- hashing and names -------------------------------------------------------------------------------------------
def safe_encode(s: str) -> str:
    """apimachinery's rand.SafeEncodeString: no vowels, no look-alike characters."""
    return "".join(NAME_ALPHABET[ord(ch) % len(NAME_ALPHABET)] for ch in s)


def template_hash(template: Any, collision_count: int = 0) -> str:
    """A stable short hash of a pod template (kube's ComputeHash: fnv32a, decimal, safe-encoded)."""
    data = orjson.dumps(template, option=orjson.OPT_SORT_KEYS)
    if collision_count:
        data += collision_count.to_bytes(4, "little")
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return safe_encode(str(h))


# -- writes ------------------------------------------------------------------------------------------------------
async def update_with_retry(
    client: ApiClient,
    res: Resource,
    cached: Obj,
    mutate: Callable[[Obj], bool],
    *,
    subresource_status: bool = False,
    attempts: int = 5,
) -> Obj | None:
    """Apply `mutate` (returns False when nothing needs to change) to the cached object and write it with its
    resourceVersion; on 409 Conflict re-read the object and try again. None when the object is gone or when
    no change was needed."""
    obj = copy.deepcopy(cached)
    for attempt in range(attempts):
        if not mutate(obj):
            return None
        try:
            if subresource_status:
                return await client.update_status(res, obj)
            return await client.update(res, obj)
        except NotFound:
            return None
        except Conflict as exc:
            if attempt == attempts - 1 or exc.reason == "AlreadyExists":
                raise
            try:
                obj = await client.get(res, name_of(cached), namespace_of(cached) or None)
            except NotFound:
                return None
    return None


async def update_status_with_retry(
    client: ApiClient, res: Resource, cached: Obj, desired: Callable[[Obj], Obj], *, attempts: int = 5
) -> Obj | None:
    """Write `desired(status)` as the object's status through the status subresource (update_with_retry: on a
    409 re-read, then `desired` is asked again with the fresh status); nothing is written when it is already so."""

    def apply(obj: Obj) -> bool:
        new = desired(status(obj))
        if new == status(obj):
            return False
        obj["status"] = new
        return True

    return await update_with_retry(client, res, cached, apply, subresource_status=True, attempts=attempts)
