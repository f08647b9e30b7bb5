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
  traffic (flannel's FLANNEL-FWD). The table is computed as an `nft.Table` and kept by the agent's one nft
  reconciler (`kwire/agent/nftsync.py`), which restores it when it vanishes.
- Routes, FDB and neighbour entries: one reconcile of the whole backend state, run from a work queue
  (`kwire/base/workqueue.py`, one key) on every node change and every few seconds, with exponential back-off after
  a failure; so a deleted `flannel.1` or route comes back.
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
from kwire.agent.nftsync import NftReconciler
from kwire.agent.node import NodeRegistration
from kwire.base.files import atomic_write
from kwire.base.keys import key_of
from kwire.base.tasks import cancel_and_wait
from kwire.base.workqueue import WorkQueue
from kwire.client import Informer
from kwire.kernel import nft

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ANN = "flannel.alpha.coreos.com/"
NFT_TABLE = "kwire-flannel"
RESYNC = 5.0
ROUTES = "routes"  # the routes work queue's one key: the backend reconciles every remote at once


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


def masquerade_table(*, cluster_cidr: str, subnet: str) -> nft.Table:
    """flannel's FLANNEL-POSTRTG / FLANNEL-FWD rules as the `ip kwire-flannel` table."""
    net = cluster_cidr
    T = nft.Text
    postrouting = (
        T("meta mark & 0x4000 == 0x4000 return", "kube-proxy already masquerades marked packets"),
        T(f"ip saddr {subnet} ip daddr {net} return", "pod to pod: keep the pod IP"),
        T(f"ip saddr {net} ip daddr {subnet} return", "pod to pod: keep the pod IP"),
        T(f"ip saddr != {net} ip daddr {subnet} return", "outside to local pods: keep the source"),
        T(f"ip saddr {net} ip daddr != 224.0.0.0/4 masquerade fully-random", "pods leaving the cluster network"),
        T(f"ip saddr != {net} ip daddr {net} masquerade fully-random", "host to remote pods"),
    )
    forward = (T(f"ip saddr {net} accept"), T(f"ip daddr {net} accept"))
    return nft.table(
        "ip",
        NFT_TABLE,
        chains=[
            nft.Chain("postrouting", postrouting, nft.Hook("nat", "postrouting", "srcnat")),
            nft.Chain("forward", forward, nft.Hook("filter", "forward", "filter")),
        ],
    )


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
        applier: nft.Applier | None = None,
        table_check_period: float = RESYNC,
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
        self.queue: WorkQueue[str] = WorkQueue(name="flannel", base_delay=0.2, max_delay=RESYNC)
        self._task: asyncio.Task[None] | None = None
        self._remotes: dict[str, Remote] = {}  # node name -> its typed view (remote nodes only)
        self.masquerade = NftReconciler(
            name="flannel",
            compute=self._desired_table,
            applier=applier,
            min_period=0.05,
            table_check_period=table_check_period,
        )

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
        for node in self.nodes.items():
            self._put_node(node)
        await self.sync()
        if self.backend_type != "none":
            await self.masquerade.sync()  # in place before the first pod starts
            self.masquerade.start()
        log.info("flannel: %s backend up, subnet %s, mtu %d", self.backend_type, self.subnet, self.mtu)
        self.nodes.on_add(self._on_node)
        self.nodes.on_update(self._on_node_update)
        self.nodes.on_delete(self._on_node_delete)
        self._task = asyncio.create_task(self._loop())

    def _desired_table(self, keys: set[str], *, resync: bool) -> nft.Table:
        return masquerade_table(cluster_cidr=self.cluster_cidr, subnet=self.subnet)

    def _put_node(self, node: Obj) -> None:
        """The typed view of a Node, made on receipt: its `Remote` (None until it has a lease and a public IP)."""
        name = key_of(node)
        r = remote_from_node(node) if name != self.node_name else None
        if r is None:
            self._remotes.pop(name, None)
        else:
            self._remotes[name] = r
        self.queue.add(ROUTES)

    async def _on_node(self, obj: Obj) -> None:
        self._put_node(obj)

    async def _on_node_update(self, _old: Obj, new: Obj) -> None:
        self._put_node(new)

    async def _on_node_delete(self, obj: Obj) -> None:
        self._remotes.pop(key_of(obj), None)
        self.queue.add(ROUTES)

    def remotes(self) -> list[Remote]:
        return sorted(self._remotes.values())

    async def sync(self) -> None:
        """Routes, FDB and neighbour entries for every remote node (the backend reconciles the whole state)."""
        await asyncio.to_thread(self.backend.sync, self.remotes())

    async def _loop(self) -> None:
        """The routes' work queue: one key, re-queued every RESYNC seconds (drift repair) and after a failure with
        exponential back-off."""
        self.queue.add_after(ROUTES, RESYNC)

        async def sync(_key: str) -> float:
            await self.sync()
            return RESYNC

        def failed(_key: str, exc: Exception, delay: float | None) -> None:
            log.warning("flannel: sync failed (%s); retrying in %.1f s", exc, delay)

        await self.queue.process(sync, failed=failed)

    async def stop(self) -> None:
        self.queue.shutdown()
        await self.masquerade.stop()
        await cancel_and_wait(self._task)
