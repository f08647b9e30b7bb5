"""`kwire trace`'s path computation on crafted cluster state (no privileges): the proxy's choice, NetworkPolicy
verdicts naming the policies, routes, masquerade and hairpin; FROM/TO parsing; the probe's trace parsing and its
comparison with a prediction (BUG lines)."""

from __future__ import annotations

from typing import Any

import pytest

from kwire.config import ClusterSettings
from kwire.trace import path, probe, readback, render, targets
from kwire.trace.state import ClusterState

CLIENT = "192.168.77.200"


def node(name: str, ip: str, cidr: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


def pod(
    name: str,
    ip: str,
    node_name: str,
    *,
    ns: str = "default",
    labels: dict[str, str] | None = None,
    ports: tuple[int, ...] = (80,),
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "uid": f"uid-{name}", "labels": labels or {"app": name}},
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "ports": [{"containerPort": p} for p in ports]}]},
        "status": {"phase": "Running", "podIP": ip},
    }


def service(
    name: str, ip: str, *, port: int = 80, target: int = 80, ns: str = "default", **spec: Any
) -> tuple[dict[str, Any], int]:
    s = {
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "clusterIP": ip,
            "ports": [{"name": "http", "port": port, "protocol": "TCP", **spec.pop("port_extra", {})}],
            **spec,
        },
    }
    return s, target


def slice_(svc: str, target: int, eps: list[tuple[str, str, str]], ns: str = "default") -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": f"{svc}-x", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": target, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "nodeName": n, "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": p}}
            for ip, n, p in eps
        ],
    }


def deny_all(name: str, ns: str, app: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"]},
    }


def allow_from(name: str, ns: str, app: str, peer: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}}]}],
        },
    }


def cluster(backend: str = "vxlan") -> ClusterState:
    st = ClusterState(settings=ClusterSettings(flannel_backend=backend))
    st.nodes = [node("node1", "192.168.77.11", "10.42.0.0/24"), node("node2", "192.168.77.12", "10.42.1.0/24")]
    st.namespaces = [{"metadata": {"name": "default"}}, {"metadata": {"name": "locked"}}]
    st.pods = [
        pod("a", "10.42.0.5", "node1"),
        pod("b", "10.42.0.6", "node1"),
        pod("web1", "10.42.1.4", "node2", labels={"app": "web"}, ports=(8080,)),
        pod("web2", "10.42.0.8", "node1", labels={"app": "web"}, ports=(8080,)),
        pod("h", "10.42.0.7", "node1", labels={"app": "hp"}, ports=(8080,)),
        pod("db", "10.42.1.6", "node2", ns="locked", labels={"app": "db"}),
    ]
    web, _ = service("web", "10.43.0.20")
    empty, _ = service("empty", "10.43.0.21")
    hp, _ = service("hp", "10.43.0.22")
    loc, _ = service(
        "loc", "10.43.0.23", type="NodePort", externalTrafficPolicy="Local", port_extra={"nodePort": 32223}
    )
    np_, _ = service("np", "10.43.0.24", type="NodePort", port_extra={"nodePort": 30310})
    sticky, _ = service("sticky", "10.43.0.25", sessionAffinity="ClientIP")
    st.services = [web, empty, hp, loc, np_, sticky]
    st.slices = [
        slice_("web", 8080, [("10.42.1.4", "node2", "web1"), ("10.42.0.8", "node1", "web2")]),
        slice_("hp", 8080, [("10.42.0.7", "node1", "h")]),
        slice_("loc", 8080, [("10.42.1.4", "node2", "web1")]),
        slice_("np", 8080, [("10.42.1.4", "node2", "web1")]),
        slice_("sticky", 8080, [("10.42.1.4", "node2", "web1")]),
    ]
    st.policies = [deny_all("deny-all", "locked", "db")]
    return st


def trace(st: ClusterState, src: str, dst: str, *, mtu: dict[str, int] | None = None) -> path.Prediction:
    m = path.Model(st, mtu=mtu or {"node1": 1450, "node2": 1450})
    s, d = targets.parse(src), targets.parse(dst)
    sp = targets.resolve(st, s, client_ip=CLIENT)
    dp = targets.resolve(st, d, client_ip=CLIENT)
    port = d.port or targets.default_port(st, dp, d.proto)
    return path.predict(m, sp, dp, dst_ip=dp.ip, port=port, proto=d.proto, client_ip=CLIENT)


