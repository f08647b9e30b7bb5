"""`kwire lab check` on a real lab: healthy, it finds nothing wrong (exit 0); then each test breaks one thing the
K3s guides' troubleshooting is about, asserts the check names the cause (exit 1, the finding's subject and text)
and repairs it; the last test checks that the repaired lab is healthy again. (One check of a 2-node lab takes
2-6 s on the shared 2-core machine, mostly Python imports in each node's process, so the repairs are checked
together at the end rather than one by one.)"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kwire.client import load_kubeconfig, write_kubeconfig
from tests.integration.labkit import IP, Lab, wait_for

pytestmark = pytest.mark.lab

PUBLIC_IP = "flannel.alpha.coreos.com/public-ip"

WEBAPP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: webapp}
spec:
  replicas: 1
  selector: {matchLabels: {app: webapp}}
  template:
    metadata: {labels: {app: webapp}}
    spec:
      containers: [{name: c, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""

LB_TAKEN = """
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  selector: {app: webapp}
  ports: [{port: 80, targetPort: 8080}]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("kwt-check", 2, "vxlan") as lab_:
        yield lab_


def check(lab_: Lab) -> tuple[int, list[dict[str, Any]]]:
    res = subprocess.run(
        [sys.executable, "-m", "kwire", "lab", "check", "--name", lab_.name, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode in (0, 1), res.stderr
    findings: list[dict[str, Any]] = json.loads(res.stdout)
    return res.returncode, findings


def errors(findings: list[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["severity"] == "error" and f["check"] == family]


def until(lab_: Lab, pred: Callable[[int, list[dict[str, Any]]], Any], what: str, timeout: float = 60) -> Any:
    return wait_for(lambda: pred(*check(lab_)), timeout=timeout, interval=1.0, what=what)


def node_exec(lab_: Lab, node: str, *cmd: str, input: str | None = None) -> None:
    subprocess.run([IP, "netns", "exec", lab_.topo.host(node).netns, *cmd], input=input, text=True, check=True)  # type: ignore[union-attr]


def test_a_healthy_lab_has_no_error(lab: Lab) -> None:
    """First, so every other test starts from a lab the check calls healthy (no false positives)."""
    rc, findings = until(lab, lambda rc, fs: (rc, fs) if rc == 0 else None, "a healthy lab to check clean")
    assert rc == 0
    assert not [f for f in findings if f["severity"] != "info"], findings


def test_kwire_check_on_a_node(lab: Lab, tmp_path: Path) -> None:
    """`kwire check` as a user runs it on a node: this node's checks plus the cluster's, through a kubeconfig that
    reaches the server from the node (a 0600 file, as K3s writes its kubeconfigs)."""
    admin = load_kubeconfig(lab.topo.kubeconfig)  # the admin's client certificate, for the node's address
    assert admin.ca_data and admin.client_cert and admin.client_key
    kubeconfig = tmp_path / "node.kubeconfig"
    write_kubeconfig(
        kubeconfig,
        server=f"https://{lab.topo.server.ip}:6443",
        ca_pem=admin.ca_data,
        client_cert=admin.client_cert,
        client_key=admin.client_key,
    )
    host = lab.topo.host("node2")
    assert host is not None
    cmd = [IP, "netns", "exec", host.netns, sys.executable, "-m", "kwire", "check", "--node", "node2"]
    cmd += ["--data-dir", str(lab.topo.state_dir / "node2"), "--kubeconfig", str(kubeconfig), "-o", "json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    findings = json.loads(res.stdout)
    assert not [f for f in findings if f["severity"] != "info"], findings


def test_mtu_lowered_on_one_node(lab: Lab) -> None:
    node_exec(lab, "node2", "ip", "link", "set", "eth0", "mtu", "1400")
    try:

        def found(rc: int, fs: list[dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
            by = {f["subject"]: f for f in errors(fs, "mtu")}
            return by if rc == 1 and "node2/eth0" in by else None

        by = until(lab, found, "the MTU mismatch to be reported")
        assert "uplink MTU is 1400 but 1500 on node1" in by["node2/eth0"]["message"]
        assert "ip link set eth0 mtu 1500" in by["node2/eth0"]["fix"]
        assert not [s for s in by if s.startswith("node1")]
    finally:
        node_exec(lab, "node2", "ip", "link", "set", "eth0", "mtu", "1500")


def test_foreign_nft_table_dropping_vxlan(lab: Lab) -> None:
    ruleset = "table inet kwire-test-fw {\n chain input {\n  type filter hook input priority 0; policy accept;\n  udp dport 8472 drop\n }\n}\n"
    node_exec(lab, "node2", "nft", "-f", "-", input=ruleset)
    try:
        # What the user sees: node1 no longer reaches node2's flannel.1 over VXLAN.
        node2 = lab.get("node", "node2")
        gateway = node2["spec"]["podCIDR"].split("/")[0]
        ping = [IP, "netns", "exec", lab.topo.host("node1").netns, "ping", "-c1", "-W1", gateway]  # type: ignore[union-attr]
        assert subprocess.run(ping, capture_output=True).returncode != 0
        rc, findings = check(lab)
        assert rc == 1
        [f] = errors(findings, "firewall")
        assert f["subject"] == "node2 inet kwire-test-fw/input"
        assert "drops VXLAN (8472/udp) from other nodes" in f["message"]
        assert f["fix"].startswith("nft delete rule inet kwire-test-fw input handle ")
    finally:
        node_exec(lab, "node2", "nft", "delete", "table", "inet", "kwire-test-fw")
    wait_for(lambda: subprocess.run(ping, capture_output=True).returncode == 0, what="VXLAN to node2 again")


def test_loopback_resolver_for_cluster_dns(lab: Lab) -> None:
    """The DNS pod (dnsPolicy Default) forwards to the nameservers of its resolv.conf, which the kubelet writes
    from the node's; a loopback one there is the K3s resolv.conf loop."""
    [dns_pod] = [p for p in lab.pods("k8s-app=kube-dns", "kube-system") if p["spec"].get("nodeName") == "node1"]
    path = lab.topo.state_dir / "node1" / "pods" / f"{dns_pod['metadata']['uid']}.json"
    resolv = f"/etc/netns/{json.loads(path.read_text())['netns']}/resolv.conf"
    with open(resolv) as f:
        original = f.read()
    try:
        with open(resolv, "w") as f:
            f.write("nameserver 127.0.0.53\noptions edns0\n")
        rc, findings = check(lab)
        assert rc == 1
        [f] = [
            f for f in errors(findings, "dns") if f["subject"] == f"kube-system/{dns_pod['metadata']['name']} on node1"
        ]
        assert "forwards to loopback 127.0.0.53" in f["message"] and "--resolv-conf" in f["fix"]
    finally:
        with open(resolv, "w") as f:
            f.write(original)


def test_two_nodes_with_the_same_public_ip(lab: Lab) -> None:
    own = lab.get("node", "node2")["metadata"]["annotations"][PUBLIC_IP]
    lab.kubectl("annotate", "node", "node2", "--overwrite", f"{PUBLIC_IP}={lab.topo.host('node1').ip}")  # type: ignore[union-attr]
    try:
        rc, findings = check(lab)
        assert rc == 1
        [f] = [f for f in errors(findings, "flannel") if f["subject"] == "node2"]
        assert "nodes node1, node2 all announce flannel public-ip 192.168.77.11" in f["message"]
        assert "--flannel-iface" in f["fix"] and own in f["fix"]
    finally:
        lab.kubectl("annotate", "node", "node2", "--overwrite", f"{PUBLIC_IP}={own}")


def test_service_with_a_wrong_selector(lab: Lab) -> None:
    lab.apply(WEBAPP)
    lab.wait_pods_ready("app=webapp", 1, timeout=60)
    rc, findings = check(lab)
    assert rc == 1
    [f] = errors(findings, "services")
    assert f["subject"] == "default/web"
    assert "selects app=web but no pod matches" in f["message"] and "app=webapp, not app=web" in f["message"]
    lab.kubectl("patch", "service", "web", "-p", '{"spec":{"selector":{"app":"webapp"}}}')


def test_loadbalancer_port_already_taken(lab: Lab) -> None:
    """Traefik's LoadBalancer holds port 80 on every node; a second one on 80 stays <pending>."""
    lab.apply(LB_TAKEN)
    try:

        def found(rc: int, fs: list[dict[str, Any]]) -> dict[str, Any] | None:
            hits = [f for f in errors(fs, "loadbalancers") if f["subject"] == "default/web-lb"]
            return hits[0] if rc == 1 and hits else None

        f = until(lab, found, "the pending LoadBalancer to be explained")
        assert "port 80/TCP is already taken by LoadBalancer Service kube-system/traefik" in f["message"]
        svc = lab.get("service", "web-lb")
        assert not (svc.get("status") or {}).get("loadBalancer", {}).get("ingress")
    finally:
        lab.kubectl("delete", "service", "web-lb", "--wait=false")


def test_the_repaired_lab_is_healthy_again(lab: Lab) -> None:
    """Every repair above undone what it broke: exit 0 again, in the text a user reads."""

    def clean() -> str | None:
        res = subprocess.run(
            [sys.executable, "-m", "kwire", "lab", "check", "--name", lab.name],
            capture_output=True,
            text=True,
            timeout=180,
        )
        return res.stdout if res.returncode == 0 else None

    out = wait_for(clean, timeout=60, interval=1.0, what="the repaired lab to check clean")
    assert "0 errors, 0 warnings" in out and f"(lab {lab.name})" in out
