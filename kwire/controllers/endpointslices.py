"""The EndpointSlice controller (kube's pkg/controller/endpointslice and its reconciler): the EndpointSlices of
every Service with a selector.

Owns the EndpointSlices labelled `endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io`.
For each Service with a selector (not ExternalName; Services without one, `default/kubernetes` among them, are
left alone) the selected pods that have an IP and are not Succeeded/Failed become endpoints, terminating pods
included:

- `addresses: [podIP]` (of the slice's address type), `conditions`: serving = the pod's Ready condition is True,
  terminating = the pod has a deletionTimestamp, ready = serving and not terminating (always true with
  `spec.publishNotReadyAddresses`); `nodeName`, `targetRef` {kind: Pod, namespace, name, uid}, and `hostname`
  when the pod's hostname/subdomain name it under this Service. No zone, no hints. Pods on a Node the cache does
  not know are left out (unless publishNotReadyAddresses) and the Service is retried, as kube does.
- Ports: per Service port {name, protocol, port (the targetPort resolved in that pod), appProtocol}. A named
  targetPort is looked up per pod, so pods that resolve it to different numbers get different slices; a pod
  that resolves none of the Service's ports is left out (kube would put it in a slice without ports).
- Slices group endpoints with the same ports, at most 100 each (maxEndpointsPerSlice), and are named by
  generateName `<service>-`, labelled with the Service's labels plus `kubernetes.io/service-name`, the
  managed-by label and `service.kubernetes.io/headless` for headless Services, and owned by the Service
  (controller ownerReference, so the garbage collector deletes them with it). When a Service selects nothing,
  one empty placeholder slice (no ports, no endpoints) exists, as kube keeps one.

Changes are minimal, as in kube's reconciler: endpoints that changed are replaced where they are, gone ones
are removed (a slice left empty is deleted), new ones fill the slices being updated anyway, then the unchanged
slice they fit best, then new slices; a slice about to be deleted is reused for one about to be created. A
slice whose content already matches is never written. Writes are tracked (`WriteTracker`) so a sync never acts
on a cache that does not show this controller's previous writes yet.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kwire.client import ApiClient, Informers, NotFound
from kwire.client.client import ENDPOINTSLICES, NODES
from kwire.controllers.common import (
    Obj,
    d,
    key_of,
    labels_of,
    lst,
    meta,
    name_of,
    namespace_of,
    owner_reference,
    pod_ready,
    spec,
    split_key,
    terminating,
    uid_of,
)
from kwire.controllers.endpointsutil import (
    LABEL_HEADLESS,
    ServiceEndpointsController,
    address_families,
    find_port,
    ip_family,
    is_headless,
    pod_ips,
    service_ports,
    should_be_in_endpoints,
    should_set_hostname,
    target_ref,
)
from kwire.controllers.queue import RetryLater

log = logging.getLogger(__name__)


MAX_ENDPOINTS_PER_SLICE = 100
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
_RESERVED = (LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS)

BY_SERVICE = "endpointslice-service"  # index of managed slices: "<namespace>/<service>"

PortsKey = tuple[tuple[str, str, int, str], ...]
EndpointKey = tuple[tuple[str, ...], str, str, str]


# -- the desired state (pure) ------------------------------------------------------------------------------------
def slice_service_key(sl: Obj) -> str | None:
    """`<namespace>/<service>` of a slice this controller manages, else None."""
    labels = labels_of(sl)
    if labels.get(LABEL_MANAGED_BY) != CONTROLLER_NAME or not labels.get(LABEL_SERVICE_NAME):
        return None
    return f"{namespace_of(sl)}/{labels[LABEL_SERVICE_NAME]}"


def slice_labels(svc: Obj) -> dict[str, str]:
    """setEndpointSliceLabels: the Service's labels (reserved keys aside) plus the reserved ones."""
    labels = {k: v for k, v in labels_of(svc).items() if k not in _RESERVED}
    if is_headless(svc):
        labels[LABEL_HEADLESS] = ""
    labels[LABEL_SERVICE_NAME] = name_of(svc)
    labels[LABEL_MANAGED_BY] = CONTROLLER_NAME
    return labels


