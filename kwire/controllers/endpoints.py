"""The Endpoints controller (kube's pkg/controller/endpoint): the core/v1 Endpoints of every Service with a
selector, named as the Service.

Owns the Endpoints it writes, which carry the label `endpoints.kubernetes.io/managed-by=endpoint-controller`
(as kube-controller-manager labels them since 1.33) besides the Service's own labels and
`service.kubernetes.io/headless` for headless Services. Services without a selector, or of type ExternalName,
are left alone: their Endpoints are the user's (`default/kubernetes` is the API server's bootstrap).

- Selected pods with an IP that are not Succeeded/Failed and not terminating become addresses {ip, nodeName,
  targetRef {kind: Pod, namespace, name, uid}, hostname when the pod's hostname/subdomain name it under the
  Service}: in `addresses` when the pod is Ready, else in `notReadyAddresses`. With
  `spec.publishNotReadyAddresses` every such pod, terminating ones included, is in `addresses`.
- Ports {name, port (the targetPort resolved in that pod, by name and protocol for a named one), protocol,
  appProtocol}; a pod lacking a port is left out of that port. Subsets are repacked as kube's RepackSubsets
  does (addresses grouped by the ports they have, sorted by IP), so equal content compares equal and nothing
  is written when nothing changed.
- More than 1000 addresses are truncated (ready ones first) with the annotation
  `endpoints.kubernetes.io/over-capacity: truncated`.
- When a Service is deleted, its Endpoints go too if this controller manages them; on start, managed Endpoints
  whose Service no longer exists (deleted while the server was down) are deleted (checkLeftoverEndpoints).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

from kwire.client import AlreadyExists, ApiClient, Informers, NotFound
from kwire.client.client import ENDPOINTS
from kwire.controllers.common import (
    Obj,
    d,
    key_of,
    labels_of,
    lst,
    meta,
    name_of,
    namespace_of,
    pod_ready,
    set_or_omit,
    spec,
    split_key,
    uid_of,
)
from kwire.controllers.endpointsutil import (
    LABEL_HEADLESS,
    ServiceEndpointsController,
    find_port,
    ip_family,
    is_headless,
    pod_ips,
    service_ports,
    service_selector,
    should_be_in_endpoints,
    should_set_hostname,
    target_ref,
)
from kwire.controllers.queue import RetryLater

log = logging.getLogger(__name__)


LABEL_MANAGED_BY = "endpoints.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpoint-controller"
ANNOTATION_OVER_CAPACITY = "endpoints.kubernetes.io/over-capacity"
MAX_CAPACITY = 1000


# -- the desired state (pure) ------------------------------------------------------------------------------------
def managed(ep: Obj) -> bool:
    return labels_of(ep).get(LABEL_MANAGED_BY) == CONTROLLER_NAME


def endpoints_labels(svc: Obj) -> dict[str, str]:
    labels = labels_of(svc)
    labels.pop(LABEL_HEADLESS, None)
    if is_headless(svc):
        labels[LABEL_HEADLESS] = ""
    labels[LABEL_MANAGED_BY] = CONTROLLER_NAME
    return labels


def endpoint_address(svc: Obj, pod: Obj) -> Obj | None:
    """podToEndpointAddressForService: the pod's IP of the Service's (first) IP family, or None."""
    ips = pod_ips(pod)
    fams = [f for f in lst(spec(svc).get("ipFamilies")) if f in ("IPv4", "IPv6")]
    cluster_ip = str(spec(svc).get("clusterIP") or "")
    if fams:
        family = fams[0]
    elif cluster_ip and cluster_ip != "None":
        family = ip_family(cluster_ip)
    else:
        family = ip_family(ips[0]) if ips else "IPv4"
    ip = next((i for i in ips if ip_family(i) == family), None)
    if ip is None:
        return None
    addr: Obj = {"ip": ip}
    if should_set_hostname(pod, svc):
        addr["hostname"] = str(spec(pod)["hostname"])
    if spec(pod).get("nodeName"):
        addr["nodeName"] = str(spec(pod)["nodeName"])
    addr["targetRef"] = target_ref(pod)
    return addr


def _endpoint_port(svc_port: Obj, number: int) -> Obj:
    port: Obj = {}
    if svc_port.get("name"):
        port["name"] = str(svc_port["name"])
    port["port"] = number
    port["protocol"] = str(svc_port.get("protocol") or "TCP")
    if svc_port.get("appProtocol"):
        port["appProtocol"] = str(svc_port["appProtocol"])
    return port


def _port_sort(p: Obj) -> tuple[str, int, str, str]:
    return (
        str(p.get("name") or ""),
        int(p.get("port") or 0),
        str(p.get("protocol") or ""),
        str(p.get("appProtocol") or ""),
    )


def _addr_sort(a: Obj) -> tuple[bytes, str]:
    return (str(a.get("ip") or "").encode(), str(d(a.get("targetRef")).get("uid") or ""))


def repack(entries: list[tuple[Obj, bool, Obj | None]]) -> list[Obj]:
    """RepackSubsets over (address, ready, port or None) entries: one subset per group of addresses offering the
    same ports; an address not ready for any port is not ready (not ready trumps ready); sorted."""
    addrs: dict[tuple[str, str], Obj] = {}
    ports: dict[tuple[Any, ...] | None, Obj | None] = {}
    by_port: dict[tuple[Any, ...] | None, dict[tuple[str, str], bool]] = {}
    for addr, ready, port in entries:
        ak = (str(addr.get("ip")), str(d(addr.get("targetRef")).get("uid") or ""))
        addrs.setdefault(ak, addr)
        pk = None if port is None else _port_sort(port)
        ports.setdefault(pk, port)
        seen = by_port.setdefault(pk, {})
        if seen.get(ak, True):
            seen[ak] = ready
    groups: dict[frozenset[tuple[tuple[str, str], bool]], list[Obj]] = {}
    for pk, seen in by_port.items():
        group = groups.setdefault(frozenset(seen.items()), [])
        port = ports[pk]
        if port is not None:
            group.append(port)
    subsets: list[Obj] = []
    for group_addrs, group_ports in groups.items():
        ss: Obj = {}
        ready_addrs = sorted((addrs[ak] for ak, ok in group_addrs if ok), key=_addr_sort)
        not_ready = sorted((addrs[ak] for ak, ok in group_addrs if not ok), key=_addr_sort)
        if ready_addrs:
            ss["addresses"] = copy.deepcopy(ready_addrs)
        if not_ready:
            ss["notReadyAddresses"] = copy.deepcopy(not_ready)
        if group_ports:
            ss["ports"] = sorted(group_ports, key=_port_sort)
        subsets.append(ss)
    subsets.sort(
        key=lambda ss: (
            [_port_sort(p) for p in ss.get("ports", [])],
            [_addr_sort(a) for a in ss.get("addresses", []) + ss.get("notReadyAddresses", [])],
        )
    )
    return subsets


def desired_subsets(svc: Obj, pods: list[Obj]) -> list[Obj]:
    publish = bool(spec(svc).get("publishNotReadyAddresses"))
    svc_ports = service_ports(svc)
    entries: list[tuple[Obj, bool, Obj | None]] = []
    for pod in sorted(pods, key=name_of):
        if not should_be_in_endpoints(pod, include_terminating=publish):
            continue
        addr = endpoint_address(svc, pod)
        if addr is None:
            continue
        ready = publish or pod_ready(pod)
        if not svc_ports:
            if spec(svc).get("clusterIP") == "None":  # a headless Service may have no ports
                entries.append((addr, ready, None))
            continue
        for p in svc_ports:
            number = find_port(pod, p)
            if number is not None:
                entries.append((addr, ready, _endpoint_port(p, number)))
    return repack(entries)


def truncate(subsets: list[Obj]) -> bool:
    """truncateEndpoints: at most MAX_CAPACITY addresses, ready ones kept first, each subset cut in proportion.
    True when something was cut."""
    total_ready = sum(len(ss.get("addresses", [])) for ss in subsets)
    total_not_ready = sum(len(ss.get("notReadyAddresses", [])) for ss in subsets)
    if total_ready + total_not_ready <= MAX_CAPACITY:
        return False
    cut_ready = total_ready > MAX_CAPACITY
    room = MAX_CAPACITY if cut_ready else MAX_CAPACITY - total_ready
    total = total_ready if cut_ready else total_not_ready
    left = room
    for ss in subsets:
        n = len(ss.get("addresses" if cut_ready else "notReadyAddresses", []))
        keep = min(left, math.floor(n / total * room)) if total else 0
        left -= keep
        if cut_ready:
            ss["addresses"] = ss.get("addresses", [])[:keep]
            ss.pop("notReadyAddresses", None)
            if not ss["addresses"]:
                ss.pop("addresses")
        else:
            kept = ss.get("notReadyAddresses", [])[:keep]
            set_or_omit(ss, "notReadyAddresses", kept)
    return True


# -- the controller ----------------------------------------------------------------------------------------------
class EndpointsController(ServiceEndpointsController):
    name = "endpoints"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.endpoints = self.informer(ENDPOINTS)
        self.endpoints.on_add(lambda o: self._on_endpoints(o, deleted=False))
        self.endpoints.on_update(lambda old, new: self._on_endpoints(new, deleted=False))
        self.endpoints.on_delete(lambda o: self._on_endpoints(o, deleted=True))

    async def prepare(self) -> None:
        # checkLeftoverEndpoints: managed Endpoints whose Service went while nobody was watching.
        for ep in self.endpoints.items():
            if managed(ep) and self.services.get(namespace_of(ep), name_of(ep)) is None:
                self.enqueue(key_of(ep))

    # -- event handlers ----------------------------------------------------------------------------------------
    def _on_endpoints(self, ep: Obj, *, deleted: bool) -> None:
        key = key_of(ep)
        echo = self.tracker.observed(key, ep, deleted=deleted)
        svc = self.services.get(namespace_of(ep), name_of(ep))
        if svc is None:
            if managed(ep) and not deleted:
                self.enqueue(key)  # its Service is gone (perhaps while our write was on its way)
            return
        if not echo and service_selector(svc) is not None:
            self.enqueue(key)  # changed or deleted by someone else: put it back

    # -- reconcile ---------------------------------------------------------------------------------------------
    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        current = self.endpoints.get(ns, name)
        if self.tracker.stale(key, {name: current} if current is not None else {}):
            return 0.05  # the cache does not show our last write yet: look again shortly
        svc = self.services.get(ns, name)
        if svc is None:
            if current is not None and managed(current):
                try:
                    await self.client.delete(ENDPOINTS, name, ns, preconditions={"uid": uid_of(current)})
                except NotFound:
                    pass
                self.tracker.deleted(key, name)
                log.debug("endpoints %s: deleted with its Service", key)
            return None
        pods = self.pods_of(svc)
        if pods is None:
            return None
        subsets = desired_subsets(svc, pods)
        truncated = truncate(subsets)
        labels = endpoints_labels(svc)
        if current is not None:
            annotations = {str(k): str(v) for k, v in d(meta(current).get("annotations")).items()}
            if (
                lst(current.get("subsets")) == subsets
                and labels_of(current) == labels
                and (ANNOTATION_OVER_CAPACITY in annotations) == truncated
            ):
                return None
            new = copy.deepcopy(current)
            m = new.setdefault("metadata", {})
            m["labels"] = labels
            annotations.pop(ANNOTATION_OVER_CAPACITY, None)
            if truncated:
                annotations[ANNOTATION_OVER_CAPACITY] = "truncated"
            set_or_omit(m, "annotations", annotations)
            set_or_omit(new, "subsets", subsets)
            out = await self.client.update(ENDPOINTS, new)
        else:
            new = {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
            }
            if truncated:
                new["metadata"]["annotations"] = {ANNOTATION_OVER_CAPACITY: "truncated"}
            if subsets:
                new["subsets"] = subsets
            try:
                out = await self.client.create(ENDPOINTS, new, ns)
            except AlreadyExists as exc:
                raise RetryLater(f"endpoints {key} exist but are not in the cache yet") from exc
        self.tracker.wrote(key, out)
        return None
