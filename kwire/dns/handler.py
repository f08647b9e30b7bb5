"""The query pipeline, the forward cache and the precomputed responses.

A query is answered as CoreDNS's chain in K3s's Corefile answers it (plugins in CoreDNS's fixed order):

    coredns-custom forward zones (their own server blocks)
    -> rewrite (coredns-custom) -> hosts (coredns-custom, then NodeHosts)
    -> kubernetes (cluster zone; PTR for cluster addresses, other reverse names fall through)
    -> forward . /etc/resolv.conf, behind `cache 30`
    and `loadbalance` on the way out (the A/AAAA records of an answer rotate from one response to the next).

Fast path: every answer that does not depend on who asks is kept as encoded responses (one per rotation of its
address records) in a dict keyed by `wire.fast_key` (the query after its ID, question name lower-cased, EDNS
options left out). The server's UDP loop looks up `data[2:]` itself, which is that key for a lower-case query
without EDNS options, and sends the client's ID + the stored rest; other queries come here and are answered
from the same entry with the client's own question bytes spliced in. Cluster answers carry change tags and are
dropped when an informer event touches one of them (hosts and coredns-custom changes drop everything); answers
out of the forward cache expire with their TTL, at least every second so that cached TTLs count down.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
import time
from collections.abc import Awaitable, Coroutine, Hashable
from dataclasses import KW_ONLY, dataclass
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rdatatype

from kwire.dns.custom import CustomConfig, parse_custom
from kwire.dns.forward import Forwarder, Upstream
from kwire.dns.hosts import HostsTable
from kwire.dns.metrics import SockStats, Stats
from kwire.dns.records import ClusterRecords
from kwire.dns.wire import (
    AAAA,
    AXFR,
    CLASS_ANY,
    CLASS_IN,
    CNAME,
    FORMERR,
    IXFR,
    NOERROR,
    NOTIMP,
    NS,
    NXDOMAIN,
    PTR,
    REFUSED,
    RR,
    SERVFAIL,
    SOA,
    A,
    Answer,
    Labels,
    NameRdata,
    Query,
    Reject,
    SoaRdata,
    build_query,
    encode_reject,
    encode_response,
    fast_key,
    ip_from_reverse,
    name_text,
    name_wire,
    parse_query,
    rcode_label,
    type_label,
)

log = logging.getLogger(__name__)

MAX_VARIANTS = 8  # rotations kept per answer
MAX_CHASE = 8
NO_UPSTREAM_LOG_EVERY = 60.0
NO_ANSWER_LOG_EVERY = 10.0


class Entry:
    """A precomputed response, one variant per rotation of its address records: `rests` = the whole response
    after the ID (for a client whose question bytes are exactly the stored ones, i.e. lower-case), `head` +
    `tails` = flags and counts, and everything after the question name (spliced around a client's own question
    name when it has upper-case letters). `exp` = monotonic expiry (0: until cleared); `stat` = metrics class."""

    __slots__ = ("head", "tails", "rests", "rest0", "n", "i", "exp", "stat")

    def __init__(self, head: bytes, tails: tuple[bytes, ...], rests: tuple[bytes, ...], exp: float, stat: int) -> None:
        self.head = head
        self.tails = tails
        self.rests = rests
        self.rest0 = rests[0]
        self.n = len(tails)
        self.i = 0
        self.exp = exp
        self.stat = stat

    def next_index(self) -> int:
        if self.n == 1:
            return 0
        i = self.i + 1
        if i >= self.n:
            i = 0
        self.i = i
        return i

    def response(self, data: bytes, end: int) -> bytes:
        """The next response to `data` (whose question name ends at `end`), in the client's letter case."""
        i = self.next_index()
        return data[:2] + self.head + data[12:end] + self.tails[i]


def lookup_fast(fast: dict[bytes, Entry], data: bytes, now: float) -> Entry | None:
    """The entry for `data` under its canonical key (question name lower-cased), if any and not expired."""
    fk = fast_key(data)
    if fk is None:
        return None
    e = fast.get(fk[0])
    if e is None or (e.exp and e.exp <= now):
        return None
    return e


@dataclass(slots=True)
class _Forward:
    upstreams: list[Upstream]


