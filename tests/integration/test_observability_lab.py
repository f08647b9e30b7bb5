"""What K3s users expect when they look at a cluster, checked with the real kubectl 1.32 in one 2-node lab:
`kubectl top nodes|pods` through the metrics-server add-on and the aggregation layer, `kubectl port-forward` to
pods and services, label-selected logs, events for what kwire does, and kube-proxy's metrics on :10249."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.stream import portforward

from tests.integration.apiserver import KUBECTL
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
    with Lab("obs", nodes=2, backend="vxlan") as lab_:
        yield lab_


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
    table = lab.kubectl("get", "nodemetrics").stdout.splitlines()
    assert table[0].split() == ["NAME", "CPU", "MEMORY", "WINDOW"] and len(table) == 3
    missing = lab.kubectl("top", "pod", "nosuchpod", check=False)
    assert missing.returncode != 0 and 'podmetrics.metrics.k8s.io "default/nosuchpod" not found' in missing.stderr

    # Only the API server's front proxy gets in: someone reaching the metrics-server pod directly and naming
    # themselves cluster admin in the front-proxy headers is anonymous there (upstream's delegated authentication).
    ms_ip = lab.kubectl(
        "get", "pods", "-n", "kube-system", "-l", "k8s-app=metrics-server", "-o", "jsonpath={.items[0].status.podIP}"
    ).stdout.strip()
    forged = lab.run(
        "node1",
        "curl",
        "-sk",
        "-m",
        "5",
        "-H",
        "X-Remote-User: system:admin",
        "-H",
        "X-Remote-Group: system:masters",
        f"https://{ms_ip}:10250/apis/metrics.k8s.io/v1beta1/pods",
    )
    assert '"code":401' in forged and "PodMetrics" not in forged, forged


WEB = """
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - {name: web, image: nginx, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


@contextlib.contextmanager
def port_forward(lab: Lab, *args: str, ports: int = 1) -> Iterator[tuple[list[int], subprocess.Popen[str]]]:
    """`kubectl port-forward ARGS` running; the local ports it printed (IPv4), in order."""
    env = {"KUBECONFIG": str(lab.topo.kubeconfig), "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
    proc = subprocess.Popen(
        [KUBECTL, "port-forward", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        found: list[int] = []
        timer = threading.Timer(60, proc.kill)  # a kubectl that never prints its ports must not hang the test
        timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) ->", line)
            if m:
                found.append(int(m.group(1)))
                if len(found) == ports:
                    break
        timer.cancel()
        assert len(found) == ports, (
            f"kubectl port-forward printed no ports: {proc.stderr.read() if proc.stderr else ''}"
        )
        yield found, proc
    finally:
        proc.kill()
        proc.wait()


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def test_port_forward_to_pods_and_services(lab: Lab) -> None:
    lab.apply(WEB)
    lab.wait_pods_ready("app=web", 1, timeout=60)
    with port_forward(lab, "pod/web", "0:8080") as (ports, _):
        answer = _get(ports[0], "/through-pod")
        assert answer["pod"] == "web" and answer["path"] == "/through-pod"
        assert answer["clientIP"] == "127.0.0.1"  # the kubelet connects from inside the pod's namespace
    with port_forward(lab, "svc/web", "0:80") as (ports, _):
        assert _get(ports[0], "/through-service")["pod"] == "web"
    # two ports in one session, eight connections at once over them
    with port_forward(lab, "pod/web", "0:8080", "0:8080", ports=2) as (ports, _):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: _get(ports[i % 2], f"/c{i}"), range(8)))
        assert sorted(a["path"] for a in answers) == [f"/c{i}" for i in range(8)]


def test_port_forward_to_a_port_nobody_listens_on(lab: Lab) -> None:
    lab.wait_pods_ready("app=web", 1, timeout=60)
    with port_forward(lab, "pod/web", "0:9999") as (ports, proc):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/", timeout=20)
        # kubectl 1.32 reports the kubelet's error and ends the forward, as with containerd
        proc.wait(timeout=30)
        err = proc.stderr.read() if proc.stderr else ""
        assert "an error occurred forwarding" in err and "-> 9999" in err
        assert "dial tcp4 127.0.0.1:9999: connect: connection refused" in err


def test_label_selected_dns_logs(lab: Lab) -> None:
    """The seeds' `kubectl logs -l k8s-app=kube-dns -n kube-system`: every replica's log, with its problems."""
    lab.apply(
        """
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns-custom, namespace: kube-system}
data:
  forward: |
    example.test not-an-address
"""
    )

    def logged() -> str | None:
        out = lab.kubectl("logs", "-l", "k8s-app=kube-dns", "-n", "kube-system", "--prefix", "--tail=50").stdout
        pods = {
            m.group(1) for m in re.finditer(r"^\[pod/(coredns-[\w-]+)/coredns\] .*forward line 1 skipped", out, re.M)
        }
        return out if len(pods) == 2 else None  # one replica per node, both read the ConfigMap

    out = wait_for(logged, timeout=60, interval=1, what="both DNS replicas logging the bad coredns-custom line")
    assert (
        "kwire DNS serving cluster.local"
        in lab.kubectl("logs", "-l", "k8s-app=kube-dns", "-n", "kube-system", "--prefix").stdout
    )
    assert "'example.test not-an-address'" in out
    lab.kubectl("delete", "configmap", "coredns-custom", "-n", "kube-system")


def _events(lab: Lab, name: str, namespace: str = "default") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = lab.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")[
        "items"
    ]
    return items


