"""The path of a new connection through a kwire cluster, hop by hop, computed from a `ClusterState` snapshot with
the agents' own rule computations: the service proxy's table for the node the packet enters
(`kwire.agent.proxy.ruleset.build`, walked by `proxy/tracer.py`), every node's NetworkPolicy ruleset
(`kwire.agent.netpol.compiler.Compiler`, walked by `netpol/tracer.py`), Flannel's routes (`node.spec.podCIDR`
per node, the backend from kwire-config) and masquerading (kube-proxy's mark and hairpin rules, Flannel's
FLANNEL-POSTRTG rules as `kwire/agent/flannel/flannel.py` writes them).

Where the kernel would pick an endpoint at random (kube-proxy's uniform choice), every candidate gets its own leg:
the verdict is the same for all of them, or `DEPENDS` on the pick. The path is a pure function of its inputs
(`predict`); `kwire/trace/run.py` gathers them and `--probe` (`probe.py`) checks them against the kernel.

Verdicts: DELIVERED, DROPPED (a policy, or kube-proxy's drop for externalTrafficPolicy/internalTrafficPolicy
Local without a local endpoint), REJECTED (kube-proxy's reject: no endpoints, or no such port on a ClusterIP; the
client sees "connection refused" at once), REFUSED (the destination pod declares no such port: RST / ICMP port
unreachable from the pod itself), UNREACHABLE (no route, e.g. from the client to a pod IP).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kwire.agent.netpol import tracer as netpol_tracer
from kwire.agent.netpol.compiler import Compiler
from kwire.agent.netpol.model import namespace_labels, parse_policy, pod_info
from kwire.agent.netpol.ruleset import Rule as NetpolRule
from kwire.agent.netpol.ruleset import Ruleset
from kwire.agent.proxy import ruleset as proxy_rules
from kwire.agent.proxy import tracer as proxy_tracer
from kwire.agent.proxy.model import ServicePort, service_ports, service_view, slice_view
from kwire.base import fields
from kwire.kernel import nft
from kwire.trace.state import ClusterState
from kwire.trace.targets import Place, by_ip, node_ip, pod_place

Obj = dict[str, Any]
DELIVERED, DROPPED, REJECTED, REFUSED, UNREACHABLE, DEPENDS = (
    "DELIVERED",
    "DROPPED",
    "REJECTED",
    "REFUSED",
    "UNREACHABLE",
    "DEPENDS",
)
VXLAN_PORT, VXLAN_VNI = 8472, 1


@dataclass
class Hop:
    kind: str  # source | dns | proxy | netpol | route | masquerade | deliver
    text: str
    end: str = ""  # the verdict this hop decides ("" = the packet goes on)
    reason: str = ""  # what decided it ("netpol ingress", "proxy reject", ...)
    node: str = ""  # the node whose rules decided it


@dataclass
class Leg:
    """The path after the service proxy for one endpoint candidate (or the only destination)."""

    endpoint: str  # "ip:port" of a DNAT, "" without one
    hops: list[Hop] = field(default_factory=list)
    src_seen: str = ""  # the source address the destination sees

    @property
    def end(self) -> Hop | None:
        return next((h for h in self.hops if h.end), None)

    @property
    def verdict(self) -> str:
        e = self.end
        return e.end if e is not None else DELIVERED


@dataclass
class Prediction:
    src: Place
    dst: Place
    dst_ip: str
    port: int
    proto: str
    head: list[Hop]  # source, DNS, service proxy
    legs: list[Leg]
    entry_node: str = ""  # where the proxy rules first see the packet
    nodes: list[str] = field(default_factory=list)  # every node the packet may cross
    via: list[str] = field(default_factory=list)  # DNATs on the way before the endpoint's (a hostPort's "ip:port")
    relay: str = ""  # the address a relaying pod (svclb) sends from, "" without one

    @property
    def verdict(self) -> str:
        head_end = next((h.end for h in self.head if h.end), "")
        if head_end:
            return head_end
        verdicts = {leg.verdict for leg in self.legs}
        return verdicts.pop() if len(verdicts) == 1 else DEPENDS

    def hops(self, leg: int = 0) -> list[Hop]:
        return self.head + (self.legs[leg].hops if self.legs else [])

    def deciding(self, leg: int = 0) -> tuple[int, Hop | None]:
        """(1-based step, hop) of the hop that ends the path, (0, None) when it is delivered."""
        for i, h in enumerate(self.hops(leg), 1):
            if h.end:
                return i, h
        return 0, None


def _in(ip: str, cidr: str) -> bool:
    try:
        return ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(cidr, strict=False)
    except ValueError:
        return False


def _gw(cidr: str, offset: int) -> str:
    return str(ipaddress.IPv4Network(cidr, strict=False).network_address + offset)


@dataclass(frozen=True)
class _Node:
    name: str
    ip: str
    pod_cidr: str


class Model:
    """The cluster's data path computed from one snapshot: per-node proxy tables and NetworkPolicy rulesets, made
    on first use with the agents' own code."""

    def __init__(self, state: ClusterState, *, mtu: Mapping[str, int] | None = None) -> None:
        self.state = state
        self.settings = state.settings
        self.mtu = dict(mtu or {})
        self.nodes = {
            str(fields.meta(n).get("name")): _Node(
                str(fields.meta(n).get("name")), node_ip(n), str((n.get("spec") or {}).get("podCIDR") or "")
            )
            for n in state.nodes
        }
        self._proxy: dict[str, nft.Table] = {}
        self._netpol: dict[str, Ruleset] = {}

    @cached_property
    def ports(self) -> list[ServicePort]:
        slices = [slice_view(s) for s in self.state.slices]
        out: list[ServicePort] = []
        for s in self.state.services:
            try:
                view = service_view(s)
            except (ValueError, TypeError):
                continue
            out += service_ports(view, (sl for sl in slices if sl.service == view.key))
        return out

    def node_of_ip(self, ip: str) -> _Node | None:
        return next((n for n in self.nodes.values() if n.ip == ip), None)

    def proxy_table(self, node: str) -> nft.Table:
        if node not in self._proxy:
            n = self.nodes[node]
            self._proxy[node] = proxy_rules.build(
                self.ports,
                node=node,
                node_ips=(n.ip,),
                cluster_cidr=self.settings.cluster_cidr,
                service_cidr=self.settings.service_cidr,
                pod_cidr=n.pod_cidr,
            ).table()
        return self._proxy[node]

    def netpol(self, node: str) -> Ruleset:
        if node not in self._netpol:
            c = Compiler(node, node_ips=(self.nodes[node].ip,), log=False)
            for ns in self.state.namespaces:
                labels = namespace_labels(ns)
                c.set_namespace(str(fields.meta(ns).get("name")), labels)
            for p in self.state.pods:
                info = pod_info(p)
                if info is not None:
                    c.set_pod(info.key, info)
            for pol in self.state.policies:
                try:
                    parsed = parse_policy(pol)
                except (ValueError, TypeError, KeyError):
                    continue
                c.set_policy(parsed.key, parsed)
            self._netpol[node] = c.build()
        return self._netpol[node]

    def policy_obj(self, key: str) -> Obj | None:
        return next(
            (
                p
                for p in self.state.policies
                if f"{fields.meta(p).get('namespace')}/{fields.meta(p).get('name')}" == key
            ),
            None,
        )

    def mtu_text(self, node: str) -> str:
        if node in self.mtu:
            return f"MTU {self.mtu[node]}"
        return "MTU uplink - 50" if self.settings.flannel_backend == "vxlan" else "MTU of the uplink"

    def find_port(self, ip: str, proto: str, port: int) -> tuple[ServicePort | None, str]:
        """The service port a destination addresses, and how: cluster | external | nodeport."""
        node = self.node_of_ip(ip)
        for sp in self.ports:
            if sp.proto != proto:
                continue
            if sp.service.cluster_ip == ip and sp.port == port:
                return sp, "cluster"
            if ip in (*sp.service.external_ips, *sp.service.lb_ips) and sp.port == port:
                return sp, "external"
            if node is not None and sp.node_port == port:
                return sp, "nodeport"
        return None, ""