def texts(p: path.Prediction, leg: int = 0) -> list[str]:
    return [h.text for h in p.hops(leg)]


def test_parse_specs() -> None:
    assert targets.parse("svc/default/web:80/tcp") == targets.Spec(
        "svc", "default", "web", 80, "tcp", "svc/default/web:80/tcp"
    )
    assert targets.parse("svc/web").namespace == "default"
    assert targets.parse("locked/db:81/UDP").proto == "udp"
    assert targets.parse("node/node2:30310").kind == "node"
    assert targets.parse("10.42.0.5:80").kind == "ip"
    assert targets.parse("web.default").kind == "dns"
    assert targets.parse("client").kind == "client"
    assert targets.parse("a") == targets.Spec("pod", "default", "a", 0, "tcp", "a")
    with pytest.raises(targets.TargetError):
        targets.parse("x:99999")


def test_same_node_allowed() -> None:
    p = trace(cluster(), "default/a", "default/b:80")
    assert p.verdict == path.DELIVERED
    assert "route bridge cni0 on node node1 (same node)" in texts(p)
    assert texts(p)[-1] == "deliver to pod default/b port 80/tcp (a declared containerPort)"
    assert p.legs[0].src_seen == "10.42.0.5"


def test_cross_node_vxlan_and_host_gw() -> None:
    p = trace(cluster(), "default/a", "default/web1:8080")
    assert p.verdict == path.DELIVERED
    assert "route 10.42.1.0/24 via flannel.1 -> node node2 (VXLAN VNI 1, 8472/udp to 192.168.77.12, MTU 1450)" in texts(
        p
    )
    p = trace(cluster("host-gw"), "default/a", "default/web1:8080", mtu={"node1": 1500})
    assert "route 10.42.1.0/24 via 192.168.77.12 on the LAN (host-gw, MTU 1500)" in texts(p)


def test_denied_by_policy_names_it() -> None:
    p = trace(cluster(), "default/a", "locked/db:80")
    assert p.verdict == path.DROPPED
    step, hop = p.deciding()
    assert hop is not None and hop.reason == "netpol ingress" and step == 4
    assert hop.text.startswith("netpol ingress locked/db: DENIED by locked/deny-all (locked/deny-all selects app=db")
    assert "from pod default/a port 80/tcp" in hop.text
    assert render.text(p).endswith("verdict: DROPPED at step 4 (netpol ingress)")


def test_allowed_by_policy_names_the_rule() -> None:
    st = cluster()
    st.policies.append(allow_from("from-a", "locked", "db", "a"))
    st.pods.append(pod("a", "10.42.0.9", "node1", ns="locked"))
    p = trace(st, "locked/a", "locked/db:80")
    assert p.verdict == path.DELIVERED
    assert "netpol ingress locked/db: allowed by locked/from-a (ingress rule 0)" in texts(p)
    # Nothing else allows from default/a: still denied.
    assert trace(st, "default/a", "locked/db:80").verdict == path.DROPPED


def test_egress_denied() -> None:
    st = cluster()
    st.policies.append(
        {
            "metadata": {"namespace": "default", "name": "no-out"},
            "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"]},
        }
    )
    p = trace(st, "default/a", "default/b:80")
    step, hop = p.deciding()
    assert p.verdict == path.DROPPED and hop is not None and hop.reason == "netpol egress" and step == 2
    assert "DENIED by default/no-out" in hop.text


def test_no_endpoints_reject() -> None:
    p = trace(cluster(), "default/a", "svc/default/empty")
    assert p.verdict == path.REJECTED
    step, hop = p.deciding()
    assert step == 2 and hop is not None and "no endpoints -> REJECT" in hop.text


