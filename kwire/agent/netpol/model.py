"""NetworkPolicy semantics as data: Pods, Namespaces and NetworkPolicies parsed into small immutable values, and the
cluster view (`Cluster`) that answers which pods a selector or a policy peer picks.

Upstream rules (networking.k8s.io/v1, as kube-router implements them):

- a pod is isolated for ingress (egress) once a policy of its namespace selects it (`podSelector`, empty = every pod
  of the namespace) and has that policy type; `policyTypes` defaults to Ingress, plus Egress when `egress` has rules;
- hostNetwork pods are never selected and are never pod peers; pods without an IPv4 podIP and finished pods
  (Succeeded/Failed, whose IP may already be reused) are left out as well;
- a peer is `podSelector` (pods of the policy's namespace), `namespaceSelector` (every pod of the matching
  namespaces; namespaces always carry `kubernetes.io/metadata.name`), both (AND), or `ipBlock` (cidr minus except);
- a port is a number (optionally up to `endPort`), a name (resolved from containerPorts with the same protocol), or
  absent (every port of the protocol); protocol defaults to TCP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from kwire.base import fields
from kwire.base.labels import EVERYTHING, Selector, SelectorError, from_label_selector

Obj = dict[str, Any]
NAME_LABEL = "kubernetes.io/metadata.name"
INGRESS = "ingress"
EGRESS = "egress"
PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True)
class PodInfo:
    key: str  # namespace/name
    namespace: str
    name: str
    ip: str
    node: str
    labels: Mapping[str, str] = field(default_factory=dict)
    named_ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, containerPort)
    terminating: bool = False

    def port_named(self, name: str, proto: str) -> int | None:
        for n, p, port in self.named_ports:
            if n == name and p == proto:
                return port
        return None


@dataclass(frozen=True)
class PortSpec:
    proto: str  # tcp | udp | sctp
    port: int = 0  # 0 = every port of the protocol
    end_port: int = 0
    name: str = ""  # a named port (resolved per pod)


@dataclass(frozen=True)
class Peer:
    pod_selector: Selector | None = None
    ns_selector: Selector | None = None
    cidr: str = ""
    excepts: tuple[str, ...] = ()

    @property
    def selects_pods(self) -> bool:
        return self.pod_selector is not None or self.ns_selector is not None


@dataclass(frozen=True)
class PolicyRule:
    peers: tuple[Peer, ...] = ()  # empty: every peer
    ports: tuple[PortSpec, ...] = ()  # empty: every port and protocol

    @property
    def named_ports(self) -> tuple[PortSpec, ...]:
        return tuple(p for p in self.ports if p.name)


@dataclass(frozen=True)
class Policy:
    key: str
    namespace: str
    name: str
    pod_selector: Selector
    types: frozenset[str]  # {"ingress", "egress"}
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()

    def rules(self, direction: str) -> tuple[PolicyRule, ...]:
        return self.ingress if direction == INGRESS else self.egress

    @property
    def has_ns_selector(self) -> bool:
        return any(p.ns_selector is not None for d in self.types for r in self.rules(d) for p in r.peers)


# -- parsing ------------------------------------------------------------------------------------------------------


def pod_info(obj: Obj | None) -> PodInfo | None:
    """The parts of a Pod that policies look at; None for pods policies ignore."""
    if not obj:
        return None
    m = fields.meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if spec.get("hostNetwork"):
        return None
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    ip = str(status.get("podIP") or "")
    if not ip or ":" in ip:
        return None
    ports: list[tuple[str, str, int]] = []
    for c in spec.get("containers") or []:
        for p in (c or {}).get("ports") or []:
            if isinstance(p, dict) and p.get("name") and p.get("containerPort"):
                ports.append((str(p["name"]), str(p.get("protocol") or "TCP").lower(), int(p["containerPort"])))
    ns, name = str(m.get("namespace") or ""), str(m.get("name") or "")
    return PodInfo(
        key=f"{ns}/{name}",
        namespace=ns,
        name=name,
        ip=ip,
        node=str(spec.get("nodeName") or ""),
        labels=dict(m.get("labels") or {}),
        named_ports=tuple(ports),
        terminating=bool(m.get("deletionTimestamp")),
    )


def namespace_labels(obj: Obj | None) -> dict[str, str] | None:
    """A Namespace's labels, with `kubernetes.io/metadata.name` as the API server sets it."""
    if not obj:
        return None
    m = fields.meta(obj)
    labels = {str(k): str(v) for k, v in (m.get("labels") or {}).items()}
    labels[NAME_LABEL] = str(m.get("name") or "")
    return labels


