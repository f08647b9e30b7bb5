"""The service proxy's table for representative services: checked with the packet tracer (which walks the very
table the kernel is given, from its base chains) and as whole transactions against golden files (no privileges)."""

from __future__ import annotations

from typing import Any

from kwire.agent.proxy import ruleset
from kwire.agent.proxy.model import ServicePort, service_ports, service_view, slice_view
from kwire.agent.proxy.tracer import trace
from kwire.kernel import nft
from tests.unit import golden

CLUSTER = "10.42.0.0/16"
SVC_CIDR = "10.43.0.0/16"
NODE1 = "192.168.77.11"
OUTSIDE = "192.168.77.200"


def svc(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"clusterIP": "10.43.0.50", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    base.update(spec)
    return {"metadata": {"namespace": "default", "name": name}, "spec": base}


def lb_svc(name: str) -> dict[str, Any]:
    """A LoadBalancer Service: external IP 192.168.77.50, NodePort 30090, load-balancer IP 192.168.77.240."""
    lb = svc(
        name,
        type="LoadBalancer",
        externalIPs=["192.168.77.50"],
        ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30090}],
    )
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "192.168.77.240"}]}}
    return lb


def slice_(
    name: str, eps: list[tuple[str, str, dict[str, bool]]], port: int = 8080, proto: str = "TCP"
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "default", "name": f"{name}-abc", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": proto}],
        "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": cond} for ip, node, cond in eps],
    }


READY = {"ready": True, "serving": True, "terminating": False}
THREE = [("10.42.0.5", "node1", READY), ("10.42.1.5", "node2", READY), ("10.42.2.5", "node3", READY)]


def ports_of(service: dict[str, Any], slices: list[dict[str, Any]]) -> list[ServicePort]:
    """The typed views the proxy makes of the objects, then the service ports."""
    return service_ports(service_view(service), [slice_view(s) for s in slices])


def build(*services: tuple[dict[str, Any], list[dict[str, Any]]], node: str = "node1") -> ruleset.ProxyTable:
    ports = [sp for s, sl in services for sp in ports_of(s, sl)]
    pod_cidr = {"node1": "10.42.0.0/24", "node2": "10.42.1.0/24", "node3": "10.42.2.0/24"}[node]
    return ruleset.build(
        ports, node=node, node_ips=(NODE1,), cluster_cidr=CLUSTER, service_cidr=SVC_CIDR, pod_cidr=pod_cidr
    )


def test_cluster_ip_balances_over_ready_endpoints() -> None:
    rs = build((svc("web"), [slice_("web", THREE)]))
    t = trace(rs.table(), src="10.42.1.9", dst="10.43.0.50", proto="tcp", port=80)
    assert t.verdict == "dnat" and sorted(t.endpoints) == ["10.42.0.5:8080", "10.42.1.5:8080", "10.42.2.5:8080"]
    assert not t.masquerade  # pod-to-service keeps the pod's source IP
    from_node = trace(rs.table(), src=NODE1, dst="10.43.0.50", proto="tcp", port=80)
    assert from_node.verdict == "dnat" and from_node.masquerade  # from outside the cluster CIDR
    hairpin = trace(rs.table(), src="10.42.0.5", dst="10.43.0.50", proto="tcp", port=80)
    assert hairpin.masquerade  # a pod reaching itself through its service


def test_no_endpoints_rejects_and_service_cidr_is_guarded() -> None:
    rs = build((svc("empty", clusterIP="10.43.0.60"), []), (svc("web"), [slice_("web", THREE)]))
    assert trace(rs.table(), src="10.42.1.9", dst="10.43.0.60", proto="tcp", port=80).verdict == "reject"
    assert trace(rs.table(), src="10.42.1.9", dst="10.43.0.50", proto="tcp", port=81).verdict == "reject"  # wrong port
    assert trace(rs.table(), src="10.42.1.9", dst="10.43.9.9", proto="tcp", port=80).verdict == "drop"  # unallocated
    assert trace(rs.table(), src="10.42.1.9", dst="1.1.1.1", proto="tcp", port=80).verdict == "accept"  # not a service


def test_terminating_serving_endpoints_only_when_none_ready() -> None:
    term = {"ready": False, "serving": True, "terminating": True}
    gone = {"ready": False, "serving": False, "terminating": True}
    rs = build((svc("web"), [slice_("web", [("10.42.0.5", "node1", term), ("10.42.1.5", "node2", gone)])]))
    assert trace(rs.table(), src="10.42.1.9", dst="10.43.0.50", proto="tcp", port=80).endpoints == ["10.42.0.5:8080"]
    rs = build((svc("web"), [slice_("web", [("10.42.0.5", "node1", term), ("10.42.1.5", "node2", READY)])]))
    assert trace(rs.table(), src="10.42.1.9", dst="10.43.0.50", proto="tcp", port=80).endpoints == ["10.42.1.5:8080"]


