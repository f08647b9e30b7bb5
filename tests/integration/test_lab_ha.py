"""`kwire lab up --servers 3`: three servers on embedded etcd in nodes 1-3, one 127.0.0.1 listener for kubectl.
kill -9 of node1's server (the first, `--cluster-init`): kubectl through the lab's address keeps working, every
acknowledged write is there, a new Deployment gets Running pods, agents keep their pods and service rules (they
fail over to another server), and the supervisor brings the server back into the cluster. `lab node stop|start`
takes a server node's server down and up with it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from kwire.lab import lab as labmod
from tests.integration.labkit import Lab, wait_for

SERVER_IPS = ["192.168.77.11", "192.168.77.12", "192.168.77.13"]


@pytest.fixture(scope="module")
def ha() -> Iterator[Lab]:
    with Lab("ha", nodes=3, backend="vxlan", servers=3) as lab_:
        yield lab_


def _endpoints(lab_: Lab) -> list[str]:
    out = lab_.kubectl("get", "endpoints", "kubernetes", "-o", "jsonpath={.subsets[0].addresses[*].ip}").stdout
    return sorted(out.split())


def _pids(lab_: Lab) -> dict[str, int]:
    st = labmod.LabState.load(lab_.name)
    assert st is not None
    return dict(st.pids)


def test_three_servers_behind_one_address(ha: Lab) -> None:
    assert _endpoints(ha) == SERVER_IPS
    nodes = ha.get("nodes")["items"]
    roles = {n["metadata"]["name"]: "node-role.kubernetes.io/control-plane" in n["metadata"]["labels"] for n in nodes}
    assert roles == {"node1": True, "node2": True, "node3": True}
    assert ha.kubectl("get", "lease", "-n", "kube-system", "kube-controller-manager").returncode == 0


def test_kill_9_of_the_first_server(ha: Lab) -> None:
    ha.kubectl("create", "deployment", "keep", "--image=registry.k8s.io/pause:3.9", "--replicas=3")
    ha.kubectl("expose", "deployment", "keep", "--port=80")
    before = {p["metadata"]["uid"]: p["spec"]["nodeName"] for p in ha.wait_pods_ready("app=keep", 3, timeout=60)}
    cluster_ip = ha.kubectl("get", "service", "keep", "-o", "jsonpath={.spec.clusterIP}").stdout
    wait_for(lambda: cluster_ip in ha.run("node2", "nft", "list", "ruleset"), timeout=20, what="service rules")
    for i in range(5):
        ha.kubectl("create", "configmap", f"acked-{i}")

    old = _pids(ha)["server"]
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()

    def write() -> bool:
        res = ha.kubectl("--request-timeout=2s", "create", "configmap", "after-kill", check=False)
        return res.returncode == 0 or "AlreadyExists" in res.stderr

    wait_for(write, timeout=30, interval=0.2, what="a write through the lab's address")
    took = time.monotonic() - t0
    print(f"\nfirst write through 127.0.0.1 {took:.1f}s after kill -9 of node1's server")
    names = set(ha.kubectl("get", "configmaps", "-o", "name").stdout.split())
    assert {f"configmap/acked-{i}" for i in range(5)} <= names

    ha.kubectl("create", "deployment", "fresh", "--image=registry.k8s.io/pause:3.9", "--replicas=2")
    ha.wait_pods_ready("app=fresh", 2, timeout=60)
    after = {p["metadata"]["uid"]: p["spec"]["nodeName"] for p in ha.pods("app=keep")}
    assert after == before, "pods were replaced while a server was down"
    for node in ("node1", "node2", "node3"):
        assert cluster_ip in ha.run(node, "nft", "list", "ruleset"), f"{node} lost the service's rules"
    logs = "".join((ha.topo.state_dir / "logs" / f"node{i}.log").read_text() for i in (1, 2, 3))
    assert "switching to https://192.168.77.1" in logs, "no agent failed over"

    # The supervisor restarts the server; it rejoins with its etcd member and serves again.
    wait_for(lambda: _pids(ha)["server"] != old, timeout=20, what="the supervisor restarting the server")
    wait_for(lambda: _endpoints(ha) == SERVER_IPS, timeout=40, what="node1's server back in the endpoints")


def test_node_stop_and_start_take_its_server_with_them(ha: Lab) -> None:
    labmod.node_stop(ha.name, "node3")
    wait_for(lambda: _endpoints(ha) == SERVER_IPS[:2], timeout=40, what="node3's server leaving the endpoints")
    ha.kubectl("create", "configmap", "two-servers")  # quorum: 2 of 3 etcd members
    labmod.node_start(ha.name, "node3", timeout=90)
    wait_for(lambda: _endpoints(ha) == SERVER_IPS, timeout=60, what="node3's server back in the endpoints")
    st = labmod.LabState.load(ha.name)
    assert st is not None and st.servers == 3 and not st.stopped
