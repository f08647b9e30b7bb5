"""ClusterIP and NodePort allocation at Service create/update time, as kube-apiserver's service REST does.

The allocation maps live in memory and are rebuilt from the stored Services at start-up (the store is the
truth). Dynamic ClusterIPs come from the upper band of service-cidr, the lower band (KEP-3070) is left for
static requests such as 10.43.0.10 for kube-dns. Errors are kube-apiserver's field errors.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kwire.api.errors import FieldError, RawValue, invalid

Obj = dict[str, Any]


def _needs_cluster_ip(spec: Obj) -> bool:
    return spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None"


def _needs_node_ports(spec: Obj) -> bool:
    if spec.get("type") == "NodePort":
        return True
    return spec.get("type") == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True) is not False


def _health_port_needed(spec: Obj) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


@dataclass
class Allocation:
    """What one create/update took, so it can be rolled back if the write fails."""

    ips: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    released_ips: list[str] = field(default_factory=list)
    released_ports: list[int] = field(default_factory=list)


def _held(svc: Obj) -> tuple[list[str], list[int]]:
    """The cluster IPs and node ports (health-check node port included) a stored Service holds."""
    spec = svc.get("spec") or {}
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ports = [int(p["nodePort"]) for p in spec.get("ports") or [] if p.get("nodePort")]
    if spec.get("healthCheckNodePort"):
        ports.append(int(spec["healthCheckNodePort"]))
    return [ip for ip in ips if ip and ip != "None"], ports


class ServiceAllocator:
    def __init__(self, *, service_cidr: str, node_port_range: tuple[int, int]) -> None:
        self.network = ipaddress.ip_network(service_cidr)
        self.port_lo, self.port_hi = node_port_range
        size = self.network.num_addresses
        # kube-apiserver: static band = min(max(16, size/16), 256) addresses at the bottom of the range.
        self._dynamic_offset = min(max(16, size // 16), 256)
        self.ips: set[str] = set()
        self.ports: set[int] = set()

    def load(self, services: list[Obj]) -> None:
        for svc in services:
            ips, ports = _held(svc)
            self.ips.update(ips)
            self.ports.update(ports)

    # -- IPs ---------------------------------------------------------------------------------------------------
    def _take_ip(self, requested: str | None, alloc: Allocation) -> tuple[str | None, FieldError | None]:
        if requested:
            try:
                addr = ipaddress.ip_address(requested)
            except ValueError:
                return None, invalid("spec.clusterIPs[0]", requested, "must be a valid IP address")
            field_val = f'[]string{{"{requested}"}}'
            if addr not in self.network or addr in (self.network.network_address, self.network.broadcast_address):
                return None, FieldError(
                    "FieldValueInvalid",
                    "spec.clusterIPs",
                    f"failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. "
                    f"The range of valid IPs is {self.network}",
                    RawValue(field_val),
                )
            if requested in self.ips:
                return None, FieldError(
                    "FieldValueInvalid",
                    "spec.clusterIPs",
                    f"failed to allocate IP {requested}: provided IP is already allocated",
                    RawValue(field_val),
                )
            self.ips.add(requested)
            alloc.ips.append(requested)
            return requested, None
        size = self.network.num_addresses
        base = int(self.network.network_address)
        lo, hi = self._dynamic_offset, size - 1
        if hi <= lo:
            lo = 1
        start = random.randrange(lo, hi)
        for i in range(hi - lo):
            cand = str(ipaddress.ip_address(base + lo + (start - lo + i) % (hi - lo)))
            if cand not in self.ips:
                self.ips.add(cand)
                alloc.ips.append(cand)
                return cand, None
        # Fall back to the static band before giving up, as kube-apiserver does.
        for off in range(1, self._dynamic_offset):
            cand = str(ipaddress.ip_address(base + off))
            if cand not in self.ips:
                self.ips.add(cand)
                alloc.ips.append(cand)
                return cand, None
        return None, FieldError(
            "FieldValueInvalid",
            "spec.clusterIPs",
            "failed to allocate a serviceIP: range is full",
            RawValue("[]string{}"),
        )

    # -- ports -------------------------------------------------------------------------------------------------
    def _take_port(
        self, requested: int, path: str, alloc: Allocation, keep: set[int]
    ) -> tuple[int | None, FieldError | None]:
        if requested:
            if requested in keep:
                return requested, None
            if not self.port_lo <= requested <= self.port_hi:
                return None, invalid(
                    path,
                    requested,
                    f"provided port is not in the valid range. The range of valid ports is {self.port_lo}-{self.port_hi}",
                )
            if requested in self.ports:
                return None, invalid(path, requested, "provided port is already allocated")
            self.ports.add(requested)
            alloc.ports.append(requested)
            return requested, None
        span = self.port_hi - self.port_lo + 1
        start = random.randrange(span)
        for i in range(span):
            cand = self.port_lo + (start + i) % span
            if cand not in self.ports:
                self.ports.add(cand)
                alloc.ports.append(cand)
                return cand, None
        return None, invalid(path, 0, "range is full")

    def _free(self, ips: Iterable[str], ports: Iterable[int]) -> None:
        self.ips.difference_update(ips)
        self.ports.difference_update(ports)

    def rollback(self, alloc: Allocation) -> None:
        self._free(alloc.ips, alloc.ports)

    def release_for(self, svc: Obj) -> None:
        """Free everything a deleted Service held."""
        self._free(*_held(svc))

    def allocate(self, svc: Obj, old: Obj | None) -> tuple[Allocation, list[FieldError]]:
        """Fill spec.clusterIP(s)/nodePorts/healthCheckNodePort of `svc` in place.

        On update (`old` given) what the old object held stays held; what the new one drops is listed in
        `released_*` for the caller to `commit_release` once the write succeeded.
        """
        alloc = Allocation()
        errors: list[FieldError] = []
        spec = svc.setdefault("spec", {})
        old_spec = (old or {}).get("spec") or {}

        old_ips = [ip for ip in old_spec.get("clusterIPs") or [] if ip and ip != "None"]
        if _needs_cluster_ip(spec):
            requested = spec.get("clusterIP") or None
            if old_ips and (not requested or requested == old_ips[0]):
                spec["clusterIP"] = old_ips[0]
                spec["clusterIPs"] = list(old_ips)
            else:
                ip, err = self._take_ip(requested, alloc)
                if err:
                    errors.append(err)
                else:
                    spec["clusterIP"] = ip
                    spec["clusterIPs"] = [ip]
                    alloc.released_ips.extend(old_ips)
        else:
            if spec.get("clusterIP") == "None":
                spec["clusterIPs"] = ["None"]
            else:
                spec.pop("clusterIP", None)
                spec.pop("clusterIPs", None)
            alloc.released_ips.extend(old_ips)

        old_ports = {int(p["nodePort"]) for p in old_spec.get("ports") or [] if p.get("nodePort")}
        new_ports: set[int] = set()
        if _needs_node_ports(spec):
            for i, p in enumerate(spec.get("ports") or []):
                if not isinstance(p, dict):
                    continue
                port, err = self._take_port(
                    int(p.get("nodePort") or 0), f"spec.ports[{i}].nodePort", alloc, old_ports - new_ports
                )
                if err:
                    errors.append(err)
                elif port:
                    p["nodePort"] = port
                    new_ports.add(port)
        else:
            for p in spec.get("ports") or []:
                if isinstance(p, dict) and spec.get("type") not in ("LoadBalancer",):
                    p.pop("nodePort", None)
        old_hc = int(old_spec.get("healthCheckNodePort") or 0)
        if _health_port_needed(spec):
            keep = {old_hc} if old_hc else set()
            port, err = self._take_port(
                int(spec.get("healthCheckNodePort") or 0), "spec.healthCheckNodePort", alloc, keep
            )
            if err:
                errors.append(err)
            else:
                spec["healthCheckNodePort"] = port
                new_ports.add(port or 0)
        else:
            spec.pop("healthCheckNodePort", None)
        all_old = old_ports | ({old_hc} if old_hc else set())
        alloc.released_ports.extend(sorted(all_old - new_ports))
        if errors:
            self.rollback(alloc)
        return alloc, errors

    def commit_release(self, alloc: Allocation) -> None:
        self._free(alloc.released_ips, alloc.released_ports)
