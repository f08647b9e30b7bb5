"""The agent's Prometheus metrics under the names K3s users scrape, on kube-proxy's metrics port.

kube-proxy's (`pkg/proxy/metrics`, nftables mode) for the service proxy: `kubeproxy_sync_proxy_rules_duration_seconds`
(and its `_full_`/`_partial_` variants), `kubeproxy_sync_proxy_rules_last_timestamp_seconds`,
`kubeproxy_network_programming_duration_seconds` (from the first change a sync picked up to its commit),
`kubeproxy_sync_proxy_rules_endpoint_changes_total`/`_service_changes_total` (EndpointSlice and Service events) and
their `_pending` gauges, `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`,
`kubeproxy_sync_proxy_rules_nftables_sync_failures_total`. kube-router's (`pkg/metrics`, which K3s embeds for
NetworkPolicy) for the policy table: `kube_router_controller_iptables_sync_time` (histogram; kwire programs nftables,
the name is kept for existing dashboards), `kube_router_controller_iptables_sync_total_count`, `..._total_time` and
`kube_router_controller_policy_chains`, plus `kwire_netpol_sync_failures_total` (kube-router has no failure count).
Buckets are kube-proxy's and kube-router's (Prometheus defaults).

`AgentMetricsServer` serves `GET /metrics` (and `/healthz`) on kube-proxy's `metrics-bind-address`, default
127.0.0.1:10249 (inside a lab node's own namespace); K3s's `--kube-proxy-arg metrics-bind-address=0.0.0.0:10249`
moves it, as users do to scrape it from Prometheus.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kwire.base.prom import ExactCounter, metrics_response

log = logging.getLogger(__name__)

DEFAULT_BIND = "127.0.0.1:10249"
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))  # kube-proxy: ExponentialBuckets(0.001, 2, 15)
PROGRAMMING_BUCKETS = (  # kube-proxy's NetworkProgrammingLatency buckets
    (0.25, 0.5)
    + tuple(float(i) for i in range(1, 60))
    + tuple(60.0 + 5 * i for i in range(12))
    + tuple(120.0 + 30 * i for i in range(7))
)


class ProxyMetrics:
    """kube-proxy's metrics; a `kwire.agent.nftsync.SyncObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def hist(name: str, doc: str, buckets: tuple[float, ...] = SYNC_BUCKETS) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=registry)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, registry=registry)

        self.duration = hist("kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds")
        self.full = hist(
            "kubeproxy_sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs"
        )
        self.partial = hist(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
        )
        self.last = gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced"
        )
        self.queued = gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued"
        )
        self.programming = hist(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            PROGRAMMING_BUCKETS,
        )
        self.endpoint_changes = counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes", "Cumulative proxy rules Endpoint changes"
        )
        self.service_changes = counter(
            "kubeproxy_sync_proxy_rules_service_changes", "Cumulative proxy rules Service changes"
        )
        self.endpoint_pending = gauge(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes"
        )
        self.service_pending = gauge(
            "kubeproxy_sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes"
        )
        self.failures = counter(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures", "Cumulative proxy nftables sync failures"
        )

    def endpoints_changed(self) -> None:
        self.endpoint_changes.inc()
        self.endpoint_pending.inc()
        self.queued.set(time.time())

    def service_changed(self) -> None:
        self.service_changes.inc()
        self.service_pending.inc()
        self.queued.set(time.time())

    def synced(self, *, full: bool, seconds: float, latency: float | None, rules: int) -> None:
        self.duration.observe(seconds)
        (self.full if full else self.partial).observe(seconds)
        self.last.set(time.time())
        if latency is not None:
            self.programming.observe(latency)
        self.endpoint_pending.set(0)
        self.service_pending.set(0)

    def failed(self) -> None:
        self.failures.inc()


class NetpolMetrics:
    """kube-router's NetworkPolicy controller metrics; a `kwire.agent.nftsync.SyncObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sync_time = Histogram(
            "kube_router_controller_iptables_sync_time",
            "Time it took for controller to sync iptables",
            registry=registry,
        )
        # kube-router's (Go) counters have no `_total` suffix, and the names are what dashboards query
        self.count = ExactCounter(
            "kube_router_controller_iptables_sync_total_count",
            "Total number of times iptables were synced",
            registry=registry,
        )
        self.total_time = ExactCounter(
            "kube_router_controller_iptables_sync_total_time",
            "Sum of time it took for controller to sync iptables",
            registry=registry,
        )
        self.chains = Gauge("kube_router_controller_policy_chains", "Active policy chains", registry=registry)
        self.failures = Counter(
            "kwire_netpol_sync_failures", "NetworkPolicy nftables syncs that failed", registry=registry
        )

    def synced(self, *, full: bool, seconds: float, latency: float | None, rules: int) -> None:
        self.sync_time.observe(seconds)
        self.count.inc()
        self.total_time.inc(amount=seconds)
        self.chains.set(rules)

    def failed(self) -> None:
        self.failures.inc()


class AgentMetrics:
    """The agent's registry (its own, never the process-global one) and the two observers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.proxy = ProxyMetrics(self.registry)
        self.netpol = NetpolMetrics(self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def parse_bind(value: str) -> tuple[str, int]:
    """kube-proxy's `--metrics-bind-address`: `HOST:PORT`, `HOST` (port 10249), or `:PORT`."""
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:  # no port given (or a bare IPv6 address)
        host, port = value, "10249"
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class AgentMetricsServer:
    def __init__(self, metrics: AgentMetrics, *, bind: str = DEFAULT_BIND) -> None:
        self.metrics = metrics
        self.host, self.port = parse_bind(bind)
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        return metrics_response(self.metrics.registry)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", lambda _r: self._ok())
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host=self.host, port=self.port, reuse_address=True).start()
        except OSError as exc:
            log.warning("agent: cannot serve metrics on %s:%d: %s", self.host, self.port, exc)

    @staticmethod
    async def _ok() -> web.Response:
        return web.Response(text="ok")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