def test_node_port_cluster_and_local_policies() -> None:
    np = svc("np", type="NodePort", ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}])
    rs = build((np, [slice_("np", THREE)]))
    t = trace(rs.table(), src=OUTSIDE, dst=NODE1, proto="tcp", port=30080)
    assert t.verdict == "dnat" and len(t.endpoints) == 3 and t.masquerade
    local = svc(
        "loc",
        type="NodePort",
        externalTrafficPolicy="Local",
        healthCheckNodePort=32000,
        ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30081}],
    )
    rs = build((local, [slice_("loc", THREE)]), node="node2")
    t = trace(rs.table(), src=OUTSIDE, dst=NODE1, proto="tcp", port=30081)
    assert t.endpoints == ["10.42.1.5:8080"] and not t.masquerade  # local endpoint only, client IP kept
    pod = trace(rs.table(), src="10.42.2.9", dst=NODE1, proto="tcp", port=30081)
    assert len(pod.endpoints) == 3  # pods get Cluster behaviour (kube-proxy's short-circuit)
    rs = build((local, [slice_("loc", [THREE[1]])]), node="node3")
    assert trace(rs.table(), src=OUTSIDE, dst=NODE1, proto="tcp", port=30081).verdict == "drop"  # none on this node
    rs = build((local, []), node="node3")
    assert trace(rs.table(), src=OUTSIDE, dst=NODE1, proto="tcp", port=30081).verdict == "reject"  # none anywhere


def test_internal_traffic_policy_local() -> None:
    rs = build((svc("itp", internalTrafficPolicy="Local"), [slice_("itp", THREE)]), node="node3")
    assert trace(rs.table(), src="10.42.2.9", dst="10.43.0.50", proto="tcp", port=80).endpoints == ["10.42.2.5:8080"]
    rs = build((svc("itp", internalTrafficPolicy="Local"), [slice_("itp", THREE[:2])]), node="node3")
    assert trace(rs.table(), src="10.42.2.9", dst="10.43.0.50", proto="tcp", port=80).verdict == "drop"


def test_client_ip_affinity() -> None:
    s = svc("sticky", sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
    rs = build((s, [slice_("sticky", THREE)]))
    sets = rs.services["default/sticky/tcp/http"].affinity_sets
    assert len(sets) == 3 and {s.timeout for s in sets.values()} == {60}
    chosen = sorted(sets)[1]
    t = trace(rs.table(), src="10.42.1.9", dst="10.43.0.50", proto="tcp", port=80, affinity={chosen: {"10.42.1.9"}})
    assert len(t.endpoints) == 1 and t.sticky.endswith(chosen.removeprefix("affinity-"))


def test_external_ips_load_balancer_ips_udp_and_headless() -> None:
    lb = lb_svc("lb")
    dns = svc("dns", clusterIP="10.43.0.10", ports=[{"name": "http", "port": 53, "protocol": "UDP"}])
    headless = svc("hl", clusterIP="None")
    ext = {"metadata": {"namespace": "default", "name": "ext"}, "spec": {"type": "ExternalName", "externalName": "x.y"}}
    rs = build(
        (lb, [slice_("lb", THREE)]),
        (dns, [slice_("dns", THREE, port=5353, proto="UDP")]),
        (headless, [slice_("hl", THREE)]),
        (ext, []),
    )
    for vip in ("192.168.77.50", "192.168.77.240"):
        t = trace(rs.table(), src=OUTSIDE, dst=vip, proto="tcp", port=80)
        assert t.verdict == "dnat" and t.masquerade
    assert trace(rs.table(), src="10.42.0.9", dst="10.43.0.10", proto="udp", port=53).endpoints[0].endswith(":5353")
    assert set(rs.services) == {"default/lb/tcp/http", "default/dns/udp/http"}  # headless, ExternalName: nothing


def test_partial_sync_touches_only_the_changed_service() -> None:
    """Whole transactions: the first sync replaces the table; an endpoint change of one service refills only its
    chain; a removed service's elements go before its chain; nothing changed is an empty transaction."""
    other = (svc("other", clusterIP="10.43.0.70"), [slice_("other", THREE)])
    old = build((svc("web"), [slice_("web", THREE)]), other).table()
    golden.check("proxy-full-two-services", nft.replace(old))
    new = build((svc("web"), [slice_("web", THREE[:1])]), other).table()
    golden.check("proxy-endpoint-removed", nft.diff(old, new))
    gone = build(other).table()
    golden.check("proxy-service-removed", nft.diff(new, gone))
    assert nft.diff(gone, build(other).table()).empty


EMPTY_SVC = (svc("web"), [slice_("web", [])])
LB = lb_svc("web")
CASES: dict[str, tuple[tuple[dict[str, Any], list[dict[str, Any]]], str]] = {
    "cluster-ip": ((svc("web"), [slice_("web", THREE)]), "node1"),
    "cluster-ip-udp": (
        (
            svc("web", ports=[{"name": "http", "port": 53, "protocol": "UDP"}]),
            [slice_("web", THREE, port=5353, proto="UDP")],
        ),
        "node1",
    ),
    "node-port": (
        (
            svc("web", type="NodePort", ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]),
            [slice_("web", THREE)],
        ),
        "node1",
    ),
    "load-balancer-external-ips": ((LB, [slice_("web", THREE)]), "node1"),
    "affinity": (
        (
            svc("web", sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}),
            [slice_("web", THREE[:2])],
        ),
        "node1",
    ),
    "etp-local": (
        (
            svc(
                "web",
                type="NodePort",
                externalTrafficPolicy="Local",
                healthCheckNodePort=32000,
                ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30081}],
            ),
            [slice_("web", THREE)],
        ),
        "node2",
    ),
    "etp-local-none-here": (
        (
            svc(
                "web",
                type="NodePort",
                externalTrafficPolicy="Local",
                ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30081}],
            ),
            [slice_("web", THREE[:1])],
        ),
        "node3",
    ),
    "itp-local": ((svc("web", internalTrafficPolicy="Local"), [slice_("web", THREE)]), "node3"),
    "itp-local-none-here": ((svc("web", internalTrafficPolicy="Local"), [slice_("web", THREE[:2])]), "node3"),
    "no-endpoints": (EMPTY_SVC, "node1"),
    "node-port-no-endpoints": (
        (
            svc("web", type="NodePort", ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]),
            [],
        ),
        "node1",
    ),
}


