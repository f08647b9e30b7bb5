"""Cluster DNS in a real lab, asked from inside pods with the K3s troubleshooting commands (nslookup, dig)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.labkit import IP, Lab, in_terminal, wait_for, web_app

pytestmark = pytest.mark.lab

APPS = (
    web_app(replicas=2)
    + """
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers: [{name: c, image: postgres, ports: [{containerPort: 5432}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec:
  hostname: db-1
  subdomain: db
  containers: [{name: c, image: postgres, ports: [{containerPort: 5432}]}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: www.example.test
---
apiVersion: v1
kind: Pod
metadata: {name: probe}
spec:
  containers: [{name: c, image: kwire/host, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns-custom, namespace: kube-system}
data:
  forward: |
    example.test 192.168.77.200
"""
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    lab_ = Lab("kwt-dns", 3, "vxlan")
    upstream: subprocess.Popen[bytes] | None = None
    try:
        lab_.up()
        # An upstream resolver outside the cluster, on the lab's client host (a LAN DNS server).
        upstream = subprocess.Popen(
            [
                IP,
                "netns",
                "exec",
                lab_.topo.client.netns,
                dnsmasq,
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                f"--listen-address={lab_.topo.client.ip}",
                "--port=53",
                "--host-record=www.example.test,192.0.2.44",
                "--pid-file=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        lab_.apply(APPS)
        dns = lab_.get("deployment", "coredns", "-n", "kube-system")["spec"]["replicas"]  # >= 2 from two nodes
        lab_.wait_pods_ready("k8s-app=kube-dns", dns, namespace="kube-system", timeout=60)
        lab_.wait_pods_ready("app=web", 2)
        lab_.wait_pods_ready("app=db", 2)
        wait_for(lambda: lab_.get("pod", "probe")["status"].get("phase") == "Running", what="probe pod")
        yield lab_
    finally:
        if upstream is not None:
            upstream.terminate()
            upstream.wait(timeout=10)
        lab_.down()


def dig(lab_: Lab, *args: str) -> str:
    return lab_.run("probe", "dig", "+short", "+time=2", "+tries=2", *args)


def test_nslookup_kubernetes_default(lab: Lab) -> None:
    out = wait_for(lambda: lab.run("probe", "nslookup", "kubernetes.default"), what="nslookup kubernetes.default")
    assert "10.43.0.10" in out  # the server that answered: kube-dns
    assert "kubernetes.default.svc.cluster.local" in out and "10.43.0.1" in out


def test_service_names_srv_and_reverse(lab: Lab) -> None:
    vip = lab.get("svc", "web")["spec"]["clusterIP"]
    assert dig(lab, "web.default.svc.cluster.local").split() == [vip]
    assert vip in lab.run("probe", "nslookup", "web.default")
    assert vip in lab.run("probe", "nslookup", "web")  # the search path
    srv = dig(lab, "SRV", "_http._tcp.web.default.svc.cluster.local")
    assert srv.split() == ["0", "100", "80", "web.default.svc.cluster.local."]
    assert dig(lab, "-x", vip).strip() == "web.default.svc.cluster.local."


def test_headless_service_with_hostnames(lab: Lab) -> None:
    ips = sorted(p["status"]["podIP"] for p in lab.pods("app=db"))
    assert sorted(dig(lab, "db.default.svc.cluster.local").split()) == ips
    db0 = lab.get("pod", "db-0")["status"]["podIP"]
    assert dig(lab, "db-0.db.default.svc.cluster.local").split() == [db0]


def test_external_name_pods_and_outside_names(lab: Lab) -> None:
    out = dig(lab, "ext.default.svc.cluster.local")
    assert "www.example.test." in out
    assert dig(lab, "www.example.test").split() == ["192.0.2.44"]  # forwarded to the lab's upstream
    assert dig(lab, "10-42-0-5.default.pod.cluster.local").split() == ["10.42.0.5"]
    status = lab.run("probe", "dig", "+time=2", "nosuch.default.svc.cluster.local")
    assert "status: NXDOMAIN" in status and "SOA" in status


def test_node_hosts(lab: Lab) -> None:
    node2 = lab.topo.host("node2")
    assert node2 is not None
    assert dig(lab, "node2").split() == [node2.ip]


def test_kubectl_exec_as_the_k3s_guides_use_it(lab: Lab) -> None:
    """`kubectl exec pod -- nslookup kubernetes.default` and friends: the command runs in the pod's network, with
    its resolv.conf; stdin, the exit code and a terminal all reach kubectl."""
    out = lab.kubectl("exec", "probe", "--", "nslookup", "kubernetes.default").stdout
    assert "10.43.0.10" in out and "10.43.0.1" in out
    assert "nameserver 10.43.0.10" in lab.kubectl("exec", "probe", "--", "cat", "/etc/resolv.conf").stdout
    web_ip = lab.pods("app=web")[0]["status"]["podIP"]
    body = lab.kubectl("exec", "probe", "--", "curl", "-s", "-m", "3", f"http://{web_ip}:8080/").stdout
    assert '"pod"' in body
    assert lab.kubectl("exec", "-i", "probe", "--", "cat", input="from stdin\n").stdout == "from stdin\n"
    failed = lab.kubectl("exec", "probe", "--", "sh", "-c", "echo oops >&2; exit 3", check=False)
    assert failed.returncode == 3 and "oops" in failed.stderr
    # -it as the guides type it, under a real terminal (util-linux `script` provides one).
    env = {"KUBECONFIG": str(lab.topo.kubeconfig), "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
    from tests.integration.apiserver import KUBECTL

    tty = subprocess.run(
        ["script", "-qec", f"{KUBECTL} exec -it probe -- sh -c 'tty; echo done'", "/dev/null"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert tty.returncode == 0 and "/dev/pts/" in tty.stdout and "done" in tty.stdout, tty.stdout + tty.stderr
    missing = lab.kubectl("exec", "nosuchpod", "--", "true", check=False)
    assert missing.returncode != 0 and 'pods "nosuchpod" not found' in missing.stderr


def test_python_client_exec_stream(lab: Lab) -> None:
    """The official client's `stream()` speaks the v4 channel protocol."""
    from kubernetes import client, config
    from kubernetes.stream import stream

    api = client.CoreV1Api(config.new_client_from_config(str(lab.topo.kubeconfig)))
    out = stream(
        api.connect_get_namespaced_pod_exec,
        "probe",
        "default",
        command=["sh", "-c", "echo hello from $HOSTNAME"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    assert out == "hello from probe\n"


def test_kubectl_run_it_rm_dnsutils_as_in_the_k3s_guides(lab: Lab) -> None:
    """`kubectl run dnsutils --image=tutum/dnsutils -it --rm -- nslookup ...`: a tool container runs its command,
    kubectl attaches to its output and exit code, then deletes the pod."""
    # stdin stays open (as a user's terminal would) while kubectl attaches.
    res = in_terminal(
        lab, "run dnsutils --image=tutum/dnsutils -it --rm --restart=Never -- nslookup web.default", typing="sleep 60"
    )
    vip = lab.get("svc", "web")["spec"]["clusterIP"]
    assert res.returncode == 0 and f"Address: {vip}" in res.stdout, res.stdout + res.stderr
    assert 'pod "dnsutils" deleted' in res.stdout
    failing = lab.kubectl(
        "run",
        "nx",
        "--image=busybox",
        "-i",
        "--rm",
        "--restart=Never",
        "--",
        "nslookup",
        "nosuch.default.svc.cluster.local.",
        check=False,
    )
    # kubectl takes the exit code from the pod's status; the output is shown once (attach did not fail).
    assert failing.returncode == 1 and failing.stdout.count("NXDOMAIN") == 1, failing.stdout + failing.stderr
    assert "falling back" not in failing.stderr


def test_kubectl_run_it_an_interactive_shell(lab: Lab) -> None:
    """`kubectl run -it --rm --image=busybox -- sh`: typed input reaches the shell on its terminal, the output
    comes back, and kubectl exits with the shell's code."""
    typing = "sleep 6; printf 'nslookup web.default\\n'; sleep 2; printf 'exit 3\\n'; sleep 20"
    res = in_terminal(lab, "run shell --image=busybox -it --rm --restart=Never -- sh", typing=typing)
    vip = lab.get("svc", "web")["spec"]["clusterIP"]
    assert f"Address: {vip}" in res.stdout, res.stdout + res.stderr
    assert res.returncode == 3 and 'pod "shell" deleted' in res.stdout
