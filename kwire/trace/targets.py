"""FROM and TO of `kwire trace`: the spelling on the command line (`Spec`) and what it names in the cluster
(`Place`: an address, the node it sits on, and for pods the sandbox namespace a probe runs in).

Spellings, as `kubectl` users write them: `ns/name` or `name` (a pod; `default` namespace), `svc/ns/name` or
`svc/name` (a Service), `node/NAME`, `client` (the lab's outside host), an IPv4 address, or (TO only) a DNS name
(anything with a dot that is not an address). TO may end in `:PORT` and `/tcp` or `/udp`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from kwire.base import fields
from kwire.trace.state import ClusterState

Obj = dict[str, Any]
_SUFFIX = re.compile(r"^(?P<body>.+?)(?::(?P<port>\d{1,5}))?(?:/(?P<proto>tcp|udp))?$", re.IGNORECASE)


class TargetError(ValueError):
    """A FROM/TO that names nothing in the cluster (the message says what was looked for)."""


@dataclass(frozen=True)
class Spec:
    kind: str  # pod | svc | node | client | ip | dns
    namespace: str = ""
    name: str = ""  # pod/svc/node name, the IP, or the DNS name
    port: int = 0
    proto: str = "tcp"
    text: str = ""


def parse(text: str) -> Spec:
    m = _SUFFIX.match(text.strip())
    if m is None:
        raise TargetError(f"cannot parse {text!r}")
    body, port, proto = m.group("body"), int(m.group("port") or 0), (m.group("proto") or "tcp").lower()
    if port > 65535:
        raise TargetError(f"{text}: port {port} out of range")
    parts = body.split("/")
    if body == "client":
        return Spec("client", name="client", port=port, proto=proto, text=text)
    if parts[0] in ("svc", "service", "services"):
        if len(parts) == 2:
            return Spec("svc", "default", parts[1], port, proto, text)
        if len(parts) == 3:
            return Spec("svc", parts[1], parts[2], port, proto, text)
        raise TargetError(f"{text}: a Service is svc/NAMESPACE/NAME")
    if parts[0] in ("node", "nodes") and len(parts) == 2:
        return Spec("node", name=parts[1], port=port, proto=proto, text=text)
    try:
        return Spec("ip", name=str(ipaddress.IPv4Address(body)), port=port, proto=proto, text=text)
    except ValueError:
        pass
    if len(parts) == 2:
        return Spec("pod", parts[0], parts[1], port, proto, text)
    if len(parts) == 1 and "." in body:
        return Spec("dns", name=body.rstrip(".").lower(), port=port, proto=proto, text=text)
    if len(parts) == 1:
        return Spec("pod", "default", body, port, proto, text)
    raise TargetError(f"cannot parse {text!r}: expected ns/pod, svc/ns/name, node/NAME, client, an IP or a DNS name")


@dataclass(frozen=True)
class Place:
    """Where a packet starts or is addressed: `kind` pod | node | client | service | outside."""

    kind: str
    label: str  # "pod default/a", "node node1", "svc default/web", "client", "10.0.0.1"
    ip: str
    node: str = ""  # the node it sits on ("" for the client, a Service and addresses outside)
    uid: str = ""  # a pod's uid (its sandbox namespace is named after it)
    host_network: bool = False
    ports: tuple[tuple[str, int], ...] = ()  # a pod's declared containerPorts: (proto, port)
    key: str = ""  # ns/name for pods and Services, the name for nodes

    @property
    def is_pod(self) -> bool:
        return self.kind == "pod" and not self.host_network


def node_ip(node: Obj) -> str:
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == "InternalIP":
            return str(a.get("address") or "")
    return ""


def live_pod(p: Obj) -> bool:
    st = p.get("status") or {}
    return bool(st.get("podIP")) and st.get("phase") not in ("Succeeded", "Failed")


def pod_place(p: Obj) -> Place:
    meta, spec, st = fields.meta(p), p.get("spec") or {}, p.get("status") or {}
    ports = tuple(
        (str(cp.get("protocol") or "TCP").lower(), int(cp.get("containerPort") or 0))
        for c in spec.get("containers") or []
        for cp in (c or {}).get("ports") or []
        if isinstance(cp, dict)
    )
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    return Place(
        "pod",
        f"pod {key}",
        str(st.get("podIP") or ""),
        node=str(spec.get("nodeName") or ""),
        uid=str(meta.get("uid") or ""),
        host_network=bool(spec.get("hostNetwork")),
        ports=ports,
        key=key,
    )


def node_place(n: Obj) -> Place:
    name = str(fields.meta(n).get("name") or "")
    return Place("node", f"node {name}", node_ip(n), node=name, key=name)


def service_place(s: Obj) -> Place:
    meta = fields.meta(s)
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    return Place("service", f"svc {key}", str((s.get("spec") or {}).get("clusterIP") or ""), key=key)


def by_ip(state: ClusterState, ip: str, *, client_ip: str = "") -> Place:
    """What an address is: a pod's, a node's, a Service's (ClusterIP, external or load-balancer IP), the lab
    client's, or outside the cluster."""
    for n in state.nodes:
        if node_ip(n) == ip:
            return node_place(n)
    for p in state.pods:
        if live_pod(p) and (p.get("status") or {}).get("podIP") == ip and not (p.get("spec") or {}).get("hostNetwork"):
            return pod_place(p)
    for s in state.services:
        spec = s.get("spec") or {}
        lb = [i.get("ip") for i in ((s.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]
        if ip == spec.get("clusterIP") or ip in (spec.get("externalIPs") or []) or ip in lb:
            return Place("service", service_place(s).label, ip, key=service_place(s).key)
    if client_ip and ip == client_ip:
        return Place("client", "client", ip)
    return Place("outside", ip, ip)


def resolve(state: ClusterState, spec: Spec, *, client_ip: str = "") -> Place:
    """The Place a parsed Spec names (DNS names are resolved by the caller first, then looked up `by_ip`)."""
    if spec.kind == "client":
        if not client_ip:
            raise TargetError("`client` is the lab's outside host: use --lab (or give its IP)")
        return Place("client", "client", client_ip)
    if spec.kind == "ip":
        return by_ip(state, spec.name, client_ip=client_ip)
    if spec.kind == "node":
        for n in state.nodes:
            if fields.meta(n).get("name") == spec.name:
                return node_place(n)
        raise TargetError(f"node {spec.name} not found")
    if spec.kind == "svc":
        for s in state.services:
            if fields.meta(s).get("namespace") == spec.namespace and fields.meta(s).get("name") == spec.name:
                return service_place(s)
        raise TargetError(f"service {spec.namespace}/{spec.name} not found")
    if spec.kind == "pod":
        for p in state.pods:
            if fields.meta(p).get("namespace") == spec.namespace and fields.meta(p).get("name") == spec.name:
                if not live_pod(p):
                    raise TargetError(f"pod {spec.namespace}/{spec.name} has no IP (phase {p['status'].get('phase')})")
                place = pod_place(p)
                if place.host_network:
                    n = next((n for n in state.nodes if fields.meta(n).get("name") == place.node), {})
                    return Place(
                        "pod",
                        place.label + " (hostNetwork)",
                        node_ip(n) if n else place.ip,
                        node=place.node,
                        uid=place.uid,
                        host_network=True,
                        key=place.key,
                    )
                return place
        raise TargetError(f"pod {spec.namespace}/{spec.name} not found")
    raise TargetError(f"{spec.text}: a DNS name must be resolved first")


def service_obj(state: ClusterState, key: str) -> Obj | None:
    for s in state.services:
        if f"{fields.meta(s).get('namespace')}/{fields.meta(s).get('name')}" == key:
            return s
    return None


def default_port(state: ClusterState, place: Place, proto: str) -> int:
    """The port a TO without `:PORT` means: a Service's first port, a pod's first declared containerPort."""
    if place.kind == "service":
        s = service_obj(state, place.key)
        for p in ((s or {}).get("spec") or {}).get("ports") or []:
            if str(p.get("protocol") or "TCP").lower() == proto:
                return int(p.get("port") or 0)
    for pr, port in place.ports:
        if pr == proto:
            return port
    return 0