@dataclass(slots=True)
class CacheItem:
    rcode: int
    answer: list[RR]
    authority: list[RR]
    additional: list[RR]
    stored: float
    duration: int
    kind: str  # success | denial

    def answer_at(self, now: float) -> Answer:
        elapsed = int(now - self.stored)
        remaining = max(0, self.duration - elapsed)

        def ttl(rrs: list[RR]) -> list[RR]:
            return [rr.with_ttl(max(0, min(rr.ttl - elapsed, remaining))) for rr in rrs]

        return Answer(
            self.rcode,
            ttl(self.answer),
            ttl(self.authority),
            ttl(self.additional),
            aa=False,
            plugin="cache",
            expires=self.stored + min(self.duration, elapsed + 1),
            cache=self.kind,
        )


def _labels(name: dns.name.Name) -> Labels:
    return tuple(lab.lower() for lab in name.labels if lab)


def _upstream_answer(wire: bytes) -> tuple[int, list[RR], list[RR], list[RR], bool]:
    """Parse an upstream response: (rcode, answer, authority, additional, truncated)."""
    msg = dns.message.from_wire(wire, ignore_trailing=True, one_rr_per_rrset=False)

    def conv(section: list[Any]) -> list[RR]:
        out = []
        for rrset in section:
            name = _labels(rrset.name)
            for rd in rrset:
                rdata: Any
                if rrset.rdtype in (CNAME, PTR, NS):
                    rdata = NameRdata(_labels(rd.target))
                elif rrset.rdtype == SOA:
                    rdata = SoaRdata(
                        _labels(rd.mname), _labels(rd.rname), rd.serial, rd.refresh, rd.retry, rd.expire, rd.minimum
                    )
                else:
                    rdata = rd.to_wire()
                out.append(RR(name, int(rrset.rdtype), int(rrset.ttl), rdata, int(rrset.rdclass)))
        return out

    return msg.rcode(), conv(msg.answer), conv(msg.authority), conv(msg.additional), bool(msg.flags & 0x0200)


