"""ServiceLB (the Klipper role) as pure functions: the svclb DaemonSet, the Service's ingress, the pod's nft."""

from __future__ import annotations

from typing import Any

import pytest

from kwire.agent import svclb
from kwire.agent.kubelet import podspec
from kwire.controllers import servicelb
from kwire.kernel import nft
from tests.unit import golden

SVC: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "shop", "uid": "2bb6a943-1111-2222-3333-444455556666", "labels": {}},
    "spec": {
        "type": "LoadBalancer",
        "clusterIP": "10.43.74.49",
        "clusterIPs": ["10.43.74.49"],
        "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
    },
}


def node(name: str, ip: str, *, external: str = "", labels: dict[str, str] | None = None) -> dict[str, Any]:
    addrs = [{"type": "InternalIP", "address": ip}] + (
        [{"type": "ExternalIP", "address": external}] if external else []
    )
    return {"metadata": {"name": name, "labels": labels or {}}, "status": {"addresses": addrs}}


def test_the_daemonset_k3s_makes() -> None:
    ds = servicelb.daemonset(SVC, [node("n1", "192.168.77.11")])
    assert ds["metadata"]["name"] == "svclb-web-2bb6a943" and ds["metadata"]["namespace"] == "kube-system"
    labels = ds["metadata"]["labels"]
    assert labels[servicelb.SVCNAME] == "web" and labels[servicelb.SVCNAMESPACE] == "shop"
    pod = ds["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["lb-tcp-80", "lb-udp-53"]
    assert pod["containers"][1]["ports"] == [
        {"name": "lb-udp-53", "containerPort": 53, "hostPort": 53, "protocol": "UDP"}
    ]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env == {
        "SRC_PORT": "80",
        "SRC_RANGES": "0.0.0.0/0",
        "DEST_PROTO": "TCP",
        "DEST_PORT": "80",
        "DEST_IPS": "10.43.74.49",
    }
    assert "nodeSelector" not in pod
    # Once any node carries enablelb=true, only those nodes; a Service's lbpool label narrows it further.
    pooled = {**SVC, "metadata": {**SVC["metadata"], "labels": {servicelb.LBPOOL: "edge"}}}
    ds2 = servicelb.daemonset(pooled, [node("n1", "1.1.1.1", labels={servicelb.ENABLELB: "true"})])
    assert ds2["spec"]["template"]["spec"]["nodeSelector"] == {servicelb.ENABLELB: "true", servicelb.LBPOOL: "edge"}
    long = {**SVC, "metadata": {**SVC["metadata"], "name": "x" * 80}}
    assert len(servicelb.daemonset_name(long)) == 63 and servicelb.daemonset_name(long).endswith("-2bb6a943")
    assert not servicelb.is_servicelb({"spec": {"type": "LoadBalancer", "loadBalancerClass": "metallb"}})


def test_ingress_lists_nodes_with_a_ready_svclb_pod() -> None:
    nodes = {
        "n1": node("n1", "192.168.77.11"),
        "n2": node("n2", "192.168.77.12", external="203.0.113.2"),
        "n3": node("n3", "192.168.77.13"),
    }

    def pod(n: str, ready: bool, app: str = "svclb-web-2bb6a943") -> dict[str, Any]:
        return {
            "metadata": {"labels": {"app": app}},
            "spec": {"nodeName": n},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        }

    pods = [pod("n3", True), pod("n2", True), pod("n1", False), pod("n1", True, app="svclb-other-00000000")]
    assert servicelb.ingress("svclb-web-2bb6a943", pods, nodes) == [{"ip": "192.168.77.13"}, {"ip": "203.0.113.2"}]
    assert servicelb.ingress("svclb-web-2bb6a943", [], nodes) == []


def test_the_svclb_pod_program_is_klipper_in_nft() -> None:
    env = {
        "SRC_PORT": "80",
        "DEST_PORT": "80",
        "DEST_PROTO": "TCP",
        "DEST_IPS": "10.43.74.49",
        "SRC_RANGES": "10.0.0.0/8,192.168.0.0/16",
    }
    txn = nft.replace(svclb.servicelb_table(env))
    golden.check("servicelb-tcp-80", txn)
    script = podspec.servicelb_argv(env)[2]
    assert script == (
        "[ \"$(cat /proc/sys/net/ipv4/ip_forward)\" = 1 ] || { echo 'ip_forward is not 1' >&2; exit 1; }\n"
        "nft -f - <<'KWIRE_EOF'\n" + txn.render() + "KWIRE_EOF\nexec sleep infinity\n"
    )
    for bad in (
        {"SRC_PORT": "80; rm -rf /"},
        {"SRC_PORT": "80", "DEST_PORT": "80", "DEST_PROTO": "icmp"},
        {"SRC_PORT": "80", "DEST_PORT": "80", "DEST_IPS": "10.43.0.1; reboot"},
    ):
        with pytest.raises(ValueError):
            podspec.servicelb_argv(bad)
    pod = {
        "metadata": {"name": "svclb-x", "namespace": "kube-system"},
        "spec": {
            "containers": [
                {"name": "lb-tcp-80", "image": "kwire/servicelb:latest", "env": [{"name": "SRC_PORT", "value": "x"}]}
            ]
        },
    }
    rs = podspec.runtime_spec(pod, node="n1", pod_ip="10.42.0.3", host_ip="192.168.77.11", netns="ns")
    assert rs["processes"][0]["argv"][-1].endswith("exit 1")  # a malformed environment fails visibly


async def test_disable_servicelb_leaves_the_controller_out() -> None:
    from kwire.client import Config
    from kwire.controllers.addons import AddonSettings
    from kwire.controllers.manager import ControllerManager

    def names(disable: tuple[str, ...]) -> set[str]:
        cm = ControllerManager(Config(server="http://127.0.0.1:1"), addons=AddonSettings(disable=disable))
        return {type(c).__name__ for c in cm.controllers}

    assert "ServiceLB" in names(()) and "ServiceLB" not in names(("servicelb",))


def test_each_svclb_container_owns_its_table() -> None:
    """The containers of one svclb pod (one per port) share its namespace: replacing one shared table left only
    the last container's port (port 443 of the traefik Service was refused while 80 worked)."""
    from kwire.agent.svclb import servicelb_table

    env = {"SRC_PORT": "80", "DEST_PORT": "80", "DEST_PROTO": "TCP", "DEST_IPS": "10.43.0.20"}
    web = servicelb_table(env)
    websecure = servicelb_table({**env, "SRC_PORT": "443", "DEST_PORT": "443"})
    assert web.name != websecure.name and {web.name, websecure.name} == {"kwire-lb-tcp-80", "kwire-lb-tcp-443"}
