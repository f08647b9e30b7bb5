"""A packet tracer over the proxy's desired `nft.Table` (the very data the kernel is given): where does a new
connection from X to VIP:port go on this node?

It walks the table from its base chains in the kernel's order for the first packet of a connection: from one of
the node's own addresses the output hook (filter -110, nat -100, filter -90), otherwise prerouting (nat dstnat)
and then input (a non-DNATed packet to a node address) or forward; a DNATed packet then meets postrouting (srcnat),
where the `hairpin` set decides masquerading. Each rule is evaluated from its typed fields: verdict maps are looked
up by element text, `numgen random` rules are branches (every endpoint they may pick is reported), affinity sets
are given by the caller, and `jump mark-for-masquerade` marks the packet for masquerading. The node's own addresses
are the `nodeport-ips` set's elements (what `fib saddr type local` matches). Rules given as plain text (the
`masquerading` chain's mark handling) are not evaluated; their effect is the mark the tracer already follows.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from kwire.agent.proxy.ruleset import Rule, addr_key, port_key
from kwire.kernel import nft

_PRIORITY = {"dstnat": -100, "filter": 0, "srcnat": 100}
_MAX_DEPTH = 16


@dataclass
class Trace:
    verdict: str  # "dnat" | "reject" | "drop" | "accept"
    endpoints: list[str] = field(default_factory=list)  # "ip:port" candidates of a DNAT
    masquerade: bool = False
    chains: list[str] = field(default_factory=list)
    sticky: str = ""  # the endpoint chain an affinity entry pinned the client to


@dataclass
class _Packet:
    src: str
    dst: str
    proto: str
    port: int
    node_ips: frozenset[str]
    affinity: dict[str, set[str]]
    dnat: bool = False


def _in(addr: str, net: str) -> bool:
    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(net, strict=False)
    except ValueError:
        return False


def _set_has(tbl: nft.Table, name: str, value: str) -> bool:
    s = tbl.sets.get(name)
    return s is not None and value in s.elements


def _matches(tbl: nft.Table, r: Rule, p: _Packet) -> bool:
    checks = (
        not r.ct_dnat or p.dnat,
        not r.saddr or _in(p.src, r.saddr),
        not r.saddr_not or not _in(p.src, r.saddr_not),
        not r.daddr or _in(p.dst, r.daddr),
        not r.daddr_set or _set_has(tbl, r.daddr_set, p.dst),
        not r.saddr_daddr_set or _set_has(tbl, r.saddr_daddr_set, f"{p.src} . {p.dst}"),
        not r.fib_saddr_local or p.src in p.node_ips,
        not r.saddr_in_set or p.src in p.affinity.get(r.saddr_in_set, set()),
    )
    return all(checks)


def _vmap(tbl: nft.Table, r: Rule, p: _Packet) -> str:
    m = tbl.maps.get(r.vmap)
    if m is None:
        return ""
    key = port_key(p.proto, p.port) if r.vmap_by_port else addr_key(p.dst, p.proto, p.port)
    return m.elements.get(key, "")


class _Walker:
    def __init__(self, tbl: nft.Table, p: _Packet, t: Trace) -> None:
        self.tbl = tbl
        self.p = p
        self.t = t

    def verdict_text(self, text: str, depth: int) -> str:
        """A verdict as nft spells it in a map element: `goto x`, `jump x`, `drop`, `accept`."""
        kind, _, target = text.partition(" ")
        if kind in ("goto", "jump"):
            return self.chain(target, depth + 1)
        return kind

    def action(self, r: Rule, depth: int) -> str:
        if r.vmap:
            v = _vmap(self.tbl, r, self.p)
            return self.verdict_text(v, depth) if v else ""
        if r.jump:
            return self.chain(r.jump, depth + 1)
        if r.goto:
            v = self.chain(r.goto, depth + 1)
            return v or "accept"  # a goto'd chain that ends returns past this chain (the base chain's policy)
        if r.dnat is not None:
            self.t.endpoints.append(f"{r.dnat[0]}:{r.dnat[1]}")
            return "dnat"
        if r.reject:
            return "reject"
        if r.drop:
            return "drop"
        if r.masquerade:
            self.t.masquerade = True
        return ""

    def chain(self, name: str, depth: int = 0) -> str:
        """The chain's verdict: "dnat", "reject", "drop", "accept", or "" when it ends (return to the caller)."""
        if depth > _MAX_DEPTH:
            raise RuntimeError("chain loop in the proxy table")
        self.t.chains.append(name)
        branches: list[Rule] = []
        for r in self.tbl.chains[name].rules:
            if not isinstance(r, Rule) or not _matches(self.tbl, r, self.p):
                continue  # plain-text rules (mark handling) are followed through the mark itself
            if r.update_set:
                continue  # refreshes the affinity entry; no verdict
            if r.mark_masq:
                self.t.masquerade = True
                continue
            if r.random_mod:
                branches.append(r)  # one possible pick; the last rule without numgen ends the choice
                continue
            if branches:
                for b in [*branches, r]:
                    self.action(b, depth)
                return "dnat"
            if r.saddr_in_set and r.goto:
                self.t.sticky = r.goto
            v = self.action(r, depth)
            if v:
                return v
        return ""


def _priority(c: nft.Chain) -> int:
    assert c.hook is not None
    return _PRIORITY.get(c.hook.priority, 0) if not c.hook.priority.lstrip("-").isdigit() else int(c.hook.priority)


def _base(tbl: nft.Table, hook: str) -> list[nft.Chain]:
    return sorted((c for c in tbl.base_chains() if c.hook is not None and c.hook.hook == hook), key=_priority)


def trace(
    tbl: nft.Table,
    *,
    src: str,
    dst: str,
    proto: str,
    port: int,
    affinity: dict[str, set[str]] | None = None,
) -> Trace:
    """Where a new `proto` connection from `src` to `dst:port` goes. `affinity` maps affinity set -> sources in it."""
    node_ips = tbl.sets["nodeport-ips"].elements
    p = _Packet(src, dst, proto.lower(), port, node_ips=node_ips, affinity=affinity or {})
    t = Trace("accept")
    w = _Walker(tbl, p, t)
    hooks = ["output"] if src in node_ips else ["prerouting", "input" if dst in node_ips else "forward"]
    for hook in hooks:
        for c in _base(tbl, hook):
            if p.dnat and c.hook is not None and c.hook.type == "nat":
                continue  # nat chains see only a connection's first packet, once
            v = w.chain(c.name)
            if v == "dnat":
                p.dnat = True
                t.verdict = "dnat"
                p.dst = t.endpoints[0].rsplit(":", 1)[0]  # later chains see the endpoint (every one is a pod IP)
                if hook == "prerouting":
                    hooks[1] = "forward"  # DNATed to a pod: forwarded, not delivered to the node
                continue
            if v in ("reject", "drop"):
                t.verdict = v
                return t
    if p.dnat:
        for ep in list(t.endpoints):
            p.dst = ep.rsplit(":", 1)[0]
            for c in _base(tbl, "postrouting"):
                w.chain(c.name)
    return t
