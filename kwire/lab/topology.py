"""The lab topology as pure data: names and addresses of the LAN, the nodes and the outside client.

Every name starts with `kwire-<lab>-` so `kwire lab down` (and a human) can find all of it. Labs are isolated by
namespaces, so they may reuse the same LAN subnet; only the API port on the host's loopback must differ.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LAB = "default"
DEFAULT_LAN = "192.168.77.0/24"
STATE_ROOT = Path("/var/lib/kwire/labs")
HOST_IFACE = "eth0"  # a host's LAN interface (flannel's --flannel-iface)
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$")


@dataclass(frozen=True)
class Host:
    name: str  # node1, node2, ..., client
    netns: str
    ip: str
    lan_port: str  # the veth end on the LAN bridge (in the LAN namespace)

    @property
    def is_client(self) -> bool:
        return self.name == "client"


@dataclass(frozen=True)
class Topology:
    name: str
    lan_netns: str
    bridge: str
    lan_cidr: str
    nodes: tuple[Host, ...]
    client: Host

    @property
    def prefix_len(self) -> int:
        return ipaddress.ip_network(self.lan_cidr).prefixlen

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (*self.nodes, self.client)

    @property
    def server(self) -> Host:
        return self.nodes[0]

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig.yaml"

    def host(self, name: str) -> Host | None:
        for h in self.hosts:
            if h.name == name:
                return h
        return None

    @property
    def netns_prefix(self) -> str:
        return f"kwire-{self.name}-"


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"lab name {name!r} must be 1-16 lower-case letters, digits or '-'")
    return name


def build(name: str = DEFAULT_LAB, *, nodes: int = 3, lan_cidr: str = DEFAULT_LAN) -> Topology:
    validate_name(name)
    if not 1 <= nodes <= 50:
        raise ValueError("a lab has 1 to 50 nodes")
    net = ipaddress.ip_network(lan_cidr)
    if net.num_addresses < 256:
        raise ValueError(f"the lab LAN {lan_cidr} must be a /24 or larger")
    base = net.network_address
    hosts = tuple(
        Host(name=f"node{i}", netns=f"kwire-{name}-node{i}", ip=str(base + 10 + i), lan_port=f"kw-node{i}")
        for i in range(1, nodes + 1)
    )
    client = Host(name="client", netns=f"kwire-{name}-client", ip=str(base + 200), lan_port="kw-client")
    return Topology(
        name=name,
        lan_netns=f"kwire-{name}-lan",
        bridge="kwire-br0",
        lan_cidr=str(net),
        nodes=hosts,
        client=client,
    )
