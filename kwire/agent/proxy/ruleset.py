"""The service proxy's nftables table, in the design of kube-proxy's nftables mode (KEP-3866), as `nft.Table` data.

One table, `ip kwire-proxy`. A packet's destination (ip . proto . port) is looked up in the verdict map
`service-ips` (ClusterIPs, external IPs, load-balancer IPs) or, for the node's own addresses, `service-nodeports`;
the verdict jumps to the service port's chain, which DNATs to an endpoint chosen at random (`numgen random mod N ==
0` rules, iptables' statistic style). Masquerading is by mark (0x4000) and happens in postrouting: for traffic to a
ClusterIP from outside the cluster CIDR and for external traffic under externalTrafficPolicy Cluster; hairpin (a pod
reaching itself through its service) is matched in postrouting by the (source . destination) pair. Service ports
without usable endpoints are in `no-endpoint-services` / `no-endpoint-nodeports` (filter hooks) and rejected at
once (TCP: ICMP port-unreachable -> ECONNREFUSED). ClientIP affinity uses one dynamic set per endpoint with the
affinity timeout.

Every rule, the fixed chains' included, is a typed `Rule`, so `tracer.py` walks the very table the kernel is
given, from its base chains. `ProxyTable` keeps each service port's contribution (`ServiceRules`) and the merged
chains, sets and map elements, updated per changed service port, so that producing the desired `nft.Table` of a
10,000-service node for a one-service change costs a few dictionary copies; `kwire.kernel.nft.diff` then writes
only the difference.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

from kwire.agent.proxy.model import Endpoint, ServicePort
from kwire.kernel import nft

TABLE = "kwire-proxy"
MASQ_MARK = 0x4000
ADDR_PROTO_PORT = "ipv4_addr . inet_proto . inet_service"
PROTO_PORT = "inet_proto . inet_service"
# The verdict maps, in the order service_rules unpacks them.
MAP_NAMES = ("service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports")


@dataclass(slots=True, unsafe_hash=True)
class Rule:
    """One rule of the table. Matches are ANDed in the order below; at most one action.

    Treated as immutable (hashed by its fields, never changed once made) but not `frozen`: a frozen dataclass sets
    each of these 20 fields through object.__setattr__, which made building a 10,000-service table 30 % slower."""

    ct_new: bool = False  # ct state new
    ct_dnat: bool = False  # ct status dnat
    saddr: str = ""  # an address or CIDR the source must be in
    saddr_not: str = ""  # a CIDR the source must NOT be in
    daddr: str = ""  # an address or CIDR the destination must be in
    daddr_set: str = ""  # ip daddr @set
    saddr_daddr_set: str = ""  # ip saddr . ip daddr @set (hairpin)
    fib_saddr_local: bool = False  # the source is an address of this node
    saddr_in_set: str = ""  # affinity: source is in this dynamic set
    random_mod: int = 0  # match with probability 1/N: `numgen random mod N == 0`
    update_set: str = ""  # affinity: add/refresh the source in this set
    # Actions.
    vmap: str = ""  # a verdict map lookup: `ip daddr . meta l4proto . th dport vmap @m` (or by port only)
    vmap_by_port: bool = False  # the key is `meta l4proto . th dport` (node ports)
    jump: str = ""
    goto: str = ""
    mark_masq: bool = False
    dnat: tuple[str, int] | None = None
    proto: str = ""  # with dnat
    reject: bool = False
    drop: bool = False
    masquerade: bool = False
    comment: str = ""

    def render(self) -> str:
        vmap_key = (
            ("meta l4proto . th dport" if self.vmap_by_port else "ip daddr . meta l4proto . th dport")
            if self.vmap
            else ""
        )
        return nft.rule_text(
            "ct state new" if self.ct_new else "",
            "ct status dnat" if self.ct_dnat else "",
            self.saddr and f"ip saddr {self.saddr}",
            self.saddr_not and f"ip saddr != {self.saddr_not}",
            self.daddr and f"ip daddr {self.daddr}",
            self.daddr_set and f"ip daddr @{self.daddr_set}",
            self.saddr_daddr_set and f"ip saddr . ip daddr @{self.saddr_daddr_set}",
            "fib saddr type local" if self.fib_saddr_local else "",
            self.saddr_in_set and f"ip saddr @{self.saddr_in_set}",
            f"numgen random mod {self.random_mod} == 0" if self.random_mod else "",
            self.update_set and f"update @{self.update_set} {{ ip saddr }}",
            # The action: at most one is set.
            self.vmap and f"{vmap_key} vmap @{self.vmap}",
            "jump mark-for-masquerade" if self.mark_masq else "",
            self.jump and f"jump {self.jump}",
            self.goto and f"goto {self.goto}",
            f"meta l4proto {self.proto} dnat to {self.dnat[0]}:{self.dnat[1]}" if self.dnat is not None else "",
            "reject" if self.reject else "",
            "drop" if self.drop else "",
            "masquerade" if self.masquerade else "",
            comment=self.comment,
        )


def addr_key(ip: str, proto: str, port: int) -> str:
    """The element key of `service-ips` / `no-endpoint-services`."""
    return f"{ip} . {proto} . {port}"


def port_key(proto: str, port: int) -> str:
    """The element key of `service-nodeports` / `no-endpoint-nodeports`."""
    return f"{proto} . {port}"


@dataclass
class ServiceRules:
    """Everything one service port contributes: chains, verdict map elements, affinity sets."""

    key: str
    chains: dict[str, nft.Chain] = field(default_factory=dict)
    maps: dict[str, dict[str, str]] = field(default_factory=lambda: {m: {} for m in MAP_NAMES})
    affinity_sets: dict[str, nft.Set] = field(default_factory=dict)
    cluster_ip: str = ""


def _ids(sp: ServicePort, ep: Endpoint | None = None) -> str:
    return nft.object_id(sp.key, f"{ep.ip}:{ep.port}") if ep is not None else nft.object_id(sp.key)


def _endpoint_chain(sp: ServicePort, ep: Endpoint) -> str:
    return "endpoint-" + _ids(sp, ep)


def _affinity_set(sp: ServicePort, ep: Endpoint) -> str:
    return "affinity-" + _ids(sp, ep)


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
    if sp.service.affinity_timeout:
        rules += [Rule(saddr_in_set=_affinity_set(sp, e), goto=_endpoint_chain(sp, e)) for e in eps]
        for i, e in enumerate(eps):
            rules.append(Rule(random_mod=n - i if i < n - 1 else 0, goto=_endpoint_chain(sp, e)))
        return rules
    for i, e in enumerate(eps):
        rules.append(Rule(random_mod=n - i if i < n - 1 else 0, dnat=(e.ip, e.port), proto=sp.proto))
    return rules


def service_rules(sp: ServicePort, *, node: str, cluster_cidr: str) -> ServiceRules:
    out = ServiceRules(key=sp.key, cluster_ip=sp.service.cluster_ip)
    service_ips, nodeports, no_endpoint_ips, no_endpoint_nodeports = (out.maps[m] for m in MAP_NAMES)
    ident = _ids(sp)
    svc_chain = "service-" + ident
    ext_chain = "external-" + ident
    local_chain = "local-" + ident
    chains: dict[str, list[Rule]] = {}
    # A chain whose name had to truncate the service port's key carries the full key as its comment.
    comments: dict[str, str] = {}
    cluster_eps = sp.usable()
    local_eps = sp.usable(local_node=node)
    internal_eps = local_eps if sp.service.internal_local else cluster_eps
    external_eps = local_eps if sp.service.external_local else cluster_eps
    reject = "goto reject-chain"

    # Endpoint chains, for ClientIP affinity only: refresh the client in the endpoint's set, then DNAT.
    if sp.service.affinity_timeout:
        for ep in {*internal_eps, *external_eps}:
            name = _affinity_set(sp, ep)
            out.affinity_sets[name] = nft.Set(
                name, "ipv4_addr", ("dynamic", "timeout"), timeout=sp.service.affinity_timeout
            )
            chains[_endpoint_chain(sp, ep)] = [
                Rule(update_set=_affinity_set(sp, ep)),
                Rule(dnat=(ep.ip, ep.port), proto=sp.proto),
            ]
            comments[_endpoint_chain(sp, ep)] = nft.key_comment(_ids(sp, ep), sp.key, f"{ep.ip}:{ep.port}")

    # ClusterIP.
    if sp.service.cluster_ip:
        addr = addr_key(sp.service.cluster_ip, sp.proto, sp.port)
        if internal_eps:
            rules = [Rule(saddr_not=cluster_cidr, mark_masq=True, comment="cluster IP from outside the pod network")]
            chains[svc_chain] = rules + _pick(sp, tuple(sorted(internal_eps)))
            service_ips[addr] = f"goto {svc_chain}"
        elif sp.service.internal_local and cluster_eps:
            no_endpoint_ips[addr] = "drop"  # kube-proxy: internalTrafficPolicy Local with no local endpoint
        else:
            no_endpoint_ips[addr] = reject

    # External traffic: NodePort, external IPs, load-balancer IPs.
    if sp.has_external:
        if external_eps:
            ext: list[Rule] = []
            if sp.service.external_local:
                # kube-proxy: pods and the node itself reaching an ETP=Local service get Cluster behaviour; real
                # external clients go to local endpoints only, unmasqueraded (their source IP is kept).
                ext.append(Rule(saddr=cluster_cidr, goto=svc_chain if internal_eps else local_chain))
                ext.append(Rule(fib_saddr_local=True, mark_masq=True))
                ext.append(Rule(fib_saddr_local=True, goto=svc_chain if internal_eps else local_chain))
                ext.append(Rule(goto=local_chain))
                chains[local_chain] = _pick(sp, tuple(sorted(external_eps)))
            else:
                ext.append(Rule(mark_masq=True, comment="external traffic is masqueraded (policy Cluster)"))
                if internal_eps and not sp.service.internal_local:
                    ext.append(Rule(goto=svc_chain))
                else:
                    chains[local_chain] = _pick(sp, tuple(sorted(external_eps)))
                    ext.append(Rule(goto=local_chain))
            chains[ext_chain] = ext
            verdict = f"goto {ext_chain}"
            for ip in (*sp.service.external_ips, *sp.service.lb_ips):
                service_ips[addr_key(ip, sp.proto, sp.port)] = verdict
            if sp.node_port:
                nodeports[port_key(sp.proto, sp.node_port)] = verdict
        else:
            # No endpoint for external traffic: reject when the service has none at all; drop under policy
            # Local when only this node has none (the load balancer's health check steers clients away).
            verdict = "drop" if (sp.service.external_local and cluster_eps) else reject
            for ip in (*sp.service.external_ips, *sp.service.lb_ips):
                no_endpoint_ips[addr_key(ip, sp.proto, sp.port)] = verdict
            if sp.node_port:
                no_endpoint_nodeports[port_key(sp.proto, sp.node_port)] = verdict
    svc_comment = nft.key_comment(ident, sp.key)
    out.chains = {
        name: nft.Chain(name, tuple(rules), comment=comments.get(name, svc_comment)) for name, rules in chains.items()
    }
    return out


# -- the fixed part of the table ------------------------------------------------------------------------------


def _filter(hook: str, priority: int) -> nft.Hook:
    return nft.Hook("filter", hook, str(priority))


def fixed_chains(*, service_cidr: str) -> list[nft.Chain]:
    """The base chains and the chains they jump to, which do not depend on any service."""
    new = True
    return [
        nft.Chain("mark-for-masquerade", (nft.Text(f"meta mark set meta mark | {MASQ_MARK:#x}"),)),
        nft.Chain(
            "masquerading",
            (
                nft.Text(f"meta mark & {MASQ_MARK:#x} == 0 return"),
                nft.Text(f"meta mark set meta mark ^ {MASQ_MARK:#x}"),
                nft.Text("masquerade fully-random"),
            ),
        ),
        nft.Chain("reject-chain", (Rule(reject=True, comment="service has no endpoints"),)),
        nft.Chain(
            "filter-input",
            (Rule(ct_new=new, jump="nodeport-endpoints-check"), Rule(ct_new=new, jump="service-endpoints-check")),
            _filter("input", -110),
        ),
        nft.Chain(
            "filter-forward",
            (Rule(ct_new=new, jump="service-endpoints-check"), Rule(ct_new=new, jump="cluster-ips-check")),
            _filter("forward", -110),
        ),
        nft.Chain("filter-output", (Rule(ct_new=new, jump="service-endpoints-check"),), _filter("output", -110)),
        nft.Chain("filter-output-post-dnat", (Rule(ct_new=new, jump="cluster-ips-check"),), _filter("output", -90)),
        nft.Chain("nat-prerouting", (Rule(jump="services"),), nft.Hook("nat", "prerouting", "dstnat")),
        nft.Chain("nat-output", (Rule(jump="services"),), nft.Hook("nat", "output", "-100")),
        nft.Chain(
            "nat-postrouting",
            (
                Rule(
                    ct_dnat=True,
                    saddr_daddr_set="hairpin",
                    masquerade=True,
                    comment="hairpin: a pod reaching itself via a service",
                ),
                Rule(jump="masquerading"),
            ),
            nft.Hook("nat", "postrouting", "srcnat"),
        ),
        nft.Chain("service-endpoints-check", (Rule(vmap="no-endpoint-services"),)),
        nft.Chain(
            "nodeport-endpoints-check",
            (Rule(daddr_set="nodeport-ips", vmap="no-endpoint-nodeports", vmap_by_port=True),),
        ),
        nft.Chain(
            "cluster-ips-check",
            (
                Rule(daddr_set="cluster-ips", reject=True, comment="reject traffic to invalid ports of ClusterIPs"),
                Rule(daddr=service_cidr, drop=True, comment="drop traffic to unallocated ClusterIPs"),
            ),
        ),
        nft.Chain(
            "services",
            (Rule(vmap="service-ips"), Rule(daddr_set="nodeport-ips", vmap="service-nodeports", vmap_by_port=True)),
        ),
    ]


def hairpin_pairs(pod_cidr: str) -> frozenset[str]:
    """(ip . ip) for every address of this node's pod subnet: after DNAT, source == destination is hairpin."""
    if not pod_cidr:
        return frozenset()
    net = ipaddress.ip_network(pod_cidr, strict=False)
    if net.num_addresses > 4096:
        return frozenset()
    return frozenset(f"{a} . {a}" for a in net.hosts())


