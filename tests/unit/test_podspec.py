"""The pod's files, runtime plan, CNI capabilities and flannel's rules, computed without privileges."""

from __future__ import annotations

import json

from kwire.agent.flannel.flannel import remote_from_node
from kwire.agent.kubelet import podspec
from kwire.agent.node import parse_taints


def _pod(**spec: object) -> dict[str, object]:
    return {
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}], **spec},
    }


def test_cluster_first_resolv_conf_is_kubelets() -> None:
    text = podspec.resolv_conf(_pod(), cluster_dns="10.43.0.10", cluster_domain="cluster.local", host_resolv="")
    assert text == (
        "nameserver 10.43.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )


def test_default_and_none_dns_policies() -> None:
    host = "# generated\nnameserver 192.168.1.1\nsearch lan\noptions edns0\n"
    assert podspec.resolv_conf(
        _pod(dnsPolicy="Default"), cluster_dns="10.43.0.10", cluster_domain="cluster.local", host_resolv=host
    ) == ("nameserver 192.168.1.1\nsearch lan\noptions edns0\n")
    # hostNetwork + ClusterFirst falls back to the node's resolv.conf; ClusterFirstWithHostNet does not.
    assert "192.168.1.1" in podspec.resolv_conf(
        _pod(hostNetwork=True), cluster_dns="10.43.0.10", cluster_domain="cluster.local", host_resolv=host
    )
    assert "10.43.0.10" in podspec.resolv_conf(
        _pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"),
        cluster_dns="10.43.0.10",
        cluster_domain="cluster.local",
        host_resolv=host,
    )
    none = _pod(
        dnsPolicy="None",
        dnsConfig={"nameservers": ["1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}]},
    )
    assert podspec.resolv_conf(none, cluster_dns="x", cluster_domain="y", host_resolv=host) == (
        "nameserver 1.1.1.1\nsearch a.example\noptions ndots:2\n"
    )


def test_hosts_file_with_subdomain_and_aliases() -> None:
    pod = _pod(hostname="db-0", subdomain="db", hostAliases=[{"ip": "10.1.2.3", "hostnames": ["foo.local"]}])
    text = podspec.hosts_file(pod, pod_ip="10.42.1.5", cluster_domain="cluster.local")
    assert "10.42.1.5\tdb-0.db.shop.svc.cluster.local\tdb-0" in text
    assert "10.1.2.3\tfoo.local" in text and "127.0.0.1\tlocalhost" in text


def test_image_decides_what_runs() -> None:
    assert podspec.image_name("docker.io/library/nginx:1.27") == "library/nginx"
    assert podspec.image_name("localhost:5000/kwire/host:v1") == "localhost:5000/kwire/host"
    assert podspec.image_name("kwire/host:latest") == "kwire/host"
    pod = _pod()
    pod["spec"]["containers"].append(  # type: ignore[index]
        {
            "name": "sh",
            "image": "kwire/host",
            "command": ["sleep"],
            "args": ["100"],
            "env": [
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "A", "value": "b"},
            ],
        }
    )
    pod["spec"]["containers"].append({"name": "bad", "image": "kwire/nope"})  # type: ignore[index]
    plans = {p.name: p.kind for p in podspec.plan(pod)}
    assert plans == {"c": "responder", "sh": "process", "bad": "error"}
    rs = podspec.runtime_spec(pod, node="node1", pod_ip="10.42.0.7", host_ip="192.168.77.11", netns="ns1")
    assert rs["ports"] == [[80, "TCP"]]
    assert rs["processes"][0]["argv"] == ["sleep", "100"]
    assert rs["processes"][0]["env"]["IP"] == "10.42.0.7" and rs["processes"][0]["env"]["A"] == "b"
    assert rs["pod"] == {
        "name": "web-1",
        "namespace": "shop",
        "node": "node1",
        "podIP": "10.42.0.7",
        "netns": "ns1",
        "uts": "",
        "stage": "",
        "masks": [],
        "hostPID": False,
        "sharePid": False,
    }


def test_cni_capabilities_from_host_ports_and_bandwidth() -> None:
    pod = _pod()
    pod["spec"]["containers"][0]["ports"] = [  # type: ignore[index]
        {"containerPort": 80, "hostPort": 8080},
        {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "192.168.77.11"},
    ]
    assert podspec.port_mappings(pod) == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.168.77.11"},
    ]
    pod["metadata"]["annotations"] = {"kubernetes.io/ingress-bandwidth": "10M"}  # type: ignore[index]
    assert podspec.bandwidth(pod) == {"ingressRate": 10_000_000, "ingressBurst": 2**31 - 1}
    assert podspec.netns_name("kwire-lab-pod-", "0b1c2d3e-4f50-6172") == "kwire-lab-pod-0b1c2d3e4f50"


def test_flannel_remote_from_annotations_and_rules() -> None:
    node = {
        "metadata": {
            "name": "node2",
            "annotations": {
                "flannel.alpha.coreos.com/public-ip": "192.168.77.12",
                "flannel.alpha.coreos.com/backend-data": json.dumps({"VNI": 1, "VtepMAC": "02:aa:bb:cc:dd:ee"}),
            },
        },
        "spec": {"podCIDR": "10.42.1.0/24"},
    }
    r = remote_from_node(node)
    assert r is not None and (r.subnet, r.public_ip, r.vtep_mac, r.gateway) == (
        "10.42.1.0/24",
        "192.168.77.12",
        "02:aa:bb:cc:dd:ee",
        "10.42.1.0",
    )
    assert remote_from_node({"metadata": {"name": "x"}, "spec": {}}) is None


def test_node_taint_flags() -> None:
    assert parse_taints(("dedicated=edge:NoSchedule", "gpu:NoExecute")) == [
        {"key": "dedicated", "value": "edge", "effect": "NoSchedule"},
        {"key": "gpu", "effect": "NoExecute"},
    ]


def test_node_resolv_conf_avoids_loopback_stubs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    etc, systemd = tmp_path / "resolv.conf", tmp_path / "systemd.conf"
    etc.write_text("nameserver 192.168.1.1\n")
    assert podspec.node_resolv_conf(etc, systemd) == "nameserver 192.168.1.1\n"
    etc.write_text("nameserver 127.0.0.53\noptions edns0\n")
    systemd.write_text("nameserver 10.0.0.2\n")
    assert podspec.node_resolv_conf(etc, systemd) == "nameserver 10.0.0.2\n"
    systemd.write_text("nameserver ::1\n")
    assert podspec.node_resolv_conf(etc, systemd) == "nameserver 8.8.8.8\n"


def test_tool_containers_of_other_images_run_their_command() -> None:
    """busybox/dnsutils-style debug containers (a command this node has, no ports) run it; a server image with
    ports, or a command the node does not have, keeps the responder."""

    def pod_with(**c: object) -> dict[str, object]:
        return {"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", **c}]}}

    dnsutils = pod_with(image="tutum/dnsutils", args=["nslookup", "grafana.monitoring"])
    assert [p.kind for p in podspec.plan(dnsutils)] == ["process"]
    rs = podspec.runtime_spec(dnsutils, node="n", pod_ip="10.42.0.9", host_ip="192.168.77.11", netns="ns")
    assert rs["processes"][0]["argv"] == ["nslookup", "grafana.monitoring"] and rs["ports"] == []
    busybox = pod_with(image="busybox:1.36", command=["sh", "-c", "while true; do wget -qO- http://web; done"])
    assert [p.kind for p in podspec.plan(busybox)] == ["process"]
    served = pod_with(image="redis", command=["redis-server"], ports=[{"containerPort": 6379}])
    assert [p.kind for p in podspec.plan(served)] == ["responder"]
    unknown = pod_with(image="example/app", command=["/app/server", "--port=8080"])
    assert [p.kind for p in podspec.plan(unknown)] == ["responder"]
    assert not podspec.is_tool_container({"image": "x", "args": ["-s", "http://x"]})  # an entrypoint's arguments