def _selector_text(pol: Obj | None) -> str:
    sel = ((pol or {}).get("spec") or {}).get("podSelector") or {}
    labels = sel.get("matchLabels") or {}
    exprs = sel.get("matchExpressions") or []
    if not labels and not exprs:
        return "every pod of its namespace"
    parts = [f"{k}={v}" for k, v in sorted(labels.items())]
    parts += [f"{e.get('key')} {e.get('operator')} {e.get('values') or ''}".strip() for e in exprs]
    return ",".join(parts)


def _policies_of(rs: Ruleset, chain: str) -> list[str]:
    c = rs.chains.get(chain)
    if c is None:
        return []
    return [r.comment for r in c.rules if isinstance(r, NetpolRule) and r.jump and r.comment]


def _netpol_hop(
    m: Model, *, direction: str, node: str, pod: Place, peer_label: str, src: str, dst: str, proto: str, port: int
) -> Hop:
    """The NetworkPolicy verdict for one direction, from the node's compiled ruleset walked by netpol's tracer."""
    name = f"netpol {direction} {pod.key}"
    if m.settings.disable_network_policy:
        return Hop("netpol", f"{name}: allowed (NetworkPolicy disabled: disable-network-policy)")
    rs = m.netpol(node)
    chains = rs.egress_pods if direction == "egress" else rs.ingress_pods
    chain = chains.get(pod.ip, "")
    if not chain:
        return Hop("netpol", f"{name}: allowed (no policy selects the pod for {direction})")
    t = netpol_tracer.trace(rs, src=src, dst=dst, proto=proto, port=port)
    policies = _policies_of(rs, chain)
    if t.verdict == "drop" and t.dropped_by == chain:
        why = "; ".join(f"{p} selects {_selector_text(m.policy_obj(p))}" for p in policies)
        peer = f"{'from' if direction == 'ingress' else 'to'} {peer_label} port {port}/{proto}"
        return Hop(
            "netpol",
            f"{name}: DENIED by {', '.join(policies)} ({why}; no rule allows {peer})",
            end=DROPPED,
            reason=f"netpol {direction}",
            node=node,
        )
    allowed = [c for c in t.allowed_by if c.split(" ")[1:2] == [direction]]
    by = ", ".join(f"{c.rsplit(' ', 2)[0]} ({direction} rule {c.rsplit(' ', 1)[1]})" for c in allowed)
    return Hop("netpol", f"{name}: allowed by {by or ', '.join(policies)}")


