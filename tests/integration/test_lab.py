"""A real 3-node lab: pods talk across a VXLAN overlay (and host-gw), flannel's entries follow the nodes, the VtepMAC
and established connections survive agent restarts, pod egress is masqueraded, and `lab down` leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from kwire.kernel import netns
from kwire.lab import lab as labmod
from kwire.lab import procs
from tests.integration.apiserver import KUBECTL
from tests.integration.labkit import Lab, Listener, leftovers, udp_echo, wait_for

pytestmark = pytest.mark.lab

DEPLOY = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: nginx
        image: nginx
        ports: [{containerPort: 80}, {containerPort: 5353, protocol: UDP}]
"""


@pytest.fixture(scope="module")
def vx() -> Iterator[Lab]:
    with Lab("kwt-vx", 3, "vxlan") as lab_:
        lab_.apply(DEPLOY)
        lab_.wait_pods_ready("app=web", 3)
        yield lab_


def _by_node(lab_: Lab) -> dict[str, dict[str, str]]:
    return {
        p["spec"]["nodeName"]: {"name": p["metadata"]["name"], "ip": p["status"]["podIP"]} for p in lab_.pods("app=web")
    }


def test_nodes_ready_with_flannel_annotations(vx: Lab) -> None:
    nodes = {n["metadata"]["name"]: n for n in vx.get("nodes")["items"]}
    assert sorted(nodes) == ["node1", "node2", "node3"]
    cidrs = sorted(n["spec"]["podCIDR"] for n in nodes.values())
    assert cidrs == ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]
    for name, n in nodes.items():
        ann = n["metadata"]["annotations"]
        assert ann["flannel.alpha.coreos.com/backend-type"] == "vxlan"
        assert ann["flannel.alpha.coreos.com/public-ip"] == vx.topo.host(name).ip  # type: ignore[union-attr]
        data = json.loads(ann["flannel.alpha.coreos.com/backend-data"])
        assert data["VNI"] == 1 and len(data["VtepMAC"]) == 17
    assert "control-plane" in vx.kubectl("get", "nodes").stdout


def test_deployment_spreads_and_each_pod_answers_with_its_name(vx: Lab) -> None:
    by_node = _by_node(vx)
    assert sorted(by_node) == ["node1", "node2", "node3"]  # one replica per node
    for node, pod in by_node.items():
        body = vx.curl_json("node1", f"http://{pod['ip']}/")
        assert body["pod"] == pod["name"] and body["node"] == node and body["podIP"] == pod["ip"]


def test_pod_to_pod_tcp_udp_icmp_across_and_within_nodes(vx: Lab) -> None:
    by_node = _by_node(vx)
    src = by_node["node1"]
    for dst in (by_node["node2"], by_node["node3"]):
        body = vx.curl_json(src["name"], f"http://{dst['ip']}/x")
        assert body["clientIP"] == src["ip"]  # pod-to-pod keeps the pod IP: no masquerade
        assert udp_echo(vx, src["name"], dst["ip"], 5353, b"hello") == b"hello"
        vx.run(src["name"], "ping", "-c1", "-W2", dst["ip"])
    # Same node: a second pod on node1 reaches the first over cni0.
    vx.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: local}\nspec:\n  nodeName: node1\n"
        "  containers: [{name: c, image: busybox, ports: [{containerPort: 8080}]}]\n"
    )
    local = wait_for(lambda: vx.get("pod", "local")["status"].get("podIP"), what="local pod IP")
    body = wait_for(lambda: vx.curl_json("local", f"http://{src['ip']}/"), what="same-node TCP")
    assert body["clientIP"] == local
    assert udp_echo(vx, "local", src["ip"], 5353) == b"ping"
    vx.run("local", "ping", "-c1", "-W2", src["ip"])
    vx.kubectl("delete", "pod", "local", "--wait=true")


def test_pod_network_details(vx: Lab) -> None:
    pod = _by_node(vx)["node2"]["name"]
    link = vx.run(pod, "ip", "-o", "link", "show", "eth0")
    assert "mtu 1450" in link
    subnet = vx.get("node", "node2")["spec"]["podCIDR"]  # nodes register concurrently: any order
    gw = subnet.rsplit(".", 1)[0] + ".1"
    assert f"default via {gw}" in vx.run(pod, "ip", "route")
    resolv = vx.run(pod, "cat", "/etc/resolv.conf")
    assert resolv.splitlines() == [
        "nameserver 10.43.0.10",
        "search default.svc.cluster.local svc.cluster.local cluster.local",
        "options ndots:5",
    ]
    assert pod in vx.run(pod, "cat", "/etc/hosts")
    node = vx.run("node2", "ip", "-d", "link", "show", "flannel.1")
    assert "vxlan id 1" in node and "dstport 8472" in node and "nolearning" in node and "mtu 1450" in node
    assert subnet.replace("/24", "/32") in vx.run("node2", "ip", "-o", "addr", "show", "flannel.1")
    assert "bridge" in vx.run("node2", "ip", "-d", "link", "show", "cni0")


