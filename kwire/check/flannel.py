"""Nodes and flannel's view of them, from the API: every node Ready, every node with a subnet lease
(spec.podCIDR, flannel's kube subnet manager) that overlaps no other, flannel's annotations published, and no two
nodes announcing the same `flannel.alpha.coreos.com/public-ip` (or VtepMAC): the symptom of a wrong
`--flannel-iface`/`--node-ip` on a multi-NIC host (or of cloned VMs), where the other nodes send one node's pod
traffic to another."""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from typing import Any

from kwire.check.finding import Finding

Obj = dict[str, Any]
ANN = "flannel.alpha.coreos.com/"
PUBLIC_IP = ANN + "public-ip"
BACKEND_DATA = ANN + "backend-data"


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _annotations(obj: Obj) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((obj.get("metadata") or {}).get("annotations") or {}).items()}


def internal_ip(node: Obj) -> str:
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == "InternalIP":
            return str(a.get("address", ""))
    return ""


def check(nodes: list[Obj], *, backend: str = "vxlan") -> list[Finding]:
    findings: list[Finding] = []
    cidrs: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    by_ip: dict[str, list[str]] = defaultdict(list)
    by_mac: dict[str, list[str]] = defaultdict(list)
    for node in sorted(nodes, key=_name):
        name = _name(node)
        conds = {c.get("type"): c for c in (node.get("status") or {}).get("conditions") or []}
        ready = conds.get("Ready") or {}
        if ready.get("status") != "True":
            why = ready.get("message") or ready.get("reason") or "no Ready condition posted"
            findings.append(
                Finding(
                    "error",
                    "nodes",
                    name,
                    f"node {name} is not Ready ({ready.get('status', 'Unknown')}): {why}",
                    "is its agent running? (kwire lab node start NODE; systemctl status kwire-agent; its log)",
                )
            )
        cidr = (node.get("spec") or {}).get("podCIDR")
        if not cidr:
            findings.append(
                Finding(
                    "error",
                    "flannel",
                    name,
                    f"node {name} has no subnet lease (spec.podCIDR): flannel cannot start there and its pods get no IP",
                    "check the server's log for node IPAM (cluster-cidr exhausted? node-cidr-mask-size?)",
                )
            )
        else:
            try:
                cidrs.append((name, ipaddress.ip_network(str(cidr))))
            except ValueError:
                findings.append(Finding("error", "flannel", name, f"node {name} has an invalid podCIDR {cidr!r}"))
        ann = _annotations(node)
        if backend != "none" and cidr:
            ip = ann.get(PUBLIC_IP, "")
            if not ip:
                findings.append(
                    Finding(
                        "warning",
                        "flannel",
                        name,
                        f"node {name} has no {PUBLIC_IP} annotation: flannel on it has not started, so the other "
                        "nodes do not route to its pods",
                        "look at the node's agent log (flannel: ...)",
                    )
                )
            else:
                by_ip[ip].append(name)
            if backend == "vxlan":
                try:
                    mac = str((json.loads(ann.get(BACKEND_DATA) or "null") or {}).get("VtepMAC", ""))
                except (ValueError, AttributeError):
                    mac = ""
                if mac:
                    by_mac[mac.lower()].append(name)
    for i, (a, net_a) in enumerate(cidrs):
        for b, net_b in cidrs[i + 1 :]:
            if net_a.version == net_b.version and net_a.overlaps(net_b):  # type: ignore[arg-type]
                findings.append(
                    Finding(
                        "error",
                        "flannel",
                        f"{a}, {b}",
                        f"nodes {a} and {b} have overlapping pod subnets {net_a} and {net_b}",
                        "delete and re-register one of them so node IPAM gives it a free subnet",
                    )
                )
    node_by_name = {_name(n): n for n in nodes}
    for ip, names in sorted(by_ip.items()):
        if len(names) < 2:
            continue
        wrong = [n for n in names if internal_ip(node_by_name[n]) != ip] or names[1:]
        for n in wrong:
            others = ", ".join(x for x in names if x != n)
            own = internal_ip(node_by_name[n])
            findings.append(
                Finding(
                    "error",
                    "flannel",
                    n,
                    f"nodes {', '.join(names)} all announce flannel public-ip {ip}: the other nodes send {n}'s pod "
                    f"traffic to {others}" + (f" ({n}'s InternalIP is {own})" if own and own != ip else ""),
                    f"restart {n}'s agent with --flannel-iface set to the interface holding "
                    f"{own or 'its own address'} (or --node-ip {own or 'ADDRESS'})",
                )
            )
    for mac, names in sorted(by_mac.items()):
        if len(names) > 1:
            findings.append(
                Finding(
                    "error",
                    "flannel",
                    ", ".join(names),
                    f"nodes {', '.join(names)} share VtepMAC {mac}: VXLAN frames for one reach the other (cloned "
                    "machines?)",
                    "on all but one: stop the agent, delete flannel.1 and <data-dir>/flannel/vtep-mac, start it",
                )
            )
    return findings