def _proxy_hop(
    m: Model, sp: ServicePort | None, how: str, t: proxy_tracer.Trace, *, entry: str, dst_ip: str, port: int
) -> Hop:
    svc = f"svc {sp.service.key} port {sp.port}/{sp.proto}" if sp is not None else f"{dst_ip}:{port}"
    via = {"nodeport": f" (NodePort {port} on node {entry})", "external": f" (external IP {dst_ip})"}.get(how, "")
    if t.verdict == "reject":
        if sp is None:
            return Hop(
                "proxy",
                f"proxy {dst_ip}:{port}: the ClusterIP has no such port -> REJECT (kube-proxy)",
                end=REJECTED,
                reason="proxy reject",
            )
        return Hop(
            "proxy",
            f"proxy {svc}{via}: no endpoints -> REJECT (as kube-proxy: ICMP port unreachable, the client sees "
            "connection refused)",
            end=REJECTED,
            reason="proxy reject",
        )
    if t.verdict == "drop":
        if sp is not None and how in ("nodeport", "external") and sp.service.external_local:
            text = (
                f"proxy {svc}{via}: externalTrafficPolicy Local and node {entry} has no ready local endpoint -> DROP "
                "(as kube-proxy; a load balancer's health check steers clients away from this node)"
            )
        elif sp is not None and sp.service.internal_local:
            text = f"proxy {svc}: internalTrafficPolicy Local and node {entry} has no local endpoint -> DROP"
        else:
            text = f"proxy {dst_ip}:{port}: an unallocated ClusterIP -> DROP (as kube-proxy)"
        return Hop("proxy", text, end=DROPPED, reason="proxy drop", node=entry)
    assert sp is not None
    n = len(t.endpoints)
    notes = [f"{n} candidate{'s' if n != 1 else ''}, random" if n > 1 else "the only endpoint"]
    if how in ("nodeport", "external") and sp.service.external_local:
        notes.append(f"externalTrafficPolicy Local: endpoints on node {entry} only")
    elif how == "cluster" and sp.service.internal_local:
        notes.append(f"internalTrafficPolicy Local: endpoints on node {entry} only")
    if t.sticky:
        notes = [f"pinned: the kernel's affinity set already holds this client for {t.endpoints[0]}"]
    elif sp.service.affinity_timeout:
        notes.append(
            f"sessionAffinity ClientIP: later connections from this client stick to its endpoint for "
            f"{sp.service.affinity_timeout}s"
        )
    eps = ", ".join(f"{ep} ({_who(m, ep.rsplit(':', 1)[0])})" for ep in t.endpoints)
    return Hop("proxy", f"proxy {svc}{via} -> DNAT to {eps} [{'; '.join(notes)}]")


