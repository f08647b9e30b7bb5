"""ClusterIP and NodePort allocation that stays unique when several servers allocate at once.

Each server's `ServiceAllocator` picks candidates from its in-memory view; this layer makes a pick count only once
it is reserved in the shared store: one key per IP (`/registry/ranges/serviceips/<ip>`) and per port
(`/registry/ranges/servicenodeports/<port>`, under kube-apiserver's own `/registry/ranges/` keys), created with compare-and-swap, so of two servers picking the same
IP at the same moment exactly one wins (kube-apiserver's IPAddress allocator, KEP-1880, reserves one object per
IP the same way). The loser marks the IP taken and picks again; a requested IP another server holds is
"provided IP is already allocated", kube-apiserver's words. When the in-memory view says "taken" or "full", it
is first checked against the reservations (another server may have released them) and the pick retried once. A reservation no Service holds (its server died
between reserving and writing the Service) is taken over once it is older than STALE_AFTER, as kube-apiserver's
repair loop reclaims leaked IPs. Reservations of Services stored before this layer existed are written on start.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import orjson

from kwire.api.allocator import Allocation, ServiceAllocator
from kwire.api.errors import ApiError, FieldError
from kwire.store.base import KeyExists, KeyNotFound, RevisionMismatch, Store, StoreError

log = logging.getLogger(__name__)

Obj = dict[str, Any]

IP_PREFIX = "/registry/ranges/serviceips/"
PORT_PREFIX = "/registry/ranges/servicenodeports/"
STALE_AFTER = 60.0  # seconds: far longer than any write between reserving and storing its Service
ATTEMPTS = 16


def _ip_key(ip: str) -> str:
    return IP_PREFIX + ip


def _port_key(port: int) -> str:
    return f"{PORT_PREFIX}{port}"


def _held(svc: Obj) -> tuple[list[str], list[int]]:
    spec = svc.get("spec") or {}
    ips = [ip for ip in spec.get("clusterIPs") or [] if ip and ip != "None"]
    ports = [int(p["nodePort"]) for p in spec.get("ports") or [] if isinstance(p, dict) and p.get("nodePort")]
    if spec.get("healthCheckNodePort"):
        ports.append(int(spec["healthCheckNodePort"]))
    return ips, ports


class ReservedAllocator:
    def __init__(self, store: Store, allocator: ServiceAllocator, *, services_prefix: str) -> None:
        self.store = store
        self.allocator = allocator
        self._services_prefix = services_prefix  # /registry/services/specs/
        self._pending_ips: set[str] = set()  # picked here, reservation being written
        self._pending_ports: set[int] = set()

    def _value(self, owner: str) -> bytes:
        return orjson.dumps({"service": owner, "time": time.time()})

    def _holds(self, owner: str, *, ip: str | None = None, port: int | None = None) -> bool:
        kv = self.store.get_now(self._services_prefix + owner)
        if kv is None:
            return False
        ips, ports = _held(orjson.loads(kv.value))
        return (ip is not None and ip in ips) or (port is not None and port in ports)

    async def _reserve_one(self, key: str, owner: str, *, ip: str | None = None, port: int | None = None) -> bool:
        """Create the reservation; False when another live Service holds it."""
        try:
            await self.store.create(key, self._value(owner))
            return True
        except KeyExists:
            pass
        kv = self.store.get_now(key)
        if kv is None:
            return False  # released a moment ago: the caller picks again and may get it next time
        current = orjson.loads(kv.value)
        holder = str(current.get("service") or "")
        if holder == owner and self._holds(owner, ip=ip, port=port):
            return True  # ours already (an update keeping what it had)
        if self._holds(holder, ip=ip, port=port) or time.time() - float(current.get("time") or 0) < STALE_AFTER:
            return False
        try:  # leaked: no Service holds it, and no write can still be in flight for it
            await self.store.update(key, self._value(owner), expected_revision=kv.mod_revision)
            log.info("reclaimed leaked reservation %s (was %s)", key, holder)
            return True
        except (RevisionMismatch, KeyNotFound):
            return False

    async def _release_keys(self, keys: list[str]) -> None:
        for key in keys:
            try:
                await self.store.delete(key)
            except KeyNotFound:
                pass
            except StoreError as exc:  # left for the stale-reservation takeover above
                log.warning("releasing %s: %s", key, exc)

    async def allocate(
        self, svc: Obj, old: Obj | None, *, owner: str, dry_run: bool = False
    ) -> tuple[Allocation, list[FieldError]]:
        """`ServiceAllocator.allocate`, each newly taken IP and port reserved in the store (not on dry run)."""
        original = copy.deepcopy(svc)
        refreshed = False
        for _ in range(ATTEMPTS):
            attempt = copy.deepcopy(original)
            alloc, errors = self.allocator.allocate(attempt, old)
            if errors and not refreshed:
                refreshed = True
                if self._forget_released():  # the view was stale (another server released): pick again
                    continue
            svc.clear()
            svc.update(attempt)
            if errors or dry_run:
                return alloc, errors
            lost_ips: list[str] = []
            lost_ports: list[int] = []
            won: list[str] = []
            self._pending_ips.update(alloc.ips)
            self._pending_ports.update(alloc.ports)
            try:
                for ip in alloc.ips:
                    if await self._reserve_one(_ip_key(ip), owner, ip=ip):
                        won.append(_ip_key(ip))
                    else:
                        lost_ips.append(ip)
                for port in alloc.ports:
                    if await self._reserve_one(_port_key(port), owner, port=port):
                        won.append(_port_key(port))
                    else:
                        lost_ports.append(port)
            finally:
                self._pending_ips.difference_update(alloc.ips)
                self._pending_ports.difference_update(alloc.ports)
            if not lost_ips and not lost_ports:
                return alloc, []
            await self._release_keys(won)
            self.allocator.rollback(alloc)
            self.allocator.ips.update(lost_ips)  # another server's: never picked here again until released
            self.allocator.ports.update(lost_ports)
        raise ApiError(500, "InternalError", "failed to allocate a serviceIP: too many concurrent allocations")

    def _forget_released(self) -> bool:
        """Drop from the in-memory view what no reservation in the store backs any more (released through
        another server); True when something was dropped."""
        stale_ips = {ip for ip in self.allocator.ips - self._pending_ips if self.store.get_now(_ip_key(ip)) is None}
        stale_ports = {
            p for p in self.allocator.ports - self._pending_ports if self.store.get_now(_port_key(p)) is None
        }
        self.allocator.ips -= stale_ips
        self.allocator.ports -= stale_ports
        return bool(stale_ips or stale_ports)

    async def rollback(self, alloc: Allocation) -> None:
        """The write failed: free what `allocate` took."""
        self.allocator.rollback(alloc)
        await self._release_keys([_ip_key(ip) for ip in alloc.ips] + [_port_key(p) for p in alloc.ports])

    async def commit_release(self, alloc: Allocation) -> None:
        """The update was stored: free what the new object dropped."""
        self.allocator.commit_release(alloc)
        await self._release_keys(
            [_ip_key(ip) for ip in alloc.released_ips] + [_port_key(p) for p in alloc.released_ports]
        )

    async def release_for(self, svc: Obj) -> None:
        """The Service was deleted: free everything it held."""
        self.allocator.release_for(svc)
        ips, ports = _held(svc)
        await self._release_keys([_ip_key(ip) for ip in ips] + [_port_key(p) for p in ports])

    async def load(self, services: list[Obj]) -> None:
        """Rebuild the in-memory view from stored Services and reservations; reserve what stored Services hold
        (Services written before reservations existed, or by a server on another version)."""
        self.allocator.load(services)
        for kv in (await self.store.range(IP_PREFIX)).items:
            self.allocator.ips.add(kv.key[len(IP_PREFIX) :])
        for kv in (await self.store.range(PORT_PREFIX)).items:
            self.allocator.ports.add(int(kv.key[len(PORT_PREFIX) :]))
        for svc in services:
            meta = svc.get("metadata") or {}
            owner = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            ips, ports = _held(svc)
            for key in [_ip_key(ip) for ip in ips] + [_port_key(p) for p in ports]:
                try:
                    await self.store.create(key, self._value(owner))
                except KeyExists:
                    pass