def _selector(sel: Any) -> Selector | None:
    if sel is None:
        return None
    if not isinstance(sel, dict):
        raise ValueError(f"bad label selector {sel!r}")
    try:
        return from_label_selector(sel)
    except SelectorError as exc:
        raise ValueError(str(exc)) from None


def _port(p: Obj) -> PortSpec:
    proto = str(p.get("protocol") or "TCP").lower()
    if proto not in PROTOCOLS:
        raise ValueError(f"unsupported protocol {proto!r}")
    port = p.get("port")
    if port is None:
        return PortSpec(proto)
    if isinstance(port, str) and not port.isdigit():
        return PortSpec(proto, name=port)
    n = int(port)
    end = int(p.get("endPort") or 0)
    return PortSpec(proto, n, end if end > n else 0)


def _peer(p: Obj) -> Peer:
    block = p.get("ipBlock")
    if isinstance(block, dict):
        cidr = str(ipaddress.ip_network(str(block.get("cidr")), strict=False))
        excepts = tuple(str(ipaddress.ip_network(str(e), strict=False)) for e in block.get("except") or [])
        return Peer(cidr=cidr, excepts=excepts)
    return Peer(pod_selector=_selector(p.get("podSelector")), ns_selector=_selector(p.get("namespaceSelector")))


def _rules(items: Any, peer_key: str) -> tuple[PolicyRule, ...]:
    out = []
    for r in items or []:
        r = r or {}
        peers = tuple(_peer(p) for p in r.get(peer_key) or [] if isinstance(p, dict))
        ports = tuple(_port(p) for p in r.get("ports") or [] if isinstance(p, dict))
        out.append(PolicyRule(peers, ports))
    return tuple(out)


def parse_policy(obj: Obj) -> Policy:
    """A NetworkPolicy; raises ValueError for what the API would have rejected."""
    m = fields.meta(obj)
    spec = obj.get("spec") or {}
    ns, name = str(m.get("namespace") or ""), str(m.get("name") or "")
    types_in = spec.get("policyTypes") or (["Ingress", "Egress"] if spec.get("egress") else ["Ingress"])
    types = frozenset(str(t).lower() for t in types_in) & {INGRESS, EGRESS}
    return Policy(
        key=f"{ns}/{name}",
        namespace=ns,
        name=name,
        pod_selector=_selector(spec.get("podSelector") or {}) or EVERYTHING,
        types=types,
        ingress=_rules(spec.get("ingress"), "from"),
        egress=_rules(spec.get("egress"), "to"),
    )


# -- the cluster view ------------------------------------------------------------------------------------------


@lru_cache(maxsize=16384)
def block_networks(cidr: str, excepts: tuple[str, ...]) -> tuple[ipaddress.IPv4Network, ...]:
    """cidr minus the excepts, as disjoint networks (IPv6 blocks contribute nothing to an `ip` table)."""
    net = ipaddress.ip_network(cidr, strict=False)
    if not isinstance(net, ipaddress.IPv4Network):
        return ()
    nets = [net]
    for e in excepts:
        ex = ipaddress.ip_network(e, strict=False)
        if not isinstance(ex, ipaddress.IPv4Network):
            continue
        out: list[ipaddress.IPv4Network] = []
        for n in nets:
            if ex.subnet_of(n):
                out.extend(n.address_exclude(ex))
            elif not n.subnet_of(ex):
                out.append(n)
        nets = out
    return tuple(nets)


