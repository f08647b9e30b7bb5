"""Node credentials and the kubelet API in a real lab: each agent holds its own certificates (0600, no cluster or
admin token), the kubelet API on :10250 is HTTPS and refuses whoever has no client certificate from the cluster's
client CA (401) or one from another CA (TLS handshake), and the real kubectl's logs/exec/attach reach kubelets
with the API server's kubelet-client certificate."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kwire.api import certs
from tests.integration.labkit import Lab

pytestmark = pytest.mark.lab

POD = """
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  nodeName: NODE
  containers: [{name: c, image: busybox, command: [sh, -c, "echo hello from talker; sleep 3600"]}]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("kwt-kapi", 2, "vxlan") as lab_:
        lab_.apply(POD.replace("NODE", lab_.topo.nodes[1].name))
        lab_.kubectl("wait", "--for=condition=Ready", "pod/talker", "--timeout=60s")
        yield lab_


def _curl(lab: Lab, target: str, url: str, *extra: str, namespace: str = "default") -> tuple[int, str]:
    """(curl's exit code, body + ' ' + HTTP status) of a request from `target` (a node, the client or a pod)."""
    cmd = ["curl", "-sk", "-m", "10", "-w", " %{http_code}", *extra, url]
    ns = lab.netns_of(target, namespace)
    res = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=30)
    return res.returncode, res.stdout


def test_each_agent_holds_its_own_certificates_and_no_token(lab: Lab) -> None:
    state = json.loads((lab.topo.state_dir / "state.json").read_text())
    tokens = [str(v) for k, v in state.items() if "token" in k and v]
    assert tokens
    for node in lab.topo.nodes:
        data_dir = lab.topo.state_dir / node.name
        tls = data_dir / "tls"
        assert stat.S_IMODE(tls.stat().st_mode) == 0o700
        names = {p.name for p in tls.iterdir()}
        for comp in ("client-kubelet", "serving-kubelet", "client-kube-proxy", "client-k3s-controller"):
            assert {f"{comp}.crt", f"{comp}.key"} <= names
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tls.iterdir())
        assert certs.subject_of((tls / "client-kubelet.crt").read_bytes()) == (
            f"system:node:{node.name}",
            ("system:nodes",),
        )
        # No file of the node holds the cluster token, pods' service-account files included (their tokens are
        # TokenRequest tokens bound to each pod).
        for path in data_dir.rglob("*"):
            if path.is_file() and path.stat().st_size < 1_000_000:
                content = path.read_bytes()
                assert not any(t.encode() in content for t in tokens), path


def test_the_kubelet_api_refuses_a_pod_without_a_client_certificate(lab: Lab) -> None:
    lab.apply(POD.replace("talker", "prober").replace("NODE", lab.topo.nodes[0].name))
    lab.kubectl("wait", "--for=condition=Ready", "pod/prober", "--timeout=60s")
    for node in lab.topo.nodes:
        for path in ("/containerLogs/default/talker/c", "/exec/default/talker/c?command=id&stdout=true", "/pods"):
            code, out = _curl(lab, "prober", f"https://{node.ip}:10250{path}")
            assert (code, out) == (0, "Unauthorized 401"), (node.name, path)
        # Plain HTTP is not served at all.
        code, out = _curl(lab, "prober", f"http://{node.ip}:10250/containerLogs/default/talker/c")
        assert "hello from talker" not in out and not out.endswith(" 200")


def test_a_certificate_from_another_ca_fails_the_handshake(lab: Lab, tmp_path: Path) -> None:
    other = certs.ensure_client_ca(tmp_path)
    crt, key = tmp_path / "admin.crt", tmp_path / "admin.key"
    certs.ensure_client_cert(
        other, cert_path=crt, key_path=key, common_name="system:admin", organizations=("system:masters",)
    )
    node = lab.topo.nodes[1]
    code, out = _curl(
        lab, "client", f"https://{node.ip}:10250/containerLogs/default/talker/c", "--cert", str(crt), "--key", str(key)
    )
    assert code != 0 and "hello" not in out  # TLS alert: no HTTP answer


def test_a_node_certificate_is_authenticated_then_authorized(lab: Lab) -> None:
    """The kubelet knows who calls (401 is only for the anonymous); whether node1 may read node2's logs is the
    API's SubjectAccessReview answer, which never lets a node's own identity through to nodes/proxy."""
    tls = lab.topo.state_dir / lab.topo.nodes[0].name / "tls"
    node2 = lab.topo.nodes[1]
    code, out = _curl(
        lab,
        "client",
        f"https://{node2.ip}:10250/containerLogs/default/talker/c",
        "--cert",
        str(tls / "client-kubelet.crt"),
        "--key",
        str(tls / "client-kubelet.key"),
    )
    assert code == 0 and out.startswith(f"Forbidden (user=system:node:{lab.topo.nodes[0].name}, verb=get")
    assert out.endswith(" 403")


def test_kubectl_logs_exec_and_node_proxy_reach_kubelets_over_https(lab: Lab) -> None:
    assert "hello from talker" in lab.kubectl("logs", "talker").stdout
    assert lab.kubectl("exec", "talker", "--", "echo", "exec over https").stdout == "exec over https\n"
    node = lab.topo.nodes[1].name
    raw = lab.kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/containerLogs/default/talker/c").stdout
    assert "hello from talker" in raw
    run = lab.kubectl("run", "-i", "--rm", "--restart=Never", "oneshot", "--image=busybox", "--", "echo", "from run -i")
    assert "from run -i" in run.stdout
