"""The kubelet's resource metrics endpoint, `GET /metrics/resource` on port 10250: what metrics-server scrapes for
`kubectl top` (kubelet's `pkg/kubelet/metrics/collectors/resource_metrics.go`, same metric names and labels, each
sample carrying its own timestamp).

kwire has no cgroups per pod, so the figures come from /proc, read when the endpoint is scraped:
- a container that runs a process: CPU = utime+stime+cutime+cstime of that process and all its descendants (the
  reaped children's time stays counted, as a cgroup's usage does), memory working set = the sum of their resident
  set sizes (/proc/<pid>/statm);
- a container the node's runtime serves as a responder (no process of its own): 0 CPU and 0 bytes, reported so the
  pod still appears in `kubectl top pods`;
- the node: /proc/stat's busy time (everything but idle and iowait) and /proc/meminfo's MemTotal - MemAvailable.
  In a lab every node is the same machine, so every node reports the machine's figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PROC = Path("/proc")


@dataclass(frozen=True)
class ContainerRef:
    """A container this node runs: pid 0 when the runtime serves it without a process of its own."""

    namespace: str
    pod: str
    container: str
    pid: int = 0


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    memory_bytes: int


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, cpu seconds including reaped children) of a process, None if it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name is in parentheses and may contain spaces: fields start after the last ')'
    fields = text[text.rfind(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / CLK_TCK


def _rss(pid: int) -> int:
    try:
        return int((PROC / str(pid) / "statm").read_text().split()[1]) * PAGE_SIZE
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
        return 0


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, cpu seconds) of every process."""
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                out[int(entry.name)] = st
    return out


def tree_usage(root: int, table: dict[int, tuple[int, float]]) -> Usage:
    """CPU and resident memory of `root` and its descendants."""
    if root not in table:
        return Usage(0.0, 0)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu) in table.items():
        children.setdefault(ppid, []).append(pid)
    cpu, mem, todo = 0.0, 0, [root]
    while todo:
        pid = todo.pop()
        cpu += table[pid][1]
        mem += _rss(pid)
        todo.extend(children.get(pid, ()))
    return Usage(cpu, mem)


def node_usage() -> Usage:
    """The machine's busy CPU seconds and memory working set."""
    cpu = (PROC / "stat").read_text().splitlines()[0].split()[1:]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    ticks = [int(x) for x in cpu[:8]] + [0] * (8 - len(cpu[:8]))
    busy = sum(ticks) - ticks[3] - ticks[4]
    mem: dict[str, int] = {}
    for line in (PROC / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            mem[key] = int(rest.split()[0]) * 1024
    return Usage(busy / CLK_TCK, mem.get("MemTotal", 0) - mem.get("MemAvailable", 0))


class ResourceCollector(Collector):
    """kubelet's resource metrics for the containers `containers()` lists, read at each collection."""

    def __init__(self, containers: Callable[[], list[ContainerRef]]) -> None:
        self.containers = containers

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        table = process_table()
        node = node_usage()
        labels = ["container", "namespace", "pod"]
        c_cpu = CounterMetricFamily(
            "container_cpu_usage_seconds",
            "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
            labels=labels,
        )
        c_mem = GaugeMetricFamily(
            "container_memory_working_set_bytes",
            "[STABLE] Current working set of the container in bytes",
            labels=labels,
        )
        p_cpu = CounterMetricFamily(
            "pod_cpu_usage_seconds",
            "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
            labels=labels[1:],
        )
        p_mem = GaugeMetricFamily(
            "pod_memory_working_set_bytes", "[STABLE] Current working set of the pod in bytes", labels=labels[1:]
        )
        pods: dict[tuple[str, str], Usage] = {}
        for ref in self.containers():
            use = tree_usage(ref.pid, table) if ref.pid else Usage(0.0, 0)
            values = [ref.container, ref.namespace, ref.pod]
            c_cpu.add_metric(values, use.cpu_seconds, timestamp=now)
            c_mem.add_metric(values, use.memory_bytes, timestamp=now)
            prev = pods.get((ref.namespace, ref.pod), Usage(0.0, 0))
            pods[(ref.namespace, ref.pod)] = Usage(
                prev.cpu_seconds + use.cpu_seconds, prev.memory_bytes + use.memory_bytes
            )
        for (ns, pod), use in sorted(pods.items()):
            p_cpu.add_metric([ns, pod], use.cpu_seconds, timestamp=now)
            p_mem.add_metric([ns, pod], use.memory_bytes, timestamp=now)
        n_cpu = CounterMetricFamily(
            "node_cpu_usage_seconds", "[STABLE] Cumulative cpu time consumed by the node in core-seconds"
        )
        n_cpu.add_metric([], node.cpu_seconds, timestamp=now)
        n_mem = GaugeMetricFamily("node_memory_working_set_bytes", "[STABLE] Current working set of the node in bytes")
        n_mem.add_metric([], node.memory_bytes, timestamp=now)
        err = GaugeMetricFamily(
            "resource_scrape_error", "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise"
        )
        err.add_metric([], 0)
        yield from (c_cpu, c_mem, n_cpu, n_mem, p_cpu, p_mem, err)


def exposition(containers: Callable[[], list[ContainerRef]]) -> bytes:
    """The text `/metrics/resource` answers (Prometheus text format 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResourceCollector(containers))
    return generate_latest(registry)
