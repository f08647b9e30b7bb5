"""`python -m kwire.metallb.controller`: MetalLB's controller role (what a `quay.io/metallb/controller` pod runs).

It mirrors MetalLB's `controller/service.go`: every Service of type LoadBalancer without a loadBalancerClass (one
with a class belongs to someone else and is left alone) gets IPs from the IPAddressPools (`pools.py`), written to
`status.loadBalancer.ingress` with the annotation `metallb.io/ip-allocated-from-pool`; events `IPAllocated`,
`AllocationFailed` (with the reason) and `ClearAssignment` go on the Service as MetalLB writes them. IPs survive a
controller restart: on start the IPs Services already hold are taken back first (MetalLB's startup pass), so a
new Service cannot take them. A Service that stops being a LoadBalancer gets its status cleared. The controller
also serves MetalLB's validating webhook (`webhook.py`, port 9443), creates the `memberlist` Secret the speaker pods mount (as MetalLB's controller does), serves MetalLB's
metrics (`metrics.py`: per-pool addresses in use and usable) on --port (also its readiness probe), and says once, in a log line and an event, when K3s's ServiceLB also claims the
same Services (the fix: `disable: [servicelb]`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web

from kwire.base import process
from kwire.base.backoff import Backoff
from kwire.client import ApiClient, ApiStatusError, Informers, NotFound
from kwire.client.client import (
    DAEMONSETS,
    IPADDRESSPOOLS,
    NAMESPACES,
    SECRETS,
    SERVICES,
    AlreadyExists,
)
from kwire.client.events import EventRecorder
from kwire.client.informer import Informer, key_of
from kwire.client.kubeconfig import SA_DIR, in_cluster_config
from kwire.metallb import pools, webhook
from kwire.metallb.metrics import Metrics, serve
from kwire.metallb.pools import AllocationError, Allocator, PoolError

log = logging.getLogger("kwire.metallb.controller")
Obj = dict[str, Any]
COMPONENT = "metallb-controller"
SERVICELB_FIX = "disable K3s's ServiceLB (`disable: [servicelb]` in the config file) so only MetalLB answers"


def is_ours(svc: Obj | None) -> bool:
    spec = (svc or {}).get("spec") or {}
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def status_ips(svc: Obj) -> list[str]:
    ingress = (((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
    return [str(i["ip"]) for i in ingress if isinstance(i, dict) and i.get("ip")]


class MetallbController:
    def __init__(self, client: ApiClient, *, namespace: str, webhook_port: int | None = webhook.PORT) -> None:
        self.client = client
        self.webhook_port = webhook_port  # None: no webhook (tests that run the controller outside a pod)
        self.namespace = namespace
        self.informers = Informers(client)
        self.services = self.informers.get(SERVICES)
        self.pools_inf = self.informers.get(IPADDRESSPOOLS, namespace=namespace)
        self.namespaces = self.informers.get(NAMESPACES)
        # K3s's svclb DaemonSets, when this identity may see them (MetalLB's own RBAC does not let it).
        self.svclb: Informer | None = None
        self.events = EventRecorder(client, component=COMPONENT)
        self.alloc = Allocator()
        self.metrics = Metrics()
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=100_000)
        self._queued: set[str] = set()
        self._warned_servicelb = False
        self._webhook_runner: web.AppRunner | None = None
        self._webhook_task: asyncio.Task[None] | None = None

    def enqueue(self, key: str) -> None:
        if key not in self._queued and not self.queue.full():
            self._queued.add(key)
            self.queue.put_nowait(key)

    def enqueue_all(self, *_: Obj) -> None:
        self._reload_pools()
        for svc in self.services.items():
            self.enqueue(key_of(svc))

    def _reload_pools(self) -> None:
        parsed: dict[str, pools.Pool] = {}
        for obj in self.pools_inf.items():
            try:
                p = pools.parse_pool(obj)
            except PoolError as exc:
                log.warning("pool %s ignored: %s", key_of(obj), exc)
                continue
            parsed[p.name] = p
        self.alloc.pools = parsed
        self.metrics.config_loaded.set(1)
        self._count_pools()

    def _count_pools(self) -> None:
        self.metrics.set_pools({name: self.alloc.counts(p) for name, p in self.alloc.pools.items()})

    def _ns_labels(self, svc: Obj) -> dict[str, str]:
        ns = self.namespaces.get(None, str((svc.get("metadata") or {}).get("namespace") or ""))
        return dict(((ns or {}).get("metadata") or {}).get("labels") or {})

    async def run(self) -> None:
        async def on_svc(obj: Obj, *_: Obj) -> None:
            self.metrics.updates.inc()
            self.enqueue(key_of(obj))

        async def on_pool(*_: Obj) -> None:
            self.metrics.updates.inc()
            self.enqueue_all()

        self.services.on_add(on_svc)
        self.services.on_update(on_svc)
        self.services.on_delete(on_svc)
        for fn in (self.pools_inf.on_add, self.pools_inf.on_update, self.pools_inf.on_delete):
            fn(on_pool)
        if await self._may_watch_servicelb():
            self.svclb = self.informers.get(DAEMONSETS, namespace="kube-system")
        self.informers.start()
        await self.informers.wait_synced(timeout=120)
        self._reload_pools()
        self._restore()
        await self._ensure_memberlist_secret()
        webhook_task = asyncio.create_task(self._webhook(), name="webhook") if self.webhook_port else None
        self.enqueue_all()
        self._webhook_task = webhook_task
        while True:
            key = await self.queue.get()
            self._queued.discard(key)
            try:
                await self.sync(key)
            except Exception as exc:  # an API error or a connection drop: look again after a pause
                log.info("sync %s: %s (retrying)", key, exc)
                asyncio.get_running_loop().call_later(1.0, self.enqueue, key)
            self._count_pools()

    async def _webhook(self) -> None:
        """Serve the validating webhook once its certificate is in place (retried with back-off)."""
        backoff = Backoff(1.0, 10.0)
        while True:
            try:
                certs = await webhook.ensure_certs(self.client, self.namespace)
                self._webhook_runner = await webhook.serve(certs, self.pools_inf.items, port=self.webhook_port or 0)
                log.info("webhook serving on :%d", self.webhook_port)
                break
            except Exception as exc:  # API errors, a busy port: try again
                log.warning("webhook not served yet: %s", exc)
                await backoff.sleep()
        while True:  # as upstream's cert-rotator: a configuration applied (or replaced) later gets the CA too
            await asyncio.sleep(5.0)
            try:
                await webhook.patch_ca_bundle(self.client, certs["ca.crt"])
            except Exception as exc:
                log.info("caBundle not patched: %s", exc)

    def _restore(self) -> None:
        """Take back the IPs Services hold from before a restart, before anything new is assigned."""
        for svc in self.services.items():
            key = key_of(svc)
            if not is_ours(svc):
                continue
            ips = status_ips(svc)
            if not ips:
                continue
            try:
                parsed = tuple(pools.ipaddress.ip_address(x) for x in ips)
            except ValueError:
                continue
            pool = self.alloc.pool_of(parsed[0])
            if pool is None:
                continue
            shape = pools.assignment_shape(svc)
            shape.ips, shape.pool = parsed, pool.name
            self.alloc.assigned[key] = shape

    async def _ensure_memberlist_secret(self) -> None:
        key = base64.b64encode(secrets.token_bytes(128)).decode()
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "memberlist", "namespace": self.namespace},
            "data": {"secretkey": base64.b64encode(key.encode()).decode()},
        }
        try:
            await self.client.create(SECRETS, body, namespace=self.namespace)
        except AlreadyExists:
            pass

    async def sync(self, key: str) -> None:
        ns, _, name = key.partition("/")
        svc = self.services.get(ns, name)
        if svc is None or not is_ours(svc):
            self.alloc.release(key)
            if (
                svc is not None
                and status_ips(svc)
                and pools.POOL_ANNOTATION in (svc["metadata"].get("annotations") or {})
            ):
                await self._write(svc, None, "")
            return
        await self._warn_servicelb(svc)
        ns_labels = self._ns_labels(svc)
        if self.alloc.still_valid(key, svc, ns_labels):
            a = self.alloc.assigned[key]
            await self._write(svc, [str(ip) for ip in a.ips], a.pool)
            return
        had = status_ips(svc)
        try:
            a = self.alloc.assign(key, svc, ns_labels)
        except AllocationError as exc:
            if had:
                await self.events.event(
                    svc, "Warning", "ClearAssignment", f"current IP for {key!r} not allowed by config, clearing"
                )
                await self._write(svc, None, "")
            await self.events.event(svc, "Warning", "AllocationFailed", f"Failed to allocate IP for {key!r}: {exc}")
            return
        ips = [str(ip) for ip in a.ips]
        if had and had != ips:
            await self.events.event(
                svc, "Warning", "ClearAssignment", f"current IP for {key!r} not allowed by config, clearing"
            )
        await self._write(svc, ips, a.pool)
        if had != ips:
            await self.events.event(svc, "Normal", "IPAllocated", f"Assigned IP {ips!r}".replace("'", '"'))

    async def _write(self, svc: Obj, ips: list[str] | None, pool: str) -> None:
        """Status and the pool annotation in one write to services/status: all MetalLB's ClusterRole allows on
        Services besides reading them (the Service status strategy keeps annotations written with the status)."""
        meta = svc["metadata"]
        ann = dict(meta.get("annotations") or {})
        want = [{"ip": ip, "ipMode": "VIP"} for ip in ips or []]
        have = (((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
        if (ann.get(pools.POOL_ANNOTATION) or "") == pool and have == want:
            return
        if pool:
            ann[pools.POOL_ANNOTATION] = pool
        else:
            ann.pop(pools.POOL_ANNOTATION, None)
        status = dict(svc.get("status") or {})
        status["loadBalancer"] = {"ingress": want} if want else {}
        await self.client.update_status(SERVICES, {**svc, "metadata": {**meta, "annotations": ann}, "status": status})

    async def _may_watch_servicelb(self) -> bool:
        """Whether the DaemonSets in kube-system are visible (an admin identity), so K3s's ServiceLB can be
        noticed; under MetalLB's own ClusterRole they are not, and the check is left out."""
        try:
            await self.client.list(DAEMONSETS, namespace="kube-system", limit=1)
        except ApiStatusError as exc:
            if exc.code != 403:
                raise
            log.info("not allowed to list DaemonSets in kube-system: K3s's ServiceLB conflict is not checked")
            return False
        return True

    async def _warn_servicelb(self, svc: Obj) -> None:
        if self._warned_servicelb or self.svclb is None:
            return
        for ds in self.svclb.items():
            tmpl = (((ds.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
            if "svccontroller.k3s.cattle.io/svcname" in tmpl:
                self._warned_servicelb = True
                msg = f"K3s's ServiceLB also serves LoadBalancer Services: {SERVICELB_FIX}"
                log.warning("%s", msg)
                await self.events.event(svc, "Warning", "ServiceLBActive", msg)
                return


def pod_namespace(default: str = "metallb-system") -> str:
    path = Path(os.environ.get("KWIRE_SERVICEACCOUNT_DIR") or SA_DIR) / "namespace"
    try:
        return path.read_text().strip() or default
    except OSError:
        return default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="metallb-controller")
    ap.add_argument("--port", type=int, default=7472)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--namespace", default="")
    ap.add_argument("--tls-min-version", default="VersionTLS12")
    args, _unknown = ap.parse_known_args(argv)  # upstream's other flags (webhook, BGP) change nothing here
    return args


async def _main(args: argparse.Namespace) -> None:
    client = ApiClient(in_cluster_config())
    ctl = MetallbController(client, namespace=args.namespace or pod_namespace())
    runner = await serve(ctl.metrics, args.port)
    try:
        await ctl.run()
    finally:
        if ctl._webhook_runner is not None:
            await ctl._webhook_runner.cleanup()
        await ctl.informers.stop()
        await client.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    process.start(level=args.log_level)
    return process.run_daemon(lambda: _main(args), log=log)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["MetallbController", "NotFound", "main"]