def _who(m: Model, ip: str) -> str:
    place = by_ip(m.state, ip)
    return f"{place.label}, node {place.node}" if place.node else place.label


def _out_addr(m: Model, at: str, dst_node: str) -> str:
    """The address masquerading gives a packet leaving node `at` toward `dst_node` (or toward the node's pods)."""
    n = m.nodes[at]
    if dst_node == at:
        return _gw(n.pod_cidr, 1)  # cni0
    if m.settings.flannel_backend == "vxlan":
        return _gw(n.pod_cidr, 0)  # flannel.1
    return n.ip


def _route_hop(m: Model, at: str, dst: Place, dst_ip: str) -> Hop:
    s = m.settings
    if dst.is_pod:
        if dst.node == at:
            return Hop("route", f"route bridge cni0 on node {at} (same node)")
        r = m.nodes.get(dst.node)
        if r is None:
            return Hop("route", f"route: pod's node {dst.node} is unknown", end=UNREACHABLE, reason="route")
        if s.flannel_backend == "vxlan":
            return Hop(
                "route",
                f"route {r.pod_cidr} via flannel.1 -> node {r.name} (VXLAN VNI {VXLAN_VNI}, {VXLAN_PORT}/udp to "
                f"{r.ip}, {m.mtu_text(at)})",
            )
        if s.flannel_backend == "host-gw":
            return Hop("route", f"route {r.pod_cidr} via {r.ip} on the LAN (host-gw, {m.mtu_text(at)})")
        return Hop("route", f"route {r.pod_cidr}: flannel-backend none (your CNI routes it; not modelled)")
    if dst.kind in ("node", "pod") and dst.node == at:
        return Hop("route", f"route local: node {at}'s own address ({dst_ip})")
    if dst.kind in ("node", "pod"):
        return Hop("route", f"route via the LAN to node {dst.node} ({dst_ip})")
    if dst.kind == "client":
        return Hop("route", f"route via the LAN to the client ({dst_ip})")
    if _in(dst_ip, s.cluster_cidr):
        return Hop("route", f"route: {dst_ip} is in no node's pod subnet", end=UNREACHABLE, reason="route")
    return Hop("route", f"route via node {at}'s default route (outside the cluster)")


def _deliver_hop(dst: Place, proto: str, port: int) -> Hop:
    if dst.is_pod:
        if (proto, port) in dst.ports:
            return Hop("deliver", f"deliver to {dst.label} port {port}/{proto} (a declared containerPort)")
        if dst.ports:
            declared = ", ".join(f"{p}/{pr}" for pr, p in dst.ports)
            return Hop(
                "deliver",
                f"deliver to {dst.label}: nothing declared on {port}/{proto} (declared: {declared}) -> refused by "
                "the pod",
                end=REFUSED,
                reason="no listener",
            )
        return Hop("deliver", f"deliver to {dst.label} port {port}/{proto} (no containerPorts declared)")
    if dst.kind == "node" or (dst.kind == "pod" and dst.host_network):
        return Hop("deliver", f"deliver to node {dst.node}'s own stack, port {port}/{proto}")
    return Hop("deliver", f"leaves the cluster to {dst.ip}:{port}/{proto}")


