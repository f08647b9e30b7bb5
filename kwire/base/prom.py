"""Prometheus pieces every kwire metrics endpoint shares: counters under upstream's exact names, and the
/metrics response.

prometheus-client's `Counter` always exposes its samples with a `_total` suffix. Go's client does not add one, and
several upstream counters users' dashboards query were named without it (MetalLB's
`metallb_layer2_requests_received`, kube-router's `kube_router_controller_iptables_sync_total_count`).
`ExactCounter` keeps such a name to the letter; its family is exported untyped, so the HELP/TYPE lines carry the
same name as the samples (a `counter` family would be renamed `..._total` in them).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric


class ExactCounter:
    """A monotonic counter, one value per label-value tuple, exposed under exactly `name`."""

    def __init__(
        self, name: str, documentation: str, labelnames: tuple[str, ...] = (), *, registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, *labelvalues: str, amount: float = 1.0) -> None:
        if len(labelvalues) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {labelvalues}")
        if amount < 0:
            raise ValueError(f"{self.name}: counters only go up (got {amount})")
        self.values[labelvalues] = self.values.get(labelvalues, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        family = Metric(self.name, self.documentation, "unknown")
        if not self.labelnames and not self.values:
            family.add_sample(self.name, {}, 0.0)  # an unlabelled counter exists from the start, as in Go
        for labelvalues, value in sorted(self.values.items()):
            family.add_sample(self.name, dict(zip(self.labelnames, labelvalues, strict=True)), value)
        yield family


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """`GET /metrics`: the registry in the Prometheus text format."""
    return exposition_response(generate_latest(registry))


def exposition_response(body: bytes) -> web.Response:
    """A response carrying an already rendered Prometheus text exposition."""
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
