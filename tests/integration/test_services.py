"""Services on a real 3-node lab: ClusterIP balancing, NodePort on every node, hairpin, ClientIP affinity,
externalTrafficPolicy Local vs Cluster, immediate refusal without endpoints, fast endpoint updates, UDP recovery."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.integration.labkit import IP, Lab, wait_for

pytestmark = pytest.mark.lab

APP = """
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
        ports: [{containerPort: 8080, name: http}, {containerPort: 5353, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  selector: {app: nobody}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: solo}
spec:
  replicas: 1
  selector: {matchLabels: {app: solo}}
  template:
    metadata: {labels: {app: solo}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node2}
      containers: [{name: c, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: solo-local}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: solo}
  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
---
apiVersion: v1
kind: Service
metadata: {name: solo-cluster}
spec:
  type: NodePort
  selector: {app: solo}
  ports: [{port: 80, targetPort: 8080, nodePort: 30082}]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("kwt-svc", 3, "vxlan") as lab_:
        lab_.apply(APP)
        lab_.wait_pods_ready("app=web", 3)
        lab_.wait_pods_ready("app=solo", 1)
        yield lab_


def _cip(lab_: Lab, name: str) -> str:
    return str(lab_.get("svc", name)["spec"]["clusterIP"])


def _pod_on(lab_: Lab, node: str, selector: str = "app=web") -> str:
    return str(next(p["metadata"]["name"] for p in lab_.pods(selector) if p["spec"]["nodeName"] == node))


def _curl(lab_: Lab, target: str, url: str, *, timeout: float = 2) -> tuple[int, str]:
    ns = lab_.netns_of(target)
    res = subprocess.run(
        [IP, "netns", "exec", ns, "curl", "-s", "-m", str(timeout), url], capture_output=True, text=True, timeout=20
    )
    return res.returncode, res.stdout


def _wait_endpoints(lab_: Lab, name: str, count: int) -> None:
    def ready() -> bool:
        slices = lab_.get("endpointslices", "-l", f"kubernetes.io/service-name={name}")["items"]
        eps = [e for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")]
        return len(eps) == count

    wait_for(ready, timeout=30, what=f"{count} ready endpoints of {name}")


def test_cluster_ip_from_a_pod_on_another_node_spreads_over_all_endpoints(lab: Lab) -> None:
    _wait_endpoints(lab, "web", 3)
    vip = _cip(lab, "web")
    client = _pod_on(lab, "node1")
    seen = set()
    for _ in range(40):
        code, out = _curl(lab, client, f"http://{vip}/")
        assert code == 0, out
        body = json.loads(out)
        seen.add(body["pod"])
        if body["pod"] != client:  # (reaching itself is hairpin, which is masqueraded)
            assert body["clientIP"] == lab.get("pod", client)["status"]["podIP"]  # pod -> service: no masquerade
        if len(seen) == 3:
            break
    assert len(seen) == 3
    # By name too: the pod's resolv.conf search path is not needed for a ClusterIP; the node reaches it as well.
    code, out = _curl(lab, "node3", f"http://{vip}/")
    assert code == 0 and json.loads(out)["pod"] in seen


def test_node_port_answers_on_every_node_ip_from_the_outside_client(lab: Lab) -> None:
    for node in lab.topo.nodes:
        code, out = _curl(lab, "client", f"http://{node.ip}:30080/")
        assert code == 0, f"{node.name}: {out}"
        assert json.loads(out)["port"] == 8080


def test_hairpin_a_pod_reaches_itself_through_its_service(lab: Lab) -> None:
    vip = _cip(lab, "web")
    me = _pod_on(lab, "node2")
    for _ in range(60):
        code, out = _curl(lab, me, f"http://{vip}/")
        assert code == 0
        if json.loads(out)["pod"] == me:
            return
    raise AssertionError("never reached itself through the service")


def test_client_ip_affinity_sticks(lab: Lab) -> None:
    vip = _cip(lab, "sticky")
    client = _pod_on(lab, "node3")
    pods = {json.loads(_curl(lab, client, f"http://{vip}/")[1])["pod"] for _ in range(12)}
    assert len(pods) == 1


def test_external_traffic_policy_local_keeps_client_ip_and_cluster_does_not(lab: Lab) -> None:
    node2 = lab.topo.host("node2")
    node1 = lab.topo.host("node1")
    assert node1 and node2
    code, out = _curl(lab, "client", f"http://{node2.ip}:30081/")
    assert code == 0 and json.loads(out)["clientIP"] == lab.topo.client.ip
    # A node without a local endpoint drops Local traffic (the LB's health check steers clients away).
    code, _ = _curl(lab, "client", f"http://{node1.ip}:30081/", timeout=1)
    assert code == 28  # timed out: dropped, not refused
    code, out = _curl(lab, "client", f"http://{node1.ip}:30082/")
    assert code == 0 and json.loads(out)["clientIP"] != lab.topo.client.ip  # Cluster: masqueraded
    hc = lab.get("svc", "solo-local")["spec"]["healthCheckNodePort"]
    code, out = _curl(lab, "client", f"http://{node2.ip}:{hc}/healthz")
    assert code == 0 and json.loads(out)["localEndpoints"] == 1
    res = subprocess.run(
        [
            IP,
            "netns",
            "exec",
            lab.topo.client.netns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://{node1.ip}:{hc}/healthz",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert res.stdout == "503"


def test_service_without_endpoints_refuses_at_once(lab: Lab) -> None:
    vip = _cip(lab, "nobody")
    client = _pod_on(lab, "node1")
    t0 = time.monotonic()
    code, _ = _curl(lab, client, f"http://{vip}/", timeout=5)
    assert code == 7  # connection refused
    assert time.monotonic() - t0 < 1.0


def _converges(lab_: Lab, client: str, vip: str, want: int, *, within: float) -> float:
    """Seconds until requests to vip reach exactly `want` distinct pods (5 clean requests in a row for want=1)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        seen: set[str] = set()
        ok = True
        for _ in range(5 if want == 1 else 30):
            code, out = _curl(lab_, client, f"http://{vip}/", timeout=0.5)
            if code != 0:
                ok = False
                break
            seen.add(json.loads(out)["pod"])
            if want > 1 and len(seen) == want:
                break
        if ok and len(seen) == want:
            return time.monotonic() - t0
    raise AssertionError(f"data path did not converge to {want} endpoints within {within}s")


def test_scaling_updates_the_data_path_within_a_second(lab: Lab) -> None:
    vip = _cip(lab, "web")
    client = _pod_on(lab, "node2", "app=solo")  # not a web pod: scaling down must not remove the client
    try:
        lab.kubectl("scale", "deployment", "web", "--replicas=1")
        _wait_endpoints(lab, "web", 1)
        _converges(lab, client, vip, 1, within=1.0)
    finally:
        lab.kubectl("scale", "deployment", "web", "--replicas=3")
    lab.wait_pods_ready("app=web", 3)
    _wait_endpoints(lab, "web", 3)
    _converges(lab, client, vip, 3, within=1.0)


UDP_CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40999))  # one fixed source port: one conntrack entry, as a DNS client library keeps
s.settimeout(0.3)
ok = fail = 0
end = time.time() + float(sys.argv[2])
while time.time() < end:
    s.sendto(b"q", (sys.argv[1], 53))
    try:
        s.recv(100); ok += 1; fail = 0
    except OSError:
        fail += 1
    time.sleep(0.05)
print(ok, fail)
"""


def test_udp_service_keeps_answering_across_an_endpoint_change(lab: Lab) -> None:
    vip = _cip(lab, "web")
    client = _pod_on(lab, "node3")
    ns = lab.netns_of(client)
    proc = subprocess.Popen(
        [IP, "netns", "exec", ns, sys.executable, "-c", UDP_CLIENT, vip, "6"], stdout=subprocess.PIPE, text=True
    )
    time.sleep(1.0)
    # Delete every web pod but the client's own: whichever the client's conntrack entry points at goes away.
    victims = [p["metadata"]["name"] for p in lab.pods("app=web") if p["metadata"]["name"] != client]
    lab.kubectl("delete", "pod", *victims, "--wait=false")
    out, _ = proc.communicate(timeout=30)
    ok, trailing_failures = (int(x) for x in out.split())
    assert ok > 20
    assert trailing_failures == 0  # answering again at the end: the stale entry was flushed
    lab.wait_pods_ready("app=web", 3)


def test_agent_restart_keeps_connections_through_a_service(lab: Lab) -> None:
    import socket

    from kwire.kernel import netns
    from kwire.lab import lab as labmod
    from kwire.lab import procs

    vip = _cip(lab, "web")
    first = lab.wait_pods_ready("app=web", 3)[0]  # a client pod on whichever node it runs: that agent restarts
    client, node = first["metadata"]["name"], first["spec"]["nodeName"]
    sock = netns.open_socket(lab.netns_of(client), socket.AF_INET, socket.SOCK_STREAM, reuse=False)
    sock.settimeout(5)
    sock.connect((vip, 80))

    def request() -> bytes:
        sock.sendall(b"GET /through-service HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"}\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, "connection closed"
            data += chunk
        return data

    try:
        assert b"through-service" in request()
        st = labmod.LabState.load(lab.name)
        assert st is not None
        procs.stop([st.pids[node]])
        labmod.node_start(lab.name, node)  # returns once the node is Ready again
        wait_for(lambda: node in lab.kubectl("get", "nodes").stdout, what=f"{node} back")
        time.sleep(1.5)  # the restarted agent has replaced the proxy table (a full sync) by now
        assert b"through-service" in request()
    finally:
        sock.close()


def test_a_flushed_ruleset_is_restored_within_seconds(lab: Lab) -> None:
    """A host firewall's `nft flush ruleset` (Debian's nftables.service does one on restart) takes the proxy's,
    the policy's and flannel's tables away: each agent notices within its table check period and restores them."""
    node2 = lab.topo.host("node2")
    assert node2 is not None
    code, _ = _curl(lab, "client", f"http://{node2.ip}:30080/")
    assert code == 0
    lab.run("node2", "nft", "flush", "ruleset")
    assert "kwire-proxy" not in lab.run("node2", "nft", "list", "tables")

    def restored() -> bool:
        tables = lab.run("node2", "nft", "list", "tables")
        return all(t in tables for t in ("kwire-proxy", "kwire-netpol", "kwire-flannel"))

    wait_for(restored, timeout=20, what="node2's nft tables restored")
    code, out = _curl(lab, "client", f"http://{node2.ip}:30080/")
    assert code == 0 and json.loads(out)["port"] == 8080


LISTENER = """
apiVersion: v1
kind: Pod
metadata: {name: listener, labels: {app: listener}}
spec:
  nodeName: NODE
  containers: [{name: nc, image: kwire/host, command: [sh, -c, "exec nc -lk 7313"]}]
"""


def test_a_killed_pod_runtime_is_replaced_and_its_pods_come_back(lab: Lab) -> None:
    import os
    import signal

    web = lab.wait_pods_ready("app=web", 3)[0]  # (earlier tests scaled the Deployment: take a node it runs on)
    node, web_ip = web["spec"]["nodeName"], web["status"]["podIP"]
    lab.apply(LISTENER.replace("NODE", node))
    try:
        lab.wait_pods_ready("app=listener", 1)
        pid_file = lab.topo.state_dir / node / "runtime" / "runtime.pid"

        def listeners() -> list[str]:
            # the program itself (its command line starts with it), not the runtime's wrappers that name it
            return subprocess.run(["pgrep", "-f", "^nc -lk 7313"], capture_output=True, text=True).stdout.split()

        wait_for(lambda: len(listeners()) == 1, timeout=10, what="the listener running")
        old_listener = listeners()
        old = int(pid_file.read_text())
        os.kill(old, signal.SIGKILL)

        def new_runtime_serves() -> bool:
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                return False
            return pid != old and _curl(lab, node, f"http://{web_ip}:8080/")[0] == 0

        wait_for(new_runtime_serves, timeout=30, what=f"a new runtime on {node} serving its pods again")

        # The old runtime's orphaned container was ended and the pod's container started again, once.
        wait_for(
            lambda: len(now := listeners()) == 1 and now != old_listener, timeout=20, what="one new listener process"
        )
        wait_for(
            lambda: lab.get("pod", "listener")["status"]["containerStatuses"][0]["restartCount"] >= 1,
            timeout=20,
            what="the listener's restart counted",
        )
    finally:
        lab.kubectl("delete", "pod", "listener", "--wait=false", check=False)


LB = """
apiVersion: v1
kind: Service
metadata: {name: NAME}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 8088, targetPort: 8080}]
"""


def test_servicelb_gives_load_balancers_the_node_ips_as_k3s_does(lab: Lab) -> None:
    """`type: LoadBalancer` -> svclb pods on every node, EXTERNAL-IP = the node IPs, reachable from outside; a
    second Service on the same port stays <pending> until the first is gone."""

    def ingress(name: str) -> list[str]:
        lb = lab.get("svc", name).get("status", {}).get("loadBalancer") or {}
        return sorted(i["ip"] for i in lb.get("ingress") or [])

    node_ips = sorted(n.ip for n in lab.topo.nodes)
    lab.apply(LB.replace("NAME", "lb1"))
    try:
        wait_for(lambda: ingress("lb1") == node_ips, timeout=30, what="lb1's ingress = the node IPs")
        for ip in node_ips:
            code, out = _curl(lab, "client", f"http://{ip}:8088/")
            assert code == 0 and json.loads(out)["port"] == 8080, out
        lab.apply(LB.replace("NAME", "lb2"))
        time.sleep(3)
        assert ingress("lb2") == []  # port 8088 is taken on every node: its svclb pods stay Pending
        pending = [p for p in lab.pods(namespace="kube-system") if p["metadata"]["name"].startswith("svclb-lb2-")]
        assert len(pending) == 3 and all(p["status"].get("phase") == "Pending" for p in pending)
        lab.kubectl("delete", "svc", "lb1")
        wait_for(lambda: ingress("lb2") == node_ips, timeout=30, what="lb2 takes the port over")
        ds = lab.kubectl("get", "ds", "-n", "kube-system", "-o", "name").stdout
        assert "svclb-lb1-" not in ds and "svclb-lb2-" in ds
    finally:
        lab.kubectl("delete", "svc", "lb1", "lb2", "--ignore-not-found", check=False)
