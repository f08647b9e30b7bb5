"""MetalLB's Prometheus metrics, with MetalLB v0.14's names, on the controller's and speaker's /metrics (port 7472).

MetalLB v0.14's IPAddressPool has an empty `status` (its CRD's schema prunes anything written there), so the pool
counters users look for are these gauges, as upstream exports them:
- controller (internal/allocator/stats.go): `metallb_allocator_addresses_in_use_total{pool}` and
  `metallb_allocator_addresses_total{pool}` (usable IPv4 addresses);
- speaker (internal/layer2/stats.go, speaker/main.go): `metallb_layer2_requests_received{ip}`,
  `metallb_layer2_responses_sent{ip}`, `metallb_layer2_gratuitous_sent{ip}` and
  `metallb_speaker_announced{ip,node,protocol,service}`;
- both: `metallb_k8s_client_config_loaded_bool` and `metallb_k8s_client_updates_total`.
Each process owns one registry (prometheus-client), served by `serve`.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from kwire.base.prom import ExactCounter, metrics_response


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.in_use = Gauge(
            "metallb_allocator_addresses_in_use_total", "Number of IP addresses in use, per pool", ["pool"], registry=r
        )
        self.total = Gauge(
            "metallb_allocator_addresses_total", "Number of usable IP addresses, per pool", ["pool"], registry=r
        )
        # MetalLB's Go client names these without `_total`: exactly upstream's names (kwire.base.prom)
        self.requests = ExactCounter(
            "metallb_layer2_requests_received", "Number of layer2 requests received for owned IPs", ("ip",), registry=r
        )
        self.responses = ExactCounter(
            "metallb_layer2_responses_sent", "Number of layer2 responses sent for owned IPs", ("ip",), registry=r
        )
        self.gratuitous = ExactCounter(
            "metallb_layer2_gratuitous_sent",
            "Number of gratuitous layer2 packets sent for owned IPs",
            ("ip",),
            registry=r,
        )
        self.announced = Gauge(
            "metallb_speaker_announced",
            "Services being announced from this node. This is desired state, it does not guarantee that the routing "
            "protocols have converged.",
            ["ip", "node", "protocol", "service"],
            registry=r,
        )
        self.config_loaded = Gauge(
            "metallb_k8s_client_config_loaded_bool",
            "1 if the MetalLB configuration was successfully loaded at least once.",
            registry=r,
        )
        self.updates = Counter(
            "metallb_k8s_client_updates_total", "Number of k8s object updates that have been processed.", registry=r
        )

    def set_pools(self, counts: dict[str, tuple[int, int]]) -> None:
        """Per pool (assigned, available): the allocator's gauges; pools that are gone are removed."""
        for pool in {s.labels["pool"] for m in self.in_use.collect() for s in m.samples} - set(counts):
            self.in_use.remove(pool)
            self.total.remove(pool)
        for pool, (used, available) in counts.items():
            self.in_use.labels(pool=pool).set(used)
            self.total.labels(pool=pool).set(used + available)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def serve(metrics: Metrics, port: int) -> web.AppRunner:
    """/metrics on `port` (also MetalLB's readiness probe)."""

    async def handler(_req: web.Request) -> web.Response:
        return metrics_response(metrics.registry)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
