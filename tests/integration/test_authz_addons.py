"""The packaged add-ons with least privilege, as K3s's manifests declare it: the coredns and traefik
ServiceAccounts, ClusterRoles and bindings, and the DNS server working with nothing more than its role (run with
a kubeconfig that impersonates its ServiceAccount, as it will authenticate once pods carry their own tokens)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
import yaml

from tests import UPSTREAM
from tests.integration.apiserver import ServerProcess, free_port, running_server
from tests.integration.labkit import wait_for
from tests.integration.test_metallb_controller import ControllerThread

pytestmark = pytest.mark.kubectl

COREDNS = "system:serviceaccount:kube-system:coredns"
TRAEFIK = "system:serviceaccount:kube-system:traefik"
SA_GROUPS = ["system:serviceaccounts", "system:serviceaccounts:kube-system"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # ServiceLB off: MetalLB's controller (run below as its ServiceAccount) is the only one writing LB status
    with running_server(tmp_path_factory.mktemp("server"), extra_args=["--disable", "servicelb"]) as srv:
        deadline = time.monotonic() + 60
        while srv.kubectl("get", "clusterrolebinding", "system:coredns", "traefik-kube-system", check=False).returncode:
            assert time.monotonic() < deadline, "the add-ons' RBAC never appeared"
            time.sleep(0.5)
        yield srv


def can_i(server: ServerProcess, who: str, *args: str) -> bool:
    res = server.kubectl("auth", "can-i", *args, "--as", who, check=False)
    assert res.stdout.strip() in ("yes", "no"), res.stdout + res.stderr
    return res.stdout.strip() == "yes"


def test_addon_roles_are_k3s_manifests(server: ServerProcess) -> None:
    assert can_i(server, COREDNS, "watch", "endpointslices.discovery.k8s.io")
    assert can_i(server, COREDNS, "list", "namespaces")
    assert can_i(server, COREDNS, "watch", "configmaps/coredns", "-n", "kube-system")
    assert not can_i(server, COREDNS, "get", "configmaps/other", "-n", "kube-system")
    assert not can_i(server, COREDNS, "get", "secrets", "-n", "kube-system")
    assert not can_i(server, COREDNS, "create", "services", "-n", "default")
    assert can_i(server, TRAEFIK, "list", "secrets")
    assert can_i(server, TRAEFIK, "update", "ingresses.networking.k8s.io", "--subresource=status")
    assert not can_i(server, TRAEFIK, "update", "ingresses.networking.k8s.io")
    assert not can_i(server, TRAEFIK, "create", "deployments.apps", "-n", "kube-system")
    for name, sa in (("coredns", "coredns"), ("traefik", "traefik")):
        spec = server.kubectl(
            "-n", "kube-system", "get", "deployment", name, "-o", "jsonpath={.spec.template.spec.serviceAccountName}"
        ).stdout
        assert spec == sa


def _kubeconfig_as(server: ServerProcess, path: Path, user: str, groups: list[str] = SA_GROUPS) -> Path:
    doc = yaml.safe_load(server.kubeconfig.read_text())
    for entry in doc["users"]:
        entry["user"]["as"] = user
        entry["user"]["as-groups"] = groups
    path.write_text(yaml.safe_dump(doc))
    return path


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _dns(server: ServerProcess, tmp: Path, user: str) -> tuple[subprocess.Popen[bytes], int, int]:
    resolv = tmp / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    port, ready = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "kwire.dns", "--kubeconfig", str(_kubeconfig_as(server, tmp / "as.kubeconfig", user)),
        "--listen", "127.0.0.1", "--port", str(port), "--health-port", str(free_port()), "--ready-port", str(ready),
        "--metrics-port", str(free_port()), "--resolv-conf", str(resolv), "--allow-loopback-upstream",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    return proc, port, ready


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    return out.decode(errors="replace")


def test_dns_serves_with_only_its_role(server: ServerProcess, tmp_path: Path) -> None:
    proc, port, ready = _dns(server, tmp_path, COREDNS)
    try:
        deadline = time.monotonic() + 40
        while not _ready(ready):
            assert proc.poll() is None and time.monotonic() < deadline, "DNS never ready with the coredns role"
            time.sleep(0.2)
        answer = dns.query.udp(
            dns.message.make_query("kubernetes.default.svc.cluster.local.", "A"), "127.0.0.1", port=port, timeout=5
        )
        assert [r.address for rrset in answer.answer for r in rrset] == ["10.43.0.1"]
    finally:
        _stop(proc)


def test_dns_without_the_role_never_gets_ready(server: ServerProcess, tmp_path: Path) -> None:
    proc, _, ready = _dns(server, tmp_path, "system:serviceaccount:kube-system:default")
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert not _ready(ready)
            time.sleep(0.5)
    finally:
        _stop(proc)


def test_metallb_controller_works_with_its_upstream_role(server: ServerProcess, tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all((UPSTREAM / "metallb-native-v0.14.9.yaml").read_text()) if d]
    wanted = ("CustomResourceDefinition", "Namespace", "ServiceAccount", "Role", "ClusterRole", "RoleBinding")
    server.apply(yaml.safe_dump_all([d for d in docs if d["kind"] in (*wanted, "ClusterRoleBinding")]))
    wait_for(lambda: server.kubectl("get", "ipaddresspools", "-A"), timeout=20, what="MetalLB CRDs served")
    server.apply("""
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: p, namespace: metallb-system}
spec: {addresses: [10.0.0.100-10.0.0.103]}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: default}
spec: {type: LoadBalancer, ports: [{port: 80}]}
""")
    sa = "system:serviceaccount:metallb-system:controller"
    kubeconfig = _kubeconfig_as(
        server, tmp_path / "ctl.kubeconfig", sa, ["system:serviceaccounts", "system:serviceaccounts:metallb-system"]
    )
    ctl = ControllerThread(kubeconfig)
    try:

        def ip() -> str:
            out = server.kubectl(
                "get", "svc", "lb", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}"
            ).stdout.strip()
            assert out, "no IP yet"
            return out

        assert wait_for(ip, timeout=40, what="an IP from MetalLB's controller").startswith("10.0.0.10")
        ann = server.kubectl("get", "svc", "lb", "-o", "jsonpath={.metadata.annotations}").stdout
        assert '"metallb.io/ip-allocated-from-pool":"p"' in ann
        assert "IPAllocated" in server.kubectl("describe", "svc", "lb").stdout
        assert server.kubectl("-n", "metallb-system", "get", "secret", "memberlist").returncode == 0
    finally:
        ctl.stop()