class Cluster:
    """Every actionable pod, namespace labels and parsed policies, indexed for selection."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.pods: dict[str, PodInfo] = {}
        self.by_ns: dict[str, set[str]] = {}
        self.by_label: dict[tuple[str, str], set[str]] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.policies: dict[str, Policy] = {}
        self.policies_by_ns: dict[str, set[str]] = {}
        self._memo: dict[tuple[str | None, Selector], frozenset[str]] = {}
        self._peer_memo: dict[tuple[str, Peer], frozenset[str]] = {}
        # The compiler's memo of peer-set elements by (pods, blocks); valid while no pod changes.
        self.elements_memo: dict[tuple[frozenset[str], tuple[Any, ...]], frozenset[str]] = {}

    # -- updates -----------------------------------------------------------------------------------------------
    def set_pod(self, key: str, info: PodInfo | None) -> PodInfo | None:
        old = self.pods.pop(key, None)
        if old is not None:
            self.by_ns.get(old.namespace, set()).discard(key)
            for kv in old.labels.items():
                s = self.by_label.get(kv)
                if s is not None:
                    s.discard(key)
                    if not s:
                        del self.by_label[kv]
        if info is not None:
            self.pods[key] = info
            self.by_ns.setdefault(info.namespace, set()).add(key)
            for kv in info.labels.items():
                self.by_label.setdefault(kv, set()).add(key)
        self._memo.clear()
        self._peer_memo.clear()
        self.elements_memo.clear()
        return old

    def set_namespace(self, name: str, labels: dict[str, str] | None) -> dict[str, str] | None:
        old = self.namespaces.pop(name, None)
        if labels is not None:
            self.namespaces[name] = labels
        self._peer_memo.clear()
        return old

    def set_policy(self, key: str, policy: Policy | None) -> Policy | None:
        old = self.policies.pop(key, None)
        if old is not None:
            self.policies_by_ns.get(old.namespace, set()).discard(key)
        if policy is not None:
            self.policies[key] = policy
            self.policies_by_ns.setdefault(policy.namespace, set()).add(key)
        return old

    # -- queries -------------------------------------------------------------------------------------------------
    def ns_labels(self, ns: str) -> Mapping[str, str]:
        return self.namespaces.get(ns) or {NAME_LABEL: ns}

    def select(self, ns: str | None, sel: Selector) -> frozenset[str]:
        """Keys of the pods (of namespace `ns`, or of all namespaces) whose labels match `sel`."""
        memo_key = (ns, sel)
        hit = self._memo.get(memo_key)
        if hit is not None:
            return hit
        if sel.match_nothing:
            return frozenset()
        best: set[str] | None = None
        for r in sel.requirements:  # narrow by the label index on the most selective equality requirement
            if r.op in ("=", "in"):
                c: set[str] = set()
                for v in r.values:
                    c |= self.by_label.get((r.key, v), set())
                if best is None or len(c) < len(best):
                    best = c
        cands: Iterable[str]
        if best is not None:
            cands = best
        elif ns is not None:
            cands = self.by_ns.get(ns, set())
        else:
            cands = self.pods.keys()
        pods = self.pods
        out = frozenset(k for k in cands if (ns is None or pods[k].namespace == ns) and sel.matches(pods[k].labels))
        self._memo[memo_key] = out
        return out

    def selected_local(self, policy: Policy) -> frozenset[str]:
        return frozenset(
            k for k in self.select(policy.namespace, policy.pod_selector) if self.pods[k].node == self.node
        )

    def peer_pods(self, policy: Policy, peer: Peer) -> frozenset[str]:
        memo_key = ("" if peer.ns_selector is not None else policy.namespace, peer)
        hit = self._peer_memo.get(memo_key)
        if hit is not None:
            return hit
        out: frozenset[str] = frozenset()
        if peer.ns_selector is not None:
            found: set[str] = set()
            for ns in set(self.namespaces) | set(self.by_ns):
                if peer.ns_selector.matches(self.ns_labels(ns)):
                    found |= self.select(ns, peer.pod_selector if peer.pod_selector is not None else EVERYTHING)
            out = frozenset(found)
        elif peer.pod_selector is not None:
            out = self.select(policy.namespace, peer.pod_selector)
        self._peer_memo[memo_key] = out
        return out

    def peer_matches(self, policy: Policy, peer: Peer, pod: PodInfo) -> bool:
        if peer.ns_selector is not None:
            if not peer.ns_selector.matches(self.ns_labels(pod.namespace)):
                return False
            return peer.pod_selector is None or peer.pod_selector.matches(pod.labels)
        if peer.pod_selector is not None:
            return pod.namespace == policy.namespace and peer.pod_selector.matches(pod.labels)
        return False

    def peers_changed(self, policy: Policy, old: PodInfo | None, new: PodInfo | None) -> bool:
        """Whether a pod going from `old` to `new` changes one of the policy's peer or named-port sets: it joins or
        leaves a rule's peers, or it is (still) a peer and its IP or named ports changed."""
        if old is None and new is None:
            return False
        moved = old is None or new is None or old.ip != new.ip or old.named_ports != new.named_ports
        for d in policy.types:
            for r in policy.rules(d):
                if r.peers:
                    pod_peers = [p for p in r.peers if p.selects_pods]
                    was = old is not None and any(self.peer_matches(policy, p, old) for p in pod_peers)
                    now = new is not None and any(self.peer_matches(policy, p, new) for p in pod_peers)
                    if was != now or (now and moved):
                        return True
                elif d == EGRESS and r.named_ports and moved:
                    return True  # egress to a named port of any pod
        return False
