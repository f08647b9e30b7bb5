"""The service proxy's nftables ruleset, in the design of kube-proxy's nftables mode (KEP-3866), as data.

One table, `ip kwire-proxy`. A packet's destination (ip . proto . port) is looked up in the verdict map
`service-ips` (ClusterIPs, external IPs, load-balancer IPs) or, for the node's own addresses, `service-nodeports`;
the verdict jumps to the service port's chain, which DNATs to an endpoint chosen at random (`numgen random mod N ==
0` rules, iptables' statistic style). Masquerading is by mark (0x4000) and happens in postrouting: for traffic to a
ClusterIP from outside the cluster CIDR and for external traffic under externalTrafficPolicy Cluster; hairpin (a pod
reaching itself through its service) is matched in postrouting by the (source . destination) pair. Service ports without usable endpoints are in `no-endpoint-services` /
`no-endpoint-nodeports` (filter hooks) and rejected at once (TCP: ICMP port-unreachable → ECONNREFUSED). ClientIP
affinity uses one dynamic set per endpoint with the affinity timeout.

`Ruleset` holds the per-service parts as data so that (1) the whole table can be rendered for a full sync,
(2) only the changed services' chains and map elements for a partial sync, and (3) `tracer.py` can answer where a
packet goes without a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kwire.agent.proxy.model import Endpoint, ServicePort, chain_id

TABLE = "kwire-proxy"
MASQ_MARK = 0x4000


@dataclass(frozen=True)
class Rule:
    """One rule of a service or endpoint chain. Matches are ANDed; exactly one action is set."""

    saddr: str = ""  # an address or CIDR the source must be in
    saddr_not: str = ""  # a CIDR the source must NOT be in
    saddr_in_set: str = ""  # affinity: source is in this dynamic set
    fib_saddr_local: bool = False  # the source is an address of this node
    jump: str = ""
    goto: str = ""
    mark_masq: bool = False
    update_set: str = ""  # affinity: add/refresh the source in this set
    dnat: tuple[str, int] | None = None
    proto: str = ""  # with dnat
    random_mod: int = 0  # match with probability 1/N: `numgen random mod N == 0`
    drop: bool = False
    comment: str = ""

    def render(self) -> str:
        m = []
        if self.saddr:
            m.append(f"ip saddr {self.saddr}")
        if self.saddr_not:
            m.append(f"ip saddr != {self.saddr_not}")
        if self.fib_saddr_local:
            m.append("fib saddr type local")
        if self.saddr_in_set:
            m.append(f"ip saddr @{self.saddr_in_set}")
        if self.random_mod:
            m.append(f"numgen random mod {self.random_mod} == 0")
        if self.update_set:
            m.append(f"update @{self.update_set} {{ ip saddr }}")
        if self.mark_masq:
            a = "jump mark-for-masquerade"
        elif self.jump:
            a = f"jump {self.jump}"
        elif self.goto:
            a = f"goto {self.goto}"
        elif self.dnat is not None:
            a = f"meta l4proto {self.proto} dnat to {self.dnat[0]}:{self.dnat[1]}"
        elif self.drop:
            a = "drop"
        else:
            a = ""
        text = " ".join([*m, a]).strip()
        if self.comment:
            text += f' comment "{self.comment}"'
        return text


@dataclass
class ServiceRules:
    """Everything one service port contributes: chains, map elements, affinity sets."""

    key: str
    chains: dict[str, list[Rule]] = field(default_factory=dict)
    service_ips: dict[tuple[str, str, int], str] = field(default_factory=dict)  # (ip, proto, port) -> verdict
    nodeports: dict[tuple[str, int], str] = field(default_factory=dict)  # (proto, port) -> verdict
    no_endpoint_ips: dict[tuple[str, str, int], str] = field(default_factory=dict)
    no_endpoint_nodeports: dict[tuple[str, int], str] = field(default_factory=dict)
    affinity_sets: dict[str, int] = field(default_factory=dict)  # set name -> timeout seconds
    cluster_ip: str = ""


@dataclass
class Ruleset:
    cluster_cidr: str
    service_cidr: str
    node_ips: tuple[str, ...]
    pod_cidr: str = ""  # this node's pod subnet: a pod here reaching itself through a service is hairpin
    services: dict[str, ServiceRules] = field(default_factory=dict)


def _endpoint_chain(sp: ServicePort, ep: Endpoint) -> str:
    return "endpoint-" + chain_id(sp.key, f"{ep.ip}:{ep.port}")


def _affinity_set(sp: ServicePort, ep: Endpoint) -> str:
    return "affinity-" + chain_id(sp.key, f"{ep.ip}:{ep.port}")


def _pick(sp: ServicePort, eps: tuple[Endpoint, ...]) -> list[Rule]:
    """Affinity checks first (an existing client sticks), then a random endpoint.

    Uniform choice as iptables' statistic rules make it: endpoint i of n is taken with probability 1/(n-i) if none
    before it was. kube-proxy's nftables mode uses one anonymous `numgen ... vmap` per service and a chain per
    endpoint instead; on this kernel every such map makes the transaction revalidate the table (a 10,000-service
    sync took 25 s), and every chain makes nft's cache fetch (paid by each partial sync) longer. So the DNAT is
    inline, hairpin is matched in postrouting by the `hairpin` set, and only services with ClientIP affinity (which
    need a per-endpoint `update @set`) get endpoint chains.
    """
    rules = []
    n = len(eps)
    if sp.affinity_timeout:
        rules += [Rule(saddr_in_set=_affinity_set(sp, e), goto=_endpoint_chain(sp, e)) for e in eps]
        for i, e in enumerate(eps):
            rules.append(Rule(random_mod=n - i if i < n - 1 else 0, goto=_endpoint_chain(sp, e)))
        return rules
    for i, e in enumerate(eps):
        rules.append(Rule(random_mod=n - i if i < n - 1 else 0, dnat=(e.ip, e.port), proto=sp.proto))
    return rules


def service_rules(sp: ServicePort, *, node: str, cluster_cidr: str) -> ServiceRules:
    out = ServiceRules(key=sp.key, cluster_ip=sp.cluster_ip)
    svc_chain = "service-" + chain_id(sp.key)
    ext_chain = "external-" + chain_id(sp.key)
    local_chain = "local-" + chain_id(sp.key)
    cluster_eps = sp.usable()
    local_eps = sp.usable(local_node=node)
    internal_eps = local_eps if sp.internal_local else cluster_eps
    external_eps = local_eps if sp.external_local else cluster_eps
    reject = "goto reject-chain"

    # Endpoint chains, for ClientIP affinity only: refresh the client in the endpoint's set, then DNAT.
    if sp.affinity_timeout:
        for ep in {*internal_eps, *external_eps}:
            out.affinity_sets[_affinity_set(sp, ep)] = sp.affinity_timeout
            out.chains[_endpoint_chain(sp, ep)] = [
                Rule(update_set=_affinity_set(sp, ep)),
                Rule(dnat=(ep.ip, ep.port), proto=sp.proto),
            ]

    # ClusterIP.
    if sp.cluster_ip:
        addr = (sp.cluster_ip, sp.proto, sp.port)
        if internal_eps:
            rules = [Rule(saddr_not=cluster_cidr, mark_masq=True, comment="cluster IP from outside the pod network")]
            out.chains[svc_chain] = rules + _pick(sp, tuple(sorted(internal_eps)))
            out.service_ips[addr] = f"goto {svc_chain}"
        elif sp.internal_local and cluster_eps:
            out.no_endpoint_ips[addr] = "drop"  # kube-proxy: internalTrafficPolicy Local with no local endpoint
        else:
            out.no_endpoint_ips[addr] = reject

    # External traffic: NodePort, external IPs, load-balancer IPs.
    if sp.has_external:
        if external_eps:
            ext: list[Rule] = []
            if sp.external_local:
                # kube-proxy: pods and the node itself reaching an ETP=Local service get Cluster behaviour; real
                # external clients go to local endpoints only, unmasqueraded (their source IP is kept).
                ext.append(Rule(saddr=cluster_cidr, goto=svc_chain if internal_eps else local_chain))
                ext.append(Rule(fib_saddr_local=True, mark_masq=True))
                ext.append(Rule(fib_saddr_local=True, goto=svc_chain if internal_eps else local_chain))
                ext.append(Rule(goto=local_chain))
                out.chains[local_chain] = _pick(sp, tuple(sorted(external_eps)))
            else:
                ext.append(Rule(mark_masq=True, comment="external traffic is masqueraded (policy Cluster)"))
                if internal_eps and not sp.internal_local:
                    ext.append(Rule(goto=svc_chain))
                else:
                    out.chains[local_chain] = _pick(sp, tuple(sorted(external_eps)))
                    ext.append(Rule(goto=local_chain))
            out.chains[ext_chain] = ext
            verdict = f"goto {ext_chain}"
            for ip in (*sp.external_ips, *sp.lb_ips):
                out.service_ips[(ip, sp.proto, sp.port)] = verdict
            if sp.node_port:
                out.nodeports[(sp.proto, sp.node_port)] = verdict
        else:
            # No endpoint for external traffic: reject when the service has none at all; drop under policy
            # Local when only this node has none (the load balancer's health check steers clients away).
            verdict = "drop" if (sp.external_local and cluster_eps) else reject
            for ip in (*sp.external_ips, *sp.lb_ips):
                out.no_endpoint_ips[(ip, sp.proto, sp.port)] = verdict
            if sp.node_port:
                out.no_endpoint_nodeports[(sp.proto, sp.node_port)] = verdict
    return out


def build(
    ports: list[ServicePort],
    *,
    node: str,
    node_ips: tuple[str, ...],
    cluster_cidr: str,
    service_cidr: str,
    pod_cidr: str = "",
) -> Ruleset:
    rs = Ruleset(cluster_cidr=cluster_cidr, service_cidr=service_cidr, node_ips=node_ips, pod_cidr=pod_cidr)
    for sp in ports:
        rs.services[sp.key] = service_rules(sp, node=node, cluster_cidr=cluster_cidr)
    return rs


# -- rendering ------------------------------------------------------------------------------------------------


def _elems(items: list[str]) -> str:
    return ", ".join(items)


def _ip_key(k: tuple[str, str, int]) -> str:
    return f"{k[0]} . {k[1]} . {k[2]}"


def _np_key(k: tuple[str, int]) -> str:
    return f"{k[0]} . {k[1]}"


def _map_elements(rs: Ruleset, attr: str, key: str) -> str:
    items: list[str] = []
    for sr in rs.services.values():
        for k, v in getattr(sr, attr).items():
            items.append(f"{_ip_key(k) if key == 'ip' else _np_key(k)} : {v}")
    return f" elements = {{ {_elems(sorted(items))} }}" if items else ""


def _hairpin(rs: Ruleset) -> str:
    """(ip . ip) for every address of this node's pod subnet: after DNAT, source == destination is hairpin."""
    if not rs.pod_cidr:
        return ""
    import ipaddress

    net = ipaddress.ip_network(rs.pod_cidr, strict=False)
    if net.num_addresses > 4096:
        return ""
    return " elements = { " + ", ".join(f"{a} . {a}" for a in net.hosts()) + " }"


