"""Flannel as K3s embeds it: the node's lease, its annotations, subnet.env, the backend and masquerade.

- Lease: the node's `spec.podCIDR` (assigned by the server's node IPAM; K3s runs flannel with kube-subnet-mgr).
- Annotations (flannel's kube subnet manager): `flannel.alpha.coreos.com/backend-type`, `backend-data`
  (`{"VNI":1,"VtepMAC":"..."}`), `public-ip`, `kube-subnet-manager: "true"`. Remote nodes are read back from
  these annotations, so a node only becomes a VXLAN peer once it has published its VtepMAC.
- The VtepMAC is generated once and kept in `<data-dir>/flannel/vtep-mac`, so an agent restart (or a recreated
  `flannel.1`) never changes it and peers' neighbour/FDB entries stay valid.
- `subnet.env` (FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ) written atomically; the CNI plugin
  reads it.
- Masquerade in table `ip kwire-flannel`, flannel's FLANNEL-POSTRTG rules: pod-to-pod traffic is never
  masqueraded; pod traffic leaving the cluster network is (fully random); and a forward chain accepting pod
  traffic (flannel's FLANNEL-FWD).
A full sync runs on every node change and every few seconds, so a deleted `flannel.1` or route comes back.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
from pathlib import Path
from typing import Any

from kwire.agent.flannel.backends import HostGwBackend, NoneBackend, Remote, VxlanBackend
from kwire.agent.node import NodeRegistration
from kwire.base.files import atomic_write
from kwire.client import Informer
from kwire.kernel import nft

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ANN = "flannel.alpha.coreos.com/"
NFT_TABLE = "kwire-flannel"
RESYNC = 5.0


def load_vtep_mac(path: Path) -> str:
    """The node's VtepMAC: kept across restarts; a new one is locally administered and unicast."""
    try:
        mac = path.read_text().strip()
        if mac:
            return mac
    except FileNotFoundError:
        pass
    octets = [random.randint(0, 255) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    mac = ":".join(f"{o:02x}" for o in octets)
    atomic_write(path, mac + "\n")
    return mac


def masquerade_rules(*, cluster_cidr: str, subnet: str) -> str:
    """flannel's FLANNEL-POSTRTG / FLANNEL-FWD rules as one nft table body."""
    net = cluster_cidr
    return f"""
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    meta mark & 0x4000 == 0x4000 return comment "kube-proxy already masquerades marked packets"
    ip saddr {subnet} ip daddr {net} return comment "pod to pod: keep the pod IP"
    ip saddr {net} ip daddr {subnet} return comment "pod to pod: keep the pod IP"
    ip saddr != {net} ip daddr {subnet} return comment "outside to local pods: keep the source"
    ip saddr {net} ip daddr != 224.0.0.0/4 masquerade fully-random comment "pods leaving the cluster network"
    ip saddr != {net} ip daddr {net} masquerade fully-random comment "host to remote pods"
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ip saddr {net} accept
    ip daddr {net} accept
  }}
"""


def remote_from_node(node: Obj) -> Remote | None:
    meta = node.get("metadata") or {}
    ann = meta.get("annotations") or {}
    subnet = (node.get("spec") or {}).get("podCIDR")
    public_ip = ann.get(ANN + "public-ip")
    if not subnet or not public_ip:
        return None
    mac = ""
    try:
        data = json.loads(ann.get(ANN + "backend-data") or "{}")
        if isinstance(data, dict):
            mac = str(data.get("VtepMAC") or "")
    except ValueError:
        log.warning("flannel: node %s has malformed backend-data", meta.get("name"))
    return Remote(node=str(meta.get("name")), subnet=str(subnet), public_ip=str(public_ip), vtep_mac=mac)


class Flannel:
    def __init__(
        self,
        *,
        registration: NodeRegistration,
        nodes: Informer,
        data_dir: Path,
        backend_type: str,
        iface: str,
        cluster_cidr: str,
    ) -> None:
        self.reg = registration
        self.nodes = nodes
        self.dir = data_dir / "flannel"
        self.subnet_env = self.dir / "subnet.env"
        self.backend_type = backend_type
        self.iface = iface
        self.cluster_cidr = cluster_cidr
        self.subnet = ""
        self.mtu = 1500
        self.backend: VxlanBackend | HostGwBackend | NoneBackend = NoneBackend()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._full = True

    @property
    def node_name(self) -> str:
        return self.reg.ident.name

    async def wait_for_lease(self) -> str:
        """The node's podCIDR (K3s waits for it the same way before starting flannel)."""
        while True:
            node = self.nodes.get(None, self.node_name)
            cidr = (node or {}).get("spec", {}).get("podCIDR") if node else None
            if cidr:
                return str(cidr)
            await asyncio.sleep(0.1)

    async def setup(self) -> None:
        self.subnet = await self.wait_for_lease()
        ip = self.reg.ident.ip
        annotations = {
            ANN + "backend-type": self.backend_type if self.backend_type != "none" else "none",
            ANN + "public-ip": ip,
            ANN + "kube-subnet-manager": "true",
        }
        if self.backend_type == "vxlan":
            mac = load_vtep_mac(self.dir / "vtep-mac")
            self.backend = VxlanBackend(iface=self.iface, local_ip=ip, subnet=self.subnet, vtep_mac=mac)
            annotations[ANN + "backend-data"] = json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":"))
        elif self.backend_type == "host-gw":
            self.backend = HostGwBackend(iface=self.iface, local_ip=ip, subnet=self.subnet)
            annotations[ANN + "backend-data"] = "null"
        else:
            self.backend = NoneBackend()
        backend = self.backend
        self.mtu = await asyncio.to_thread(backend.mtu)
        if isinstance(backend, VxlanBackend):
            await asyncio.to_thread(backend.ensure_device)
        await self.reg.annotate(annotations)
        net = ipaddress.ip_network(self.subnet)
        atomic_write(
            self.subnet_env,
            f"FLANNEL_NETWORK={self.cluster_cidr}\nFLANNEL_SUBNET={net.network_address + 1}/{net.prefixlen}\n"
            f"FLANNEL_MTU={self.mtu}\nFLANNEL_IPMASQ=true\n",
        )
        await self.sync()
        log.info("flannel: %s backend up, subnet %s, mtu %d", self.backend_type, self.subnet, self.mtu)
        self.nodes.on_add(self._on_node)
        self.nodes.on_update(self._on_node_update)
        self.nodes.on_delete(self._on_node)
        self._task = asyncio.create_task(self._loop())

    async def _on_node(self, _obj: Obj) -> None:
        self._kick.set()

    async def _on_node_update(self, _old: Obj, _new: Obj) -> None:
        self._kick.set()

    def remotes(self) -> list[Remote]:
        out = []
        for node in self.nodes.items():
            if (node.get("metadata") or {}).get("name") == self.node_name:
                continue
            r = remote_from_node(node)
            if r is not None:
                out.append(r)
        return sorted(out)

    async def sync(self) -> None:
        remotes = self.remotes()
        await asyncio.to_thread(self.backend.sync, remotes)
        if self.backend_type != "none":
            script = nft.replace_table(
                "ip", NFT_TABLE, masquerade_rules(cluster_cidr=self.cluster_cidr, subnet=self.subnet)
            )
            if self._full or not await asyncio.to_thread(nft.list_table, "ip", NFT_TABLE):
                await asyncio.to_thread(nft.apply, script)
                self._full = False

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), RESYNC)
            except TimeoutError:
                pass
            self._kick.clear()
            try:
                await self.sync()
            except Exception as exc:  # a failed sync makes the next one full
                self._full = True
                log.warning("flannel: sync failed: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
