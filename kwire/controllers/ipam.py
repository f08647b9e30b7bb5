"""Node IPAM: gives every Node a pod subnet from cluster-cidr (kube-controller-manager's range allocator).

Owns `spec.podCIDR` / `spec.podCIDRs` of Nodes. The subnets are /node-cidr-mask-size (24 by default) carved from
cluster-cidr (10.42.0.0/16) in order: the first node gets 10.42.0.0/24, the next 10.42.1.0/24, and so on. The
search for a free subnet continues after the last one handed out (as kube's cidrset does), so a subnet freed
by a deleted Node is not handed out again straight away. The map of used subnets lives in memory and is
rebuilt from the Node objects (the informer cache) before the first allocation, so a restart never hands out
a subnet twice. When cluster-cidr is exhausted the Node gets a Warning Event `CIDRNotAvailable` and the
condition NetworkUnavailable=True (reason NoCIDRAvailable); it gets a subnet as soon as one is freed.
"""

from __future__ import annotations

import ipaddress
import logging

from kwire.client import ApiClient, Informers
from kwire.client.client import NODES
from kwire.controllers.common import (
    condition,
    lst,
    name_of,
    now_rfc3339,
    set_condition,
    spec,
    terminating,
    update_with_retry,
)
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NO_CIDR_REASON = "NoCIDRAvailable"
IPV6_NODE_MASK = 64  # kube-controller-manager's --node-cidr-mask-size-ipv6 default


class CidrSet:
    """The subnets of one cluster CIDR as indexes 0..size-1 (kube's pkg/controller/nodeipam/ipam/cidrset)."""

    def __init__(self, cluster: Network, mask_size: int) -> None:
        if mask_size < cluster.prefixlen or mask_size > cluster.max_prefixlen:
            raise ValueError(f"node mask size /{mask_size} does not fit in cluster CIDR {cluster}")
        self.cluster = cluster
        self.mask_size = mask_size
        self.size = 1 << (mask_size - cluster.prefixlen)
        self._step = 1 << (cluster.max_prefixlen - mask_size)
        self._used: dict[int, str] = {}  # index -> node name
        self._next = 0

    @property
    def used(self) -> int:
        return len(self._used)

    def index_of(self, cidr: str) -> int | None:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            return None
        if net.version != self.cluster.version or net.prefixlen != self.mask_size:
            return None
        if not net.subnet_of(self.cluster):  # type: ignore[arg-type]
            return None
        return (int(net.network_address) - int(self.cluster.network_address)) // self._step

    def network(self, index: int) -> Network:
        addr = ipaddress.ip_address(int(self.cluster.network_address) + index * self._step)
        return ipaddress.ip_network(f"{addr}/{self.mask_size}")

    def occupy(self, cidr: str, node: str) -> bool:
        """Mark a node's existing subnet used. False if it is not ours or is already another node's."""
        idx = self.index_of(cidr)
        if idx is None:
            return False
        owner = self._used.get(idx)
        if owner is not None and owner != node:
            log.warning("node %s has pod CIDR %s, which node %s has too", node, cidr, owner)
            return False
        self._used[idx] = node
        return True

    def release(self, cidr: str, node: str, *, rewind: bool = False) -> None:
        """Free a node's subnet. `rewind` takes back an allocation that was never used (the node turned out
        to have a subnet already), so the next allocation hands out the same one again."""
        idx = self.index_of(cidr)
        if idx is not None and self._used.get(idx) == node:
            del self._used[idx]
            if rewind and self._next == (idx + 1) % self.size:
                self._next = idx

    def allocate(self, node: str) -> Network | None:
        for i in range(self.size):
            idx = (self._next + i) % self.size
            if idx not in self._used:
                self._used[idx] = node
                self._next = (idx + 1) % self.size
                return self.network(idx)
        return None