def _leg(
    m: Model,
    src: Place,
    src_ip: str,
    *,
    entry: str,
    ep_ip: str,
    ep_port: int,
    proto: str,
    endpoint: str,
    mark_masq: bool,
    client_ip: str,
) -> Leg:
    s = m.settings
    leg = Leg(endpoint)
    dst = by_ip(m.state, ep_ip, client_ip=client_ip)
    hairpin = bool(endpoint) and src.is_pod and ep_ip == src_ip
    # Egress policy, on the source pod's node (after DNAT: the endpoint and its target port are judged).
    if src.is_pod:
        leg.hops.append(
            _netpol_hop(
                m,
                direction="egress",
                node=src.node,
                pod=src,
                peer_label=dst.label if not hairpin else "itself",
                src=src_ip,
                dst=ep_ip,
                proto=proto,
                port=ep_port,
            )
        )
        if leg.end:
            return leg
    if src.kind == "client" and not entry:
        leg.hops.append(
            Hop(
                "route",
                f"route: the client has no route to {ep_ip} (only node addresses are reachable from outside; use a "
                "NodePort or LoadBalancer)",
                end=UNREACHABLE,
                reason="route",
            )
        )
        return leg
    at = entry
    leg.hops.append(_route_hop(m, at, dst, ep_ip))
    if leg.end:
        return leg
    # Masquerade (postrouting of the node the packet leaves): kube-proxy's hairpin and mark, then Flannel's rules.
    seen = src_ip
    dst_node = dst.node if dst.kind in ("pod", "node") else ""
    if hairpin:
        seen = _out_addr(m, at, at)
        leg.hops.append(
            Hop("masquerade", f"masquerade: hairpin ({src.label} reaches itself through its Service): source {seen}")
        )
    elif mark_masq and dst_node != at:
        seen = _out_addr(m, at, dst_node) if dst_node else m.nodes[at].ip
        why = (
            "external traffic under externalTrafficPolicy Cluster"
            if src.kind in ("client",)
            else ("ClusterIP or node port from outside the pod network")
        )
        leg.hops.append(Hop("masquerade", f"masquerade (kube-proxy mark 0x4000: {why}): source {src_ip} -> {seen}"))
    elif mark_masq:
        leg.hops.append(
            Hop("masquerade", f"masquerade (kube-proxy mark 0x4000) at node {at}: the pod sees {_out_addr(m, at, at)}")
        )
    elif _in(src_ip, s.cluster_cidr) and not _in(ep_ip, s.cluster_cidr) and dst_node != at:
        seen = m.nodes[at].ip
        leg.hops.append(
            Hop("masquerade", f"masquerade (flannel: pod traffic leaving the cluster network): source {seen}")
        )
    elif not _in(src_ip, s.cluster_cidr) and dst.is_pod and dst_node != at and src.kind != "node":
        seen = _out_addr(m, at, dst_node)
        leg.hops.append(Hop("masquerade", f"masquerade (flannel: host to remote pods): source {src_ip} -> {seen}"))
    elif src.kind == "node" and dst.is_pod and dst_node != at:
        seen = _out_addr(m, at, dst_node)  # the node's own packets leave with the outgoing device's address
    leg.src_seen = seen
    # Ingress policy, on the destination pod's node. A packet is judged in that node's forward hook: with its
    # original source when the pod is on the node it entered (masquerading comes later, in postrouting).
    if dst.is_pod:
        if src.kind == "node" and src.node == dst.node:
            leg.hops.append(
                Hop(
                    "netpol",
                    f"netpol ingress {dst.key}: allowed (the node's own traffic to its pods is never filtered)",
                )
            )
        else:
            judged = src_ip if dst.node == at else seen
            peer = by_ip(m.state, judged, client_ip=client_ip)
            label = peer.label if judged == src_ip else f"{judged} ({src.label} masqueraded)"
            leg.hops.append(
                _netpol_hop(
                    m,
                    direction="ingress",
                    node=dst.node,
                    pod=dst,
                    peer_label=label,
                    src=judged,
                    dst=ep_ip,
                    proto=proto,
                    port=ep_port,
                )
            )
            if leg.end:
                return leg
    leg.hops.append(_deliver_hop(dst, proto, ep_port))
    return leg