def _reasons(lab: Lab, name: str) -> set[str]:
    return {e["reason"] for e in _events(lab, name)}


def test_events_for_scheduling_load_balancers_and_dns(lab: Lab) -> None:
    lab.apply(
        """
apiVersion: v1
kind: Pod
metadata: {name: nowhere}
spec:
  nodeSelector: {disk: ssd}
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: resolvers, labels: {app: resolvers}}
spec:
  dnsConfig: {nameservers: [192.0.2.1, 192.0.2.2, 192.0.2.3]}
  containers: [{name: c, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  selector: {app: resolvers}
  ports: [{port: 8181, targetPort: 8080}]
"""
    )
    wait_for(lambda: "FailedScheduling" in _reasons(lab, "nowhere"), timeout=30, what="FailedScheduling")
    failed = next(e for e in _events(lab, "nowhere") if e["reason"] == "FailedScheduling")
    assert failed["type"] == "Warning" and failed["source"]["component"] == "default-scheduler"
    assert "node(s) didn't match Pod's node affinity/selector" in failed["message"]

    wanted = {"Scheduled", "DNSConfigForming", "Started"}
    wait_for(lambda: wanted <= _reasons(lab, "resolvers"), timeout=60, what=f"{wanted} on pod/resolvers")
    dns = next(e for e in _events(lab, "resolvers") if e["reason"] == "DNSConfigForming")
    assert dns["type"] == "Warning" and dns["source"]["component"] == "kubelet"
    assert dns["message"] == (
        "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: "
        "10.43.0.10 192.0.2.1 192.0.2.2"
    )

    lb = {"EnsuringLoadBalancer", "AppliedDaemonSet", "UpdatedLoadBalancer", "EnsuredLoadBalancer"}
    wait_for(lambda: lb <= _reasons(lab, "lb"), timeout=60, what=f"{lb} on service/lb")
    by_reason = {e["reason"]: e for e in _events(lab, "lb")}
    assert by_reason["EnsuringLoadBalancer"]["message"] == "Ensuring load balancer"
    assert by_reason["EnsuringLoadBalancer"]["source"]["component"] == "service-controller"
    assert re.fullmatch(
        r"Applied LoadBalancer DaemonSet kube-system/svclb-lb-\w+", by_reason["AppliedDaemonSet"]["message"]
    )
    described = lab.kubectl("describe", "service", "lb").stdout
    assert re.search(r"Updated LoadBalancer with new IPs: \[.*\] -> \[192\.168\.77\.\d+", described)
    # ServiceLB's events when the Service stops being a LoadBalancer
    lab.kubectl("patch", "service", "lb", "-p", '{"spec":{"type":"NodePort"}}')
    gone = {"DeletingLoadBalancer", "DeletedLoadBalancer"}
    wait_for(lambda: gone <= _reasons(lab, "lb"), timeout=30, what=f"{gone} on service/lb")
    table = lab.kubectl("get", "events", "--field-selector", "involvedObject.name=lb").stdout
    assert "service/lb" in table and "Deleted load balancer" in table


