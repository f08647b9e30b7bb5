"""Policies + pods + namespaces -> the node's `Ruleset`, recomputing only what a change can affect.

Only policies that select at least one pod of this node produce rules (a policy chain per policy type, peer sets per
rule); only local isolated pods get a pod chain and map elements. A `Compiler` keeps the compiled pieces and marks
pieces dirty as objects change:

- a pod change re-evaluates which local policies select it (policies of its namespace), dirties the policies whose
  peers can contain it (old or new version), and its own pod chain when it runs here;
- a namespace label change dirties the policies with a namespaceSelector peer;
- a policy change recomputes its selection and dirties the pods it selected before or selects now.

`build()` recompiles the dirty pieces and assembles the Ruleset; unchanged pieces are the same objects as before, so
`nft.diff` skips them by identity.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from kwire.agent.netpol import ruleset as rs_mod
from kwire.agent.netpol.model import EGRESS, INGRESS, Cluster, PodInfo, Policy, PolicyRule, block_networks
from kwire.agent.netpol.ruleset import Rule, Ruleset
from kwire.base.labels import Selector
from kwire.kernel import nft


class PolicyRules:
    __slots__ = ("chains", "sets")

    def __init__(self, chains: dict[str, nft.Chain], sets: dict[str, nft.Set]) -> None:
        self.chains = chains
        self.sets = sets


class PodRules:
    __slots__ = ("pod", "chains", "ingress", "egress")

    def __init__(self, pod: PodInfo, chains: dict[str, nft.Chain], ingress: str, egress: str) -> None:
        self.pod = pod
        self.chains = chains
        self.ingress = ingress  # the pod's ingress chain, "" when not isolated for ingress
        self.egress = egress


def _ip_int(ip: str) -> int:
    return int.from_bytes(socket.inet_aton(ip), "big")


def _addr_elements(ips: Iterable[str], blocks: list[ipaddress.IPv4Network]) -> tuple[str, ...]:
    """Interval-set elements for pod IPs plus ipBlocks, sorted and disjoint: the blocks are collapsed, and an IP
    inside a block is left to the block (overlapping elements would make the transaction fail)."""
    items: list[tuple[int, str]] = []
    ranges: list[tuple[int, int]] = []
    for n in ipaddress.collapse_addresses(blocks):
        lo = int(n.network_address)
        ranges.append((lo, int(n.broadcast_address)))
        items.append((lo, str(n.network_address) if n.prefixlen == 32 else str(n)))
    for ip in set(ips):
        v = _ip_int(ip)
        if not any(lo <= v <= hi for lo, hi in ranges):
            items.append((v, ip))
    items.sort()
    return tuple(text for _, text in items)


def _selector_key(sel: Selector | None) -> str:
    if sel is None:
        return "-"
    if sel.match_nothing:
        return "!"
    return ",".join(f"{r.key}{r.op}{'|'.join(sorted(r.values))}" for r in sel.requirements)


def peers_key(pol: Policy, rule: PolicyRule) -> str:
    """What a rule's peers mean, independent of the policy they are written in: rules with the same peers (a pod
    selector counts in the policy's namespace) share one set, e.g. every policy allowing "from namespace monitoring"."""
    parts = []
    for p in rule.peers:
        if p.ns_selector is not None:
            parts.append(f"ns[{_selector_key(p.ns_selector)}]pod[{_selector_key(p.pod_selector)}]")
        elif p.pod_selector is not None:
            parts.append(f"in[{pol.namespace}]pod[{_selector_key(p.pod_selector)}]")
        else:
            parts.append(f"cidr[{p.cidr}-{'|'.join(sorted(p.excepts))}]")
    return ";".join(sorted(set(parts)))


def compile_policy(cluster: Cluster, pol: Policy, selected: frozenset[str]) -> PolicyRules:
    chains: dict[str, nft.Chain] = {}
    sets: dict[str, nft.Set] = {}
    for direction in (INGRESS, EGRESS):
        if direction not in pol.types:
            continue
        rules: list[Rule] = []
        for i, rule in enumerate(pol.rules(direction)):
            rules += _compile_rule(cluster, pol, direction, i, rule, selected, sets)
        name = rs_mod.policy_chain(pol.key, direction)
        chains[name] = nft.Chain(name, tuple(rules), comment=rs_mod.chain_comment(pol.key))
    return PolicyRules(chains, sets)