def _static(rs: Ruleset) -> str:
    """The table's fixed chains plus its sets and verdict maps (with every element, for a full sync)."""
    node_ips = _elems(list(rs.node_ips)) or "127.0.0.1"
    ips = _cluster_ips(rs)
    cluster_ips = f" elements = {{ {_elems(ips)} }}" if ips else ""
    return f"""
  set nodeport-ips {{ type ipv4_addr; elements = {{ {node_ips} }} }}
  set cluster-ips {{ type ipv4_addr;{cluster_ips} }}
  set hairpin {{ type ipv4_addr . ipv4_addr;{_hairpin(rs)} }}
  map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict;{_map_elements(rs, "service_ips", "ip")} }}
  map service-nodeports {{ type inet_proto . inet_service : verdict;{_map_elements(rs, "nodeports", "np")} }}
  map no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict;{_map_elements(rs, "no_endpoint_ips", "ip")} }}
  map no-endpoint-nodeports {{ type inet_proto . inet_service : verdict;{_map_elements(rs, "no_endpoint_nodeports", "np")} }}

  chain mark-for-masquerade {{ meta mark set meta mark | {MASQ_MARK:#x}; }}
  chain masquerading {{
    meta mark & {MASQ_MARK:#x} == 0 return
    meta mark set meta mark ^ {MASQ_MARK:#x}
    masquerade fully-random
  }}
  chain reject-chain {{ reject comment "service has no endpoints"; }}

  chain filter-input {{
    type filter hook input priority -110; policy accept;
    ct state new jump nodeport-endpoints-check
    ct state new jump service-endpoints-check
  }}
  chain filter-forward {{
    type filter hook forward priority -110; policy accept;
    ct state new jump service-endpoints-check
    ct state new jump cluster-ips-check
  }}
  chain filter-output {{
    type filter hook output priority -110; policy accept;
    ct state new jump service-endpoints-check
  }}
  chain filter-output-post-dnat {{
    type filter hook output priority -90; policy accept;
    ct state new jump cluster-ips-check
  }}
  chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}
  chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
  chain nat-postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip saddr . ip daddr @hairpin masquerade comment "hairpin: a pod reaching itself via a service"
    jump masquerading
  }}

  chain service-endpoints-check {{ ip daddr . meta l4proto . th dport vmap @no-endpoint-services; }}
  chain nodeport-endpoints-check {{ ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports; }}
  chain cluster-ips-check {{
    ip daddr @cluster-ips reject comment "reject traffic to invalid ports of ClusterIPs"
    ip daddr {rs.service_cidr} drop comment "drop traffic to unallocated ClusterIPs"
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
    ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
  }}
"""


