"""What K3s users expect when they look at a cluster, checked with the real kubectl 1.32 in one 2-node lab:
`kubectl top nodes|pods` through the metrics-server add-on and the aggregation layer, `kubectl port-forward` to
pods and services, label-selected logs, events for what kwire does, and kube-proxy's metrics on :10249."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.integration.labkit import Lab, wait_for

BURNER = """
apiVersion: v1
kind: Pod
metadata: {name: burn, labels: {app: burn}}
spec:
  containers:
  - name: spin
    image: busybox
    command: [sh, -c, "while :; do :; done"]
  - name: idle
    image: busybox
    command: [sleep, "3600"]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab_ = Lab("obs", nodes=2, backend="vxlan")
    try:
        lab_.up()
        yield lab_
    finally:
        lab_.down()


def _millicores(cell: str) -> int:
    return int(cell.removesuffix("m"))


def test_kubectl_top_nodes_and_pods(lab: Lab) -> None:
    lab.apply(BURNER)

    def available() -> bool:
        conds = lab.get("apiservice", "v1beta1.metrics.k8s.io")["status"]["conditions"]
        return any(c["type"] == "Available" and c["status"] == "True" for c in conds)

    wait_for(available, timeout=30, interval=1, what="APIService v1beta1.metrics.k8s.io Available")
    assert "True" in lab.kubectl("get", "apiservice", "v1beta1.metrics.k8s.io").stdout.splitlines()[1].split()

    def burner_row() -> list[str] | None:
        res = lab.kubectl("top", "pod", "burn", "--containers", check=False)
        rows = {ln.split()[1]: ln.split() for ln in res.stdout.splitlines()[1:] if ln.strip()}
        return rows if "spin" in rows and _millicores(rows["spin"][2]) >= 50 else None

    # metrics-server needs two scrapes 15 s apart after the pod started
    rows = wait_for(burner_row, timeout=90, interval=2, what="kubectl top pod burn --containers")
    assert rows["spin"][0] == "burn" and rows["idle"][0] == "burn"
    assert _millicores(rows["idle"][2]) < _millicores(rows["spin"][2])
    assert re.fullmatch(r"\d+Mi", rows["spin"][3])

    nodes = lab.kubectl("top", "nodes").stdout.splitlines()
    assert nodes[0].split() == ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
    by_name = {ln.split()[0]: ln.split() for ln in nodes[1:]}
    assert sorted(by_name) == ["node1", "node2"]
    for cells in by_name.values():
        assert _millicores(cells[1]) > 0 and int(cells[3].removesuffix("Mi")) > 0

    all_pods = lab.kubectl("top", "pods", "-A").stdout.splitlines()
    assert all_pods[0].split() == ["NAMESPACE", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    names = {ln.split()[1] for ln in all_pods[1:]}
    assert "burn" in names and any(n.startswith("coredns-") for n in names)
    selected = lab.kubectl("top", "pods", "-l", "app=burn").stdout.splitlines()
    assert [ln.split()[0] for ln in selected[1:]] == ["burn"]
    missing = lab.kubectl("top", "pod", "nosuchpod", check=False)
    assert missing.returncode != 0 and 'podmetrics.metrics.k8s.io "default/nosuchpod" not found' in missing.stderr
