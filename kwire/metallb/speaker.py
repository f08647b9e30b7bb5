"""`python -m kwire.metallb.speaker`: MetalLB's speaker role in layer 2 mode (what a `quay.io/metallb/speaker` pod
runs; the pod is hostNetwork, so this process lives in the node's network namespace).

After a quiet start (2 s: it first hears the other speakers), every 0.1 s it recomputes, from its informer caches and the live speakers (`members.py`), which assigned IPs this
node leads (`election.py`), answers ARP for exactly those (`arp.py`) on the node's LAN interface (the one holding
METALLB_HOST), and on taking an IP over (or when a speaker joins or rejoins, e.g. this node after a partition)
sends gratuitous ARP at once and then every 1.1 s for 5 s, records the
`nodeAssigned` event on the Service and writes the Service's ServiceL2Status (`l2-<hash of node and service>` in the
speaker's namespace, status.node/serviceName/serviceNamespace/interfaces) as MetalLB's speaker does. The node's service proxy
already accepts traffic for load-balancer IPs. Interfaces listed in the `metallb-excludel2` ConfigMap are never
used. /metrics is served on --port (the pod's readiness probe).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import logging
import os
import time
from pathlib import Path
from typing import Any

from kwire.base import process
from kwire.base.backoff import Backoff
from kwire.client import AlreadyExists, ApiClient, ApiStatusError, Informers
from kwire.client.client import (
    CONFIGMAPS,
    ENDPOINTSLICES,
    IPADDRESSPOOLS,
    L2ADVERTISEMENTS,
    NODES,
    PODS,
    SERVICES,
    Resource,
)
from kwire.client.events import EventRecorder
from kwire.client.informer import key_of
from kwire.client.kubeconfig import in_cluster_config
from kwire.kernel.pyroute import IPRoute
from kwire.metallb import election, pools
from kwire.metallb.arp import ArpResponder
from kwire.metallb.controller import is_ours, pod_namespace, status_ips
from kwire.metallb.members import DEAD_AFTER, Members
from kwire.metallb.metrics import Metrics, serve

log = logging.getLogger("kwire.metallb.speaker")
Obj = dict[str, Any]
SERVICEL2STATUSES = Resource("metallb.io", "v1beta1", "servicel2statuses", "ServiceL2Status")
TICK = 0.1
GARP_EVERY, GARP_FOR = 1.1, 5.0
SPEAKER_LABELS = "app=metallb,component=speaker"


def lan_interface(host_ip: str) -> tuple[str, bytes]:
    """(name, MAC) of the interface holding host_ip in this network namespace."""
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=2):
            if a.get_attr("IFA_ADDRESS") == host_ip:
                link = ipr.get_links(a["index"])[0]
                mac = str(link.get_attr("IFLA_ADDRESS"))
                return str(link.get_attr("IFLA_IFNAME")), bytes.fromhex(mac.replace(":", ""))
    raise RuntimeError(f"no interface holds {host_ip}")


def memberlist_key() -> bytes | None:
    """The memberlist Secret's key the pod mounts (METALLB_ML_SECRET_KEY_PATH/secretkey), if it is there."""
    base = os.environ.get("METALLB_ML_SECRET_KEY_PATH", "")
    if not base:
        return None
    try:
        key = (Path(base) / "secretkey").read_bytes().strip()
    except OSError as exc:
        log.warning("memberlist key not readable (%s): heartbeats are not authenticated", exc)
        return None
    return key or None