def test_every_service_type_as_a_whole_transaction() -> None:
    """Each case: the transaction that adds one service to a table holding none (what a partial sync sends)."""
    for name, (service, node) in CASES.items():
        empty = build(node=node).table()
        golden.check(f"proxy-{name}", nft.diff(empty, build(service, node=node).table()))


def test_fixed_chains_and_hairpin_as_a_whole_transaction() -> None:
    """The table with no service: base chains, the checks, the verdict maps and this node's hairpin pairs."""
    golden.check("proxy-empty", nft.replace(build(node="node1").table()))
    t = trace(
        build((svc("web"), [slice_("web", THREE[:1])])).table(), src="10.42.0.5", dst="10.43.0.50", proto="tcp", port=80
    )
    assert t.endpoints == ["10.42.0.5:8080"] and t.masquerade  # a pod reaching itself through its service


def test_typed_views_keep_only_what_the_data_path_uses() -> None:
    s = svc("web", ports=[{"name": "a", "port": 80, "protocol": "ICMP"}, {"name": "b", "port": 81}])
    view = service_view(s)
    assert [p.port for p in view.ports] == [81] and view.key == "default/web"
    assert service_view(svc("hl", clusterIP="None")).cluster_ip == ""
    try:
        service_view(svc("bad", ports=[{"name": "x", "port": "eighty"}]))
        raise AssertionError("a malformed port must be refused")
    except ValueError:
        pass
    v6 = {**slice_("web", THREE), "addressType": "IPv6"}
    assert slice_view(v6).endpoints == ()
    odd = slice_("web", [("not-an-ip", "node1", READY), ("10.42.0.5", "node1", READY)])
    assert [(e.ip, e.port) for e in slice_view(odd).endpoints] == [("10.42.0.5", 0)]  # the port comes by name
    assert slice_view(odd).service == "default/web"


def test_a_truncated_chain_name_keeps_the_full_key_in_its_comment() -> None:
    long = "a-very-long-service-name-" + "x" * 40
    pt = build((svc(long), [slice_(long, THREE[:1])]))
    (chain,) = pt.services[f"default/{long}/tcp/http"].chains.values()
    assert f"default/{long}/tcp/http" not in chain.name.replace("_", "/")  # truncated...
    assert chain.comment == f"default/{long}/tcp/http"  # ...and reversible
    short = build((svc("web"), [slice_("web", THREE)])).table()
    assert not [c.name for c in short.chains.values() if c.comment]  # an untruncated name spells its key
    golden.check("proxy-long-name", nft.diff(build().table(), pt.table()))
