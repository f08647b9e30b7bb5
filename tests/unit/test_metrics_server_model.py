"""metrics-server's storage and objects: two scrapes of kubelet's /metrics/resource text make a rate over their
window; one scrape, a restarted container or a pod missing a container's figures serve nothing; the objects carry
nanocores and Ki as metrics-server writes them. And the kubelet side: /proc figures of a real process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from kwire.agent.kubelet.resourcemetrics import ContainerRef, exposition, process_table, tree_usage
from kwire.metricsserver import model


def _text(ts_ms: int, node_cpu: float, cpu_a: float, cpu_b: float | None) -> str:
    lines = [
        f'container_cpu_usage_seconds_total{{container="a",namespace="ns",pod="p"}} {cpu_a} {ts_ms}',
        f'container_memory_working_set_bytes{{container="a",namespace="ns",pod="p"}} 2097152 {ts_ms}',
        f"node_cpu_usage_seconds_total {node_cpu} {ts_ms}",
        f"node_memory_working_set_bytes 1073741824 {ts_ms}",
    ]
    if cpu_b is not None:
        lines.append(f'container_cpu_usage_seconds_total{{container="b",namespace="ns",pod="p"}} {cpu_b} {ts_ms}')
    return "\n".join(lines) + "\n"


def test_two_scrapes_make_a_rate_over_their_window() -> None:
    s = model.Storage()
    s.store({"n1": model.parse_scrape(_text(1_000_000, 100.0, 1.0, 0.5), now=0)})
    assert s.node_usage("n1") is None  # one point: no rate yet ("metrics not available yet")
    assert s.pod_usage("ns", "p") is None
    s.store({"n1": model.parse_scrape(_text(1_010_000, 115.0, 6.0, 0.5), now=0)})
    node = s.node_usage("n1")
    assert node is not None and node.window == 10.0
    assert node.nanocores == 1_500_000_000 and node.memory == 1073741824
    pod = s.pod_usage("ns", "p")
    assert pod is not None and pod["a"].nanocores == 500_000_000 and pod["b"].nanocores == 0
    obj = model.pod_metrics("ns", "p", pod, labels={"app": "x"}, now=1_010.0)
    assert obj["window"] == "10s"
    assert obj["containers"][0] == {"name": "a", "usage": {"cpu": "500000000n", "memory": "2048Ki"}}
    assert model.node_metrics("n1", node, labels={}, now=0)["usage"] == {"cpu": "1500000000n", "memory": "1048576Ki"}


def test_restarted_container_and_incomplete_pod_serve_nothing() -> None:
    s = model.Storage()
    s.store({"n1": model.parse_scrape(_text(1_000_000, 100.0, 5.0, 1.0), now=0)})
    s.store({"n1": model.parse_scrape(_text(1_010_000, 110.0, 1.0, 2.0), now=0)})  # a: counter went back
    assert s.pod_usage("ns", "p") is None
    s.store({"n1": model.parse_scrape(_text(1_020_000, 120.0, 2.0, 3.0), now=0)})
    assert s.pod_usage("ns", "p") is not None
    s.store({"n1": model.parse_scrape(_text(1_030_000, 130.0, 3.0, None), now=0)})  # b vanished: pod of a only
    got = s.pod_usage("ns", "p")
    assert got is not None and list(got) == ["a"]
    s.store({})  # the node was not scraped: everything it had is forgotten
    assert s.node_usage("n1") is None and s.pods() == []


def test_kubelet_resource_metrics_count_a_busy_process_tree() -> None:
    # its own process group, so the busy grandchild is ended with it
    proc = subprocess.Popen(["sh", "-c", "sh -c 'while :; do :; done' & wait"], start_new_session=True)
    try:
        end = time.monotonic() + 20  # the machine is shared: wait for a tenth of a CPU-second, however long
        while (use := tree_usage(proc.pid, process_table())).cpu_seconds < 0.1 and time.monotonic() < end:
            time.sleep(0.2)
        assert use.cpu_seconds >= 0.1  # the busy grandchild's time is counted under the container's process
        assert use.memory_bytes > 0
        text = exposition(lambda: [ContainerRef("ns", "p", "c", pid=proc.pid), ContainerRef("ns", "p", "r")])
        scrape = model.parse_scrape(text.decode(), now=time.time())
        assert scrape.node is not None and scrape.node.cpu > 0 and scrape.node.memory > 0
        assert scrape.containers[("ns", "p", "c")].cpu >= use.cpu_seconds
        assert scrape.containers[("ns", "p", "r")].cpu == 0  # a responder has no process of its own
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_table_for_kubectl_get() -> None:
    u = model.Usage(ts=10.0, window=15.0, nanocores=2_000_000, memory=4096 * 1024)
    pod = model.pod_metrics("ns", "p", {"a": u, "b": u}, labels={}, now=0)
    t = model.table([pod])
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "CPU", "Memory", "Window"]
    assert t["rows"][0]["cells"] == ["p", "4000000n", "8192Ki", "15s"]  # a pod's usage: its containers' sum
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert "object" not in model.table([pod], include_object="None")["rows"][0]
