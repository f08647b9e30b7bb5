"""The NetworkPolicy nftables ruleset as data, and its rendering as one transaction (whole table or difference).

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

`Ruleset` keeps chains, sets and map elements as plain data so that the table can be rendered whole (`render_full`)
or as the difference from what was applied (`render_partial`), and `tracer.py` can evaluate it without a kernel.
"""

from __future__ import annotations

import hashlib
from base64 import b32encode
from dataclasses import dataclass, field
from functools import lru_cache

TABLE = "kwire-netpol"
LOG_PREFIX = "kwire-netpol-deny "
LOG_LIMIT = "deny-log"
ADDR = "addr"  # set type ipv4_addr, flags interval
ADDR_PORT = "addr_port"  # set type ipv4_addr . inet_proto . inet_service


@lru_cache(maxsize=65536)
def short_id(*parts: str) -> str:
    """A stable, readable, length-bounded name part (kube-proxy's hashAndTruncate idea)."""
    text = "/".join(parts)
    digest = b32encode(hashlib.sha256(text.encode()).digest()).decode()[:8].lower()
    readable = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text)
    return f"{digest}-{readable}"[:48]


def policy_chain(key: str, direction: str) -> str:
    return f"pol-{direction[:2]}-{short_id(key)}"


def pod_chain(key: str, direction: str) -> str:
    return f"pod-{direction[:2]}-{short_id(key)}"


def peer_set(peers_key: str) -> str:
    """The set of a rule's peers, named by what they mean so that identical peers share one set."""
    return "peers-" + b32encode(hashlib.sha256(peers_key.encode()).digest()).decode()[:16].lower()


def rule_set(key: str, direction: str, index: int, suffix: str = "") -> str:
    return f"pol-{direction[:2]}-{short_id(key)}-r{index}{suffix}"


@dataclass(frozen=True)
class Rule:
    """One rule of a policy or pod chain. Matches are ANDed; at most one verdict."""

    saddr_set: str = ""  # ip saddr @set
    daddr_set: str = ""  # ip daddr @set
    daddr_port_set: str = ""  # ip daddr . meta l4proto . th dport @set (named ports)
    proto: str = ""  # meta l4proto
    dport: int = 0
    dport_end: int = 0
    log: bool = False  # rate-limited log of the packet (the named limit `deny-log`)
    counter: bool = False
    jump: str = ""
    accept: bool = False
    drop: bool = False
    comment: str = ""

    def render(self) -> str:
        m = []
        if self.saddr_set:
            m.append(f"ip saddr @{self.saddr_set}")
        if self.daddr_set:
            m.append(f"ip daddr @{self.daddr_set}")
        if self.daddr_port_set:
            m.append(f"ip daddr . meta l4proto . th dport @{self.daddr_port_set}")
        if self.proto:
            m.append(f"meta l4proto {self.proto}")
            if self.dport:
                m.append(f"th dport {self.dport}-{self.dport_end}" if self.dport_end else f"th dport {self.dport}")
        if self.log:
            m.append(f'limit name "{LOG_LIMIT}" log prefix "{LOG_PREFIX}"')
        if self.counter:
            m.append("counter")
        if self.jump:
            m.append(f"jump {self.jump}")
        elif self.accept:
            m.append("accept")
        elif self.drop:
            m.append("drop")
        text = " ".join(m)
        if self.comment:
            text += f' comment "{comment_text(self.comment)}"'
        return text


def comment_text(text: str) -> str:
    """nft comments are at most 128 bytes and may not contain a double quote."""
    return text.replace('"', "'").encode()[:127].decode(errors="ignore")


@dataclass(frozen=True)
class NamedSet:
    kind: str  # ADDR | ADDR_PORT
    elements: tuple[str, ...] = ()

    def declaration(self) -> str:
        if self.kind == ADDR:
            return "type ipv4_addr; flags interval;"
        return "type ipv4_addr . inet_proto . inet_service;"


@dataclass
class Ruleset:
    node_ips: tuple[str, ...] = ()
    log: bool = True
    chains: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    sets: dict[str, NamedSet] = field(default_factory=dict)
    ingress_pods: dict[str, str] = field(default_factory=dict)  # pod IP -> pod chain
    egress_pods: dict[str, str] = field(default_factory=dict)


# -- rendering ------------------------------------------------------------------------------------------------