def _service_decl(sr: ServiceRules) -> list[str]:
    lines = []
    for name, timeout in sorted(sr.affinity_sets.items()):
        lines.append(f"add set ip {TABLE} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}")
    for name in sorted(sr.chains):
        lines.append(f"add chain ip {TABLE} {name}")
    return lines


def _service_body(sr: ServiceRules) -> list[str]:
    lines = []
    for name, rules in sorted(sr.chains.items()):
        for r in rules:
            lines.append(f"add rule ip {TABLE} {name} {r.render()}")
    return lines


def _service_elements(sr: ServiceRules, verb: str) -> list[str]:
    t = TABLE
    lines = []
    for k, v in sorted(sr.service_ips.items()):
        lines.append(f"{verb} element ip {t} service-ips {{ {_ip_key(k)} : {v} }}")
    for k2, v in sorted(sr.nodeports.items()):
        lines.append(f"{verb} element ip {t} service-nodeports {{ {_np_key(k2)} : {v} }}")
    for k, v in sorted(sr.no_endpoint_ips.items()):
        lines.append(f"{verb} element ip {t} no-endpoint-services {{ {_ip_key(k)} : {v} }}")
    for k2, v in sorted(sr.no_endpoint_nodeports.items()):
        lines.append(f"{verb} element ip {t} no-endpoint-nodeports {{ {_np_key(k2)} : {v} }}")
    return lines