def test_pod_egress_is_masqueraded_to_the_node_ip(vx: Lab) -> None:
    pod = _by_node(vx)["node3"]
    listener = Listener(vx.topo.client.netns, 8088)
    try:
        vx.run(pod["name"], "curl", "-s", "-m", "3", f"http://{vx.topo.client.ip}:8088/")
        assert listener.accept_peer() == vx.topo.host("node3").ip  # type: ignore[union-attr]
    finally:
        listener.close()


def _flannel_state(ns: str) -> tuple[set[str], set[str], set[str]]:
    with IPRoute(netns=ns) as ipr:
        idx = ipr.link_lookup(ifname="flannel.1")[0]
        routes = {
            f"{r.get_attr('RTA_DST')}/{r['dst_len']}" for r in ipr.get_routes(family=2, oif=idx) if r["dst_len"] < 32
        }
        neigh = {n.get_attr("NDA_DST") for n in ipr.get_neighbours(ifindex=idx, family=2)}
        fdb = {str(f.get_attr("NDA_DST")) for f in ipr.fdb("dump", ifindex=idx) if f.get_attr("NDA_DST")}
    return routes, neigh, fdb


def test_vtep_mac_and_connections_survive_agent_restart(vx: Lab) -> None:
    by_node = _by_node(vx)
    mac_before = json.loads(vx.get("node", "node2")["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"])
    src_ns = vx.netns_of(by_node["node1"]["name"])
    sock = netns.open_socket(src_ns, socket.AF_INET, socket.SOCK_STREAM, reuse=False)
    sock.settimeout(5)
    sock.connect((by_node["node2"]["ip"], 80))

    def request() -> bytes:
        sock.sendall(b"GET /keepalive HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\n}" not in data and b"}\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise AssertionError("connection closed")
            data += chunk
        return data

    try:
        assert b"keepalive" in request()
        st = labmod.LabState.load(vx.name)
        assert st is not None
        for node in ("node1", "node2"):
            procs.stop([st.pids[node]])
        labmod.node_start(vx.name, "node1")
        labmod.node_start(vx.name, "node2")
        wait_for(
            lambda: all(
                c["status"] == "True"
                for n in vx.get("nodes")["items"]
                for c in n["status"]["conditions"]
                if c["type"] == "Ready"
            ),
            what="nodes Ready after restart",
        )
        time.sleep(1.0)  # let the restarted agents run a full sync
        assert b"keepalive" in request()  # the same TCP connection still works
    finally:
        sock.close()
    mac_after = json.loads(vx.get("node", "node2")["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"])
    assert mac_after["VtepMAC"] == mac_before["VtepMAC"]
    assert mac_before["VtepMAC"] in vx.run("node2", "ip", "link", "show", "flannel.1")


def test_deleted_flannel_device_is_recreated(vx: Lab) -> None:
    vx.run("node3", "ip", "link", "del", "flannel.1")
    wait_for(lambda: "flannel.1" in vx.run("node3", "ip", "-o", "link"), what="flannel.1 recreated")
    pods = _by_node(vx)
    wait_for(lambda: vx.curl_json(pods["node3"]["name"], f"http://{pods['node1']['ip']}/"), what="overlay back")


def test_removing_a_node_removes_its_entries_on_the_others(vx: Lab) -> None:
    node3 = vx.get("node", "node3")
    subnet = node3["spec"]["podCIDR"]
    ip3 = vx.topo.host("node3").ip  # type: ignore[union-attr]
    routes, neigh, fdb = _flannel_state(vx.topo.host("node1").netns)  # type: ignore[union-attr]
    assert subnet in routes and subnet.split("/")[0] in neigh and ip3 in fdb
    labmod.node_stop(vx.name, "node3")
    try:
        vx.kubectl("delete", "node", "node3")

        def gone() -> bool:
            for n in ("node1", "node2"):
                r, ne, f = _flannel_state(vx.topo.host(n).netns)  # type: ignore[union-attr]
                if subnet in r or subnet.split("/")[0] in ne or ip3 in f:
                    return False
            return True

        wait_for(gone, what="node3's route/neighbour/FDB entries removed")
    finally:
        labmod.node_start(vx.name, "node3")
    wait_for(lambda: vx.get("node", "node3")["spec"].get("podCIDR"), what="node3 re-registered")


def test_lab_exec_and_status(vx: Lab) -> None:
    st = labmod.status(vx.name)
    assert st["running"] and len(st["nodes"]) == 3
    assert vx.run("client", "ip", "-o", "addr", "show", "eth0").count("192.168.77.200") == 1


def test_host_gw_backend_and_clean_teardown() -> None:
    with Lab("kwt-hg", 2, "host-gw") as hg:
        hg.apply(DEPLOY.replace("replicas: 3", "replicas: 2"))
        hg.wait_pods_ready("app=web", 2)
        by_node = _by_node(hg)
        a, b = by_node["node1"], by_node["node2"]
        assert hg.curl_json(a["name"], f"http://{b['ip']}/")["clientIP"] == a["ip"]
        assert udp_echo(hg, a["name"], b["ip"], 5353) == b"ping"
        hg.run(a["name"], "ping", "-c1", "-W2", b["ip"])
        routes = hg.run("node1", "ip", "route")
        subnet2 = hg.get("node", "node2")["spec"]["podCIDR"]
        assert f"{subnet2} via {hg.topo.host('node2').ip} dev eth0" in routes  # type: ignore[union-attr]
        assert "flannel.1" not in hg.run("node1", "ip", "-o", "link")
        assert "mtu 1500" in hg.run(a["name"], "ip", "-o", "link", "show", "eth0")
    left = leftovers(hg.name)
    assert left == {"root_links": [], "root_nft": [], "netns": [], "etc_netns": [], "state": [], "processes": []}
    assert hg.down() == []  # idempotent


def test_node_failure_goes_not_ready_and_recovers_then_down_cleans_killed_lab(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("node-monitor-grace-period: 3\n")
    with Lab("kwt-kill", 2, "vxlan", config_file=str(cfg)) as k:
        k.apply(DEPLOY.replace("replicas: 3", "replicas: 2"))
        k.wait_pods_ready("app=web", 2)

        def ready(node: str) -> str:
            conds = k.get("node", node)["status"]["conditions"]
            return next(c["status"] for c in conds if c["type"] == "Ready")

        # Cluster DNS is no single point of failure: with two nodes there are two replicas, one on each.
        dns = k.wait_pods_ready("k8s-app=kube-dns", 2, namespace="kube-system", timeout=60)
        assert sorted(p["spec"]["nodeName"] for p in dns) == ["node1", "node2"]
        pod1 = next(p["metadata"]["name"] for p in k.pods("app=web") if p["spec"]["nodeName"] == "node1")

        labmod.node_stop(k.name, "node2")
        wait_for(lambda: ready("node2") == "Unknown", timeout=15, what="node2 NotReady after its lease expired")
        pod2 = next(p for p in k.pods("app=web") if p["spec"]["nodeName"] == "node2")
        conds = {c["type"]: c["status"] for c in pod2["status"]["conditions"]}
        assert conds["Ready"] == "False"
        assert "NotReady" in k.kubectl("get", "node", "node2").stdout
        # Its DNS replica left the kube-dns endpoints with the node; every query is answered by the other one.
        wait_for(
            lambda: len(k.get("endpoints", "kube-dns", "-n", "kube-system")["subsets"][0]["addresses"]) == 1,
            timeout=15,
            what="kube-dns down to the replica on node1",
        )

        def answer() -> str:
            return k.run(
                pod1, "dig", "+short", "+time=1", "+tries=1", "@10.43.0.10", "kubernetes.default.svc.cluster.local"
            )

        wait_for(lambda: answer().strip() == "10.43.0.1", timeout=10, what="the service proxy to follow the endpoints")
        for _ in range(10):
            assert answer().strip() == "10.43.0.1"
        # A stopped node stays stopped (the supervisor leaves it), until `node start`, which returns once Ready.
        time.sleep(1.5)
        st = labmod.LabState.load(k.name)
        assert st is not None and "node2" in st.stopped and not procs.alive(st.pids["node2"])
        labmod.node_start(k.name, "node2")
        assert ready("node2") == "True"
        k.wait_pods_ready("app=web", 2)

        # Processes are supervised as systemd's Restart=always does for K3s: a killed server or agent is back
        # within 2 s, with the same API address.
        for proc in ("server", "node2"):
            st = labmod.LabState.load(k.name)
            assert st is not None
            old = st.pids[proc]
            os.kill(old, signal.SIGKILL)
            t0 = time.monotonic()

            def restarted(proc: str = proc, old: int = old) -> int:
                now = labmod.LabState.load(k.name)
                pid = now.pids.get(proc, 0) if now else 0
                return pid if pid != old and procs.alive(pid) else 0

            wait_for(restarted, timeout=5, interval=0.05, what=f"{proc} restarted")
            assert time.monotonic() - t0 <= 2.0, f"{proc} took {time.monotonic() - t0:.1f}s to come back"
        assert "died; restarted as pid" in (k.topo.state_dir / "logs" / "supervisor.log").read_text()
        wait_for(lambda: ready("node2") == "True" and ready("node1") == "True", timeout=30, what="nodes Ready again")
        assert "node2" in k.kubectl("get", "nodes").stdout

        st = labmod.LabState.load(k.name)
        assert st is not None
        for pid in st.pids.values():
            os.kill(pid, signal.SIGKILL)
    left = leftovers(k.name)
    assert left == {"root_links": [], "root_nft": [], "netns": [], "etc_netns": [], "state": [], "processes": []}


PROBES = """
apiVersion: v1
kind: Pod
metadata: {name: never-ready}
spec:
  nodeName: node2
  containers:
  - name: web
    image: nginx
    ports: [{containerPort: 80}]
    readinessProbe: {tcpSocket: {port: 81}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: ready-http}
spec:
  nodeName: node2
  containers:
  - name: web
    image: nginx
    ports: [{containerPort: 80, name: http}]
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: not-alive}
spec:
  nodeName: node3
  containers:
  - name: web
    image: nginx
    ports: [{containerPort: 80}]
    livenessProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet}
spec:
  nodeName: node3
  hostNetwork: true
  containers: [{name: web, image: nginx, ports: [{containerPort: 9099}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: hostport}
spec:
  nodeName: node2
  containers: [{name: web, image: nginx, ports: [{containerPort: 80, hostPort: 8081}]}]
"""


def _ready(lab_: Lab, name: str) -> str:
    conds = lab_.get("pod", name).get("status", {}).get("conditions", [])
    return next((c["status"] for c in conds if c["type"] == "Ready"), "")


def test_probes_host_network_and_host_port(vx: Lab) -> None:
    vx.apply(PROBES)
    try:
        wait_for(lambda: _ready(vx, "ready-http") == "True", what="httpGet readiness on a named port")
        wait_for(
            lambda: vx.get("pod", "not-alive")["status"]["containerStatuses"][0]["restartCount"] >= 1,
            what="liveness restarts",
        )
        assert _ready(vx, "never-ready") == "False"
        assert vx.get("pod", "never-ready")["status"]["phase"] == "Running"
        node3_ip = vx.topo.host("node3").ip  # type: ignore[union-attr]
        host = wait_for(lambda: vx.get("pod", "hostnet")["status"].get("podIP"), what="hostNetwork pod IP")
        assert host == node3_ip
        body = wait_for(lambda: vx.curl_json("client", f"http://{node3_ip}:9099/"), what="hostNetwork responder")
        assert body["pod"] == "hostnet"
        node2_ip = vx.topo.host("node2").ip  # type: ignore[union-attr]
        body = wait_for(lambda: vx.curl_json("client", f"http://{node2_ip}:8081/"), what="hostPort via portmap")
        assert body["pod"] == "hostport"
    finally:
        vx.kubectl("delete", "pod", "never-ready", "ready-http", "not-alive", "hostnet", "hostport", "--wait=true")


def test_kubectl_logs(vx: Lab) -> None:
    vx.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: talker}\nspec:\n  nodeName: node3\n  containers:\n"
        "  - name: sh\n    image: kwire/host\n"
        '    command: [sh, -c, "echo hello from $HOSTNAME; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]\n'
    )
    try:
        out = wait_for(
            lambda: "tick 3" in vx.kubectl("logs", "talker").stdout and vx.kubectl("logs", "talker").stdout,
            what="kubectl logs",
        )
        assert out.startswith("hello from talker\n")
        tail = vx.kubectl("logs", "talker", "--tail=1").stdout
        assert tail.count("\n") == 1 and tail.startswith("tick ")
        # --follow streams new lines as they are written (bounded: the test stops it after a few lines).
        proc = subprocess.Popen(
            [KUBECTL, "logs", "-f", "--tail=0", "talker"],
            env={"KUBECONFIG": str(vx.topo.kubeconfig), "HOME": "/tmp", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(3)]
            assert all(line.startswith("tick ") for line in lines)
        finally:
            proc.kill()
            proc.wait()
        bad = vx.kubectl("logs", "talker", "-c", "nope", check=False)
        assert bad.returncode != 0 and "container nope is not valid for pod talker" in bad.stderr
    finally:
        vx.kubectl("delete", "pod", "talker", "--wait=true")


def test_no_secret_on_a_command_line_and_state_is_private(vx: Lab) -> None:
    st = labmod.LabState.load(vx.name)
    assert st is not None and st.token
    path = labmod.LabState.path(vx.name)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    seen = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"kwire" in cmdline:
            seen += 1
            assert st.token.encode() not in cmdline, cmdline.replace(b"\0", b" ")[:200]
    assert seen >= 4  # the server, the agents and the supervisor were looked at