def _compile_rule(
    cluster: Cluster,
    pol: Policy,
    direction: str,
    index: int,
    rule: PolicyRule,
    selected: frozenset[str],
    sets: dict[str, nft.Set],
) -> list[Rule]:
    pods = cluster.pods
    comment = f"{pol.key} {direction} {index}"
    peer_set = ""
    peer_pods: frozenset[str] = frozenset()
    if rule.peers:
        blocks: list[ipaddress.IPv4Network] = []
        for peer in rule.peers:
            if peer.selects_pods:
                peer_pods |= cluster.peer_pods(pol, peer)
            elif peer.cidr:
                blocks += block_networks(peer.cidr, peer.excepts)
        peer_set = rs_mod.peer_set(peers_key(pol, rule))
        memo_key = (frozenset(peer_pods), tuple(blocks))
        elems = cluster.elements_memo.get(memo_key)
        if elems is None:
            elems = cluster.elements_memo[memo_key] = frozenset(_addr_elements([pods[k].ip for k in peer_pods], blocks))
        sets[peer_set] = rs_mod.addr_set(peer_set, elems)
    ingress = direction == INGRESS
    base = Rule(saddr_set=peer_set) if ingress else Rule(daddr_set=peer_set)
    out: list[Rule] = []
    if not rule.ports:
        out.append(Rule(saddr_set=base.saddr_set, daddr_set=base.daddr_set, counter=True, accept=True, comment=comment))
    for p in rule.ports:
        if p.name:
            continue
        out.append(
            Rule(
                saddr_set=base.saddr_set,
                daddr_set=base.daddr_set,
                proto=p.proto,
                dport=p.port,
                dport_end=p.end_port,
                counter=True,
                accept=True,
                comment=comment,
            )
        )
    named = rule.named_ports
    if named:
        # Ingress: the name is resolved on the destination, i.e. the selected local pods. Egress: on each peer pod
        # (every pod when the rule has no peers); ipBlock peers cannot resolve a name.
        if ingress:
            targets: Iterable[str] = selected
        elif rule.peers:
            targets = peer_pods
        else:
            targets = pods.keys()
        np_elems = set()
        for k in targets:
            pod = pods[k]
            for p in named:
                port = pod.port_named(p.name, p.proto)
                if port is not None:
                    np_elems.add(f"{pod.ip} . {p.proto} . {port}")
        np_set = rs_mod.rule_set(pol.key, direction, index, "-np")
        sets[np_set] = rs_mod.addr_port_set(np_set, frozenset(np_elems))
        out.append(
            Rule(
                saddr_set=base.saddr_set,
                daddr_port_set=np_set,
                counter=True,
                accept=True,
                comment=comment,
            )
        )
    return out


def compile_pod(pod: PodInfo, ingress: list[str], egress: list[str], *, log: bool) -> PodRules:
    chains: dict[str, nft.Chain] = {}
    names = {INGRESS: "", EGRESS: ""}
    for direction, policies in ((INGRESS, ingress), (EGRESS, egress)):
        if not policies:
            continue
        rules = [Rule(jump=rs_mod.policy_chain(pk, direction), comment=pk) for pk in sorted(policies)]
        if log:
            rules.append(Rule(log=True))
        rules.append(Rule(counter=True, drop=True, comment=f"{pod.key} {direction}"))
        name = rs_mod.pod_chain(pod.key, direction)
        chains[name] = nft.Chain(name, tuple(rules), comment=rs_mod.chain_comment(pod.key))
        names[direction] = name
    return PodRules(pod, chains, names[INGRESS], names[EGRESS])