class NodeIpam(Controller):
    name = "node-ipam"
    component = "node-ipam-controller"

    def __init__(
        self, client: ApiClient, informers: Informers, *, cluster_cidr: str, node_cidr_mask_size: int = 24
    ) -> None:
        super().__init__(client, informers)
        cluster = ipaddress.ip_network(cluster_cidr, strict=False)
        mask = node_cidr_mask_size if cluster.version == 4 else IPV6_NODE_MASK
        self.cidrs = CidrSet(cluster, mask)
        self.nodes = self.informer(NODES)
        self.nodes.on_add(self._on_node)
        self.nodes.on_update(self._on_node_update)
        self.nodes.on_delete(self._on_delete)

    def _on_node(self, node: dict) -> None:  # type: ignore[type-arg]
        cidr = spec(node).get("podCIDR")
        if isinstance(cidr, str) and cidr:
            self.cidrs.occupy(cidr, name_of(node))
            cond = condition(node, "NetworkUnavailable")
            if cond and cond.get("reason") == NO_CIDR_REASON and cond.get("status") == "True":
                self.enqueue(name_of(node))  # got a subnet: the exhaustion condition goes
        else:
            self.enqueue(name_of(node))

    def _on_node_update(self, old: dict, new: dict) -> None:  # type: ignore[type-arg]
        cond = condition(new, "NetworkUnavailable")
        waiting = cond is not None and cond.get("reason") == NO_CIDR_REASON and cond.get("status") == "True"
        if waiting and not spec(new).get("podCIDR"):
            return  # already told it there is no subnet; it is retried when one is freed
        self._on_node(new)

    def _on_delete(self, node: dict) -> None:  # type: ignore[type-arg]
        cidr = spec(node).get("podCIDR")
        if isinstance(cidr, str) and cidr:
            self.cidrs.release(cidr, name_of(node))
            # A subnet came free: nodes waiting for one try again.
            for other in self.nodes.items():
                if not spec(other).get("podCIDR"):
                    self.enqueue(name_of(other))

    async def prepare(self) -> None:
        for node in self.nodes.items():
            cidr = spec(node).get("podCIDR")
            if isinstance(cidr, str) and cidr:
                self.cidrs.occupy(cidr, name_of(node))
        log.info(
            "node IPAM: %d of %d /%d subnets of %s in use",
            self.cidrs.used,
            self.cidrs.size,
            self.cidrs.mask_size,
            self.cidrs.cluster,
        )

    async def sync(self, key: str) -> float | None:
        node = self.nodes.get(None, key)
        if node is None or terminating(node):
            return None
        current = spec(node).get("podCIDR")
        if isinstance(current, str) and current:
            self.cidrs.occupy(current, key)
            await self._complete(node, current)
            return None
        net = self.cidrs.allocate(key)
        if net is None:
            await self._exhausted(node)
            return None
        cidr = str(net)

        def assign(obj: dict) -> bool:  # type: ignore[type-arg]
            s = obj.setdefault("spec", {})
            if s.get("podCIDR"):
                return False  # someone assigned one meanwhile: keep theirs
            s["podCIDR"] = cidr
            s["podCIDRs"] = [cidr]
            return True

        try:
            updated = await update_with_retry(self.client, NODES, node, assign)
        except BaseException:
            self.cidrs.release(cidr, key, rewind=True)
            raise
        if updated is None:
            self.cidrs.release(cidr, key, rewind=True)
            return None
        log.info("node IPAM: node %s gets pod CIDR %s", key, cidr)
        await self._complete(updated, cidr)
        return None

    async def _complete(self, node: dict, cidr: str) -> None:  # type: ignore[type-arg]
        """podCIDRs mirrors podCIDR, and a NoCIDRAvailable condition left from exhaustion is cleared."""
        if not lst(spec(node).get("podCIDRs")):

            def mirror(obj: dict) -> bool:  # type: ignore[type-arg]
                s = obj.setdefault("spec", {})
                if s.get("podCIDRs") or not s.get("podCIDR"):
                    return False
                s["podCIDRs"] = [s["podCIDR"]]
                return True

            node = await update_with_retry(self.client, NODES, node, mirror) or node
        cond = condition(node, "NetworkUnavailable")
        if cond is None or cond.get("reason") != NO_CIDR_REASON or cond.get("status") != "True":
            return

        def clear(obj: dict) -> bool:  # type: ignore[type-arg]
            conds = lst(obj.setdefault("status", {}).get("conditions"))
            c = next((c for c in conds if isinstance(c, dict) and c.get("type") == "NetworkUnavailable"), None)
            if c is None or c.get("reason") != NO_CIDR_REASON:
                return False
            now = now_rfc3339()
            set_condition(
                conds,
                {
                    "type": "NetworkUnavailable",
                    "status": "False",
                    "reason": "CIDRAssigned",
                    "message": f"Node was assigned pod CIDR {cidr}",
                    "lastHeartbeatTime": now,
                },
                now=now,
            )
            obj["status"]["conditions"] = conds
            return True

        await update_with_retry(self.client, NODES, node, clear, subresource_status=True)

    async def _exhausted(self, node: dict) -> None:  # type: ignore[type-arg]
        name = name_of(node)
        log.warning("node IPAM: no pod CIDR left in %s for node %s", self.cidrs.cluster, name)
        await self.recorder.event(node, "Warning", "CIDRNotAvailable", f"Node {name} status is now: CIDRNotAvailable")
        message = f"No pod CIDR is available: all {self.cidrs.size} /{self.cidrs.mask_size} subnets of {self.cidrs.cluster} are in use"

        def mark(obj: dict) -> bool:  # type: ignore[type-arg]
            st = obj.setdefault("status", {})
            conds = lst(st.get("conditions"))
            now = now_rfc3339()
            cur = next((c for c in conds if isinstance(c, dict) and c.get("type") == "NetworkUnavailable"), None)
            if cur and cur.get("status") == "True" and cur.get("reason") == NO_CIDR_REASON:
                return False
            set_condition(
                conds,
                {
                    "type": "NetworkUnavailable",
                    "status": "True",
                    "reason": NO_CIDR_REASON,
                    "message": message,
                    "lastHeartbeatTime": now,
                },
                now=now,
            )
            st["conditions"] = conds
            return True

        await update_with_retry(self.client, NODES, node, mark, subresource_status=True)
