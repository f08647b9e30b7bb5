"""The node's own API objects: registering the Node, its status and Ready condition, and its Lease heartbeat.

As the kubelet does: the Node is created (or adopted) with its labels, addresses and capacity; the Lease
`kube-node-lease/<node>` is renewed every 10 s (a quarter of its 40 s duration), which is what the server's
node lifecycle controller watches; the status (conditions with lastHeartbeatTime) is re-posted when something
changes and at least once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kwire.base.tasks import cancel_and_wait
from kwire.base.timefmt import now_micro, now_rfc3339
from kwire.client import ApiClient, Conflict, NotFound
from kwire.client.client import LEASES, NODES

log = logging.getLogger(__name__)

Obj = dict[str, Any]
LEASE_NAMESPACE = "kube-node-lease"
STATUS_REFRESH = 60.0
KUBELET_VERSION = "v1.32.4+kwire"


def _meminfo_kib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _os_image() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


@dataclass
class NodeIdentity:
    name: str
    ip: str
    external_ip: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[Obj] = field(default_factory=list)


def parse_labels(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        out[k.strip()] = v.strip()
    return out


def parse_taints(items: tuple[str, ...]) -> list[Obj]:
    """K3s `--node-taint key=value:Effect` (value optional)."""
    out: list[Obj] = []
    for item in items:
        kv, _, effect = item.rpartition(":")
        key, _, value = kv.partition("=")
        taint: Obj = {"key": key, "effect": effect}
        if value:
            taint["value"] = value
        out.append(taint)
    return out


class NodeRegistration:
    """Keeps the Node object, its Ready condition and its Lease current."""

    def __init__(self, client: ApiClient, ident: NodeIdentity, *, lease_duration: int = 40) -> None:
        self.client = client
        self.ident = ident
        self.lease_duration = lease_duration
        self.ready = False
        self.ready_message = "kubelet is starting"
        self._last_status: Obj | None = None
        self._last_post = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.current_node: Callable[[], Obj | None] | None = None  # the Node as an informer sees it

    # -- desired objects ------------------------------------------------------------------------------------
    def _labels(self) -> dict[str, str]:
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return {
            "kubernetes.io/hostname": self.ident.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": arch,
            "node.kubernetes.io/instance-type": "kwire",
            **self.ident.labels,
        }

    def _status(self) -> Obj:
        now = now_rfc3339()
        mem_kib = _meminfo_kib()
        cpus = str(os.cpu_count() or 1)
        capacity = {"cpu": cpus, "memory": f"{mem_kib}Ki", "pods": "110", "ephemeral-storage": "10Gi"}
        addresses = [{"type": "InternalIP", "address": self.ident.ip}]
        if self.ident.external_ip:
            addresses.append({"type": "ExternalIP", "address": self.ident.external_ip})
        addresses.append({"type": "Hostname", "address": self.ident.name})

        def cond(typ: str, status: str, reason: str, message: str) -> Obj:
            return {
                "type": typ,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        conditions = [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond(
                "Ready",
                "True" if self.ready else "False",
                "KubeletReady" if self.ready else "KubeletNotReady",
                "kubelet is posting ready status" if self.ready else self.ready_message,
            ),
        ]
        uname = os.uname()
        return {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": addresses,
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": socket.gethostname(),
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": uname.release,
                "osImage": _os_image(),
                "containerRuntimeVersion": "kwire://0.1.0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": self._labels()["kubernetes.io/arch"],
            },
        }

    # -- registration -----------------------------------------------------------------------------------------
    async def register(self) -> Obj:
        """Create the Node, or adopt an existing one with the same name (labels merged, taints set)."""
        for _ in range(10):
            try:
                node = await self.client.get(NODES, self.ident.name)
            except NotFound:
                body = {
                    "metadata": {"name": self.ident.name, "labels": self._labels()},
                    "spec": {"taints": self.ident.taints} if self.ident.taints else {},
                }
                try:
                    node = await self.client.create(NODES, body)
                    log.info("registered node %s (%s)", self.ident.name, self.ident.ip)
                except Conflict:
                    continue
            else:
                meta = node["metadata"]
                meta["labels"] = {**(meta.get("labels") or {}), **self._labels()}
                spec = node.setdefault("spec", {})
                if self.ident.taints:
                    spec["taints"] = self.ident.taints
                try:
                    node = await self.client.update(NODES, node)
                except Conflict:
                    continue
                log.info("adopted existing node %s", self.ident.name)
            await self.post_status(force=True)
            return node
        raise RuntimeError(f"could not register node {self.ident.name}")

    async def annotate(self, annotations: dict[str, str]) -> Obj:
        return await self.client.patch(NODES, self.ident.name, {"metadata": {"annotations": annotations}})

    async def post_status(self, *, force: bool = False) -> None:
        status = self._status()
        loop = asyncio.get_running_loop()
        comparable = {
            **status,
            "conditions": [{**c, "lastHeartbeatTime": "", "lastTransitionTime": ""} for c in status["conditions"]],
        }
        if not force and comparable == self._last_status and loop.time() - self._last_post < STATUS_REFRESH:
            # The kubelet also compares with what the API shows: the node lifecycle controller may have set Ready
            # to Unknown while this agent was unreachable, and that must be corrected at once, not in a minute.
            cur = self.current_node() if self.current_node else None
            shown = {c.get("type"): c.get("status") for c in ((cur or {}).get("status") or {}).get("conditions") or []}
            if cur is None or shown.get("Ready") == ("True" if self.ready else "False"):
                return
        for _ in range(5):
            try:
                node = await self.client.get(NODES, self.ident.name)
            except NotFound:
                await self.register()
                return
            old = {c.get("type"): c for c in (node.get("status") or {}).get("conditions") or []}
            for c in status["conditions"]:
                prev = old.get(c["type"])
                if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
                    c["lastTransitionTime"] = prev["lastTransitionTime"]
            # Conditions owned by others (e.g. NetworkUnavailable from the server's IPAM) are kept.
            ours = {c["type"] for c in status["conditions"]}
            status["conditions"] += [c for t, c in old.items() if t not in ours]
            node["status"] = {**(node.get("status") or {}), **status}
            try:
                await self.client.update_status(NODES, node)
            except Conflict:
                continue
            self._last_status = comparable
            self._last_post = loop.time()
            return

    def set_ready(self, ready: bool, message: str = "") -> None:
        if ready != self.ready or message != self.ready_message:
            self.ready = ready
            self.ready_message = message or self.ready_message
            self._wake.set()

    # -- loops --------------------------------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        interval = max(1.0, self.lease_duration / 4)
        while True:
            try:
                await self.renew_lease()
            except Exception as exc:  # the API may be briefly unreachable; the next renewal retries
                log.warning("lease renewal failed: %s", exc)
            await asyncio.sleep(interval)

    async def renew_lease(self) -> None:
        spec = {
            "holderIdentity": self.ident.name,
            "leaseDurationSeconds": self.lease_duration,
            "renewTime": now_micro(),
        }
        try:
            lease = await self.client.get(LEASES, self.ident.name, LEASE_NAMESPACE)
        except NotFound:
            body = {"metadata": {"name": self.ident.name, "namespace": LEASE_NAMESPACE}, "spec": spec}
            await self.client.create(LEASES, body, LEASE_NAMESPACE)
            return
        lease["spec"] = {**(lease.get("spec") or {}), **spec}
        await self.client.update(LEASES, lease)

    async def _status_loop(self) -> None:
        while True:
            try:
                await self.post_status()
            except Exception as exc:
                log.warning("node status update failed: %s", exc)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 10.0)
            except TimeoutError:
                pass

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._lease_loop()), asyncio.create_task(self._status_loop())]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