def endpoint_ports(svc: Obj, pod: Obj) -> list[Obj] | None:
    """The slice ports of a pod (getEndpointPorts); None when the Service has ports and the pod resolves none."""
    ports = service_ports(svc)
    out: list[Obj] = []
    for p in ports:
        num = find_port(pod, p)
        if num is None:
            continue
        ep: Obj = {"name": str(p.get("name") or ""), "protocol": str(p.get("protocol") or "TCP"), "port": num}
        if p.get("appProtocol"):
            ep["appProtocol"] = str(p["appProtocol"])
        out.append(ep)
    if ports and not out:
        return None
    return out


def ports_key(ports: Any) -> PortsKey:
    out = []
    for p in lst(ports):
        if not isinstance(p, dict):
            continue
        port = p.get("port")
        out.append(
            (
                str(p.get("name") or ""),
                str(p.get("protocol") or "TCP"),
                port if isinstance(port, int) and not isinstance(port, bool) else -1,
                str(p.get("appProtocol") or ""),
            )
        )
    return tuple(sorted(out))


def pod_endpoint(svc: Obj, pod: Obj, address_type: str) -> Obj | None:
    """podToEndpoint, for one address type; None when the pod has no address of that type."""
    addrs = [ip for ip in pod_ips(pod) if ip_family(ip) == address_type]
    if not addrs:
        return None
    serving = pod_ready(pod)
    term = terminating(pod)
    ready = bool(spec(svc).get("publishNotReadyAddresses")) or (serving and not term)
    ep: Obj = {
        "addresses": addrs,
        "conditions": {"ready": ready, "serving": serving, "terminating": term},
        "targetRef": target_ref(pod),
    }
    node = spec(pod).get("nodeName")
    if node:
        ep["nodeName"] = str(node)
    if should_set_hostname(pod, svc):
        ep["hostname"] = str(spec(pod)["hostname"])
    return ep


def endpoint_key(ep: Obj) -> EndpointKey:
    """An endpoint's identity in a slice (kube's endpoint hash): addresses, hostname, target pod."""
    ref = d(ep.get("targetRef"))
    return (
        tuple(sorted(str(a) for a in lst(ep.get("addresses")))),
        str(ep.get("hostname") or ""),
        str(ref.get("namespace") or ""),
        str(ref.get("name") or ""),
    )


def owned_by(sl: Obj, svc: Obj) -> bool:
    return any(
        isinstance(r, dict)
        and r.get("uid") == uid_of(svc)
        and r.get("kind") == "Service"
        and r.get("apiVersion") == "v1"
        for r in lst(meta(sl).get("ownerReferences"))
    )


def new_slice(svc: Obj, ports: list[Obj], address_type: str) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "generateName": f"{name_of(svc)}-",
            "namespace": namespace_of(svc),
            "labels": slice_labels(svc),
            "ownerReferences": [owner_reference(svc, api_version="v1", kind="Service")],
        },
        "addressType": address_type,
        "endpoints": [],
        "ports": copy.deepcopy(ports),
    }


def _is_placeholder(sl: Obj, svc: Obj, address_type: str) -> bool:
    return (
        not lst(sl.get("endpoints"))
        and not lst(sl.get("ports"))
        and sl.get("addressType") == address_type
        and labels_of(sl) == slice_labels(svc)
        and owned_by(sl, svc)
    )


@dataclass
class SlicePlan:
    create: list[Obj] = field(default_factory=list)
    update: list[Obj] = field(default_factory=list)  # whole objects, with the cached resourceVersion
    delete: list[Obj] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # pods left out because their Node is not known (yet)


def plan_slices(
    svc: Obj,
    pods: list[Obj],
    existing: list[Obj],
    *,
    node_known: Callable[[str], bool],
    max_per_slice: int = MAX_ENDPOINTS_PER_SLICE,
) -> SlicePlan:
    """kube's Reconciler.Reconcile: what to create, update and delete so that `existing` (the Service's managed
    slices) lists the endpoints of `pods` (the pods its selector matches)."""
    plan = SlicePlan()
    publish = bool(spec(svc).get("publishNotReadyAddresses"))
    candidates: list[tuple[Obj, list[Obj]]] = []
    for pod in sorted(pods, key=name_of):
        if not should_be_in_endpoints(pod, include_terminating=True):
            continue
        ports = endpoint_ports(svc, pod)
        if ports is None:
            continue
        node = str(spec(pod).get("nodeName") or "")
        if not publish and not node_known(node):
            plan.skipped.append(key_of(pod))
            continue
        candidates.append((pod, ports))

    families = address_families(svc)
    by_type: dict[str, list[Obj]] = {}
    for sl in existing:
        at = str(sl.get("addressType") or "")
        if at not in families:
            plan.delete.append(sl)
        else:
            by_type.setdefault(at, []).append(sl)
    for at in families:
        _plan_address_type(plan, svc, candidates, by_type.get(at, []), at, max_per_slice)
    return plan


