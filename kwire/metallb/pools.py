"""IPAddressPools and IP assignment, as pure data (MetalLB's `internal/config` pool parsing and
`internal/allocator`).

A pool's `addresses` are ranges (`10.0.0.100-10.0.0.200`) or CIDRs; `autoAssign: false` keeps it for explicit
requests; `avoidBuggyIPs` skips addresses ending in .0 or .255; `serviceAllocation` limits it to namespaces (by
name or namespaceSelectors) and Services (serviceSelectors), and orders auto-assignment by `priority` (lower
first, pools without one last, then by name). A Service asks for IPs with `spec.loadBalancerIP` or the
`metallb.io/loadBalancerIPs` annotation, for a pool with `metallb.io/address-pool`; two Services share an IP only
with the same `metallb.io/allow-shared-ip` key, no port in common and the same externalTrafficPolicy (and, for
Local, the same selector), as MetalLB's sharing rules say. The older `metallb.universe.tf/` spellings are read
too. Error texts are MetalLB's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kwire.base import labels

Obj = dict[str, Any]
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

PREFIXES = ("metallb.io/", "metallb.universe.tf/")
POOL_ANNOTATION = "metallb.io/ip-allocated-from-pool"


def annotation(svc: Obj, name: str) -> str:
    """A MetalLB annotation of the Service, in either spelling (`metallb.io/` wins)."""
    ann = (svc.get("metadata") or {}).get("annotations") or {}
    for prefix in PREFIXES:
        value = ann.get(prefix + name)
        if value:
            return str(value).strip()
    return ""


class PoolError(ValueError):
    """A malformed pool (the text says what, as MetalLB's webhook would)."""


@dataclass(frozen=True)
class Pool:
    name: str
    ranges: tuple[tuple[IPAddr, IPAddr], ...]
    auto_assign: bool = True
    avoid_buggy_ips: bool = False
    priority: int | None = None
    namespaces: frozenset[str] = frozenset()
    namespace_selectors: tuple[labels.Selector, ...] = ()
    service_selectors: tuple[labels.Selector, ...] = ()

    def contains(self, ip: IPAddr) -> bool:
        inside = any(lo.version == ip.version and int(lo) <= int(ip) <= int(hi) for lo, hi in self.ranges)
        return inside and not (self.avoid_buggy_ips and _buggy(ip))

    def addresses(self, *, version: int | None = None) -> Iterator[IPAddr]:
        for lo, hi in self.ranges:
            if version is not None and lo.version != version:
                continue  # never walk an IPv6 range address by address looking for IPv4 ones
            for n in range(int(lo), int(hi) + 1):
                ip = type(lo)(n)
                if not (self.avoid_buggy_ips and _buggy(ip)):
                    yield ip

    def size(self) -> int:
        """Usable IPv4 addresses, counted arithmetically (a pool may be a huge range)."""
        total = 0
        for lo, hi in self.ranges:
            if lo.version != 4:
                continue
            a, b = int(lo), int(hi)
            total += b - a + 1
            if self.avoid_buggy_ips:  # minus the .0 and .255 addresses of the range
                total -= sum((b - r) // 256 - (a - 1 - r) // 256 for r in (0, 255))
        return total

    def sort_key(self) -> tuple[int, int, str]:
        return (0, self.priority, self.name) if self.priority is not None else (1, 0, self.name)

    def allows(self, svc: Obj, namespace_labels: Mapping[str, str] | None) -> bool:
        """serviceAllocation: may this Service get addresses from this pool?"""
        meta = svc.get("metadata") or {}
        ns = str(meta.get("namespace") or "")
        if self.namespaces or self.namespace_selectors:
            by_name = ns in self.namespaces
            by_label = any(s.matches(namespace_labels or {}) for s in self.namespace_selectors)
            if not (by_name or by_label):
                return False
        if self.service_selectors and not any(s.matches(meta.get("labels") or {}) for s in self.service_selectors):
            return False
        return True


def _buggy(ip: IPAddr) -> bool:
    return ip.version == 4 and int(ip) & 0xFF in (0, 255)


def parse_range(text: str) -> tuple[IPAddr, IPAddr]:
    """`10.0.0.100-10.0.0.200` or `10.0.0.0/24` -> (first, last); PoolError with MetalLB's words otherwise."""
    text = text.strip()
    try:
        if "-" in text:
            a, b = (ipaddress.ip_address(x.strip()) for x in text.split("-", 1))
            if a.version != b.version:
                raise PoolError(f"invalid IP range {text!r}: start and end are different address families")
            if int(b) < int(a):
                raise PoolError(f"invalid IP range {text!r}: start {a} is after end {b}")
            return a, b
        net = ipaddress.ip_network(text, strict=False)
        return net[0], net[-1]
    except ValueError as exc:
        if isinstance(exc, PoolError):
            raise
        raise PoolError(f"invalid CIDR {text!r} in pool: {exc}") from None


def parse_pool(obj: Obj) -> Pool:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    name = str(meta.get("name") or "")
    ranges = tuple(parse_range(str(a)) for a in spec.get("addresses") or [])
    alloc = spec.get("serviceAllocation") or {}
    prio = alloc.get("priority")
    return Pool(
        name=name,
        ranges=ranges,
        auto_assign=spec.get("autoAssign", True) is not False,
        avoid_buggy_ips=bool(spec.get("avoidBuggyIPs")),
        priority=int(prio) if isinstance(prio, int) else None,
        namespaces=frozenset(str(n) for n in alloc.get("namespaces") or []),
        namespace_selectors=tuple(labels.from_label_selector(s) for s in alloc.get("namespaceSelectors") or []),
        service_selectors=tuple(labels.from_label_selector(s) for s in alloc.get("serviceSelectors") or []),
    )


def overlaps(a: Pool, b: Pool) -> str:
    """The first overlap between two pools' ranges, described; "" when none."""
    for lo, hi in a.ranges:
        for lo2, hi2 in b.ranges:
            if lo.version == lo2.version and int(lo) <= int(hi2) and int(lo2) <= int(hi):
                return f"CIDR {lo}-{hi} in pool {a.name} overlaps with already defined CIDR {lo2}-{hi2} (pool {b.name})"
    return ""


@dataclass(frozen=True)
class Port:
    port: int
    protocol: str


@dataclass
class Assignment:
    """What one Service holds."""

    ips: tuple[IPAddr, ...]
    pool: str
    sharing_key: str = ""
    ports: frozenset[Port] = frozenset()
    etp: str = "Cluster"
    selector: tuple[tuple[str, str], ...] = ()


def assignment_shape(svc: Obj) -> Assignment:
    """The sharing-relevant parts of a Service (ips and pool left empty)."""
    spec = svc.get("spec") or {}
    ports = frozenset(Port(int(p.get("port") or 0), str(p.get("protocol") or "TCP")) for p in spec.get("ports") or [])
    return Assignment(
        ips=(),
        pool="",
        sharing_key=annotation(svc, "allow-shared-ip"),
        ports=ports,
        etp=str(spec.get("externalTrafficPolicy") or "Cluster"),
        selector=tuple(sorted((spec.get("selector") or {}).items())),
    )


def requested_ips(svc: Obj) -> list[IPAddr]:
    """The IPs a Service asks for (annotation first, then spec.loadBalancerIP); ValueError on a malformed one."""
    text = annotation(svc, "loadBalancerIPs") or str((svc.get("spec") or {}).get("loadBalancerIP") or "")
    return [ipaddress.ip_address(x.strip()) for x in text.split(",") if x.strip()]


class AllocationError(Exception):
    """Why a Service gets no IP (the text goes into the AllocationFailed event)."""


@dataclass
class Allocator:
    """The controller's view: pools by name and what every Service holds."""

    pools: dict[str, Pool] = field(default_factory=dict)
    assigned: dict[str, Assignment] = field(default_factory=dict)  # "ns/name" -> assignment

    def users(self, ip: IPAddr, *, besides: str) -> list[tuple[str, Assignment]]:
        return [(k, a) for k, a in self.assigned.items() if k != besides and ip in a.ips]

    def sharing_error(self, key: str, ip: IPAddr, want: Assignment) -> str:
        """Why `want` may not share `ip` with its current users ("" when it may)."""
        for other_key, other in self.users(ip, besides=key):
            if not want.sharing_key or want.sharing_key != other.sharing_key:
                return f"can't change sharing key for {key!r}, address also in use by {other_key}"
            clash = want.ports & other.ports
            if clash:
                p = sorted(clash, key=lambda x: (x.port, x.protocol))[0]
                return f"port {p.port}/{p.protocol} is already in use on {ip} by {other_key}"
            if want.etp != other.etp:
                return f"can't change externalTrafficPolicy for {key!r}, address also in use by {other_key}"
            if want.etp == "Local" and want.selector != other.selector:
                return f"can't change selector for {key!r}, address also in use by {other_key}"
        return ""

    def pool_of(self, ip: IPAddr) -> Pool | None:
        for p in sorted(self.pools.values(), key=Pool.sort_key):
            if p.contains(ip):
                return p
        return None

    def still_valid(self, key: str, svc: Obj, ns_labels: Mapping[str, str] | None) -> bool:
        """Does the Service's current assignment still fit its pools, requests and sharing rules?"""
        a = self.assigned.get(key)
        if a is None or not a.ips:
            return False
        pool = self.pools.get(a.pool)
        if pool is None or not all(pool.contains(ip) for ip in a.ips) or not pool.allows(svc, ns_labels):
            return False
        want_pool = annotation(svc, "address-pool")
        if want_pool and want_pool != a.pool:
            return False
        try:
            req = requested_ips(svc)
        except ValueError:
            return False
        if req and set(req) != set(a.ips):
            return False
        shape = assignment_shape(svc)
        return not any(self.sharing_error(key, ip, shape) for ip in a.ips)

    def assign(self, key: str, svc: Obj, ns_labels: Mapping[str, str] | None) -> Assignment:
        """Choose IPs for a Service (and record them), or raise AllocationError with MetalLB's reason."""
        shape = assignment_shape(svc)
        self.assigned.pop(key, None)
        want_pool = annotation(svc, "address-pool")
        if want_pool and want_pool not in self.pools:
            raise AllocationError(f"pool {want_pool!r} does not exist")
        try:
            req = requested_ips(svc)
        except ValueError as exc:
            raise AllocationError(f"invalid loadBalancerIPs: {exc}") from None
        if req:
            pool_name = ""
            for ip in req:
                pool = self.pools.get(want_pool) if want_pool else self.pool_of(ip)
                if pool is None or not pool.contains(ip):
                    raise AllocationError(f"{str(ip)!r} is not allowed in config")
                if not pool.allows(svc, ns_labels):
                    raise AllocationError(
                        f"pool {pool.name!r} not allowed for {key!r}: serviceAllocation does not match"
                    )
                err = self.sharing_error(key, ip, shape)
                if err:
                    raise AllocationError(err)
                pool_name = pool.name
            got = Assignment(tuple(req), pool_name, shape.sharing_key, shape.ports, shape.etp, shape.selector)
            self.assigned[key] = got
            return got
        if want_pool:
            candidates = [self.pools[want_pool]]
        else:
            candidates = [p for p in sorted(self.pools.values(), key=Pool.sort_key) if p.auto_assign]
        candidates = [p for p in candidates if p.allows(svc, ns_labels)]
        if not candidates:
            raise AllocationError("no available IPs")
        for pool in candidates:
            for ip in pool.addresses(version=4):
                users = self.users(ip, besides=key)
                if users and (not shape.sharing_key or self.sharing_error(key, ip, shape)):
                    continue
                got = Assignment((ip,), pool.name, shape.sharing_key, shape.ports, shape.etp, shape.selector)
                self.assigned[key] = got
                return got
        raise AllocationError("no available IPs")

    def release(self, key: str) -> None:
        self.assigned.pop(key, None)

    def counts(self, pool: Pool) -> tuple[int, int]:
        """(assigned, available) IPv4 addresses of a pool."""
        used = {ip for a in self.assigned.values() if a.pool == pool.name for ip in a.ips}
        size = pool.size()
        return len(used), max(size - len(used), 0)