def test_service_with_two_endpoints_each_leg() -> None:
    st = cluster()
    st.policies.append(deny_all("web-deny", "default", "web"))
    st.policies.append(
        {
            "metadata": {"namespace": "default", "name": "web-local"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.42.0.0/24"}}]}],
            },
        }
    )
    p = trace(st, "default/a", "svc/default/web")
    assert (
        "DNAT to 10.42.0.8:8080 (pod default/web2, node node1), 10.42.1.4:8080 (pod default/web1, node node2) "
        "[2 candidates, random]"
    ) in texts(p)[1]
    verdicts = {leg.endpoint: leg.verdict for leg in p.legs}
    # The ipBlock allows node1's pods: from a (node1) both endpoints accept.
    assert verdicts == {"10.42.0.8:8080": path.DELIVERED, "10.42.1.4:8080": path.DELIVERED}
    st.policies[-1]["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"] = "10.42.1.0/24"
    p = trace(st, "default/a", "svc/default/web")
    assert {leg.endpoint: leg.verdict for leg in p.legs} == {
        "10.42.0.8:8080": path.DROPPED,
        "10.42.1.4:8080": path.DROPPED,
    }
    # Only web2 (tier=x) isolated with nothing allowed: the verdict depends on the random pick.
    st.policies = [deny_all("deny-all", "locked", "db"), deny_all("only-web2", "default", "web")]
    st.policies[-1]["spec"]["podSelector"] = {"matchLabels": {"tier": "x"}}
    st.pods[3]["metadata"]["labels"] = {"app": "web", "tier": "x"}
    p = trace(st, "default/a", "svc/default/web")
    assert p.verdict == path.DEPENDS
    assert {leg.endpoint: leg.verdict for leg in p.legs} == {
        "10.42.0.8:8080": path.DROPPED,
        "10.42.1.4:8080": path.DELIVERED,
    }
    out = render.text(p)
    assert "other endpoint candidates (1):" in out and "  endpoint 10.42.1.4:8080: DELIVERED" in out
    assert out.endswith("verdict: DEPENDS on the endpoint picked (see the candidates above)")


def test_etp_local_from_the_client() -> None:
    st = cluster()
    p = trace(st, "client", "node/node1:32223")
    step, hop = p.deciding()
    assert p.verdict == path.DROPPED and step == 2 and hop is not None and hop.reason == "proxy drop"
    assert "externalTrafficPolicy Local and node node1 has no ready local endpoint -> DROP" in hop.text
    p = trace(st, "client", "node/node2:32223")
    assert p.verdict == path.DELIVERED
    assert p.legs[0].src_seen == CLIENT  # policy Local keeps the client's address
    assert not [h for h in p.hops() if h.kind == "masquerade"]


def test_nodeport_from_the_client_is_masqueraded() -> None:
    p = trace(cluster(), "client", "node/node1:30310")
    assert p.verdict == path.DELIVERED
    assert p.entry_node == "node1" and p.nodes == ["node1", "node2"]
    assert p.legs[0].src_seen == "10.42.0.0"  # flannel.1 of node1
    assert any(h.kind == "masquerade" and "external traffic" in h.text for h in p.hops())


def test_client_cannot_reach_pod_ips() -> None:
    p = trace(cluster(), "client", "default/a:80")
    assert p.verdict == path.UNREACHABLE


def test_hairpin() -> None:
    p = trace(cluster(), "default/h", "svc/default/hp")
    assert p.verdict == path.DELIVERED
    assert "masquerade: hairpin (pod default/h reaches itself through its Service): source 10.42.0.1" in texts(p)
    assert p.legs[0].src_seen == "10.42.0.1"


def test_pod_to_its_own_ip_never_leaves() -> None:
    p = trace(cluster(), "default/a", "default/a:80")
    assert p.verdict == path.DELIVERED and "never leaves its namespace" in texts(p)[-1]


def test_undeclared_port_is_refused_and_affinity_is_told() -> None:
    p = trace(cluster(), "default/a", "default/b:81")
    assert p.verdict == path.REFUSED
    p = trace(cluster(), "default/a", "svc/default/sticky")
    assert "sessionAffinity ClientIP" in texts(p)[1] and "10800s" in texts(p)[1]


def test_json_output() -> None:
    out = render.as_json(trace(cluster(), "default/a", "locked/db:80"))
    assert out["verdict"] == "DROPPED" and out["step"] == 4 and out["reason"] == "netpol ingress"
    assert out["hops"][3]["end"] == "DROPPED"
    assert out["candidates"][0]["sourceSeen"] == "10.42.0.5"


TRACE_LINES = [
    "trace id 1 ip kwire-trace-1 prerouting rule ip saddr 10.42.0.5 meta nftrace set 1 (verdict continue)",
    "trace id 1 ip kwire-proxy services rule ip daddr . meta l4proto . th dport vmap @service-ips (verdict goto service-x)",
    "trace id 1 ip kwire-proxy service-x rule meta l4proto tcp dnat to 10.42.1.4:8080 (verdict accept)",
    'trace id 2 ip kwire-netpol pod-in-x rule counter packets 0 bytes 0 drop comment "locked/db ingress" (verdict drop)',
    "trace id 2 ip kwire-netpol egress policy accept ",
]