def _elements(items: tuple[str, ...] | list[str]) -> str:
    return ", ".join(items)


def _map_elements(m: dict[str, str]) -> str:
    return _elements([f"{ip} : jump {chain}" for ip, chain in sorted(m.items())])


def _static(rs: Ruleset) -> str:
    ing = f" elements = {{ {_map_elements(rs.ingress_pods)} }}" if rs.ingress_pods else ""
    eg = f" elements = {{ {_map_elements(rs.egress_pods)} }}" if rs.egress_pods else ""
    return f"""
  map ingress-pods {{ type ipv4_addr : verdict;{ing} }}
  map egress-pods {{ type ipv4_addr : verdict;{eg} }}
  chain egress {{
    type filter hook forward priority 0; policy accept;
    ct state established,related accept
    ip saddr vmap @egress-pods
  }}
  chain egress-input {{
    type filter hook input priority 0; policy accept;
    ct state established,related accept
    ip saddr vmap @egress-pods
  }}
  chain ingress {{
    type filter hook forward priority 1; policy accept;
    ct state established,related accept
    fib saddr type local accept comment "the node's own traffic"
    ip daddr vmap @ingress-pods
  }}
"""


def render_full(rs: Ruleset) -> str:
    """One transaction replacing the whole table (connections already accepted live on in conntrack)."""
    out = [f"add table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    if rs.log:
        out.append(f"  limit {LOG_LIMIT} {{ rate 5/second }}")
    for name, s in sorted(rs.sets.items()):
        elems = f" elements = {{ {_elements(s.elements)} }}" if s.elements else ""
        out.append(f"  set {name} {{ {s.declaration()}{elems} }}")
    # Chains are declared before the maps and the rules that jump to them.
    for name in sorted(rs.chains):
        out.append(f"  chain {name} {{ }}")
    out.append(_static(rs))
    for name, rules in sorted(rs.chains.items()):
        if rules:
            out.append(f"  chain {name} {{")
            out += [f"    {r.render()}" for r in rules]
            out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def render_partial(old: Ruleset, new: Ruleset) -> str:
    """One transaction taking the table from `old` to `new` (same node IPs and log setting).

    Order keeps every reference valid inside the transaction: new sets and chains are declared first, changed sets
    are refilled, map elements that go or change are deleted, changed chains are flushed and refilled, new map
    elements are added, and only then are chains and sets no longer used flushed and deleted.
    """
    t = TABLE
    out: list[str] = []
    for name, s in sorted(new.sets.items()):
        o = old.sets.get(name)
        if o is s or o == s:
            continue
        if o is None:
            out.append(f"add set ip {t} {name} {{ {s.declaration()} }}")
        else:
            out.append(f"flush set ip {t} {name}")
        if s.elements:
            out.append(f"add element ip {t} {name} {{ {_elements(s.elements)} }}")
    changed: list[str] = []
    for name, rules in sorted(new.chains.items()):
        o_rules = old.chains.get(name)
        if o_rules is None:
            out.append(f"add chain ip {t} {name}")
            changed.append(name)
        elif o_rules is not rules and o_rules != rules:
            out.append(f"flush chain ip {t} {name}")
            changed.append(name)
    for mname, o_map, n_map in (
        ("ingress-pods", old.ingress_pods, new.ingress_pods),
        ("egress-pods", old.egress_pods, new.egress_pods),
    ):
        gone = sorted(ip for ip, c in o_map.items() if n_map.get(ip) != c)
        if gone:
            out.append(f"delete element ip {t} {mname} {{ {_elements(gone)} }}")
    for name in changed:
        out += [f"add rule ip {t} {name} {r.render()}" for r in new.chains[name]]
    for mname, o_map, n_map in (
        ("ingress-pods", old.ingress_pods, new.ingress_pods),
        ("egress-pods", old.egress_pods, new.egress_pods),
    ):
        added = {ip: c for ip, c in n_map.items() if o_map.get(ip) != c}
        if added:
            out.append(f"add element ip {t} {mname} {{ {_map_elements(added)} }}")
    removed = sorted(set(old.chains) - set(new.chains))
    out += [f"flush chain ip {t} {name}" for name in removed]
    out += [f"delete chain ip {t} {name}" for name in removed]
    out += [f"delete set ip {t} {name}" for name in sorted(set(old.sets) - set(new.sets))]
    return "\n".join(out) + ("\n" if out else "")
