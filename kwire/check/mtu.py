"""MTU consistency, the most common K3s overlay mistake: flannel.1 = uplink MTU - 50 (VXLAN's outer Ethernet, IP,
UDP and VXLAN headers; flannel's rule), cni0 and every pod veth = flannel's MTU (host-gw: the uplink's), the
agent's subnet.env (FLANNEL_MTU, what new pods get) = flannel.1's, and the same uplink and flannel MTU on every
node. A packet larger than a hop's MTU is dropped, and across a tunnel the ICMP "fragmentation needed" rarely
makes it back: small requests work while large transfers stall."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from kwire.check.finding import Finding
from kwire.check.vethpods import label as pod_label

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8 (flannel's pkg/backend/vxlan)
VXLAN_DEVICE = "flannel.1"
BRIDGE = "cni0"


@dataclass(frozen=True)
class Links:
    uplink: str = ""  # flannel's interface (flannel.1's underlay, else the default route's)
    uplink_mtu: int = 0
    flannel_mtu: int | None = None  # flannel.1's MTU; None without the VXLAN device
    bridge_mtu: int | None = None  # cni0's; None before the first pod
    ports: dict[str, int] = field(default_factory=dict)  # cni0's ports (pod veths) -> MTU
    subnet_env_mtu: int | None = None  # FLANNEL_MTU of the agent's subnet.env

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # every field, under its own name (what from_json reads)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Links:
        return cls(
            uplink=str(obj.get("uplink", "")),
            uplink_mtu=int(obj.get("uplink_mtu") or 0),
            flannel_mtu=obj.get("flannel_mtu"),
            bridge_mtu=obj.get("bridge_mtu"),
            ports={str(k): int(v) for k, v in (obj.get("ports") or {}).items()},
            subnet_env_mtu=obj.get("subnet_env_mtu"),
        )


RECREATE = "restart the agent (it sets flannel.1 and subnet.env from the uplink), then delete the pods of this node"


def check(links: Links, *, node: str, pods: dict[str, str] | None = None) -> list[Finding]:
    """One node's MTUs."""
    findings: list[Finding] = []
    if not links.uplink:
        return findings
    if links.flannel_mtu is not None:
        want = links.uplink_mtu - VXLAN_OVERHEAD
        pod_mtu = links.flannel_mtu
        if links.flannel_mtu > want:
            findings.append(
                Finding(
                    "error",
                    "mtu",
                    f"{node}/{VXLAN_DEVICE}",
                    f"{VXLAN_DEVICE} MTU {links.flannel_mtu} is larger than {links.uplink} MTU {links.uplink_mtu} "
                    f"- {VXLAN_OVERHEAD}: full-size packets between nodes do not fit the uplink and are dropped",
                    f"ip link set {VXLAN_DEVICE} mtu {want}, or {RECREATE}",
                )
            )
        elif links.flannel_mtu < want:
            findings.append(
                Finding(
                    "warning",
                    "mtu",
                    f"{node}/{VXLAN_DEVICE}",
                    f"{VXLAN_DEVICE} MTU {links.flannel_mtu} is below {links.uplink} MTU {links.uplink_mtu} - "
                    f"{VXLAN_OVERHEAD} = {want}: pod traffic between nodes uses smaller packets than it could",
                    f"ip link set {VXLAN_DEVICE} mtu {want}",
                )
            )
        carrier = VXLAN_DEVICE
    else:
        pod_mtu = links.uplink_mtu  # host-gw: pods' packets go out on the uplink as they are
        carrier = links.uplink
    bigger = [(n, m) for n, m in [(BRIDGE, links.bridge_mtu), *sorted(links.ports.items())] if m and m > pod_mtu]
    smaller = [(n, m) for n, m in [(BRIDGE, links.bridge_mtu), *sorted(links.ports.items())] if m and m < pod_mtu]
    if bigger:
        findings.append(
            Finding(
                "error",
                "mtu",
                f"{node}/{bigger[0][0] if len(bigger) == 1 else BRIDGE + ' ports'}",
                f"{_describe(bigger, pods or {})} larger than {carrier}'s {pod_mtu}: pods send packets the node cannot carry "
                "to other nodes, so large transfers stall while small requests work",
                RECREATE,
            )
        )
    if smaller:
        findings.append(
            Finding(
                "warning",
                "mtu",
                f"{node}/{smaller[0][0] if len(smaller) == 1 else BRIDGE + ' ports'}",
                f"{_describe(smaller, pods or {})} below {carrier}'s {pod_mtu}: pods use smaller packets than needed",
                RECREATE,
            )
        )
    if links.flannel_mtu is not None and links.subnet_env_mtu not in (None, links.flannel_mtu):
        findings.append(
            Finding(
                "warning",
                "mtu",
                f"{node}/subnet.env",
                f"subnet.env says FLANNEL_MTU={links.subnet_env_mtu} but {VXLAN_DEVICE} has {links.flannel_mtu}: new "
                "pods get an MTU that does not match the tunnel",
                "restart the agent (it rewrites subnet.env from the uplink's MTU)",
            )
        )
    return findings