def test_probe_parses_the_trace_and_compares() -> None:
    hits = probe.parse("node2", TRACE_LINES)
    assert [h.table for h in hits] == ["kwire-proxy", "kwire-proxy", "kwire-netpol", "kwire-netpol"]
    obs = probe.observe("timeout", hits)
    assert obs.verdict == path.DROPPED and obs.endpoint == "10.42.1.4:8080"
    assert obs.dropped is not None and obs.dropped.chain == "pod-in-x"
    pred = trace(cluster(), "default/a", "locked/db:80")
    obs = probe.observe("timeout", probe.parse("node2", TRACE_LINES[3:]))
    assert probe.compare(pred, obs) == []
    # Reality differs: the connection went through.
    bugs = probe.compare(pred, probe.observe("connected", []))
    assert bugs == ["BUG: predicted DROPPED, observed DELIVERED (connected)"]
    # Dropped, but by another table than predicted.
    pred = trace(cluster(), "client", "node/node1:32223")
    bugs = probe.compare(pred, probe.observe("timeout", probe.parse("node1", TRACE_LINES[3:])))
    assert bugs and bugs[0].startswith(
        "BUG: predicted the drop in kwire-proxy (proxy drop), observed node1: kwire-netpol"
    )
    # A DNAT to an endpoint the prediction did not have.
    pred = trace(cluster(), "default/h", "svc/default/hp")
    bugs = probe.compare(pred, probe.observe("connected", probe.parse("node1", TRACE_LINES[:3])))
    assert bugs[0] == "BUG: the kernel DNATed to 10.42.1.4:8080; predicted: 10.42.0.7:8080"


def test_probe_trace_table_matches_every_form_of_the_flow() -> None:
    pred = trace(cluster(), "client", "node/node1:30310")
    fl = probe.flows(pred)
    assert fl == [
        probe.Flow(CLIENT, "192.168.77.11", 30310),
        probe.Flow(CLIENT, "10.42.1.4", 8080),
        probe.Flow("10.42.0.0", "10.42.1.4", 8080),
    ]
    script = probe.trace_table("kwire-trace-1", "tcp", fl)
    assert script.startswith("table ip kwire-trace-1 {")
    assert "type filter hook prerouting priority -350; policy accept;" in script
    assert (
        "ip saddr 10.42.0.0 ip daddr 10.42.1.4 meta l4proto tcp th dport 8080 tcp flags & (syn | ack) == syn "
        "meta nftrace set 1" in script
    )


def test_load_balancer_through_a_svclb_host_port() -> None:
    st = cluster()
    lb, _ = service("lb", "10.43.0.26", port=8088, type="LoadBalancer")
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "192.168.77.11"}, {"ip": "192.168.77.12"}]}}
    st.services.append(lb)
    st.slices.append(slice_("lb", 8080, [("10.42.1.4", "node2", "web1")]))
    svclb = pod("svclb-lb-1", "10.42.0.30", "node1", ns="kube-system", ports=())
    svclb["metadata"]["labels"] = {
        "svccontroller.k3s.cattle.io/svcname": "lb",
        "svccontroller.k3s.cattle.io/svcnamespace": "default",
    }
    svclb["spec"]["containers"][0]["ports"] = [{"containerPort": 8088, "hostPort": 8088, "protocol": "TCP"}]
    st.pods.append(svclb)
    p = trace(st, "client", "node/node1:8088")
    assert p.verdict == path.DELIVERED
    assert texts(p)[1] == (
        "hostPort 8088/tcp on node node1 -> DNAT to pod kube-system/svclb-lb-1 10.42.0.30:8088 (CNI portmap, table ip nat)"
    )
    assert texts(p)[2] == "svclb relays to svc default/lb ClusterIP 10.43.0.26:8088, masqueraded (source 10.42.0.30)"
    assert p.via == ["10.42.0.30:8088"] and p.legs[0].endpoint == "10.42.1.4:8080"
    assert p.legs[0].src_seen == "10.42.0.30" and p.nodes == ["node1", "node2"]
    # The probe accepts the hostPort DNAT on the way and matches the endpoint's.
    obs = probe.observe("connected", [])
    obs.dnats = ["10.42.0.30:8088", "10.42.1.4:8080"]
    assert probe.compare(p, obs) == []
    # Node2 has no svclb pod: the proxy's load-balancer rule answers there.
    p = trace(st, "client", "node/node2:8088")
    assert "proxy svc default/lb port 8088/tcp (external IP 192.168.77.12) -> DNAT to 10.42.1.4:8080" in texts(p)[1]


