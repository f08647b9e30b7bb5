"""The NetworkPolicy table as data: the compiled pieces (`Ruleset`) and the `nft.Table` they make.

Table `ip kwire-netpol`, two base chains on the forward hook and one on input:

    chain egress  { type filter hook forward priority 0;   ct state established,related accept; ip saddr vmap @egress-pods }
    chain ingress { type filter hook forward priority 1;   ct state established,related accept;
                    fib saddr type local accept; ip daddr vmap @ingress-pods }
    chain egress-input { type filter hook input priority 0; ct state established,related accept; ip saddr vmap @egress-pods }

The maps send a local isolated pod's packets to its pod chain (`pod-in-*` / `pod-eg-*`), which jumps to the chain of
every policy selecting it (`pol-in-*` / `pol-eg-*`), then logs (rate-limited) and drops with a counter. A policy
chain holds one rule per (rule, port) with a counter; a match `accept`s, which ends that base chain only: the packet
still meets the other base chain, so a same-node connection is checked for the source's egress (priority 0) and the
destination's ingress (priority 1) in one pass. Peers are named interval sets per (policy, direction, rule); named
ports are `ipv4_addr . inet_proto . inet_service` sets of (pod IP, protocol, port).

Every rule, the base chains' included, is a typed `Rule`; `Ruleset.table()` is the desired table the agent's nft
reconciler diffs and applies and that `tracer.py` walks from its base chains. Chain and set names come from the
one naming scheme, `nft.object_id`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from kwire.kernel import nft

TABLE = "kwire-netpol"
LOG_PREFIX = "kwire-netpol-deny "
LOG_LIMIT = "deny-log"


@lru_cache(maxsize=65536)
def _id(key: str) -> str:
    """The one naming scheme (`nft.object_id`), 48 characters so that prefixes and rule suffixes fit."""
    return nft.object_id(key, length=48)


def chain_comment(key: str) -> str:
    """The full key, when the chain's name had to truncate it (`nft.key_comment`)."""
    return nft.key_comment(_id(key), key)


def policy_chain(key: str, direction: str) -> str:
    return f"pol-{direction[:2]}-{_id(key)}"


def pod_chain(key: str, direction: str) -> str:
    return f"pod-{direction[:2]}-{_id(key)}"


def peer_set(peers_key: str) -> str:
    """The set of a rule's peers, named by what they mean so that identical peers share one set."""
    return "peers-" + nft.digest(peers_key, 16)


def rule_set(key: str, direction: str, index: int, suffix: str = "") -> str:
    return f"pol-{direction[:2]}-{_id(key)}-r{index}{suffix}"


@dataclass(frozen=True)
class Rule:
    """One rule of a policy or pod chain. Matches are ANDed; at most one verdict."""

    saddr_set: str = ""  # ip saddr @set
    daddr_set: str = ""  # ip daddr @set
    daddr_port_set: str = ""  # ip daddr . meta l4proto . th dport @set (named ports)
    ct_established: bool = False  # ct state established,related
    fib_saddr_local: bool = False  # the source is an address of this node
    proto: str = ""  # meta l4proto
    dport: int = 0
    dport_end: int = 0
    log: bool = False  # rate-limited log of the packet (the named limit `deny-log`)
    counter: bool = False
    jump: str = ""
    vmap_saddr: str = ""  # ip saddr vmap @map
    vmap_daddr: str = ""  # ip daddr vmap @map
    accept: bool = False
    drop: bool = False
    comment: str = ""

    def render(self) -> str:
        ports = ""
        if self.proto and self.dport:
            ports = f"th dport {self.dport}-{self.dport_end}" if self.dport_end else f"th dport {self.dport}"
        return nft.rule_text(
            "ct state established,related" if self.ct_established else "",
            "fib saddr type local" if self.fib_saddr_local else "",
            self.saddr_set and f"ip saddr @{self.saddr_set}",
            self.daddr_set and f"ip daddr @{self.daddr_set}",
            self.daddr_port_set and f"ip daddr . meta l4proto . th dport @{self.daddr_port_set}",
            self.proto and f"meta l4proto {self.proto}",
            ports,
            f'limit name "{LOG_LIMIT}" log prefix "{LOG_PREFIX}"' if self.log else "",
            "counter" if self.counter else "",
            # The verdict: at most one is set.
            self.jump and f"jump {self.jump}",
            self.vmap_saddr and f"ip saddr vmap @{self.vmap_saddr}",
            self.vmap_daddr and f"ip daddr vmap @{self.vmap_daddr}",
            "accept" if self.accept else "",
            "drop" if self.drop else "",
            comment=self.comment,
        )


ADDR_TYPE = "ipv4_addr"
ADDR_PORT_TYPE = "ipv4_addr . inet_proto . inet_service"


def addr_set(name: str, elements: tuple[str, ...] | frozenset[str]) -> nft.Set:
    """Peers: addresses and CIDRs (an interval set)."""
    return nft.Set(name, ADDR_TYPE, ("interval",), elements=frozenset(elements))


def addr_port_set(name: str, elements: tuple[str, ...] | frozenset[str]) -> nft.Set:
    """Named ports: (pod IP . protocol . port)."""
    return nft.Set(name, ADDR_PORT_TYPE, elements=frozenset(elements))


def _filter(hook: str, priority: int) -> nft.Hook:
    return nft.Hook("filter", hook, str(priority))


_ESTABLISHED = Rule(ct_established=True, accept=True)
BASE_CHAINS = (
    nft.Chain("egress", (_ESTABLISHED, Rule(vmap_saddr="egress-pods")), _filter("forward", 0)),
    nft.Chain("egress-input", (_ESTABLISHED, Rule(vmap_saddr="egress-pods")), _filter("input", 0)),
    nft.Chain(
        "ingress",
        (
            _ESTABLISHED,
            Rule(fib_saddr_local=True, accept=True, comment="the node's own traffic"),
            Rule(vmap_daddr="ingress-pods"),
        ),
        _filter("forward", 1),
    ),
)


@dataclass
class Ruleset:
    """The compiled pieces of one node's table: policy and pod chains, peer and named-port sets, pod map entries."""

    node_ips: tuple[str, ...] = ()
    log: bool = True
    chains: dict[str, nft.Chain] = field(default_factory=dict)
    sets: dict[str, nft.Set] = field(default_factory=dict)
    ingress_pods: dict[str, str] = field(default_factory=dict)  # pod IP -> pod chain
    egress_pods: dict[str, str] = field(default_factory=dict)

    def table(self) -> nft.Table:
        chains = dict(self.chains)
        chains.update((c.name, c) for c in BASE_CHAINS)
        maps = {
            name: nft.Map(name, ADDR_TYPE, elements={ip: f"jump {c}" for ip, c in pods.items()})
            for name, pods in (("ingress-pods", self.ingress_pods), ("egress-pods", self.egress_pods))
        }
        limits = {LOG_LIMIT: "rate 5/second"} if self.log else {}
        return nft.Table("ip", TABLE, chains=chains, sets=dict(self.sets), maps=maps, limits=limits)