SVCLB_NAME = "svccontroller.k3s.cattle.io/svcname"
SVCLB_NAMESPACE = "svccontroller.k3s.cattle.io/svcnamespace"


def host_port(m: Model, node: str, proto: str, port: int) -> tuple[Obj, int] | None:
    """A running pod of `node` holding hostPort `port`/`proto` (CNI portmap DNATs the node's addresses to it), with
    its containerPort."""
    for p in m.state.pods:
        spec, st = p.get("spec") or {}, p.get("status") or {}
        if spec.get("nodeName") != node or spec.get("hostNetwork") or st.get("phase") != "Running":
            continue
        for c in spec.get("containers") or []:
            for cp in (c or {}).get("ports") or []:
                if int(cp.get("hostPort") or 0) == port and str(cp.get("protocol") or "TCP").lower() == proto:
                    return p, int(cp.get("containerPort") or port)
    return None


def _via_host_port(
    m: Model,
    pred: Prediction,
    src: Place,
    holder: Obj,
    cport: int,
    *,
    client_ip: str,
    affinity: Mapping[str, Mapping[str, set[str]]] | None,
) -> Prediction:
    """The node's address and port belong to a pod's hostPort: Debian's portmap plugin DNATs them to the pod in
    table `ip nat` (whose prerouting chain runs before kwire-proxy's on kwire's nodes). A ServiceLB (svclb) pod
    relays to its Service's ClusterIP, masquerading (klipper-lb's entry); the path goes on from there."""
    pod = pod_place(holder)
    pred.via.append(f"{pod.ip}:{cport}")
    pred.head.append(
        Hop(
            "hostport",
            f"hostPort {pred.port}/{pred.proto} on node {pred.entry_node} -> DNAT to {pod.label} {pod.ip}:{cport} "
            "(CNI portmap, table ip nat)",
        )
    )
    labels = (holder.get("metadata") or {}).get("labels") or {}
    if SVCLB_NAME not in labels:
        pred.legs = [
            _leg(
                m,
                src,
                src.ip,
                entry=pred.entry_node,
                ep_ip=pod.ip,
                ep_port=cport,
                proto=pred.proto,
                endpoint=f"{pod.ip}:{cport}",
                mark_masq=False,
                client_ip=client_ip,
            )
        ]
        pred.nodes = [pred.entry_node]
        return pred
    key = f"{labels.get(SVCLB_NAMESPACE, 'default')}/{labels[SVCLB_NAME]}"
    svc = next(
        (s for s in m.state.services if f"{fields.meta(s).get('namespace')}/{fields.meta(s).get('name')}" == key), None
    )
    cluster_ip = str(((svc or {}).get("spec") or {}).get("clusterIP") or "")
    pred.head.append(
        Hop("hostport", f"svclb relays to svc {key} ClusterIP {cluster_ip}:{cport}, masqueraded (source {pod.ip})")
    )
    inner = predict(
        m,
        pod,
        by_ip(m.state, cluster_ip),
        dst_ip=cluster_ip,
        port=cport,
        proto=pred.proto,
        client_ip=client_ip,
        affinity=affinity,
    )
    pred.head += inner.head[1:]
    pred.legs = inner.legs
    pred.nodes = sorted({pred.entry_node, *inner.nodes})
    pred.relay = pod.ip
    return pred


def source_ip(m: Model, src: Place) -> str:
    return src.ip