def _plan_address_type(
    plan: SlicePlan,
    svc: Obj,
    candidates: list[tuple[Obj, list[Obj]]],
    existing: list[Obj],
    address_type: str,
    max_per_slice: int,
) -> None:
    to_create: list[Obj] = []
    to_update: list[Obj] = []
    to_delete: list[Obj] = []
    existing_by_ports: dict[PortsKey, list[Obj]] = {}
    for sl in existing:
        if owned_by(sl, svc):
            existing_by_ports.setdefault(ports_key(sl.get("ports")), []).append(sl)
        else:
            to_delete.append(sl)  # left by an earlier Service of the same name

    desired_ports: dict[PortsKey, list[Obj]] = {}
    desired: dict[PortsKey, dict[EndpointKey, Obj]] = {}
    for pod, ports in candidates:
        pk = ports_key(ports)
        desired_ports.setdefault(pk, ports)
        eps = desired.setdefault(pk, {})
        ep = pod_endpoint(svc, pod, address_type)
        if ep is not None:
            eps[endpoint_key(ep)] = ep

    for pk, eps in desired.items():
        c, u, dl = _plan_port_mapping(
            svc, existing_by_ports.get(pk, []), eps, desired_ports[pk], address_type, max_per_slice
        )
        to_create += c
        to_update += u
        to_delete += dl
    for pk, slices in existing_by_ports.items():
        if pk not in desired:
            to_delete += slices

    # A Service without endpoints keeps one empty placeholder slice.
    if len(existing) == len(to_delete) and not to_create:
        if len(to_delete) == 1 and _is_placeholder(to_delete[0], svc, address_type):
            to_delete = []
        else:
            to_create.append(new_slice(svc, [], address_type))

    # Reuse slices about to be deleted for slices about to be created (fewer objects churn).
    i = 0
    while i < len(to_delete) and to_create:
        old = to_delete[i]
        if old.get("addressType") == address_type and owned_by(old, svc):
            new = to_create.pop()
            m = new["metadata"]
            m.pop("generateName", None)
            m["name"] = name_of(old)
            m["resourceVersion"] = str(meta(old).get("resourceVersion") or "")
            to_update.append(new)
            del to_delete[i]
        else:
            i += 1

    plan.create += to_create
    plan.update += to_update
    plan.delete += to_delete


def _plan_port_mapping(
    svc: Obj,
    existing: list[Obj],
    desired: dict[EndpointKey, Obj],
    ports: list[Obj],
    address_type: str,
    max_per_slice: int,
) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """reconcileByPortMapping for the slices of one port set."""
    labels = slice_labels(svc)
    desired = dict(desired)
    unchanged: list[Obj] = []
    updating: list[Obj] = []
    to_delete: list[Obj] = []

    # 1. Keep the endpoints still wanted (replaced by their new version), drop the others.
    for sl in existing:
        current = [e for e in lst(sl.get("endpoints")) if isinstance(e, dict)]
        kept: list[Obj] = []
        changed = len(current) != len(lst(sl.get("endpoints")))
        for ep in current:
            want = desired.pop(endpoint_key(ep), None)
            if want is None:
                changed = True
                continue
            kept.append(want)
            if want != ep:
                changed = True
        if changed and not kept:
            to_delete.append(sl)
        elif changed or labels_of(sl) != labels:
            new = copy.deepcopy(sl)
            new["endpoints"] = kept
            new.setdefault("metadata", {})["labels"] = dict(labels)
            updating.append(new)
        else:
            unchanged.append(sl)

    remaining = deque(desired.values())

    # 2. New endpoints go first into the slices that are being written anyway, the fullest first.
    for new in sorted(updating, key=lambda s: -len(s["endpoints"])):
        while remaining and len(new["endpoints"]) < max_per_slice:
            new["endpoints"].append(remaining.popleft())

    # 3. Then into the unchanged slice they fit best, else into new slices.
    to_create: list[Obj] = []
    while remaining:
        fill: Obj | None = None
        if len(remaining) < max_per_slice and unchanged:
            best = _slice_to_fill(unchanged, len(remaining), max_per_slice)
            if best is not None:
                unchanged.remove(best)
                fill = copy.deepcopy(best)
                fill["endpoints"] = [e for e in lst(fill.get("endpoints")) if isinstance(e, dict)]
                fill.setdefault("metadata", {})["labels"] = dict(labels)
                updating.append(fill)
        if fill is None:
            fill = new_slice(svc, ports, address_type)
            to_create.append(fill)
        while remaining and len(fill["endpoints"]) < max_per_slice:
            fill["endpoints"].append(remaining.popleft())
    return to_create, updating, to_delete


