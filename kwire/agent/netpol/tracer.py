"""A packet tracer over the NetworkPolicy ruleset (as data, before it is rendered): is a new connection from A to
B:port/proto allowed on this node?

It walks the same path the kernel does through `ip kwire-netpol` for the first packet of a connection (conntrack's
`established,related` accept only concerns later packets): on the forward hook the `egress` base chain (source
pod's egress chain via the `egress-pods` map) and then the `ingress` base chain (the node's own addresses are
accepted, then the destination pod's ingress chain via `ingress-pods`); for a destination that is one of the node's
addresses, the input hook's `egress-input` chain. A rule's `accept` ends only its base chain; `drop` ends the packet.

`trace_path` runs the trace on every node a connection crosses (the source's and the destination's).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from kwire.agent.netpol.ruleset import ADDR, NamedSet, Rule, Ruleset


@dataclass
class Trace:
    verdict: str = "accept"  # "accept" | "drop"
    dropped_by: str = ""  # the pod chain that dropped it ("pod-in-..." / "pod-eg-...")
    allowed_by: list[str] = field(default_factory=list)  # comments of the accepting policy rules ("ns/name dir i")
    chains: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.verdict == "accept"


@lru_cache(maxsize=4096)
def _networks(elements: tuple[str, ...]) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(ipaddress.IPv4Network(e) for e in elements)


def _in_set(s: NamedSet | None, value: str) -> bool:
    if s is None:
        return False
    if s.kind == ADDR:
        addr = ipaddress.IPv4Address(value)
        return any(addr in n for n in _networks(s.elements))
    return value in s.elements


def _matches(rs: Ruleset, r: Rule, src: str, dst: str, proto: str, port: int) -> bool:
    if r.saddr_set and not _in_set(rs.sets.get(r.saddr_set), src):
        return False
    if r.daddr_set and not _in_set(rs.sets.get(r.daddr_set), dst):
        return False
    if r.daddr_port_set and not _in_set(rs.sets.get(r.daddr_port_set), f"{dst} . {proto} . {port}"):
        return False
    if r.proto:
        if r.proto != proto:
            return False
        if r.dport and not (r.dport <= port <= (r.dport_end or r.dport)):
            return False
    return True


def _chain(rs: Ruleset, name: str, pkt: tuple[str, str, str, int], t: Trace, depth: int = 0) -> str:
    """The verdict of chain `name`: "accept", "drop", or "" (the chain returned)."""
    if depth > 8:
        raise RuntimeError("chain loop in the netpol ruleset")
    t.chains.append(name)
    for r in rs.chains.get(name, ()):
        if not _matches(rs, r, *pkt):
            continue
        if r.jump:
            v = _chain(rs, r.jump, pkt, t, depth + 1)
            if v:
                return v
            continue
        if r.accept:
            t.allowed_by.append(r.comment)
            return "accept"
        if r.drop:
            t.dropped_by = name
            return "drop"
    return ""


def trace(rs: Ruleset, *, src: str, dst: str, proto: str = "tcp", port: int = 80) -> Trace:
    """The fate on this node of the first packet of a `proto` connection from `src` to `dst:port`."""
    proto = proto.lower()
    pkt = (src, dst, proto, port)
    t = Trace()
    egress = rs.egress_pods.get(src)
    if egress and _chain(rs, egress, pkt, t) == "drop":
        t.verdict = "drop"
        return t
    if dst in rs.node_ips:
        return t  # input hook: only the source's egress is checked
    if src in rs.node_ips:
        return t  # `fib saddr type local accept`
    ingress = rs.ingress_pods.get(dst)
    if ingress and _chain(rs, ingress, pkt, t) == "drop":
        t.verdict = "drop"
    return t


def trace_path(rulesets: Iterable[Ruleset], *, src: str, dst: str, proto: str = "tcp", port: int = 80) -> Trace:
    """The connection across every node's ruleset (each only holds its own pods, so order does not matter)."""
    out = Trace()
    for rs in rulesets:
        t = trace(rs, src=src, dst=dst, proto=proto, port=port)
        out.chains += t.chains
        out.allowed_by += t.allowed_by
        if not t.allowed:
            out.verdict = "drop"
            out.dropped_by = t.dropped_by
            break
    return out


def allowed(rulesets: Iterable[Ruleset], *, src: str, dst: str, proto: str = "tcp", port: int = 80) -> bool:
    return trace_path(rulesets, src=src, dst=dst, proto=proto, port=port).allowed
