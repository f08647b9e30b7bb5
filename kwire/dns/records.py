"""Cluster records: the Kubernetes DNS specification (schema 1.1.0) as CoreDNS's kubernetes plugin answers it,
with `pods insecure` and `fallthrough in-addr.arpa ip6.arpa`.

Pure data, no I/O: the server feeds it Service, EndpointSlice and Namespace objects from its informers and asks
`lookup(labels, qtype)`. Answers are computed on demand from per-Service data (the server keeps the encoded
responses), which is what CoreDNS does from its informer caches.

Names under the zone (`<zone>` = cluster domain):
- `<zone>` SOA/NS; `ns.dns.<zone>` A/AAAA = the DNS Service's ClusterIPs (kube-system/kube-dns);
  `dns-version.<zone>` TXT "1.1.0".
- `<svc>.<ns>.svc.<zone>`: ClusterIP -> its ClusterIPs; headless -> every ready endpoint address (NXDOMAIN when
  there is none, as the spec says); ExternalName -> CNAME (chased by the server).
- `<hostname>.<svc>.<ns>.svc.<zone>`: endpoints whose hostname (or dashed IP when they have none) matches.
- `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV (ClusterIP: target the Service; headless: one per endpoint,
  target `<hostname or dashed-ip>.<svc>.<ns>.svc.<zone>`, addresses in the additional section); SRV on the
  Service name itself lists every port, as CoreDNS does.
- `<a-b-c-d>.<ns>.pod.<zone>` A a.b.c.d (`pods insecure`: not checked against Pods; IPv6 with dashes).
- `svc.<zone>`, `pod.<zone>`, `dns.<zone>`, `<ns>.svc|pod.<zone>` of an existing namespace, and `_<proto>.<svc>...`
  of a Service with such ports exist without records: NODATA, never NXDOMAIN (RFC 8020 empty non-terminals).
- Reverse names: PTR of ClusterIPs and of ready endpoint addresses; anything else there falls through.
Every negative answer carries the zone's SOA (CoreDNS's: ns.dns.<zone>, hostmaster.<zone>, serial = Unix time
of the last change, 7200 1800 86400, minimum = TTL).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from kwire.dns.wire import (
    AAAA,
    ANY,
    CNAME,
    NOERROR,
    NS,
    NXDOMAIN,
    PTR,
    RR,
    SERVFAIL,
    SOA,
    SRV,
    TXT,
    A,
    Answer,
    Labels,
    NameRdata,
    SoaRdata,
    SrvRdata,
    a_record,
    ip_from_reverse,
    is_subdomain,
    labels_of,
    txt_rdata,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
SvcKey = tuple[str, str]  # (namespace, name)
# Change tags: ("svc", ns, name), ("ns", ns), ("ip", address), APEX (the zone's own records, the SOA serial).
Tag = Hashable
APEX: Tag = ("apex",)

SCHEMA_VERSION = "1.1.0"
VERSION_TTL = 28800  # CoreDNS's TTL for dns-version (the spec's example)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TOLERATE_UNREADY = "service.alpha.kubernetes.io/tolerate-unready-endpoints"
MAX_CNAME_CHAIN = 8


@dataclass(frozen=True, slots=True)
class Port:
    name: str  # lower-cased; "" when unnamed
    protocol: str  # lower-cased: tcp, udp, sctp
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: IP
    hostname: str  # the endpoint's hostname, or its dashed IP when it has none (CoreDNS's endpointHostname)
    ready: bool
    ports: tuple[Port, ...]


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    namespace: str
    name: str
    headless: bool
    cluster_ips: tuple[IP, ...]
    ports: tuple[Port, ...]
    external_name: Labels | None
    is_external: bool
    publish_not_ready: bool


def dashed(ip: IP) -> str:
    return str(ip).replace(".", "-").replace(":", "-")


def _ip(s: Any) -> IP | None:
    try:
        return ipaddress.ip_address(str(s))
    except ValueError:
        return None


def service_info(obj: Obj) -> ServiceInfo | None:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    ns, name = str(meta.get("namespace") or "").lower(), str(meta.get("name") or "").lower()
    if not ns or not name:
        return None
    stype = spec.get("type") or "ClusterIP"
    ips_raw = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    headless = spec.get("clusterIP") == "None" or "None" in ips_raw
    ips = tuple(ip for ip in (_ip(x) for x in ips_raw if x != "None") if ip is not None)
    ports = []
    for p in spec.get("ports") or []:
        if not isinstance(p, dict) or not isinstance(p.get("port"), int):
            continue
        ports.append(Port(str(p.get("name") or "").lower(), str(p.get("protocol") or "TCP").lower(), p["port"]))
    external: Labels | None = None
    is_external = stype == "ExternalName"
    if is_external:
        ext = str(spec.get("externalName") or "")
        # CoreDNS answers only names: an IP (or nothing) in externalName gives no record.
        if ext and _ip(ext.rstrip(".")) is None:
            try:
                external = labels_of(ext)
            except ValueError:
                external = None
    annotations = meta.get("annotations") or {}
    return ServiceInfo(
        namespace=ns,
        name=name,
        headless=headless and not is_external,
        cluster_ips=() if is_external else ips,
        ports=tuple(ports),
        external_name=external,
        is_external=is_external,
        publish_not_ready=bool(spec.get("publishNotReadyAddresses"))
        or str(annotations.get(TOLERATE_UNREADY, "")).lower() == "true",
    )


def slice_endpoints(obj: Obj) -> list[Endpoint]:
    if obj.get("addressType") not in ("IPv4", "IPv6"):
        return []
    ports = []
    for p in obj.get("ports") or []:
        if isinstance(p, dict) and isinstance(p.get("port"), int):
            ports.append(Port(str(p.get("name") or "").lower(), str(p.get("protocol") or "TCP").lower(), p["port"]))
    out = []
    for ep in obj.get("endpoints") or []:
        if not isinstance(ep, dict):
            continue
        cond = ep.get("conditions") or {}
        ready = cond.get("ready")
        hostname = ep.get("hostname")
        for addr in ep.get("addresses") or []:
            ip = _ip(addr)
            if ip is None:
                continue
            host = str(hostname).lower() if hostname else dashed(ip)
            out.append(Endpoint(ip, host, ready is None or bool(ready), tuple(ports)))
    return out


class ClusterRecords:
    def __init__(
        self,
        zone: str = "cluster.local",
        ttl: int = 5,
        dns_service: SvcKey = ("kube-system", "kube-dns"),
    ) -> None:
        self.zone: Labels = labels_of(zone)
        self.ttl = ttl
        self.dns_service = dns_service
        self.synced = False
        self.serial = int(time.time())
        self.services: dict[SvcKey, ServiceInfo] = {}
        self.namespaces: set[str] = set()
        self._slices: dict[str, tuple[SvcKey | None, list[Endpoint]]] = {}
        self._slices_by_svc: dict[SvcKey, set[str]] = {}
        self._eps: dict[SvcKey, list[Endpoint]] = {}  # ready (or published) endpoints per Service, computed lazily
        self._by_cluster_ip: dict[IP, set[SvcKey]] = {}
        self._by_endpoint_ip: dict[IP, set[SvcKey]] = {}
        self._listeners: list[Callable[[set[Tag] | None], None]] = []
        z = self.zone
        self._svc_zone = (b"svc", *z)
        self._pod_zone = (b"pod", *z)
        self._soa_rr: RR | None = None

    # -- updates -------------------------------------------------------------------------------------------
    def on_change(self, fn: Callable[[set[Tag] | None], None]) -> None:
        """`fn(tags)` after every change: the tags of the answers it may have changed (None: all of them)."""
        self._listeners.append(fn)

    def _changed(self, tags: set[Tag] | None) -> None:
        now = int(time.time())
        self.serial = now if now > self.serial else self.serial + 1
        self._soa_rr = None
        if tags is not None:
            tags.add(APEX)  # the SOA serial
        for fn in self._listeners:
            fn(tags)

    def set_synced(self, synced: bool = True) -> None:
        if synced != self.synced:
            self.synced = synced
            self._changed(None)

    def set_service(self, obj: Obj) -> None:
        info = service_info(obj)
        if info is None:
            return
        key = (info.namespace, info.name)
        old = self.services.get(key)
        if old == info:
            return
        tags: set[Tag] = {("svc", *key)}
        if old is not None:
            self._unindex_cluster_ips(key, old)
            tags.update(("ip", ip) for ip in old.cluster_ips)
        self.services[key] = info
        for ip in info.cluster_ips:
            self._by_cluster_ip.setdefault(ip, set()).add(key)
        tags.update(("ip", ip) for ip in info.cluster_ips)
        tags.update(("ip", ip) for ip in self._reindex_endpoints(key))
        self._changed(tags)

    def delete_service(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or "").lower(), str(meta.get("name") or "").lower())
        old = self.services.pop(key, None)
        if old is None:
            return
        self._unindex_cluster_ips(key, old)
        tags: set[Tag] = {("svc", *key)}
        tags.update(("ip", ip) for ip in old.cluster_ips)
        tags.update(("ip", ip) for ip in self._reindex_endpoints(key))
        self._changed(tags)

    def _unindex_cluster_ips(self, key: SvcKey, info: ServiceInfo) -> None:
        for ip in info.cluster_ips:
            s = self._by_cluster_ip.get(ip)
            if s is not None:
                s.discard(key)
                if not s:
                    del self._by_cluster_ip[ip]

    def set_slice(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "").lower()
        skey = f"{ns}/{meta.get('name')}"
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        owner: SvcKey | None = (ns, str(svc).lower()) if svc else None
        eps = slice_endpoints(obj)
        old = self._slices.get(skey)
        if old is not None and old == (owner, eps):
            return
        self._slices[skey] = (owner, eps)
        touched = set()
        if old is not None and old[0] is not None and old[0] != owner:
            self._slices_by_svc.get(old[0], set()).discard(skey)
            touched.add(old[0])
        if owner is not None:
            self._slices_by_svc.setdefault(owner, set()).add(skey)
            touched.add(owner)
        tags: set[Tag] = set()
        for key in touched:
            tags.add(("svc", *key))
            tags.update(("ip", ip) for ip in self._reindex_endpoints(key))
        self._changed(tags)

    def delete_slice(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        skey = f"{str(meta.get('namespace') or '').lower()}/{meta.get('name')}"
        old = self._slices.pop(skey, None)
        if old is None:
            return
        tags: set[Tag] = set()
        if old[0] is not None:
            s = self._slices_by_svc.get(old[0])
            if s is not None:
                s.discard(skey)
                if not s:
                    del self._slices_by_svc[old[0]]
            tags.add(("svc", *old[0]))
            tags.update(("ip", ip) for ip in self._reindex_endpoints(old[0]))
        self._changed(tags)

    def set_namespace(self, obj: Obj) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "").lower()
        if name and name not in self.namespaces:
            self.namespaces.add(name)
            self._changed({("ns", name)})

    def delete_namespace(self, obj: Obj) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "").lower()
        if name in self.namespaces:
            self.namespaces.discard(name)
            self._changed({("ns", name)})

    def _reindex_endpoints(self, key: SvcKey) -> set[IP]:
        """Recompute the Service's published endpoints; returns the addresses that were or are in them."""
        touched: set[IP] = set()
        old = self._eps.pop(key, None)
        for ep in old or ():
            touched.add(ep.ip)
            s = self._by_endpoint_ip.get(ep.ip)
            if s is not None:
                s.discard(key)
                if not s:
                    del self._by_endpoint_ip[ep.ip]
        info = self.services.get(key)
        if info is None or info.is_external:
            return touched
        eps: list[Endpoint] = []
        for skey in sorted(self._slices_by_svc.get(key, ())):
            for ep in self._slices[skey][1]:
                if ep.ready or info.publish_not_ready:
                    eps.append(ep)
        if not eps:
            return touched
        self._eps[key] = eps
        for ep in eps:
            touched.add(ep.ip)
            self._by_endpoint_ip.setdefault(ep.ip, set()).add(key)
        return touched

    # -- lookups -------------------------------------------------------------------------------------------
    def endpoints(self, key: SvcKey) -> list[Endpoint]:
        return self._eps.get(key, [])

    def soa(self) -> RR:
        if self._soa_rr is None:
            z = self.zone
            self._soa_rr = RR(
                z,
                SOA,
                self.ttl,
                SoaRdata((b"ns", b"dns", *z), (b"hostmaster", *z), self.serial, 7200, 1800, 86400, self.ttl),
            )
        return self._soa_rr

    def _negative(self, rcode: int) -> Answer:
        return Answer(rcode, [], [self.soa()], [])

    def _namespace_exists(self, ns: str) -> bool:
        return ns in self.namespaces

    def in_zone(self, labels: Labels) -> bool:
        return is_subdomain(labels, self.zone)

    def lookup(self, labels: Labels, qtype: int, depth: int = 0) -> Answer | None:
        """The cluster's answer, or None when the name is not the cluster's (the server falls through).

        The answer's `deps` say which changes can alter it; negative answers expire after the TTL (they carry
        the SOA, whose serial changes with every update)."""
        ans = self._lookup(labels, qtype, depth)
        if ans is not None and ans.rcode != SERVFAIL:
            if not ans.deps:
                ans.deps = self._deps(labels)
            if ans.authority and not ans.answer:
                ans.expires = time.monotonic() + self.ttl
        return ans

    def _deps(self, labels: Labels) -> tuple[Tag, ...]:
        z = len(self.zone)
        if not is_subdomain(labels, self.zone):
            ip = ip_from_reverse(labels)
            return (("ip", ip),) if ip is not None else ()
        rel = labels[: len(labels) - z][::-1]
        if not rel:
            return (APEX,)
        if rel[0] == b"dns":
            return (("svc", *self.dns_service),)
        if rel[0] not in (b"svc", b"pod") or len(rel) < 2:
            return ()
        ns = rel[1].decode("latin-1")
        if rel[0] == b"pod" or len(rel) == 2:
            return (("ns", ns),)
        return (("svc", ns, rel[2].decode("latin-1")),)

    def _lookup(self, labels: Labels, qtype: int, depth: int) -> Answer | None:
        z = len(self.zone)
        if not is_subdomain(labels, self.zone):
            ip = ip_from_reverse(labels)
            if ip is None:
                return None
            if not self.synced:
                return Answer(SERVFAIL, aa=False)
            if qtype != PTR:
                return None
            rrs = self._ptr(labels, ip)
            return Answer(NOERROR, rrs) if rrs else None
        if not self.synced:
            # Never a false NXDOMAIN: until the caches are filled, the zone is unknown.
            return Answer(SERVFAIL, aa=False)
        rel = labels[: len(labels) - z][::-1]  # from the zone down: ("svc", ns, svc, ...)
        ttl = self.ttl
        if not rel:
            if qtype == SOA:
                return Answer(NOERROR, [self.soa()])
            if qtype == NS:
                ns_name = (b"ns", b"dns", *self.zone)
                glue = [a_record(ns_name, ip, ttl) for ip in self._dns_ips()]
                return Answer(NOERROR, [RR(labels, NS, ttl, NameRdata(ns_name))], [], glue)
            return self._negative(NOERROR)
        top = rel[0]
        if len(rel) == 1 and top == b"dns-version":
            if qtype in (TXT, ANY):
                return Answer(NOERROR, [RR(labels, TXT, VERSION_TTL, txt_rdata(SCHEMA_VERSION))])
            return self._negative(NOERROR)
        if top == b"dns":
            if len(rel) == 1:
                return self._negative(NOERROR)
            if len(rel) == 2 and rel[1] == b"ns":
                return self._addresses(labels, qtype, self._dns_ips())
            return self._negative(NXDOMAIN)
        if top not in (b"svc", b"pod") or len(rel) > 5:
            return self._negative(NXDOMAIN)
        if len(rel) == 1:
            return self._negative(NOERROR)
        ns = rel[1].decode("latin-1")
        if top == b"pod":
            if not self._namespace_exists(ns):
                return self._negative(NXDOMAIN)
            if len(rel) == 2:
                return self._negative(NOERROR)
            if len(rel) > 3:
                return self._negative(NXDOMAIN)
            ip = _pod_ip(rel[2])
            if ip is None:
                return self._negative(NXDOMAIN)
            return self._addresses(labels, qtype, [ip])
        if len(rel) == 2:
            known = self._namespace_exists(ns)
            return self._negative(NOERROR if known else NXDOMAIN)
        key = (ns, rel[2].decode("latin-1"))
        info = self.services.get(key)
        if info is None:
            return self._negative(NXDOMAIN)
        if len(rel) == 3:
            return self._service(labels, qtype, info, depth)
        if info.is_external:
            return self._negative(NXDOMAIN)
        if len(rel) == 4:
            lab = rel[3]
            if lab[:1] == b"_":
                proto = lab[1:].decode("latin-1")
                has = any(p.protocol == proto and p.name for p in self._all_ports(key, info))
                return self._negative(NOERROR if has else NXDOMAIN)
            host = lab.decode("latin-1")
            ips = _dedup(ep.ip for ep in self.endpoints(key) if ep.hostname == host)
            if not ips:
                return self._negative(NXDOMAIN)
            return self._addresses(labels, qtype, ips)
        if len(rel) == 5:
            proto = _strip_us(rel[3])
            port = _strip_us(rel[4])
            return self._srv(labels, qtype, key, info, port, proto)
        return self._negative(NXDOMAIN)

    def _dns_ips(self) -> tuple[IP, ...]:
        info = self.services.get(self.dns_service)
        return info.cluster_ips if info is not None else ()

    def _addresses(self, labels: Labels, qtype: int, ips: Iterable[IP]) -> Answer:
        ttl = self.ttl
        want = (4,) if qtype == A else (6,) if qtype == AAAA else (4, 6) if qtype == ANY else ()
        rrs = [a_record(labels, ip, ttl) for ip in ips if ip.version in want]
        if not rrs:
            return self._negative(NOERROR)
        return Answer(NOERROR, rrs)

    def _all_ports(self, key: SvcKey, info: ServiceInfo) -> list[Port]:
        if info.headless:
            seen: dict[Port, None] = {}
            for ep in self.endpoints(key):
                for p in ep.ports:
                    seen[p] = None
            return list(seen)
        return list(info.ports)

    def _service(self, labels: Labels, qtype: int, info: ServiceInfo, depth: int) -> Answer:
        key = (info.namespace, info.name)
        ttl = self.ttl
        if info.is_external:
            if info.external_name is None:
                return self._negative(NXDOMAIN)
            target = info.external_name
            cname = RR(labels, CNAME, ttl, NameRdata(target))
            if qtype == CNAME:
                return Answer(NOERROR, [cname])
            if self.in_zone(target) and depth < MAX_CNAME_CHAIN:
                sub = self.lookup(target, qtype, depth + 1)
                own = ("svc", info.namespace, info.name)
                if sub is None or sub.rcode == SERVFAIL:
                    return Answer(NOERROR, [cname], deps=(own, *self._deps(target)))
                return Answer(
                    sub.rcode,
                    [cname, *sub.answer],
                    sub.authority,
                    sub.additional,
                    chase=sub.chase,
                    expires=sub.expires,
                    deps=(own, *sub.deps),
                )
            return Answer(NOERROR, [cname], chase=target)
        if info.headless:
            eps = self.endpoints(key)
            if not eps:
                return self._negative(NXDOMAIN)
            if qtype == SRV:
                return self._service_srv(labels, key, info)
            return self._addresses(labels, qtype, _dedup(ep.ip for ep in eps))
        if qtype == SRV:
            return self._service_srv(labels, key, info)
        return self._addresses(labels, qtype, info.cluster_ips)

    def _service_srv(self, labels: Labels, key: SvcKey, info: ServiceInfo) -> Answer:
        # SRV at the Service's own name: every port (CoreDNS); the name exists even without ports (NODATA).
        ans = self._srv_records(labels, key, info, None, None)
        return ans if ans.rcode == NOERROR else self._negative(NOERROR)

    def _srv(self, labels: Labels, qtype: int, key: SvcKey, info: ServiceInfo, port: str, proto: str) -> Answer:
        ans = self._srv_records(labels, key, info, port, proto)
        if ans.rcode != NOERROR or qtype == SRV:
            return ans
        return self._negative(NOERROR)

    def _srv_records(
        self, labels: Labels, key: SvcKey, info: ServiceInfo, port: str | None, proto: str | None
    ) -> Answer:
        ttl = self.ttl
        svc_name = (info.name.encode("latin-1"), info.namespace.encode("latin-1"), *self._svc_zone)

        def match(p: Port) -> bool:
            if port is None:
                return True
            return bool(p.name) and p.name == port and p.protocol == proto

        targets: list[tuple[Labels, int, IP]] = []
        if info.headless:
            for ep in self.endpoints(key):
                for p in ep.ports:
                    if match(p):
                        targets.append(((ep.hostname.encode("latin-1"), *svc_name), p.port, ep.ip))
        else:
            for p in info.ports:
                if match(p):
                    for ip in info.cluster_ips:
                        targets.append((svc_name, p.port, ip))
        if not targets:
            return self._negative(NXDOMAIN)
        seen_srv: set[tuple[Labels, int]] = set()
        seen_addr: set[tuple[Labels, IP]] = set()
        srvs: list[tuple[Labels, int]] = []
        extra: list[RR] = []
        for target, pnum, ip in targets:
            if (target, pnum) not in seen_srv:
                seen_srv.add((target, pnum))
                srvs.append((target, pnum))
            if (target, ip) not in seen_addr:
                seen_addr.add((target, ip))
                extra.append(a_record(target, ip, ttl))
        weight = max(1, 100 // len(srvs))
        answer = [RR(labels, SRV, ttl, SrvRdata(0, weight, pnum, target)) for target, pnum in srvs]
        return Answer(NOERROR, answer, [], extra)

    def _ptr(self, labels: Labels, ip: IP) -> list[RR]:
        ttl = self.ttl
        zone = self._svc_zone
        svcs = self._by_cluster_ip.get(ip)
        if svcs:
            ns, name = min(svcs)
            return [RR(labels, PTR, ttl, NameRdata((name.encode("latin-1"), ns.encode("latin-1"), *zone)))]
        out = []
        for ns, name in sorted(self._by_endpoint_ip.get(ip, ())):
            for host in sorted({ep.hostname for ep in self.endpoints((ns, name)) if ep.ip == ip}):
                target = (host.encode("latin-1"), name.encode("latin-1"), ns.encode("latin-1"), *zone)
                out.append(RR(labels, PTR, ttl, NameRdata(target)))
        return out


def _strip_us(lab: bytes) -> str:
    return (lab[1:] if lab[:1] == b"_" else lab).decode("latin-1")


def _dedup(ips: Iterable[IP]) -> list[IP]:
    return list(dict.fromkeys(ips))


def _pod_ip(label: bytes) -> IP | None:
    """`1-2-3-4` -> 1.2.3.4; `fd00--1` -> fd00::1 (CoreDNS's rule: three dashes and no '--' is IPv4)."""
    try:
        s = label.decode("ascii")
    except UnicodeDecodeError:
        return None
    if s.count("-") == 3 and "--" not in s:
        try:
            return ipaddress.IPv4Address(s.replace("-", "."))
        except ValueError:
            return None
    try:
        return ipaddress.IPv6Address(s.replace("-", ":"))
    except ValueError:
        return None
