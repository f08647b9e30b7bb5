"""Builds and removes a lab's network: the LAN namespace with its bridge, and one namespace per host on it.

Everything is created inside kwire's own namespaces; the veth pairs are made in the LAN namespace with their
peer placed straight into the host namespace, so nothing ever appears in the machine's root namespace.
"""

from __future__ import annotations

import logging

from kwire.kernel import netns
from kwire.kernel.pyroute import IPRoute
from kwire.lab.topology import HOST_IFACE, Host, Topology

log = logging.getLogger(__name__)


def _sysctl(ns: str, key: str, value: str) -> None:
    def write() -> None:
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)

    netns.run_in(ns, write)


def _ensure_bridge(topo: Topology) -> None:
    with IPRoute(netns=topo.lan_netns) as ipr:
        if not ipr.link_lookup(ifname=topo.bridge):
            ipr.link("add", ifname=topo.bridge, kind="bridge")
        idx = ipr.link_lookup(ifname=topo.bridge)[0]
        ipr.link("set", index=idx, state="up")
    # The LAN is a plain switch: its frames must not be run through the LAN namespace's (empty) netfilter.
    _sysctl(topo.lan_netns, "net.bridge.bridge-nf-call-iptables", "0")


def _ensure_host(topo: Topology, host: Host) -> None:
    netns.create(host.netns)
    with IPRoute(netns=topo.lan_netns) as lan:
        if not lan.link_lookup(ifname=host.lan_port):
            lan.link("add", ifname=host.lan_port, kind="veth", peer={"ifname": HOST_IFACE, "net_ns_fd": host.netns})
        port = lan.link_lookup(ifname=host.lan_port)[0]
        br = lan.link_lookup(ifname=topo.bridge)[0]
        lan.link("set", index=port, master=br, state="up")
    with IPRoute(netns=host.netns) as ipr:
        idx = ipr.link_lookup(ifname=HOST_IFACE)[0]
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)}
        if host.ip not in have:
            ipr.addr("add", index=idx, address=host.ip, prefixlen=topo.prefix_len)
        ipr.link("set", index=idx, state="up")
        # A default route (on-link: the LAN has no router) as every real host has one: the kernel must find a route
        # for a Service IP before the nat OUTPUT hook can DNAT a node's own connection to it.
        if not any(r["dst_len"] == 0 for r in ipr.get_routes(family=2, table=254)):
            ipr.route("add", dst="0.0.0.0/0", oif=idx, scope=253)
    if not host.is_client:
        # A node routes pod traffic (as a K3s node does with net.ipv4.ip_forward=1).
        _sysctl(host.netns, "net.ipv4.ip_forward", "1")
        _sysctl(host.netns, "net.bridge.bridge-nf-call-iptables", "1")


def up(topo: Topology) -> None:
    """Create (or complete) the lab network; idempotent."""
    netns.create(topo.lan_netns)
    _ensure_bridge(topo)
    for host in topo.hosts:
        _ensure_host(topo, host)
    log.info("lab %s network up: %d nodes on %s", topo.name, len(topo.nodes), topo.lan_cidr)


def down(topo: Topology) -> list[str]:
    """Remove every namespace whose name carries the lab's prefix (pods' too); returns what was removed."""
    removed = []
    for name in netns.list_names(topo.netns_prefix):
        netns.remove(name)
        removed.append(name)
    return removed


def set_link(topo: Topology, host: Host, *, up: bool) -> None:
    """Plug or unplug a host's LAN cable (used to simulate a node failing)."""
    with IPRoute(netns=topo.lan_netns) as lan:
        idx = lan.link_lookup(ifname=host.lan_port)
        if idx:
            lan.link("set", index=idx[0], state="up" if up else "down")
