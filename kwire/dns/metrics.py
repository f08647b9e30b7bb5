"""Metrics under CoreDNS's names, counted in plain ints on the hot path and exposed by a prometheus-client
Collector on the server's own registry.

Every answer is classified by a small integer, its *stat*: (query type label, rcode, plugin, cache result). A
precomputed response carries its stat, so counting a request is two list updates on the socket's arrays (which
give the `proto` and `family` labels). The request duration is measured per request, from the moment the
server turned to it (the previous request done, or the socket became readable) to its reply being sent.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# CoreDNS's plugin.TimeBuckets: 0.25 ms doubling up to ~8 s.
BUCKETS: tuple[float, ...] = tuple(0.00025 * 2**i for i in range(16))
B0 = BUCKETS[0]

Combo = tuple[str, str, str, str]  # (type, rcode, plugin, cache: "" | "success" | "denial")


class SockStats:
    """Counters of one listening socket (proto udp/tcp, family 1 = IPv4, 2 = IPv6)."""

    __slots__ = ("proto", "family", "b0", "dsum", "over")

    def __init__(self, proto: str, family: str, n: int) -> None:
        self.proto = proto
        self.family = family
        self.b0: list[int] = [0] * n  # per stat: requests that took <= the first bucket's bound
        self.dsum: list[float] = [0.0] * n  # per stat: sum of durations
        self.over: dict[tuple[int, int], int] = {}  # (stat, bucket index, len(BUCKETS) = +Inf) -> count

    def observe(self, stat: int, d: float) -> None:
        if d <= B0:
            self.b0[stat] += 1
        else:
            self.observe_slow(stat, d)
        self.dsum[stat] += d

    def observe_slow(self, stat: int, d: float) -> None:
        i = 1
        while i < len(BUCKETS) and d > BUCKETS[i]:
            i += 1
        k = (stat, i)
        self.over[k] = self.over.get(k, 0) + 1


class Stats:
    def __init__(self, server: str) -> None:
        self.server = server
        self.combos: list[Combo] = []
        self._index: dict[Combo, int] = {}
        self.sockets: list[SockStats] = []
        self.cache_misses = 0
        self.panics = 0
        self.overloaded = 0  # queries refused because MAX_PENDING were waiting for upstreams

    def socket(self, proto: str, family: str) -> SockStats:
        s = SockStats(proto, family, len(self.combos))
        self.sockets.append(s)
        return s

    def stat(self, qtype: str, rcode: str, plugin: str, cache: str | None = None) -> int:
        combo = (qtype, rcode, plugin, cache or "")
        i = self._index.get(combo)
        if i is None:
            i = self._index[combo] = len(self.combos)
            self.combos.append(combo)
            for s in self.sockets:
                s.b0.append(0)
                s.dsum.append(0.0)
        return i

    # -- views for the collector and tests -------------------------------------------------------------------
    def counts(self, s: SockStats) -> list[int]:
        out = list(s.b0)
        for (stat, _), c in s.over.items():
            out[stat] += c
        return out

    def requests(self) -> dict[tuple[str, str, str], int]:
        """(proto, family, type) -> count."""
        out: dict[tuple[str, str, str], int] = {}
        for s in self.sockets:
            for stat, c in enumerate(self.counts(s)):
                if c:
                    k = (s.proto, s.family, self.combos[stat][0])
                    out[k] = out.get(k, 0) + c
        return out

    def responses(self) -> dict[tuple[str, str], int]:
        """(rcode, plugin) -> count."""
        out: dict[tuple[str, str], int] = {}
        for s in self.sockets:
            for stat, c in enumerate(self.counts(s)):
                if c:
                    _, rcode, plugin, _ = self.combos[stat]
                    out[(rcode, plugin)] = out.get((rcode, plugin), 0) + c
        return out

    def cache_hits(self) -> dict[str, int]:
        out = {"success": 0, "denial": 0}
        for s in self.sockets:
            for stat, c in enumerate(self.counts(s)):
                cache = self.combos[stat][3]
                if cache and c:
                    out[cache] += c
        return out

    def durations(self) -> dict[str, tuple[list[int], float]]:
        """type -> (per-bucket counts incl. +Inf, not cumulative; sum)."""
        out: dict[str, tuple[list[int], float]] = {}
        for s in self.sockets:
            for stat, combo in enumerate(self.combos):
                n0 = s.b0[stat]
                if not n0 and not s.dsum[stat]:
                    continue
                buckets, total = out.get(combo[0], ([0] * (len(BUCKETS) + 1), 0.0))
                buckets[0] += n0
                total += s.dsum[stat]
                out[combo[0]] = (buckets, total)
            for (stat, i), c in s.over.items():
                t = self.combos[stat][0]
                buckets, total = out.setdefault(t, ([0] * (len(BUCKETS) + 1), 0.0))
                buckets[i] += c
        return out


@dataclass(eq=False)
class DnsCollector(Collector):
    stats: Stats
    _: KW_ONLY
    forward_requests: Callable[[], dict[str, int]]
    forward_responses: Callable[[], dict[tuple[str, str], int]]
    cache_entries: Callable[[], dict[str, int]]
    version: str

    def collect(self) -> Iterator[Metric]:
        st = self.stats
        server, zone = st.server, "."
        req = CounterMetricFamily(
            "coredns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            labels=["server", "zone", "proto", "family", "type"],
        )
        for (proto, family, qtype), c in sorted(st.requests().items()):
            req.add_metric([server, zone, proto, family, qtype], c)
        yield req
        resp = CounterMetricFamily(
            "coredns_dns_responses",
            "Counter of response status codes.",
            labels=["server", "zone", "rcode", "plugin"],
        )
        for (rcode, plugin), c in sorted(st.responses().items()):
            resp.add_metric([server, zone, rcode, plugin], c)
        yield resp
        dur = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took.",
            labels=["server", "zone", "type"],
        )
        for qtype, (buckets, total) in sorted(st.durations().items()):
            cum = 0
            pairs = []
            for bound, c in zip(BUCKETS, buckets, strict=False):
                cum += c
                pairs.append((repr(bound), cum))
            cum += buckets[-1]
            pairs.append(("+Inf", cum))
            dur.add_metric([server, zone, qtype], pairs, total)
        yield dur
        hits = CounterMetricFamily("coredns_cache_hits", "The count of cache hits.", labels=["server", "type"])
        for t, c in sorted(st.cache_hits().items()):
            hits.add_metric([server, t], c)
        yield hits
        miss = CounterMetricFamily("coredns_cache_misses", "The count of cache misses.", labels=["server"])
        miss.add_metric([server], st.cache_misses)
        yield miss
        entries = GaugeMetricFamily(
            "coredns_cache_entries", "The number of elements in the cache.", labels=["server", "type"]
        )
        for t, c in sorted(self.cache_entries().items()):
            entries.add_metric([server, t], c)
        yield entries
        fwd = CounterMetricFamily("coredns_forward_requests", "Counter of requests made per upstream.", labels=["to"])
        for to, c in sorted(self.forward_requests().items()):
            fwd.add_metric([to], c)
        yield fwd
        fresp = CounterMetricFamily(
            "coredns_forward_responses", "Counter of responses received per upstream.", labels=["to", "rcode"]
        )
        for (to, rcode), c in sorted(self.forward_responses().items()):
            fresp.add_metric([to, rcode], c)
        yield fresp
        over = CounterMetricFamily(
            "coredns_forward_max_concurrent_rejects",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.",
        )
        over.add_metric([], st.overloaded)
        yield over
        panics = CounterMetricFamily("coredns_panics", "A metrics that counts the number of panics.")
        panics.add_metric([], st.panics)
        yield panics
        info = GaugeMetricFamily(
            "coredns_build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS "
            "was built.",
            labels=["version", "revision", "goversion"],
        )
        info.add_metric(
            [self.version, "kwire", f"{platform.python_implementation().lower()}{sys.version.split()[0]}"], 1
        )
        yield info