def _delete_elements(sr: ServiceRules) -> list[str]:
    t = TABLE
    lines = [f"delete element ip {t} service-ips {{ {_ip_key(k)} }}" for k in sorted(sr.service_ips)]
    lines += [f"delete element ip {t} service-nodeports {{ {_np_key(k)} }}" for k in sorted(sr.nodeports)]
    lines += [f"delete element ip {t} no-endpoint-services {{ {_ip_key(k)} }}" for k in sorted(sr.no_endpoint_ips)]
    lines += [
        f"delete element ip {t} no-endpoint-nodeports {{ {_np_key(k)} }}" for k in sorted(sr.no_endpoint_nodeports)
    ]
    return lines


def _cluster_ips(rs: Ruleset) -> list[str]:
    return sorted({sr.cluster_ip for sr in rs.services.values() if sr.cluster_ip})


def render_full(rs: Ruleset) -> str:
    """One transaction that replaces the whole table (existing connections keep their conntrack NAT).

    Everything is declared inside one `table { }` block, chains with their rules and maps with their elements:
    nft parses and sends that as a handful of large batches, far faster than one command per rule or element.
    """
    out = [f"add table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    for sr in rs.services.values():
        for name, timeout in sorted(sr.affinity_sets.items()):
            out.append(f"  set {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}")
    # Chains are declared before the maps and the chains that jump to them.
    for sr in rs.services.values():
        for name in sorted(sr.chains):
            out.append(f"  chain {name} {{ }}")
    out.append(_static(rs))
    for sr in rs.services.values():
        for name, rules in sorted(sr.chains.items()):
            out.append(f"  chain {name} {{")
            out += [f"    {r.render()}" for r in rules]
            out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def render_partial(old: Ruleset, new: Ruleset, changed: set[str]) -> str:
    """One transaction that updates only the service ports in `changed` (added, modified or removed).

    Map elements are deleted and re-added, changed chains are flushed and refilled, chains no longer used are
    deleted after the elements that referenced them; the order inside the transaction keeps every reference valid.
    """
    t = TABLE
    out: list[str] = []
    # 1. Remove the old map elements of changed services.
    for key in sorted(changed):
        if key in old.services:
            out += _delete_elements(old.services[key])
    # 2. Declare new chains/sets, flush the kept ones.
    for key in sorted(changed):
        n = new.services.get(key)
        o = old.services.get(key)
        if n is None:
            continue
        for name, timeout in sorted(n.affinity_sets.items()):
            if o is None or name not in o.affinity_sets:
                out.append(f"add set ip {t} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}")
        for name in sorted(n.chains):
            out.append(f"add chain ip {t} {name}")
            if o is not None and name in o.chains:
                out.append(f"flush chain ip {t} {name}")
    # 3. Fill the chains and add the elements.
    for key in sorted(changed):
        n = new.services.get(key)
        if n is not None:
            out += _service_body(n)
            out += _service_elements(n, "add")
    # 4. Delete what is no longer referenced (after the elements that referenced it are gone).
    for key in sorted(changed):
        o = old.services.get(key)
        if o is None:
            continue
        n = new.services.get(key)
        gone = set(o.chains) - set(n.chains if n else {})
        # Flush first: chains may jump to each other (external -> service -> endpoint).
        out += [f"flush chain ip {t} {name}" for name in sorted(gone)]
        out += [f"delete chain ip {t} {name}" for name in sorted(gone)]
        for name in sorted(set(o.affinity_sets) - set(n.affinity_sets if n else {})):
            out.append(f"delete set ip {t} {name}")
    old_ips, new_ips = set(_cluster_ips(old)), set(_cluster_ips(new))
    if new_ips - old_ips:
        out.append(f"add element ip {t} cluster-ips {{ {_elems(sorted(new_ips - old_ips))} }}")
    if old_ips - new_ips:
        out.append(f"delete element ip {t} cluster-ips {{ {_elems(sorted(old_ips - new_ips))} }}")
    return "\n".join(out) + ("\n" if out else "")