def _describe(links: list[tuple[str, int]], pods: dict[str, str]) -> str:
    """ "cni0 (MTU 1450) and 2 pod veths (veth1 1450, veth2 1450) are" / "veth1 (pod veth, MTU 1450) is"."""
    named = [f"{pod_label(n, pods)} {m}" for n, m in links[:4]] + (["..."] if len(links) > 4 else [])
    if len(links) == 1:
        name, value = links[0]
        what = "the pods' bridge" if name == BRIDGE else "a pod veth"
        pod = f" of pod {pods[name]}" if name in pods else ""
        return f"{name} ({what}{pod}) MTU {value} is"
    return f"MTUs of {', '.join(named)} (the pods' bridge and veths) are"


def check_across(links: dict[str, Links]) -> list[Finding]:
    """The same uplink and flannel MTU on every node: a node whose MTU differs receives packets it cannot take (or
    sends smaller ones), and VXLAN has no path MTU discovery between pods."""
    findings: list[Finding] = []
    for attr, label in (("uplink_mtu", "uplink"), ("flannel_mtu", VXLAN_DEVICE)):
        values = {n: getattr(lk, attr) for n, lk in links.items() if lk.uplink and getattr(lk, attr) is not None}
        if len(set(values.values())) <= 1:
            continue
        common, _ = Counter(values.values()).most_common(1)[0]
        others = sorted(n for n, v in values.items() if v == common)
        for node, value in sorted(values.items()):
            if value == common:
                continue
            iface = links[node].uplink if attr == "uplink_mtu" else VXLAN_DEVICE
            findings.append(
                Finding(
                    "error",
                    "mtu",
                    f"{node}/{iface}",
                    f"{node}'s {label} MTU is {value} but {common} on {', '.join(others)}: pods on the nodes with the "
                    "larger MTU send packets this node cannot take",
                    f"give every node's {label} the same MTU (ip link set {iface} mtu {common}), then restart its "
                    "agent",
                )
            )
    return findings


def gather(*, uplink_hint: str = "", subnet_env: str = "") -> Links:
    """The MTUs in the calling process's network namespace (pyroute2), plus subnet.env's FLANNEL_MTU."""
    from kwire.kernel.pyroute import IPRoute

    env_mtu = None
    for line in subnet_env.splitlines():
        if line.startswith("FLANNEL_MTU="):
            try:
                env_mtu = int(line.split("=", 1)[1])
            except ValueError:
                pass
    with IPRoute() as ipr:
        by_index: dict[int, tuple[str, int, int | None, str, int | None]] = {}
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = str(info.get_attr("IFLA_INFO_KIND") or "") if info else ""
            under = None
            if kind == "vxlan":
                data = info.get_attr("IFLA_INFO_DATA")
                under = data.get_attr("IFLA_VXLAN_LINK") if data else None
            name = str(link.get_attr("IFLA_IFNAME"))
            by_index[int(link["index"])] = (
                name,
                int(link.get_attr("IFLA_MTU")),
                link.get_attr("IFLA_MASTER"),
                kind,
                under,
            )
        by_name = {v[0]: (i, *v[1:]) for i, v in by_index.items()}
        uplink = uplink_hint if uplink_hint in by_name else ""
        flannel = by_name.get(VXLAN_DEVICE)
        if not uplink and flannel is not None and flannel[4] in by_index:
            uplink = by_index[flannel[4]][0]
        if not uplink:
            for route in ipr.get_default_routes(family=2):
                oif = route.get_attr("RTA_OIF")
                if oif in by_index:
                    uplink = by_index[oif][0]
                    break
    bridge = by_name.get(BRIDGE)
    ports = {v[0]: v[1] for v in by_index.values() if bridge is not None and v[2] == bridge[0]}
    return Links(
        uplink=uplink,
        uplink_mtu=by_name[uplink][1] if uplink else 0,
        flannel_mtu=flannel[1] if flannel is not None else None,
        bridge_mtu=bridge[1] if bridge is not None else None,
        ports=ports,
        subnet_env_mtu=env_mtu,
    )
