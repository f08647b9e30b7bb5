"""What metrics-server keeps and serves, as pure code: the last two scrapes of each node and container
(metrics-server's `pkg/storage`), the usage between them (CPU as a rate over the window, memory as the latest
working set), and the NodeMetrics / PodMetrics objects of `metrics.k8s.io/v1beta1` in metrics-server's form:
`timestamp` (the newer point), `window` (between the points), cpu in nanocores (`123456n`), memory in `Ki`.

A figure needs two scrapes (a rate), so a node or pod is served only from its second scrape on, as in
metrics-server ("metrics not available yet" before); a container whose cumulative CPU went backwards (restarted)
starts over.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Obj = dict[str, Any]
GROUP_VERSION = "metrics.k8s.io/v1beta1"


@dataclass(frozen=True)
class Point:
    """A cumulative CPU reading (core-seconds) and a memory working set (bytes) at `ts` (unix seconds)."""

    ts: float
    cpu: float
    memory: float


@dataclass(frozen=True)
class Usage:
    ts: float
    window: float
    nanocores: int
    memory: int


def usage(prev: Point | None, cur: Point) -> Usage | None:
    if prev is None or cur.ts <= prev.ts or cur.cpu < prev.cpu:
        return None
    window = cur.ts - prev.ts
    return Usage(cur.ts, window, int((cur.cpu - prev.cpu) / window * 1e9), int(cur.memory))


@dataclass(frozen=True)
class NodeScrape:
    """One `/metrics/resource` answer, parsed."""

    node: Point | None
    containers: dict[tuple[str, str, str], Point]  # (namespace, pod, container) -> point


def parse_scrape(text: str, *, now: float) -> NodeScrape:
    """kubelet's resource metrics text (samples without a timestamp are taken as read at `now`)."""
    cpu: dict[tuple[str, str, str], tuple[float, float]] = {}
    mem: dict[tuple[str, str, str], float] = {}
    node_cpu: tuple[float, float] | None = None
    node_mem: float | None = None
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            ts = float(s.timestamp) if s.timestamp is not None else now
            key = (s.labels.get("namespace", ""), s.labels.get("pod", ""), s.labels.get("container", ""))
            if s.name == "container_cpu_usage_seconds_total":
                cpu[key] = (ts, float(s.value))
            elif s.name == "container_memory_working_set_bytes":
                mem[key] = float(s.value)
            elif s.name == "node_cpu_usage_seconds_total":
                node_cpu = (ts, float(s.value))
            elif s.name == "node_memory_working_set_bytes":
                node_mem = float(s.value)
    containers = {k: Point(ts, value, mem.get(k, 0.0)) for k, (ts, value) in cpu.items()}
    node = Point(node_cpu[0], node_cpu[1], node_mem or 0.0) if node_cpu is not None else None
    return NodeScrape(node, containers)


@dataclass
class Storage:
    """The last two points of every node and container (metrics-server keeps no more)."""

    nodes: dict[str, tuple[Point | None, Point]] = field(default_factory=dict)
    containers: dict[tuple[str, str, str], tuple[Point | None, Point]] = field(default_factory=dict)
    container_node: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def store(self, scrapes: dict[str, NodeScrape]) -> None:
        """One round of scrapes; nodes and containers missing from it are forgotten (their node answered without
        them, or the node was not scraped)."""
        nodes: dict[str, tuple[Point | None, Point]] = {}
        containers: dict[tuple[str, str, str], tuple[Point | None, Point]] = {}
        owner: dict[tuple[str, str, str], str] = {}
        for name, scrape in scrapes.items():
            if scrape.node is not None:
                old = self.nodes.get(name)
                nodes[name] = (old[1] if old and old[1].ts < scrape.node.ts else (old[0] if old else None), scrape.node)
            for key, point in scrape.containers.items():
                prev = self.containers.get(key)
                keep = prev[1] if prev and prev[1].ts < point.ts else (prev[0] if prev else None)
                containers[key] = (keep, point)
                owner[key] = name
        self.nodes, self.containers, self.container_node = nodes, containers, owner

    def node_usage(self, name: str) -> Usage | None:
        got = self.nodes.get(name)
        return usage(*got) if got else None

    def pod_usage(self, namespace: str, pod: str) -> dict[str, Usage] | None:
        """Usage per container of the pod, None unless every container has a figure (as metrics-server drops a
        pod with a container missing)."""
        out: dict[str, Usage] = {}
        for (ns, p, c), (prev, cur) in self.containers.items():
            if ns == namespace and p == pod:
                u = usage(prev, cur)
                if u is None:
                    return None
                out[c] = u
        return out or None

    def pods(self) -> list[tuple[str, str]]:
        return sorted({(ns, p) for ns, p, _c in self.containers})


def _time(ts: float) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def quantities(u: Usage) -> Obj:
    return {"cpu": f"{u.nanocores}n", "memory": f"{u.memory // 1024}Ki"}


def node_metrics(name: str, u: Usage, *, labels: dict[str, str], now: float) -> Obj:
    return {
        "kind": "NodeMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": {"name": name, "creationTimestamp": _time(now), "labels": labels},
        "timestamp": _time(u.ts),
        "window": _window(u.window),
        "usage": quantities(u),
    }


def pod_metrics(namespace: str, name: str, containers: dict[str, Usage], *, labels: dict[str, str], now: float) -> Obj:
    first = next(iter(containers.values()))
    return {
        "kind": "PodMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": _time(now), "labels": labels},
        "timestamp": _time(max(u.ts for u in containers.values())),
        "window": _window(first.window),
        "containers": [{"name": c, "usage": quantities(u)} for c, u in sorted(containers.items())],
    }


def metrics_list(kind: str, items: list[Obj]) -> Obj:
    return {"kind": f"{kind}List", "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}


def resource_list() -> Obj:
    """metrics-server's discovery document for metrics.k8s.io/v1beta1."""
    verbs = ["get", "list"]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics", "verbs": verbs},
            {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics", "verbs": verbs},
        ],
    }


TABLE_COLUMNS = [
    {"name": "Name", "type": "string", "format": "name", "description": "Name of the resource", "priority": 0},
    {"name": "CPU", "type": "string", "format": "", "description": "CPU usage", "priority": 0},
    {"name": "Memory", "type": "string", "format": "", "description": "Memory usage", "priority": 0},
    {"name": "Window", "type": "string", "format": "", "description": "Interval of the usage", "priority": 0},
]


def table(items: list[Obj], *, include_object: str = "Metadata") -> Obj:
    """The metav1 Table `kubectl get nodemetrics|podmetrics` asks for (metrics-server's printer: a pod's usage is
    the sum of its containers')."""
    rows = []
    for item in items:
        if item["kind"] == "NodeMetrics":
            cpu, memory = item["usage"]["cpu"], item["usage"]["memory"]
        else:
            cpu = f"{sum(int(c['usage']['cpu'][:-1]) for c in item['containers'])}n"
            memory = f"{sum(int(c['usage']['memory'][:-2]) for c in item['containers'])}Ki"
        row: Obj = {"cells": [item["metadata"]["name"], cpu, memory, item["window"]]}
        if include_object == "Object":
            row["object"] = item
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": item["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": TABLE_COLUMNS,
        "rows": rows,
    }