def test_kube_proxy_metrics_in_the_node_namespace(lab: Lab) -> None:
    text = lab.run("node2", "curl", "-s", "-m", "5", "http://127.0.0.1:10249/metrics")
    samples = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#") and "{" not in line.split()[0]
    }
    assert samples["kubeproxy_sync_proxy_rules_duration_seconds_count"] > 0
    assert samples["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] > 0
    assert samples["kubeproxy_sync_proxy_rules_endpoint_changes_total"] > 0
    assert samples["kubeproxy_sync_proxy_rules_service_changes_total"] > 0
    assert samples["kubeproxy_network_programming_duration_seconds_count"] > 0
    assert samples["kubeproxy_sync_proxy_rules_nftables_sync_failures_total"] == 0
    assert samples["kube_router_controller_iptables_sync_time_count"] > 0
    assert samples["kube_router_controller_policy_chains"] > 0
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"}' in text
    # kube-proxy's default bind: the node's loopback only, not its LAN address
    with pytest.raises(subprocess.CalledProcessError):
        lab.run("node1", "curl", "-s", "-m", "3", "http://192.168.77.12:10249/metrics")


def test_python_client_port_forward(lab: Lab) -> None:
    """The official Python client's `portforward()` (the `v4.channel.k8s.io` WebSocket, ports in the query)."""
    lab.wait_pods_ready("app=web", 1, timeout=60)
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(lab.topo.kubeconfig)))
    pf = portforward(api.connect_get_namespaced_pod_portforward, "web", "default", ports="8080,9999")
    try:
        sock = pf.socket(8080)
        sock.setblocking(True)
        sock.settimeout(20)
        sock.sendall(b"GET /py HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK")
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["path"] == "/py"
        wait_for(lambda: pf.error(9999), timeout=20, what="the error channel of port 9999")
        assert "dial tcp4 127.0.0.1:9999: connect: connection refused" in pf.error(9999)
    finally:
        pf.close()


def test_a_failing_proxy_sync_is_an_event_on_the_node(lab: Lab) -> None:
    """Break node1's service proxy on purpose: another process takes `ip kwire-proxy` with nftables' `owner` flag,
    so every transaction of the agent is refused (EPERM) until that process ends."""
    ns = lab.netns_of("node1")
    holder = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "-i"], stdin=subprocess.PIPE, text=True)
    try:
        assert holder.stdin is not None
        holder.stdin.write("delete table ip kwire-proxy\nadd table ip kwire-proxy { flags owner; }\n")
        holder.stdin.flush()
        lab.apply("apiVersion: v1\nkind: Service\nmetadata: {name: nudge}\nspec: {ports: [{port: 81}]}\n")

        def failed() -> list[dict[str, Any]]:
            return [e for e in _events(lab, "node1") if e["reason"] == "SyncProxyRulesFailed"]

        event = wait_for(failed, timeout=60, interval=1, what="SyncProxyRulesFailed on node1")[0]
        assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "Node"
        assert event["source"] == {"component": "kube-proxy", "host": "node1"}
        assert event["message"].startswith("nftables sync failed: ")
        text = lab.run("node1", "curl", "-s", "-m", "5", "http://127.0.0.1:10249/metrics")
        assert re.search(r"^kubeproxy_sync_proxy_rules_nftables_sync_failures_total [1-9]", text, re.M)
    finally:
        holder.kill()  # its netlink socket closes and the owned table goes with it
        holder.wait()
    # the agent replaces the table on its next attempt
    wait_for(
        lambda: "service-ips" in lab.run("node1", "nft", "list", "table", "ip", "kwire-proxy"),
        timeout=30,
        what="node1's proxy table restored",
    )
    lab.kubectl("delete", "service", "nudge")
