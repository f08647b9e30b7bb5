"""Flannel's data-path backends, programmed with netlink (pyroute2): vxlan, host-gw and none.

Mirrors flannel-io/flannel `pkg/backend/vxlan` and `hostgw` as K3s embeds them:
- vxlan: device `flannel.1` (VNI 1, UDP 8472, nolearning, MTU = underlay MTU - 50, address `<lease>.0/32`, a
  stable VtepMAC). Per remote node, in this order: the neighbour entry (remote `.0` -> remote VtepMAC,
  permanent), the FDB entry (VtepMAC -> remote public IP), then the route `remote/24 via remote.0 dev flannel.1
  onlink`. ARP and FDB learning are off, so only these entries steer traffic: stale ones are removed on sync.
- host-gw: `remote/24 via remote public IP` on the underlay interface.
- none: nothing (the user brings a CNI).
Each `sync()` computes the whole desired state and applies only the differences ("ensure" semantics).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from kwire.kernel.pyroute import NUD_PERMANENT, IPRoute

log = logging.getLogger(__name__)

VXLAN_DEVICE = "flannel.1"
VXLAN_VNI = 1
VXLAN_PORT = 8472
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8
RTNH_F_ONLINK = 4
NTF_SELF = 0x02
AF_BRIDGE = 7
RTPROT_KWIRE = 44  # routes we own carry this protocol number, so sync never touches anyone else's routes


@dataclass(frozen=True, order=True)
class Remote:
    node: str
    subnet: str  # "10.42.1.0/24"
    public_ip: str
    vtep_mac: str = ""

    @property
    def gateway(self) -> str:
        """The remote subnet's `.0` address (flannel.1's address on that node)."""
        return str(ipaddress.ip_network(self.subnet).network_address)


def underlay_mtu(ipr: IPRoute, iface: str) -> int:
    link = ipr.get_links(ifname=iface)[0]
    return int(link.get_attr("IFLA_MTU"))


class VxlanBackend:
    def __init__(self, *, iface: str, local_ip: str, subnet: str, vtep_mac: str) -> None:
        self.iface = iface
        self.local_ip = local_ip
        self.subnet = ipaddress.ip_network(subnet)
        self.vtep_mac = vtep_mac

    @property
    def address(self) -> str:
        return str(self.subnet.network_address)

    def mtu(self) -> int:
        with IPRoute() as ipr:
            return underlay_mtu(ipr, self.iface) - VXLAN_OVERHEAD

    def ensure_device(self) -> int:
        """Create flannel.1 or fix it; returns its ifindex. A device with wrong parameters is recreated."""
        with IPRoute() as ipr:
            under = ipr.link_lookup(ifname=self.iface)
            if not under:
                raise RuntimeError(f"flannel: interface {self.iface} not found")
            mtu = underlay_mtu(ipr, self.iface) - VXLAN_OVERHEAD
            idx = ipr.link_lookup(ifname=VXLAN_DEVICE)
            if idx and not self._device_ok(ipr, idx[0]):
                log.warning("flannel: %s has unexpected parameters; recreating it", VXLAN_DEVICE)
                ipr.link("del", index=idx[0])
                idx = []
            if not idx:
                ipr.link(
                    "add",
                    ifname=VXLAN_DEVICE,
                    kind="vxlan",
                    vxlan_id=VXLAN_VNI,
                    vxlan_local=self.local_ip,
                    vxlan_link=under[0],
                    vxlan_port=VXLAN_PORT,
                    vxlan_learning=0,
                    address=self.vtep_mac,
                    mtu=mtu,
                )
                idx = ipr.link_lookup(ifname=VXLAN_DEVICE)
                log.info(
                    "flannel: created %s (VNI %d, local %s, mtu %d, mac %s)",
                    VXLAN_DEVICE,
                    VXLAN_VNI,
                    self.local_ip,
                    mtu,
                    self.vtep_mac,
                )
            index = idx[0]
            ipr.link("set", index=index, mtu=mtu, state="up")
            want = f"{self.address}/32"
            addrs = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)]
            for addr, plen in addrs:
                if f"{addr}/{plen}" != want:
                    ipr.addr("del", index=index, address=addr, prefixlen=plen)
            if (self.address, 32) not in addrs:
                ipr.addr("add", index=index, address=self.address, prefixlen=32)
            return int(index)

    def _device_ok(self, ipr: IPRoute, index: int) -> bool:
        link = ipr.get_links(index)[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return False
        data = info.get_attr("IFLA_INFO_DATA")
        return (
            data.get_attr("IFLA_VXLAN_ID") == VXLAN_VNI
            and data.get_attr("IFLA_VXLAN_LOCAL") == self.local_ip
            and data.get_attr("IFLA_VXLAN_PORT") == VXLAN_PORT
            and str(link.get_attr("IFLA_ADDRESS")).lower() == self.vtep_mac.lower()
        )

    def sync(self, remotes: list[Remote]) -> None:
        index = self.ensure_device()
        want = {r.node: r for r in remotes if r.vtep_mac and r.public_ip != self.local_ip}
        with IPRoute() as ipr:
            # Current state on flannel.1.
            neigh = {
                n.get_attr("NDA_DST"): str(n.get_attr("NDA_LLADDR")).lower()
                for n in ipr.get_neighbours(ifindex=index, family=2)
                if n.get_attr("NDA_DST")
            }
            fdb: dict[str, set[str]] = {}
            for f in ipr.fdb("dump", ifindex=index):
                mac = str(f.get_attr("NDA_LLADDR") or "").lower()
                dst = f.get_attr("NDA_DST")
                if mac and dst and mac != "00:00:00:00:00:00":
                    fdb.setdefault(mac, set()).add(dst)
            routes = {
                f"{r.get_attr('RTA_DST')}/{r['dst_len']}": r.get_attr("RTA_GATEWAY")
                for r in ipr.get_routes(family=2, oif=index)
                if r.get_attr("RTA_DST") and r["dst_len"] < 32
            }
            want_neigh = {r.gateway: r.vtep_mac.lower() for r in want.values()}
            want_fdb = {r.vtep_mac.lower(): r.public_ip for r in want.values()}
            want_routes = {r.subnet: r.gateway for r in want.values()}
            # Add/refresh in flannel's order: neighbour, FDB, route (the route must never point at nothing).
            for r in sorted(want.values()):
                mac = r.vtep_mac.lower()
                if neigh.get(r.gateway) != mac:
                    ipr.neigh("replace", dst=r.gateway, lladdr=mac, ifindex=index, state=NUD_PERMANENT, family=2)
                if fdb.get(mac) != {r.public_ip}:
                    for stale in fdb.get(mac, set()) - {r.public_ip}:
                        ipr.fdb("del", ifindex=index, lladdr=mac, dst=stale)
                    ipr.fdb("replace", ifindex=index, lladdr=mac, dst=r.public_ip, state=NUD_PERMANENT, flags=NTF_SELF)
                if routes.get(r.subnet) != r.gateway:
                    ipr.route(
                        "replace", dst=r.subnet, gateway=r.gateway, oif=index, flags=RTNH_F_ONLINK, proto=RTPROT_KWIRE
                    )
            # Remove what no remote needs any more (route first, then FDB, then neighbour).
            for dst in set(routes) - set(want_routes):
                ipr.route("del", dst=dst, oif=index)
            for mac, dsts in fdb.items():
                if mac not in want_fdb:
                    for dst in dsts:
                        ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst)
            for dst in set(neigh) - set(want_neigh):
                ipr.neigh("del", dst=dst, ifindex=index, family=2)

    def teardown(self) -> None:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=VXLAN_DEVICE)
            if idx:
                ipr.link("del", index=idx[0])


class HostGwBackend:
    def __init__(self, *, iface: str, local_ip: str, subnet: str) -> None:
        self.iface = iface
        self.local_ip = local_ip
        self.subnet = ipaddress.ip_network(subnet)

    def mtu(self) -> int:
        with IPRoute() as ipr:
            return underlay_mtu(ipr, self.iface)

    def sync(self, remotes: list[Remote]) -> None:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=self.iface)[0]
            current = {
                f"{r.get_attr('RTA_DST')}/{r['dst_len']}": r.get_attr("RTA_GATEWAY")
                for r in ipr.get_routes(family=2, oif=index, proto=RTPROT_KWIRE)
                if r.get_attr("RTA_DST")
            }
            want = {r.subnet: r.public_ip for r in remotes if r.public_ip != self.local_ip}
            for dst, gw in want.items():
                if current.get(dst) != gw:
                    ipr.route("replace", dst=dst, gateway=gw, oif=index, proto=RTPROT_KWIRE)
            for dst in set(current) - set(want):
                ipr.route("del", dst=dst, oif=index, proto=RTPROT_KWIRE)

    def teardown(self) -> None:
        self.sync([])


class NoneBackend:
    """`flannel-backend: none`: no overlay, the user brings a CNI."""

    def mtu(self) -> int:
        return 1500

    def sync(self, remotes: list[Remote]) -> None:
        return None

    def teardown(self) -> None:
        return None