def _slice_to_fill(slices: list[Obj], count: int, max_per_slice: int) -> Obj | None:
    """getSliceToFill: the slice that ends up closest to full with `count` more endpoints, if any fits them."""
    best: Obj | None = None
    best_room = max_per_slice
    for sl in slices:
        room = max_per_slice - (count + len(lst(sl.get("endpoints"))))
        if 0 <= room < best_room:
            best, best_room = sl, room
            if room == 0:
                break
    return best


# -- the controller ----------------------------------------------------------------------------------------------
def _service_key_index(sl: Obj) -> list[str]:
    key = slice_service_key(sl)
    return [key] if key else []


class EndpointSliceController(ServiceEndpointsController):
    name = "endpointslice"

    def __init__(
        self, client: ApiClient, informers: Informers, *, max_endpoints_per_slice: int = MAX_ENDPOINTS_PER_SLICE
    ) -> None:
        super().__init__(client, informers)
        self.max_per_slice = max_endpoints_per_slice
        self.nodes = self.informer(NODES)
        self.slices = self.informer(ENDPOINTSLICES)
        self.slices.add_indexer(BY_SERVICE, _service_key_index)
        self.slices.on_add(lambda o: self._on_slice(o, deleted=False))
        self.slices.on_update(self._on_slice_update)
        self.slices.on_delete(lambda o: self._on_slice(o, deleted=True))

    # -- event handlers ----------------------------------------------------------------------------------------
    def _on_slice(self, sl: Obj, *, deleted: bool) -> None:
        key = slice_service_key(sl)
        if key is None or self.tracker.observed(key, sl, deleted=deleted):
            return
        self.enqueue(key)  # changed by someone else: put it back the way it should be

    def _on_slice_update(self, old: Obj, new: Obj) -> None:
        old_key = slice_service_key(old)
        if old_key and old_key != slice_service_key(new):
            self.enqueue(old_key)
        self._on_slice(new, deleted=False)

    # -- reconcile ---------------------------------------------------------------------------------------------
    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        svc = self.services.get(ns, name)
        if svc is None:
            self.tracker.forget(key)  # its slices go with it (garbage collector, ownerReference)
            return None
        pods = self.pods_of(svc)
        if pods is None:
            return None
        cached = self.slices.by_index(BY_SERVICE, key)
        if self.tracker.stale(key, {name_of(s): s for s in cached}):
            return 0.05  # the cache does not show our last writes yet: look again shortly
        existing = [s for s in cached if not terminating(s)]
        plan = plan_slices(
            svc,
            pods,
            existing,
            node_known=lambda n: bool(n) and self.nodes.get(None, n) is not None,
            max_per_slice=self.max_per_slice,
        )
        # kube's order: creates, updates, deletes (an endpoint moving between slices is never missing from all).
        if not terminating(svc):  # no new slices for the garbage collector to race with
            for obj in plan.create:
                out = await self.client.create(ENDPOINTSLICES, obj, ns)
                self.tracker.wrote(key, out)
        for obj in plan.update:
            out = await self.client.update(ENDPOINTSLICES, obj)
            self.tracker.wrote(key, out)
        for obj in plan.delete:
            try:
                await self.client.delete(ENDPOINTSLICES, name_of(obj), ns, preconditions={"uid": uid_of(obj)})
            except NotFound:
                pass
            self.tracker.deleted(key, name_of(obj))
        if plan.create or plan.update or plan.delete:
            log.debug(
                "endpointslices %s: %d created, %d updated, %d deleted",
                key,
                len(plan.create),
                len(plan.update),
                len(plan.delete),
            )
        if plan.skipped:
            raise RetryLater(f"pods on unknown nodes left out for now: {', '.join(plan.skipped[:5])}")
        return None