class Compiler:
    def __init__(self, node: str, *, node_ips: tuple[str, ...] = (), log: bool = True) -> None:
        self.cluster = Cluster(node)
        self.node = node
        self.node_ips = node_ips
        self.log = log
        self.selected: dict[str, frozenset[str]] = {}  # policy -> local pods it selects
        self.pod_policies: dict[str, set[str]] = {}  # local pod -> policies selecting it
        self.policy_rules: dict[str, PolicyRules] = {}
        self.pod_rules: dict[str, PodRules] = {}
        self.dirty_policies: set[str] = set()
        self.dirty_pods: set[str] = set()

    def _local(self, pod: PodInfo | None) -> bool:
        return pod is not None and pod.node == self.node

    # -- updates ---------------------------------------------------------------------------------------------
    def set_pod(self, key: str, new: PodInfo | None) -> None:
        c = self.cluster
        old = c.pods.get(key)
        if old == new:
            return
        c.set_pod(key, new)
        namespaces = {p.namespace for p in (old, new) if p is not None}
        for ns in namespaces:
            for pk in c.policies_by_ns.get(ns, ()):
                pol = c.policies[pk]
                sel = self.selected.get(pk, frozenset())
                was = key in sel
                now = self._local(new) and new is not None and pol.pod_selector.matches(new.labels)
                if was != now:
                    sel = sel | {key} if now else sel - {key}
                    if sel:
                        self.selected[pk] = sel
                    else:
                        self.selected.pop(pk, None)
                    if now:
                        self.pod_policies.setdefault(key, set()).add(pk)
                    else:
                        self.pod_policies.get(key, set()).discard(pk)
                    self.dirty_policies.add(pk)
                elif now:
                    self.dirty_policies.add(pk)  # its IP or ports may have changed (named-port sets)
        if self._local(old) or self._local(new):
            self.dirty_pods.add(key)
        if new is None:
            self.pod_policies.pop(key, None)
        for pk in self.selected:
            if pk not in self.dirty_policies:
                pol = c.policies[pk]
                if c.peers_changed(pol, old, new):
                    self.dirty_policies.add(pk)

    def set_namespace(self, name: str, labels: dict[str, str] | None) -> None:
        c = self.cluster
        if c.namespaces.get(name) == labels:
            return
        c.set_namespace(name, labels)
        for pk in self.selected:
            if c.policies[pk].has_ns_selector:
                self.dirty_policies.add(pk)

    def set_policy(self, key: str, new: Policy | None) -> None:
        c = self.cluster
        if c.policies.get(key) == new:
            return
        c.set_policy(key, new)
        old_sel = self.selected.pop(key, frozenset())
        new_sel = c.selected_local(new) if new is not None else frozenset()
        if new_sel:
            self.selected[key] = new_sel
        for k in old_sel - new_sel:
            self.pod_policies.get(k, set()).discard(key)
        for k in new_sel - old_sel:
            self.pod_policies.setdefault(k, set()).add(key)
        self.dirty_pods |= old_sel | new_sel  # also when only the policy types changed
        self.dirty_policies.add(key)

    def mark_all(self) -> None:
        self.dirty_policies |= set(self.cluster.policies)
        self.dirty_pods |= {k for k, p in self.cluster.pods.items() if p.node == self.node}

    # -- output ---------------------------------------------------------------------------------------------
    def build(self) -> Ruleset:
        c = self.cluster
        for pk in self.dirty_policies:
            pol = c.policies.get(pk)
            sel = self.selected.get(pk)
            if pol is None or not sel:
                self.policy_rules.pop(pk, None)
            else:
                self.policy_rules[pk] = compile_policy(c, pol, sel)
        for key in self.dirty_pods:
            pod = c.pods.get(key)
            pols = self.pod_policies.get(key, set())
            ing = [pk for pk in pols if INGRESS in c.policies[pk].types]
            eg = [pk for pk in pols if EGRESS in c.policies[pk].types]
            if pod is None or not self._local(pod) or not (ing or eg):
                self.pod_rules.pop(key, None)
            else:
                self.pod_rules[key] = compile_pod(pod, ing, eg, log=self.log)
        self.dirty_policies.clear()
        self.dirty_pods.clear()
        return self.assemble()

    def assemble(self) -> Ruleset:
        out = Ruleset(node_ips=self.node_ips, log=self.log)
        for pr in self.policy_rules.values():
            out.chains.update(pr.chains)
            out.sets.update(pr.sets)
        # Two local pods with one IP (one terminating, its IP handed out again): the live one wins.
        for p in sorted(self.pod_rules.values(), key=lambda p: (p.pod.terminating, p.pod.key)):
            if p.ingress and p.pod.ip not in out.ingress_pods:
                out.ingress_pods[p.pod.ip] = p.ingress
                out.chains.update({p.ingress: p.chains[p.ingress]})
            if p.egress and p.pod.ip not in out.egress_pods:
                out.egress_pods[p.pod.ip] = p.egress
                out.chains.update({p.egress: p.chains[p.egress]})
        return out
