"""A packet tracer over the proxy's ruleset (as data, before it is rendered): where does a new connection to
VIP:port from X go on this node?

It follows the same path the kernel does through the table: the nat `services` chain (service-ips, then
service-nodeports for the node's own addresses), the chosen service/external/local chain, affinity checks, the
random choice (every branch is reported), the endpoint chain's hairpin mark and DNAT; without a DNAT, the filter
checks (no-endpoint maps, cluster-ips). The result says whether the packet is DNATed (and to which possible
endpoints), masqueraded, rejected, dropped, or not a service packet at all.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from kwire.agent.proxy.ruleset import Rule, Ruleset


@dataclass
class Trace:
    verdict: str  # "dnat" | "reject" | "drop" | "accept"
    endpoints: list[str] = field(default_factory=list)  # "ip:port" candidates of a DNAT
    masquerade: bool = False
    chains: list[str] = field(default_factory=list)
    sticky: str = ""  # the endpoint an affinity entry pinned the client to


def _in(addr: str, net: str) -> bool:
    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(net, strict=False)
    except ValueError:
        return False


def _lookup(rs: Ruleset, dst: str, proto: str, port: int, *, node_local_dst: bool) -> tuple[str, str] | None:
    """(kind, verdict) from the verdict maps for this destination."""
    for sr in rs.services.values():
        v = sr.service_ips.get((dst, proto, port))
        if v:
            return "service", v
    if node_local_dst:
        for sr in rs.services.values():
            v = sr.nodeports.get((proto, port))
            if v:
                return "service", v
    return None


def _all_chains(rs: Ruleset) -> dict[str, list[Rule]]:
    chains: dict[str, list[Rule]] = {}
    for sr in rs.services.values():
        chains.update(sr.chains)
    return chains


def trace(
    rs: Ruleset,
    *,
    src: str,
    dst: str,
    proto: str,
    port: int,
    affinity: dict[str, set[str]] | None = None,
) -> Trace:
    """Where a new `proto` connection from `src` to `dst:port` goes. `affinity` maps affinity set -> sources in it."""
    proto = proto.lower()
    node_local_dst = dst in rs.node_ips
    src_local = src in rs.node_ips
    found = _lookup(rs, dst, proto, port, node_local_dst=node_local_dst)
    if found is None:
        # Not DNATed: the filter hooks decide.
        for sr in rs.services.values():
            v = sr.no_endpoint_ips.get((dst, proto, port))
            if v is None and node_local_dst:
                v = sr.no_endpoint_nodeports.get((proto, port))
            if v is not None:
                return Trace("reject" if "reject" in v else "drop", chains=["service-endpoints-check"])
        if any(sr.cluster_ip == dst for sr in rs.services.values()):
            return Trace("reject", chains=["cluster-ips-check"])
        if _in(dst, rs.service_cidr):
            return Trace("drop", chains=["cluster-ips-check"])
        return Trace("accept")
    chains = _all_chains(rs)
    t = Trace("dnat")
    name = found[1].split(" ", 1)[1]
    sets = affinity or {}
    for _ in range(16):  # chains nest at most external -> service/local -> endpoint
        t.chains.append(name)
        nxt = ""
        branches: list[str] = []
        for r in chains.get(name, []):
            if r.saddr and not _in(src, r.saddr):
                continue
            if r.saddr_not and _in(src, r.saddr_not):
                continue
            if r.fib_saddr_local and not src_local:
                continue
            if r.saddr_in_set:
                if src not in sets.get(r.saddr_in_set, set()):
                    continue
            if r.mark_masq:
                t.masquerade = True
                continue
            if r.update_set:
                continue
            if r.random_mod or (branches and (r.goto or r.jump or r.dnat)):
                # A random branch: every one is possible (an inline DNAT, or an endpoint chain that DNATs).
                branches.append(f"{r.dnat[0]}:{r.dnat[1]}" if r.dnat else (r.goto or r.jump))
                if r.random_mod:
                    continue
                for b in branches:
                    t.endpoints.append(b if ":" in b else trace_endpoint(chains.get(b, []), src))
                t.chains.extend(b for b in branches if ":" not in b)
                return _hairpin(rs, t, src)
            if r.goto or r.jump:
                nxt = r.goto or r.jump
                if r.saddr_in_set:
                    t.sticky = nxt
                break
            if r.dnat is not None:
                t.endpoints = [f"{r.dnat[0]}:{r.dnat[1]}"]
                return _hairpin(rs, t, src)
        if not nxt:
            return Trace("accept", chains=t.chains)
        name = nxt
    raise RuntimeError("chain loop in the proxy ruleset")


def trace_endpoint(rules: list[Rule], src: str) -> str:
    for r in rules:
        if r.saddr and not _in(src, r.saddr):
            continue
        if r.dnat is not None:
            return f"{r.dnat[0]}:{r.dnat[1]}"
    return ""


def _hairpin(rs: Ruleset, t: Trace, src: str) -> Trace:
    """The postrouting `hairpin` set: a local pod whose connection was DNATed back to itself is masqueraded."""
    if rs.pod_cidr and _in(src, rs.pod_cidr) and any(e.split(":")[0] == src for e in t.endpoints):
        t.masquerade = True
    return t