def _pod_running(pod: Obj) -> bool:
    """A speaker pod that is running and not going away. Its Ready condition is not asked: a restarted node agent
    re-runs the readiness probe's initial delay, and the IP would flap away and back; that the speaker is alive
    is what its heartbeats say (members.py)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    return status.get("phase") == "Running" and not meta.get("deletionTimestamp")


SPEAKER_LIST_INTERVAL = 5.0


class SpeakerPods:
    """The speaker pods of this namespace, listed every few seconds rather than watched: MetalLB's `pod-lister`
    Role grants list and get on pods, not watch (MetalLB's speakerlist lists them too)."""

    def __init__(self, client: ApiClient, *, namespace: str, interval: float = SPEAKER_LIST_INTERVAL) -> None:
        self.client = client
        self.namespace = namespace
        self.interval = interval
        self._items: list[Obj] = []

    def items(self) -> list[Obj]:
        return list(self._items)

    async def refresh(self) -> None:
        res = await self.client.list(PODS, self.namespace, label_selector=SPEAKER_LABELS)
        self._items = [p for p in res.get("items") or [] if isinstance(p, dict)]

    async def run(self) -> None:
        backoff = Backoff(self.interval, 60.0)  # every interval; while the API is away, doubling to a minute
        while True:
            await backoff.sleep()
            try:
                await self.refresh()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the API is away: keep the last list, try again later
                log.info("listing speaker pods: %s", exc)


class Speaker:
    def __init__(self, client: ApiClient, *, node: str, host_ip: str, namespace: str) -> None:
        self.client = client
        self.node = node
        self.host_ip = host_ip
        self.namespace = namespace
        self.informers = Informers(client)
        self.services = self.informers.get(SERVICES)
        self.slices = self.informers.get(ENDPOINTSLICES)
        self.nodes = self.informers.get(NODES)
        self.pools = self.informers.get(IPADDRESSPOOLS, namespace=namespace)
        self.advs = self.informers.get(L2ADVERTISEMENTS, namespace=namespace)
        self.speakers = SpeakerPods(client, namespace=namespace)
        self.configmaps = self.informers.get(CONFIGMAPS, namespace=namespace)
        self.slices.add_indexer("service", self._slice_service)
        self.members = Members(node, self._peers, key=memberlist_key())
        self.events = EventRecorder(client, component="metallb-speaker", host=node)
        self.interface, self.mac = "", b""
        self.leading: dict[str, str] = {}  # ip -> service key
        self.metrics = Metrics()
        self._garp_until: dict[str, float] = {}
        self._garp_next: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._quiet_until = time.monotonic() + 2 * DEAD_AFTER
        self._last_alive: set[str] = set()

    @staticmethod
    def _slice_service(sl: Obj) -> list[str]:
        meta = sl.get("metadata") or {}
        svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        return [f"{meta.get('namespace')}/{svc}"] if svc else []

    def _peers(self) -> dict[str, str]:
        out = {}
        for pod in self.speakers.items():
            sp, st = pod.get("spec") or {}, pod.get("status") or {}
            if sp.get("nodeName") and st.get("hostIP"):
                out[str(sp["nodeName"])] = str(st["hostIP"])
        return out

    def _excluded_interfaces(self) -> set[str]:
        cm = self.configmaps.get(self.namespace, "metallb-excludel2")
        text = " ".join(str(v) for v in ((cm or {}).get("data") or {}).values())
        return {w.strip("-: ") for w in text.split() if w.strip("-: ") and not w.endswith(":")}

    def live_candidates(self) -> set[str]:
        running = {str((p.get("spec") or {}).get("nodeName")) for p in self.speakers.items() if _pod_running(p)}
        alive = self.members.alive()
        return {n for n in alive if n in running or n == self.node}

    def compute(self) -> dict[str, str]:
        """ip -> service key, for the IPs this node should announce now."""
        if self.interface in self._excluded_interfaces():
            return {}
        live = self.live_candidates()
        nodes = {str(n["metadata"]["name"]): n for n in self.nodes.items()}
        pool_objs = {str(p["metadata"]["name"]): p for p in self.pools.items()}
        parsed = {}
        for name, obj in pool_objs.items():
            try:
                parsed[name] = pools.parse_pool(obj)
            except pools.PoolError:
                continue
        advs = self.advs.items()
        if not advs:
            return {}
        out: dict[str, str] = {}
        for svc in self.services.items():
            if not is_ours(svc):
                continue
            ips = status_ips(svc)
            if not ips:
                continue
            key = key_of(svc)
            pool_name = pools.annotation(svc, "ip-allocated-from-pool")
            for ip in ips:
                pool = parsed.get(pool_name)
                if pool is None:
                    pool = next((p for p in parsed.values() if p.contains(ipaddress.ip_address(ip))), None)
                if pool is None:
                    continue
                plabels = ((pool_objs[pool.name].get("metadata") or {}).get("labels")) or {}
                cands = election.candidates(
                    svc,
                    pool=pool.name,
                    pool_labels=plabels,
                    advertisements=advs,
                    nodes=nodes,
                    live=live,
                    slices=self.slices.by_index("service", key),
                    interface=self.interface,
                )
                if election.leader(ip, cands) == self.node:
                    out[ip] = key
        return out

    async def run(self) -> None:
        # pyroute2's IPRoute runs its own event loop: ask it from a thread
        self.interface, self.mac = await asyncio.to_thread(lan_interface, self.host_ip)
        self.informers.start()
        await self.informers.wait_synced(timeout=120)
        await self.speakers.refresh()
        self._quiet_until = time.monotonic() + 2 * DEAD_AFTER
        self._last_alive = {self.node}
        loop = asyncio.get_running_loop()
        members = asyncio.create_task(self.members.run(), name="members")
        speakers = asyncio.create_task(self.speakers.run(), name="speaker pods")
        arp = ArpResponder(self.interface, self.mac, lambda: set(self.leading), metrics=self.metrics)
        loop.add_reader(arp.fileno(), arp.on_readable)
        log.info(
            "speaker on %s: layer 2 on %s (%s); heartbeats %s",
            self.node,
            self.interface,
            self.mac.hex(":"),
            "authenticated with the memberlist key" if self.members.key else "not authenticated",
        )
        try:
            while True:
                if members.done():
                    members.result()  # the heartbeat socket failed: the speaker fails visibly (and restarts)
                    raise RuntimeError("membership stopped")
                self._tick(arp)
                await asyncio.sleep(TICK)
        finally:
            loop.remove_reader(arp.fileno())
            arp.close()
            members.cancel()
            speakers.cancel()

    def _tick(self, arp: ArpResponder) -> None:
        now = time.monotonic()
        if now < self._quiet_until:
            return  # just started: hear the other speakers first, or every node would claim every IP at once
        want = self.compute()
        alive = self.members.alive()
        if alive - self._last_alive:
            # A speaker (re)joined, e.g. this node after a partition: announce again what we lead, so clients
            # that moved to another node while we were unreachable come back at once.
            for ip in set(want) & set(self.leading):
                self._garp_until[ip] = now + GARP_FOR
                self._garp_next[ip] = now
        self._last_alive = alive
        for ip in set(self.leading) - set(want):
            log.info("stop announcing %s (%s)", ip, self.leading[ip])
            self.metrics.announced.remove(ip, self.node, "layer2", self.leading[ip])
            self._spawn(self._withdrawn(self.leading[ip]))
            self._garp_until.pop(ip, None)
        for ip, key in want.items():
            if ip not in self.leading:
                log.info("announcing %s for %s from %s", ip, key, self.node)
                self._garp_until[ip] = now + GARP_FOR
                self._garp_next[ip] = now
                self._spawn(self._announced(ip, key))
            elif self.leading[ip] != key:
                self.metrics.announced.remove(ip, self.node, "layer2", self.leading[ip])
            self.metrics.announced.labels(ip=ip, node=self.node, protocol="layer2", service=key).set(1)
        self.leading = want
        for ip, until in list(self._garp_until.items()):
            if now >= self._garp_next.get(ip, 0.0):
                arp.gratuitous(ip)
                self._garp_next[ip] = now + GARP_EVERY
            if now > until:
                self._garp_until.pop(ip, None)
                self._garp_next.pop(ip, None)

    def _status_name(self, svc: Obj) -> str:
        """This node's ServiceL2Status for a Service (one per node and Service, as MetalLB names them)."""
        uid = str((svc.get("metadata") or {}).get("uid") or "")
        digest = hashlib.sha256(f"{self.node}/{uid}".encode()).hexdigest()[:12]
        return f"l2-{digest}"

    async def _withdrawn(self, key: str) -> None:
        ns, _, name = key.partition("/")
        svc = self.services.get(ns, name)
        if svc is None:
            return
        try:
            await self.client.delete(SERVICEL2STATUSES, self._status_name(svc), namespace=self.namespace)
        except (ApiStatusError, OSError) as exc:
            log.debug("ServiceL2Status of %s: %s", key, exc)

    def _spawn(self, coro: Any) -> None:
        if len(self._pending) > 256:  # bounded: API writes are best effort
            coro.close()
            return
        t = asyncio.create_task(coro)
        self._pending.add(t)
        t.add_done_callback(self._pending.discard)

    async def _announced(self, ip: str, key: str) -> None:
        ns, _, name = key.partition("/")
        svc = self.services.get(ns, name)
        if svc is None:
            return
        await self.events.event(
            svc, "Normal", "nodeAssigned", f'announcing from node "{self.node}" with protocol "layer2"'
        )
        sname = self._status_name(svc)
        status = {
            "node": self.node,
            "serviceName": name,
            "serviceNamespace": ns,
            "interfaces": [{"name": self.interface}],
        }
        try:
            obj = {
                "apiVersion": SERVICEL2STATUSES.api_version,
                "kind": "ServiceL2Status",
                "metadata": {
                    "name": sname,
                    "namespace": self.namespace,
                    "labels": {
                        "metallb.io/node": self.node,
                        "metallb.io/service-name": name,
                        "metallb.io/service-namespace": ns,
                    },
                },
            }
            try:
                created = await self.client.create(SERVICEL2STATUSES, obj, namespace=self.namespace)
            except AlreadyExists:
                created = await self.client.get(SERVICEL2STATUSES, sname, namespace=self.namespace)
            await self.client.update_status(SERVICEL2STATUSES, {**created, "status": status})
        except (ApiStatusError, OSError) as exc:
            log.info("ServiceL2Status for %s: %s", key, exc)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="metallb-speaker")
    ap.add_argument("--port", type=int, default=7472)
    ap.add_argument("--log-level", default="info")
    args, _unknown = ap.parse_known_args(argv)
    return args


async def _main(args: argparse.Namespace) -> None:
    node = os.environ.get("METALLB_NODE_NAME", "")
    host_ip = os.environ.get("METALLB_HOST", "")
    if not node or not host_ip:
        raise SystemExit("speaker: METALLB_NODE_NAME and METALLB_HOST must be set (the pod's fieldRefs)")
    client = ApiClient(in_cluster_config())
    sp = Speaker(client, node=node, host_ip=host_ip, namespace=pod_namespace())
    runner = await serve(sp.metrics, args.port)
    try:
        await sp.run()
    finally:
        await sp.informers.stop()
        await client.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    process.start(level=args.log_level)
    return process.run_daemon(lambda: _main(args), log=log)


if __name__ == "__main__":
    raise SystemExit(main())