class ProxyTable:
    """The desired `ip kwire-proxy` table, kept per service port and merged as service ports change."""

    def __init__(self, *, cluster_cidr: str, service_cidr: str, node_ips: tuple[str, ...], pod_cidr: str = "") -> None:
        self.cluster_cidr = cluster_cidr
        self.service_cidr = service_cidr
        self.node_ips = node_ips
        self.pod_cidr = pod_cidr
        self.services: dict[str, ServiceRules] = {}
        self._fixed = {c.name: c for c in fixed_chains(service_cidr=service_cidr)}
        self._chains: dict[str, nft.Chain] = dict(self._fixed)
        self._sets: dict[str, nft.Set] = {
            "nodeport-ips": nft.Set("nodeport-ips", "ipv4_addr", elements=frozenset(node_ips or ("127.0.0.1",))),
            "hairpin": nft.Set("hairpin", "ipv4_addr . ipv4_addr", elements=hairpin_pairs(pod_cidr)),
        }
        self._elements: dict[str, dict[str, str]] = {m: {} for m in MAP_NAMES}
        self._cluster_ips: Counter[str] = Counter()
        # The snapshots last handed out, reused while their part is unchanged (the diff then skips them by identity).
        self._maps: dict[str, nft.Map] = {}
        self._cluster_ip_set: nft.Set | None = None

    def set(self, sr: ServiceRules) -> None:
        """Add or replace one service port's rules."""
        self.remove(sr.key)
        self.services[sr.key] = sr
        self._chains.update(sr.chains)
        self._sets.update(sr.affinity_sets)
        for m, elems in sr.maps.items():
            if elems:
                self._elements[m].update(elems)
                self._maps.pop(m, None)
        if sr.cluster_ip:
            self._cluster_ips[sr.cluster_ip] += 1
            self._cluster_ip_set = None

    def remove(self, key: str) -> None:
        sr = self.services.pop(key, None)
        if sr is None:
            return
        for name in sr.chains:
            self._chains.pop(name, None)
        for name in sr.affinity_sets:
            self._sets.pop(name, None)
        for m, elems in sr.maps.items():
            if elems:
                merged = self._elements[m]
                for k in elems:
                    merged.pop(k, None)
                self._maps.pop(m, None)
        if sr.cluster_ip:
            self._cluster_ip_set = None
            self._cluster_ips[sr.cluster_ip] -= 1
            if self._cluster_ips[sr.cluster_ip] <= 0:
                del self._cluster_ips[sr.cluster_ip]

    def table(self) -> nft.Table:
        """A snapshot of the desired table (later changes to this ProxyTable do not alter it)."""
        if self._cluster_ip_set is None:
            self._cluster_ip_set = nft.Set("cluster-ips", "ipv4_addr", elements=frozenset(self._cluster_ips))
        sets = dict(self._sets)
        sets["cluster-ips"] = self._cluster_ip_set
        for name in MAP_NAMES:
            if name not in self._maps:
                key_type = PROTO_PORT if name.endswith("nodeports") else ADDR_PROTO_PORT
                self._maps[name] = nft.Map(name, key_type, elements=dict(self._elements[name]))
        return nft.Table("ip", TABLE, chains=dict(self._chains), sets=sets, maps=dict(self._maps))


def build(
    ports: list[ServicePort],
    *,
    node: str,
    node_ips: tuple[str, ...],
    cluster_cidr: str,
    service_cidr: str,
    pod_cidr: str = "",
) -> ProxyTable:
    pt = ProxyTable(cluster_cidr=cluster_cidr, service_cidr=service_cidr, node_ips=node_ips, pod_cidr=pod_cidr)
    for sp in ports:
        pt.set(service_rules(sp, node=node, cluster_cidr=cluster_cidr))
    return pt
