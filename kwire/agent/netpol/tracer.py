"""A packet tracer over the NetworkPolicy table (`Ruleset.table()`, the very data the kernel is given): is a new
connection from A to B:port/proto allowed on this node?

It walks the table's base chains for the first packet of a connection, in priority order, on the hook the kernel
would use: `input` when the destination is one of the node's addresses, `forward` otherwise. Every rule is
evaluated from its typed fields: `ct state established,related` does not match a first packet, `fib saddr type
local` matches the node's own addresses, verdict maps are looked up by address, sets by membership (interval sets
by containment). An `accept` ends only its base chain (the next base chain still sees the packet); `drop` ends the
packet.

`trace_path` runs the trace on every node a connection crosses (the source's and the destination's).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from kwire.agent.netpol.ruleset import Rule, Ruleset
from kwire.kernel import nft


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
def _networks(elements: frozenset[str]) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(ipaddress.IPv4Network(e) for e in elements)


def _in_set(s: nft.Set | None, value: str) -> bool:
    if s is None:
        return False
    if "interval" in s.flags:
        addr = ipaddress.IPv4Address(value)
        return any(addr in n for n in _networks(s.elements))
    return value in s.elements


@dataclass(frozen=True)
class _Packet:
    src: str
    dst: str
    proto: str
    port: int
    src_local: bool


def _matches(tbl: nft.Table, r: Rule, p: _Packet) -> bool:
    if r.ct_established:
        return False  # the first packet of a connection
    if r.fib_saddr_local and not p.src_local:
        return False
    if r.saddr_set and not _in_set(tbl.sets.get(r.saddr_set), p.src):
        return False
    if r.daddr_set and not _in_set(tbl.sets.get(r.daddr_set), p.dst):
        return False
    if r.daddr_port_set and not _in_set(tbl.sets.get(r.daddr_port_set), f"{p.dst} . {p.proto} . {p.port}"):
        return False
    if r.proto:
        if r.proto != p.proto:
            return False
        if r.dport and not (r.dport <= p.port <= (r.dport_end or r.dport)):
            return False
    return True


def _lookup(tbl: nft.Table, name: str, key: str) -> str:
    m = tbl.maps.get(name)
    verdict = m.elements.get(key, "") if m is not None else ""
    return verdict.removeprefix("jump ") if verdict.startswith("jump ") else ""


def _chain(tbl: nft.Table, name: str, p: _Packet, t: Trace, depth: int = 0) -> str:
    """The verdict of chain `name`: "accept", "drop", or "" (the chain returned)."""
    if depth > 8:
        raise RuntimeError("chain loop in the netpol table")
    t.chains.append(name)
    for r in tbl.chains[name].rules:
        if not isinstance(r, Rule) or not _matches(tbl, r, p):
            continue
        target = r.jump
        if r.vmap_saddr:
            target = _lookup(tbl, r.vmap_saddr, p.src)
        elif r.vmap_daddr:
            target = _lookup(tbl, r.vmap_daddr, p.dst)
        if target:
            v = _chain(tbl, target, p, t, depth + 1)
            if v:
                return v
            continue
        if r.accept:
            if r.comment:
                t.allowed_by.append(r.comment)
            return "accept"
        if r.drop:
            t.dropped_by = name
            return "drop"
    return ""


def _priority(c: nft.Chain) -> int:
    return int(c.hook.priority) if c.hook is not None else 0


def trace(rs: Ruleset, *, src: str, dst: str, proto: str = "tcp", port: int = 80) -> Trace:
    """The fate on this node of the first packet of a `proto` connection from `src` to `dst:port`."""
    tbl = rs.table()
    p = _Packet(src, dst, proto.lower(), port, src_local=src in rs.node_ips)
    hook = "input" if dst in rs.node_ips else "forward"
    t = Trace()
    for c in sorted((c for c in tbl.base_chains() if c.hook is not None and c.hook.hook == hook), key=_priority):
        if _chain(tbl, c.name, p, t) == "drop":
            t.verdict = "drop"
            return t
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