@dataclass(eq=False, repr=False)
class DnsHandler:
    records: ClusterRecords
    forwarder: Forwarder
    stats: Stats
    _: KW_ONLY
    upstreams: list[Upstream]
    allow_loopback: bool = False
    cache_max_ttl: int = 30
    cache_min_ttl: int = 5
    cache_size: int = 10000
    fast_size: int = 100_000

    def __post_init__(self) -> None:
        self.fast_udp: dict[bytes, Entry] = {}
        self.fast_tcp: dict[bytes, Entry] = {}
        self._by_tag: dict[Hashable, set[bytes]] = {}  # change tag -> keys of the responses depending on it
        self.node_hosts = HostsTable(source="NodeHosts")
        self.custom = CustomConfig()
        self.fcache: dict[tuple[Any, ...], CacheItem] = {}
        self._inflight: dict[tuple[Any, ...], asyncio.Future[Answer]] = {}
        self._no_upstream_logged = 0.0
        self._no_answer_logged = 0.0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.records.on_change(self.invalidate)

    # -- configuration -------------------------------------------------------------------------------------
    def invalidate(self, tags: set[Hashable] | None = None) -> None:
        """Drop the precomputed responses that depend on `tags` (None: all of them)."""
        if tags is None:
            self.fast_udp.clear()
            self.fast_tcp.clear()
            self._by_tag.clear()
            return
        for tag in tags:
            for key in self._by_tag.pop(tag, ()):
                self.fast_udp.pop(key, None)
                self.fast_tcp.pop(key, None)

    def set_node_hosts(self, text: str) -> None:
        self.node_hosts = HostsTable(text, source="NodeHosts")
        log.info("NodeHosts: %d names", len(self.node_hosts))
        self.invalidate()

    def set_custom(self, data: dict[str, str] | None) -> None:
        self.custom = parse_custom(data, allow_loopback=self.allow_loopback)
        log.info(
            "coredns-custom: %d hosts, %d forward zones, %d rewrites%s",
            len(self.custom.hosts),
            len(self.custom.forward),
            len(self.custom.rewrite),
            f", {self.custom.invalid} invalid lines skipped" if self.custom.invalid else "",
        )
        self.fcache.clear()
        self.invalidate()

    def cache_entries(self) -> dict[str, int]:
        out = {"success": 0, "denial": 0}
        for item in self.fcache.values():
            out[item.kind] += 1
        return out

    # -- entry point ---------------------------------------------------------------------------------------
    def handle(
        self, data: bytes, tcp: bool, sstats: SockStats, t0: float, *, may_wait: bool = True
    ) -> bytes | None | Coroutine[Any, Any, bytes | None]:
        """Answer one query that missed the fast path: bytes now, None (drop), or a coroutine to await. With
        `may_wait` False (too many queries waiting already), one that needs an upstream is REFUSED."""
        e = lookup_fast(self.fast_tcp if tcp else self.fast_udp, data, time.monotonic())
        if e is not None:
            # A cached question asked with upper-case letters (the lower-case form misses the exact-bytes path).
            out = e.response(data, data.find(b"\x00", 12) + 1)
            sstats.observe(e.stat, time.perf_counter() - t0)
            return out
        q = parse_query(data)
        if q is None:
            return None
        if isinstance(q, Reject):
            sstats.observe(self.stats.stat("other", rcode_label(q.rcode), ""), time.perf_counter() - t0)
            return encode_reject(q)
        r = self.resolve(q)
        if isinstance(r, Answer):
            return self.finish(data, q, r, tcp, sstats, t0)
        if not may_wait:
            if inspect.iscoroutine(r):
                r.close()
            self.stats.overloaded += 1
            return self.finish(data, q, Answer(REFUSED, aa=False, plugin="forward"), tcp, sstats, t0)
        return self._finish_later(data, q, r, tcp, sstats, t0)

    async def _finish_later(
        self, data: bytes, q: Query, pending: Awaitable[Answer], tcp: bool, sstats: SockStats, t0: float
    ) -> bytes | None:
        ans = await pending
        return self.finish(data, q, ans, tcp, sstats, t0)

    def finish(self, data: bytes, q: Query, ans: Answer, tcp: bool, sstats: SockStats, t0: float) -> bytes:
        max_size = 65535 if tcp else q.max_udp()
        wires = [encode_response(data, q, _with(ans, v), max_size) for v in _rotations(ans)]
        stat = self.stats.stat(type_label(q.qtype), rcode_label(ans.rcode), ans.plugin, ans.cache)
        if q.plain and ans.rcode in (NOERROR, NXDOMAIN) and not (ans.plugin == "forward" and not ans.expires):
            fk = fast_key(data)
            if fk is not None and fk[1] == q.qname_end:
                fast = self.fast_tcp if tcp else self.fast_udp
                if len(fast) >= self.fast_size:
                    self.invalidate()
                for tag in ans.deps:
                    self._by_tag.setdefault(tag, set()).add(fk[0])
                end = q.qname_end
                lower = data[12:end].lower()  # the exact-bytes key is the lower-case question's
                if ans.cached_as:  # served again from the precomputed response = a cache hit
                    stat_again = self.stats.stat(type_label(q.qtype), rcode_label(ans.rcode), "cache", ans.cached_as)
                else:
                    stat_again = stat
                fast[fk[0]] = Entry(
                    wires[0][2:12],
                    tuple(w[end:] for w in wires),
                    tuple(w[2:12] + lower + w[end:] for w in wires),
                    ans.expires,
                    stat_again,
                )
        sstats.observe(stat, time.perf_counter() - t0)
        return wires[0]

    # -- resolution ----------------------------------------------------------------------------------------
    def resolve(self, q: Query) -> Answer | Awaitable[Answer]:
        if q.qtype in (AXFR, IXFR):
            return Answer(REFUSED, aa=False, plugin="")  # no zone transfers (K3s's Corefile has no `transfer`)
        target = self.custom.rewrite.get(q.labels)
        name = target or q.labels
        r = self._local(name, q.qtype, q.qclass)
        if isinstance(r, Answer) and r.chase is None:
            return _renamed(r, name, q.labels) if target else r
        return self._resolve_async(q, name, r)

    def _local(self, labels: Labels, qtype: int, qclass: int) -> Answer | _Forward:
        fz = self.custom.forward_zone(labels)
        if fz is not None:
            return _Forward(fz[1])
        if qclass in (CLASS_IN, CLASS_ANY):
            for table in (self.custom.hosts, self.node_hosts):
                if table.names or table.reverse:
                    ans = table.lookup(labels, qtype)
                    if ans is not None:
                        return ans
            ans = self.records.lookup(labels, qtype)
            if ans is not None:
                return ans
        elif self.records.in_zone(labels):
            return Answer(REFUSED, aa=False)
        if not self.upstreams:
            now = time.monotonic()
            if now - self._no_upstream_logged > NO_UPSTREAM_LOG_EVERY:
                self._no_upstream_logged = now
                log.error(
                    "no usable upstream server (none in the resolv.conf, or only loopback ones, refused): "
                    "names outside the cluster get SERVFAIL"
                )
            return Answer(SERVFAIL, aa=False, plugin="forward")
        return _Forward(self.upstreams)

    async def _resolve_async(self, q: Query, name: Labels, r: Answer | _Forward) -> Answer:
        if isinstance(r, _Forward):
            ans = await self.forward(r.upstreams, name, q.qtype, q.qclass, do=q.do, cd=q.cd)
            ip = ip_from_reverse(name)
            if ip is not None:  # the address may become a cluster address: then the cluster answers it
                ans.deps = (("ip", ip),)
        else:
            ans = r
            hops = 0
            while ans.chase is not None and hops < MAX_CHASE:
                hops += 1
                target = ans.chase
                sub_r = self._local(target, q.qtype, q.qclass)
                if isinstance(sub_r, _Forward):
                    sub = await self.forward(sub_r.upstreams, target, q.qtype, q.qclass, do=q.do, cd=q.cd)
                else:
                    sub = sub_r
                if sub.rcode not in (NOERROR, NXDOMAIN):
                    # The target failed: answer the CNAME alone, briefly.
                    ans = Answer(
                        NOERROR,
                        ans.answer,
                        [],
                        [],
                        aa=ans.aa,
                        plugin=ans.plugin,
                        expires=time.monotonic() + 5,
                        deps=ans.deps,
                    )
                    break
                sub_exp = sub.expires
                if not sub_exp and sub.plugin in ("forward", "cache"):
                    sub_exp = time.monotonic() + 5  # an uncached upstream answer: recompute soon
                expires = min((e for e in (ans.expires, sub_exp) if e), default=0.0)
                ans = Answer(
                    sub.rcode,
                    ans.answer + sub.answer,
                    sub.authority if not sub.answer else [],
                    ans.additional + sub.additional,
                    aa=ans.aa,
                    plugin=ans.plugin,
                    chase=sub.chase,
                    expires=expires,
                    deps=ans.deps + sub.deps,
                )
            ans.chase = None
        return _renamed(ans, name, q.labels) if name != q.labels else ans

    async def forward(
        self, ups: list[Upstream], labels: Labels, qtype: int, qclass: int, *, do: bool = False, cd: bool = False
    ) -> Answer:
        key = (labels, qtype, qclass, do, cd)
        now = time.monotonic()
        item = self.fcache.get(key)
        if item is not None:
            if item.stored + item.duration > now:
                return item.answer_at(now)
            del self.fcache[key]
        self.stats.cache_misses += 1
        fut = self._inflight.get(key)
        if fut is not None:
            ans = await asyncio.shield(fut)
            return Answer(ans.rcode, ans.answer, ans.authority, ans.additional, aa=False, plugin="forward")
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            ans = await self._forward_miss(ups, key)
            fut.set_result(ans)
            return ans
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters get it, nobody logs it as unhandled
            raise
        finally:
            self._inflight.pop(key, None)

    async def _forward_miss(self, ups: list[Upstream], key: tuple[Any, ...]) -> Answer:
        labels, qtype, qclass, do, cd = key
        query = build_query(0, labels, qtype, qclass, do=do, cd=cd)
        question = name_wire(labels) + struct.pack("!HH", qtype, qclass)
        resp = await self.forwarder.exchange(ups, query, question)
        if resp is not None and resp[3] & 0xF in (FORMERR, NOTIMP) and not do:
            # An upstream that does not speak EDNS (RFC 6891 section 7): ask again without it.
            plain = build_query(0, labels, qtype, qclass, cd=cd, edns=False)
            resp = await self.forwarder.exchange(ups, plain, question) or resp
        if resp is None:
            now = time.monotonic()
            if now - self._no_answer_logged > NO_ANSWER_LOG_EVERY:
                self._no_answer_logged = now
                log.warning(
                    "forward: no answer from %s for %s type %d within %.1fs: SERVFAIL (logged once per %.0fs)",
                    ", ".join(map(str, ups)),
                    name_text(labels),
                    qtype,
                    self.forwarder.timeout,
                    NO_ANSWER_LOG_EVERY,
                )
            return Answer(SERVFAIL, aa=False, plugin="forward")
        try:
            rcode, answer, authority, additional, tc = _upstream_answer(resp)
        except (dns.exception.DNSException, ValueError, struct.error) as exc:
            log.debug("forward: unparsable answer: %s", exc)
            return Answer(SERVFAIL, aa=False, plugin="forward")
        now = time.monotonic()
        duration = self._cache_duration(rcode, answer, authority, additional)
        if duration is None or tc:
            return Answer(rcode, answer, authority, additional, aa=False, plugin="forward")
        kind = "success" if rcode == NOERROR and answer else "denial"
        if len(self.fcache) >= self.cache_size:
            self.fcache.pop(next(iter(self.fcache)))
        item = CacheItem(rcode, answer, authority, additional, now, duration, kind)
        self.fcache[key] = item
        ans = item.answer_at(now)
        ans.plugin = "forward"
        ans.cache = None
        ans.cached_as = kind
        return ans

    def _cache_duration(self, rcode: int, answer: list[RR], authority: list[RR], additional: list[RR]) -> int | None:
        """CoreDNS's cache: success and denial capped at `cache 30`, at least 5 s; other rcodes not cached."""
        if rcode == NOERROR and answer:
            ttl = min(rr.ttl for rr in answer + authority + additional)
        elif rcode in (NOERROR, NXDOMAIN):
            soas = [rr for rr in authority if rr.rtype == SOA and isinstance(rr.rdata, SoaRdata)]
            if soas:
                rd = soas[0].rdata
                assert isinstance(rd, SoaRdata)
                ttl = min(soas[0].ttl, rd.minimum)
            else:
                ttl = self.cache_min_ttl
        else:
            return None
        return max(self.cache_min_ttl, min(ttl, self.cache_max_ttl))


