"""The service proxy's view of the cluster: service ports and their endpoints, built from Services and
EndpointSlices (kube-proxy's ServicePortMap and EndpointsMap), as plain immutable data.

Only what the data path needs is kept; two snapshots compare equal exactly when the rules for that service
port would be the same, which is what lets a partial sync touch only changed services.
"""

from __future__ import annotations

import hashlib
import ipaddress
from base64 import b32encode
from dataclasses import dataclass
from typing import Any

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
    namespace: str
    name: str
    port_name: str
    protocol: str  # TCP | UDP | SCTP
    port: int
    cluster_ip: str = ""
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    lb_ips: tuple[str, ...] = ()
    affinity_timeout: int = 0  # 0: no ClientIP affinity
    external_local: bool = False  # externalTrafficPolicy: Local (NodePort/LB/external IPs only)
    internal_local: bool = False  # internalTrafficPolicy: Local
    health_check_node_port: int = 0
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> str:
        """kube-proxy's ServicePortName: namespace/name:port, protocol-qualified."""
        return f"{self.namespace}/{self.name}/{self.protocol.lower()}/{self.port_name}"

    @property
    def proto(self) -> str:
        return self.protocol.lower()

    @property
    def has_external(self) -> bool:
        return bool(self.node_port or self.external_ips or self.lb_ips)

    def usable(self, *, local_node: str | None = None) -> tuple[Endpoint, ...]:
        """Endpoints traffic may go to: ready ones; if none, serving-terminating ones (KEP-1669)."""
        eps = [e for e in self.endpoints if local_node is None or e.node == local_node]
        ready = tuple(e for e in eps if e.ready)
        if ready:
            return ready
        return tuple(e for e in eps if e.serving and e.terminating)


def chain_id(*parts: str) -> str:
    """kube-proxy's hashAndTruncate idea: a stable, readable, length-bounded chain name."""
    text = "/".join(parts)
    digest = b32encode(hashlib.sha256(text.encode()).digest()).decode()[:8]
    readable = text.replace("/", "_").replace(":", "_")
    return f"{digest}-{readable}"[:60]


def _ports_of(svc: Obj) -> list[Obj]:
    return [p for p in (svc.get("spec") or {}).get("ports") or [] if isinstance(p, dict)]


def service_ports(svc: Obj, slices: list[Obj]) -> list[ServicePort]:
    """Every port of a Service with the endpoints its EndpointSlices list for that port name and protocol."""
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    typ = spec.get("type") or "ClusterIP"
    if typ == "ExternalName":
        return []  # DNS handles it (a CNAME); no rules
    cluster_ip = spec.get("clusterIP") or ""
    headless = cluster_ip in ("", "None")
    status_lb = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    lb_ips = (
        tuple(sorted(i["ip"] for i in status_lb if isinstance(i, dict) and i.get("ip")))
        if typ == "LoadBalancer"
        else ()
    )
    external_ips = tuple(sorted(str(x) for x in spec.get("externalIPs") or []))
    timeout = 0
    if spec.get("sessionAffinity") == "ClientIP":
        timeout = int(
            (((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")) or 10800
        )
    out = []
    for p in _ports_of(svc):
        proto = str(p.get("protocol") or "TCP")
        if proto not in PROTOCOLS:
            continue
        pname = str(p.get("name") or "")
        eps: set[Endpoint] = set()
        for sl in slices:
            if sl.get("addressType", "IPv4") != "IPv4":
                continue
            sport = next(
                (
                    sp
                    for sp in sl.get("ports") or []
                    if str(sp.get("name") or "") == pname and str(sp.get("protocol") or "TCP") == proto
                ),
                None,
            )
            if sport is None or not sport.get("port"):
                continue
            for e in sl.get("endpoints") or []:
                cond = e.get("conditions") or {}
                ready = cond.get("ready") is not False  # nil means ready (discovery/v1)
                serving = cond.get("serving", ready) is not False
                for addr in e.get("addresses") or []:
                    try:
                        ipaddress.IPv4Address(addr)
                    except ValueError:
                        continue
                    eps.add(
                        Endpoint(
                            ip=addr,
                            port=int(sport["port"]),
                            node=str(e.get("nodeName") or ""),
                            ready=ready,
                            serving=serving,
                            terminating=bool(cond.get("terminating")),
                        )
                    )
        if headless:
            continue  # headless: no virtual IP, no rules (DNS answers with the endpoints)
        out.append(
            ServicePort(
                namespace=str(meta.get("namespace", "")),
                name=str(meta.get("name", "")),
                port_name=pname,
                protocol=proto,
                port=int(p.get("port") or 0),
                cluster_ip=cluster_ip,
                node_port=int(p.get("nodePort") or 0) if typ in ("NodePort", "LoadBalancer") else 0,
                external_ips=external_ips,
                lb_ips=lb_ips,
                affinity_timeout=timeout,
                external_local=spec.get("externalTrafficPolicy") == "Local" and typ in ("NodePort", "LoadBalancer"),
                internal_local=spec.get("internalTrafficPolicy") == "Local",
                health_check_node_port=int(spec.get("healthCheckNodePort") or 0),
                endpoints=tuple(sorted(eps)),
            )
        )
    return out