def test_probe_flags_a_drop_that_no_predicted_rule_made() -> None:
    pred = trace(cluster(), "default/a", "locked/db:80")
    hop = pred.deciding()[1]
    assert hop is not None and hop.node == "node2"
    # Timed out, and node2 (traced) shows no drop: the packet was lost before it got there.
    bugs = probe.compare(pred, probe.observe("timeout", []), traced={"node1", "node2"})
    assert len(bugs) == 1 and "no rule there dropped it" in bugs[0]
    # node2 not traced (a node mode probe): nothing to say.
    assert probe.compare(pred, probe.observe("timeout", []), traced={"node1"}) == []


def test_kernel_readback_differences_and_affinity() -> None:
    st = cluster()
    m = path.Model(st)
    desired = m.netpol("node2").table()
    kernel = readback.parse(
        [
            {"chain": {"name": c}}
            for c in desired.chains
            if not c.startswith("pod-in-")  # the agent has not programmed the pod chain yet
        ]
        + [{"map": {"name": "ingress-pods", "elem": []}}, {"map": {"name": "egress-pods"}}]
    )
    diffs = readback.differences(desired, kernel)
    assert diffs[0].startswith("kwire-netpol: chains missing in the kernel: pod-in-")
    assert diffs[1].startswith("kwire-netpol map ingress-pods: missing in the kernel: 10.42.1.6 : jump pod-in-")
    assert readback.differences(desired, None) == ["table ip kwire-netpol is missing"]
    # The proxy's maps as nft -j prints them, and a client pinned by ClientIP affinity.
    proxy = m.proxy_table("node1")
    sticky = next(n for n in proxy.sets if n.startswith("affinity-"))
    objs: list[dict[str, Any]] = [{"chain": {"name": c}} for c in proxy.chains]
    for name, mp in proxy.maps.items():
        elems = []
        for k, v in mp.elements.items():
            parts = k.split(" . ")
            key: Any = (
                {"concat": [parts[0], parts[1], int(parts[2])]}
                if len(parts) == 3
                else {"concat": [parts[0], int(parts[1])]}
            )
            kind, _, target = v.partition(" ")
            elems.append([key, {kind: {"target": target}} if target else {kind: None}])
        objs.append({"map": {"name": name, "elem": elems}})
    objs.append({"set": {"name": sticky, "elem": [{"elem": {"val": "10.42.0.5", "expires": 10}}]}})
    kt = readback.parse(objs)
    assert readback.differences(proxy, kt) == []
    assert readback.affinity(kt) == {sticky: {"10.42.0.5"}}
    src = targets.resolve(st, targets.parse("default/a"))
    dst = targets.resolve(st, targets.parse("svc/default/sticky"))
    p = path.predict(m, src, dst, dst_ip=dst.ip, port=80, proto="tcp", affinity={"node1": readback.affinity(kt)})
    assert "pinned: the kernel's affinity set already holds this client for 10.42.1.4:8080" in texts(p)[1]


def test_internal_traffic_policy_local() -> None:
    st = cluster()
    itp, _ = service("itp", "10.43.0.27", internalTrafficPolicy="Local")
    st.services.append(itp)
    st.slices.append(slice_("itp", 8080, [("10.42.1.4", "node2", "web1")]))
    p = trace(st, "default/a", "svc/default/itp")  # a runs on node1, the only endpoint on node2
    step, hop = p.deciding()
    assert p.verdict == path.DROPPED and hop is not None and hop.reason == "proxy drop" and hop.node == "node1"
    assert "internalTrafficPolicy Local and node node1 has no local endpoint -> DROP" in hop.text
    p = trace(st, "locked/db", "svc/default/itp")  # db runs on node2
    assert p.verdict == path.DELIVERED and "internalTrafficPolicy Local: endpoints on node node2 only" in texts(p)[1]
