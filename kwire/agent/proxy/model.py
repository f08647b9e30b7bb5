"""The service proxy's view of the cluster as plain immutable data.

- `ServiceView` / `SliceView`: what the proxy reads of a Service and an EndpointSlice, made once when the
  informer hands the object over (CoreDNS's `object.ToService` idea); nothing after this module touches API dicts.
- `ServicePort`: one service port with its endpoints (kube-proxy's ServicePortMap and EndpointsMap entries). Two
  snapshots compare equal exactly when the rules for that service port would be the same, which is what lets a
  partial sync touch only changed services.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from kwire.base.fields import as_dict, as_list

Obj = dict[str, Any]
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True, order=True)
class Endpoint:
    ip: str
    port: int
    node: str = ""
    ready: bool = True
    serving: bool = True
    terminating: bool = False


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service with its endpoints: the unit the proxy's rules are computed for."""

    service: ServiceView
    port_name: str
    protocol: str  # TCP | UDP | SCTP
    port: int
    node_port: int = 0
    endpoints: tuple[Endpoint, ...] = ()

    # Cached: a full sync reads each several times per service port (the dataclass is frozen, its fields never
    # change, and the cache lives in the instance's __dict__, outside equality and hashing).
    @cached_property
    def key(self) -> str:
        """kube-proxy's ServicePortName: namespace/name:port, protocol-qualified."""
        return f"{self.service.key}/{self.protocol.lower()}/{self.port_name}"

    @cached_property
    def proto(self) -> str:
        return self.protocol.lower()

    @property
    def has_external(self) -> bool:
        return bool(self.node_port or self.service.external_ips or self.service.lb_ips)

    def usable(self, *, local_node: str | None = None) -> tuple[Endpoint, ...]:
        """Endpoints traffic may go to: ready ones; if none, serving-terminating ones (KEP-1669)."""
        eps = [e for e in self.endpoints if local_node is None or e.node == local_node]
        ready = tuple(e for e in eps if e.ready)
        if ready:
            return ready
        return tuple(e for e in eps if e.serving and e.terminating)


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class PortView:
    name: str
    protocol: str  # TCP | UDP | SCTP
    port: int
    node_port: int = 0


@dataclass(frozen=True)
class ServiceView:
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ip: str = ""  # "" for headless
    ports: tuple[PortView, ...] = ()
    external_ips: tuple[str, ...] = ()
    lb_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress IPs (LoadBalancer only)
    affinity_timeout: int = 0
    external_local: bool = False
    internal_local: bool = False
    health_check_node_port: int = 0

    @cached_property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SliceView:
    namespace: str
    name: str
    service: str  # the owning Service's key (its kubernetes.io/service-name label), "" when unlabelled
    ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, port)
    endpoints: tuple[Endpoint, ...] = ()  # port 0: a service port takes it from `ports` by name

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def service_view(svc: Obj) -> ServiceView:
    """The proxy's view of a Service. Raises ValueError/TypeError on malformed values (the caller logs and skips)."""
    meta, spec = as_dict(svc.get("metadata")), as_dict(svc.get("spec"))
    typ = str(spec.get("type") or "ClusterIP")
    node_ports = typ in ("NodePort", "LoadBalancer")
    ports = []
    for p in as_list(spec.get("ports")):
        if not isinstance(p, dict):
            continue
        proto = str(p.get("protocol") or "TCP")
        if proto not in PROTOCOLS:
            continue
        node_port = int(p.get("nodePort") or 0) if node_ports else 0
        ports.append(PortView(str(p.get("name") or ""), proto, int(p.get("port") or 0), node_port))
    cluster_ip = str(spec.get("clusterIP") or "")
    ingress = as_list(as_dict(as_dict(svc.get("status")).get("loadBalancer")).get("ingress"))
    lb_ips = tuple(sorted(str(i["ip"]) for i in ingress if isinstance(i, dict) and i.get("ip")))
    timeout = 0
    if spec.get("sessionAffinity") == "ClientIP":
        client_ip = as_dict(as_dict(spec.get("sessionAffinityConfig")).get("clientIP"))
        timeout = int(client_ip.get("timeoutSeconds") or 10800)
    return ServiceView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        type=typ,
        cluster_ip="" if cluster_ip == "None" else cluster_ip,
        ports=tuple(ports),
        external_ips=tuple(sorted(str(x) for x in as_list(spec.get("externalIPs")))),
        lb_ips=lb_ips if typ == "LoadBalancer" else (),
        affinity_timeout=timeout,
        external_local=spec.get("externalTrafficPolicy") == "Local" and node_ports,
        internal_local=spec.get("internalTrafficPolicy") == "Local",
        health_check_node_port=int(spec.get("healthCheckNodePort") or 0),
    )


def slice_view(sl: Obj) -> SliceView:
    """The proxy's view of an EndpointSlice: IPv4 addresses only (the lab's pod network is IPv4)."""
    meta = as_dict(sl.get("metadata"))
    ns = str(meta.get("namespace", ""))
    svc_name = as_dict(meta.get("labels")).get(SERVICE_NAME_LABEL)
    ipv4 = sl.get("addressType", "IPv4") == "IPv4"
    ports = tuple(
        (str(sp.get("name") or ""), str(sp.get("protocol") or "TCP"), int(sp.get("port") or 0))
        for sp in as_list(sl.get("ports"))
        if isinstance(sp, dict)
    )
    endpoints = []
    for e in as_list(sl.get("endpoints")) if ipv4 else []:
        if not isinstance(e, dict):
            continue
        cond = as_dict(e.get("conditions"))
        ready = cond.get("ready") is not False  # nil means ready (discovery/v1)
        serving = cond.get("serving", ready) is not False
        for addr in as_list(e.get("addresses")):
            try:
                ip = str(ipaddress.IPv4Address(addr))
            except ValueError:
                continue
            endpoints.append(
                Endpoint(ip, 0, str(e.get("nodeName") or ""), ready, serving, bool(cond.get("terminating")))
            )
    return SliceView(
        namespace=ns,
        name=str(meta.get("name", "")),
        service=f"{ns}/{svc_name}" if svc_name else "",
        ports=ports,
        endpoints=tuple(endpoints),
    )


def service_ports(svc: ServiceView, slices: Iterable[SliceView]) -> list[ServicePort]:
    """Every port of a Service with the endpoints its EndpointSlices list for that port name and protocol."""
    if svc.type == "ExternalName" or not svc.cluster_ip:
        return []  # ExternalName: DNS answers a CNAME; headless: DNS answers with the endpoints. No rules.
    slices = list(slices)
    out = []
    for p in svc.ports:
        eps: set[Endpoint] = set()
        for sl in slices:
            target = next((port for name, proto, port in sl.ports if name == p.name and proto == p.protocol), 0)
            if target:
                eps.update(replace(e, port=target) for e in sl.endpoints)
        out.append(ServicePort(svc, p.name, p.protocol, p.port, p.node_port, tuple(sorted(eps))))
    return out