def _with(ans: Answer, answer: list[RR]) -> Answer:
    if answer is ans.answer:
        return ans
    return Answer(ans.rcode, answer, ans.authority, ans.additional, aa=ans.aa, plugin=ans.plugin, deps=ans.deps)


def _rotations(ans: Answer) -> list[list[RR]]:
    """`loadbalance`: the answer's A/AAAA records rotated, up to MAX_VARIANTS orders (CNAMEs stay first)."""
    idx = [i for i, rr in enumerate(ans.answer) if rr.rtype in (A, AAAA)]
    if ans.rcode != NOERROR or len(idx) < 2:
        return [ans.answer]
    addrs = [ans.answer[i] for i in idx]
    k = min(len(addrs), MAX_VARIANTS)
    out = []
    for r in range(k):
        shift = r * len(addrs) // k
        rot = addrs[shift:] + addrs[:shift]
        new = list(ans.answer)
        for j, i in enumerate(idx):
            new[i] = rot[j]
        out.append(new)
    return out


def _renamed(ans: Answer, name: Labels, orig: Labels) -> Answer:
    """`rewrite ... answer auto`: records owned by the rewritten name are given back the asked name."""

    def ren(rrs: list[RR]) -> list[RR]:
        return [rr.with_name(orig) if rr.name == name else rr for rr in rrs]

    return Answer(
        ans.rcode,
        ren(ans.answer),
        ans.authority,
        ren(ans.additional),
        aa=ans.aa,
        plugin=ans.plugin,
        chase=ans.chase,
        expires=ans.expires,
        cache=ans.cache,
        cached_as=ans.cached_as,
        deps=ans.deps,
    )