def entry_node(m: Model, src: Place, dst_ip: str) -> str:
    """The node whose proxy rules see the packet first: the source's node, or for the client the node owning the
    destination address ("" when no node does: the client cannot reach it)."""
    if src.node:
        return src.node
    n = m.node_of_ip(dst_ip)
    return n.name if n is not None else ""


def predict(
    m: Model,
    src: Place,
    dst: Place,
    *,
    dst_ip: str,
    port: int,
    proto: str,
    dns: tuple[str, list[str]] | None = None,
    client_ip: str = "",
    affinity: Mapping[str, Mapping[str, set[str]]] | None = None,
) -> Prediction:
    """The path of a new `proto` connection from `src` to `dst_ip:port`. `affinity`: per node, the proxy's
    affinity set -> the clients it holds (read back from the kernel; without it a random pick is shown)."""
    proto = proto.lower()
    src_ip = source_ip(m, src)
    head = [Hop("source", f"{src.label} ({src_ip}{', node ' + src.node if src.node else ''})")]
    if dns is not None:
        name, answers = dns
        head.append(Hop("dns", f"DNS   {name} -> {', '.join(answers) or 'no answer (NXDOMAIN)'}"))
        if not answers:
            head[-1].end, head[-1].reason = UNREACHABLE, "dns"
    pred = Prediction(src, dst, dst_ip, port, proto, head, [])
    if head[-1].end:
        return pred
    if src.is_pod and dst_ip == src_ip:
        pred.legs = [Leg("", [Hop("deliver", f"{src.label} reaches itself by its own IP: never leaves its namespace")])]
        return pred
    entry = entry_node(m, src, dst_ip)
    pred.entry_node = entry
    if not entry:
        pred.legs = [
            _leg(
                m,
                src,
                src_ip,
                entry="",
                ep_ip=dst_ip,
                ep_port=port,
                proto=proto,
                endpoint="",
                mark_masq=False,
                client_ip=client_ip,
            )
        ]
        return pred
    holder = host_port(m, entry, proto, port) if m.node_of_ip(dst_ip) is not None else None
    if holder is not None and m.nodes[entry].ip == dst_ip:
        return _via_host_port(m, pred, src, holder[0], holder[1], client_ip=client_ip, affinity=affinity)
    tbl = m.proxy_table(entry)
    pinned = {k: set(v) for k, v in ((affinity or {}).get(entry) or {}).items()}
    t = proxy_tracer.trace(tbl, src=src_ip, dst=dst_ip, proto=proto, port=port, affinity=pinned)
    sp, how = m.find_port(dst_ip, proto, port)
    if t.verdict != "accept" or sp is not None or dst.kind == "service":
        head.append(_proxy_hop(m, sp, how, t, entry=entry, dst_ip=dst_ip, port=port))
    if head[-1].end:
        pred.nodes = [entry]
        return pred
    mark_masq = False
    if t.verdict == "dnat":
        # The mark alone (the hairpin set holds every local pod pair: it would mark any pod reaching itself).
        no_hairpin = dataclasses.replace(tbl, sets={**tbl.sets, "hairpin": nft.Set("hairpin", "ipv4_addr . ipv4_addr")})
        mark_masq = proxy_tracer.trace(
            no_hairpin, src=src_ip, dst=dst_ip, proto=proto, port=port, affinity=pinned
        ).masquerade
        targets = [(ep.rsplit(":", 1)[0], int(ep.rsplit(":", 1)[1]), ep) for ep in t.endpoints]
    else:
        targets = [(dst_ip, port, "")]
    for ip, p, ep in targets:
        pred.legs.append(
            _leg(
                m,
                src,
                src_ip,
                entry=entry,
                ep_ip=ip,
                ep_port=p,
                proto=proto,
                endpoint=ep,
                mark_masq=mark_masq,
                client_ip=client_ip,
            )
        )
    nodes = {entry}
    for ip, _p, _ep in targets:
        d = by_ip(m.state, ip)
        if d.node:
            nodes.add(d.node)
    pred.nodes = sorted(nodes)
    return pred
