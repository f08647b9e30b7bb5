"""MetalLB's logic as pure functions: the image mapping, pools and IP assignment (requests, annotations, sharing
rules, serviceAllocation, avoidBuggyIPs), the leader election and the ARP codec."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import sys
from typing import Any

import pytest
from cryptography import x509

from kwire.agent.kubelet import podspec, satoken
from kwire.metallb import arp, election, members, pools, webhook

Obj = dict[str, Any]


def svc(
    name: str, *, ns: str = "default", ann: dict[str, str] | None = None, ports: list[int] | None = None, **spec: Any
) -> Obj:
    return {
        "metadata": {"name": name, "namespace": ns, "annotations": ann or {}, "labels": spec.pop("labels", {})},
        "spec": {"type": "LoadBalancer", "ports": [{"port": p} for p in ports or [80]], **spec},
    }


def pool(name: str, *addresses: str, **spec: Any) -> pools.Pool:
    return pools.parse_pool({"metadata": {"name": name}, "spec": {"addresses": list(addresses), **spec}})


def test_metallb_images_run_kwires_roles_from_v0_13() -> None:
    pod: Obj = {
        "metadata": {"name": "speaker-x", "namespace": "metallb-system", "uid": "u1"},
        "spec": {
            "containers": [{"name": "speaker", "image": "quay.io/metallb/speaker:v0.14.9", "args": ["--port=7472"]}]
        },
    }
    assert [p.kind for p in podspec.plan(pod)] == ["process"]
    assert satoken.mounts_token(pod)  # the speaker reads the API with its service-account token
    rs = podspec.runtime_spec(pod, node="n", pod_ip="1.2.3.4", host_ip="1.2.3.4", netns="ns")
    proc = rs["processes"][0]
    assert proc["argv"] == [sys.executable, "-m", "kwire.metallb.speaker", "--port=7472"]
    # the service-account files are mounted at the standard path: nothing points the client elsewhere
    assert podspec.SA_ENV not in proc["env"] and proc["env"]["PYTHONPATH"] == podspec.KWIRE_ROOT
    pod["spec"]["containers"][0]["image"] = "quay.io/metallb/controller:v0.12.1"
    plans = podspec.plan(pod)
    assert plans[0].kind == "error" and "from v0.13 on" in plans[0].error


def test_pool_ranges_cidrs_and_buggy_ips() -> None:
    p = pool("a", "10.0.0.0/30", "10.0.1.254-10.0.2.1", avoidBuggyIPs=True)
    assert [str(x) for x in p.addresses()] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.254", "10.0.2.1"]
    with pytest.raises(pools.PoolError, match="is after end"):
        pool("b", "10.0.0.9-10.0.0.1")
    with pytest.raises(pools.PoolError, match="invalid CIDR"):
        pool("c", "10.0.0.300/24")
    assert "overlaps" in pools.overlaps(pool("x", "10.0.0.0/24"), pool("y", "10.0.0.200-10.0.1.5"))
    assert pools.overlaps(pool("x", "10.0.0.0/24"), pool("y", "10.0.1.0/24")) == ""


def test_assignment_requests_pools_and_priority() -> None:
    al = pools.Allocator(
        pools={
            "low": pool("low", "10.0.0.10-10.0.0.11", serviceAllocation={"priority": 50}),
            "high": pool("high", "10.0.1.10-10.0.1.10", serviceAllocation={"priority": 10}),
            "manual": pool("manual", "10.0.2.0/24", autoAssign=False),
        }
    )
    assert [str(i) for i in al.assign("default/a", svc("a"), None).ips] == ["10.0.1.10"]
    assert [str(i) for i in al.assign("default/b", svc("b"), None).ips] == ["10.0.0.10"]  # high is full
    asked = al.assign("default/c", svc("c", loadBalancerIP="10.0.2.7"), None)
    assert (str(asked.ips[0]), asked.pool) == ("10.0.2.7", "manual")
    ann = al.assign("default/d", svc("d", ann={"metallb.universe.tf/loadBalancerIPs": "10.0.2.8"}), None)
    assert str(ann.ips[0]) == "10.0.2.8"
    by_pool = al.assign("default/e", svc("e", ann={"metallb.io/address-pool": "manual"}), None)
    assert by_pool.pool == "manual"
    with pytest.raises(pools.AllocationError, match="'10.9.9.9' is not allowed in config"):
        al.assign("default/f", svc("f", loadBalancerIP="10.9.9.9"), None)
    with pytest.raises(pools.AllocationError, match="pool 'nope' does not exist"):
        al.assign("default/g", svc("g", ann={"metallb.io/address-pool": "nope"}), None)
    al.assign("default/h", svc("h"), None)
    with pytest.raises(pools.AllocationError, match="no available IPs"):
        al.assign("default/i", svc("i"), None)
    assert al.counts(al.pools["low"]) == (2, 0)


def test_pool_counters_as_metallbs_metrics_and_ipv6_ranges_never_walked() -> None:
    """MetalLB v0.14's pool counters are Prometheus gauges (its IPAddressPool status is empty); a huge IPv6 range is
    counted and skipped arithmetically (walking a /64 address by address never ends)."""
    from kwire.metallb.metrics import Metrics

    big = pool("big", "10.0.0.0/16", "fd00::/64", avoidBuggyIPs=True)
    assert big.size() == 65536 - 2 * 256
    al = pools.Allocator(pools={"big": big, "v6": pool("v6", "fd01::/64")})
    assert str(al.assign("default/a", svc("a"), None).ips[0]) == "10.0.0.1"
    with pytest.raises(pools.AllocationError, match="no available IPs"):
        al.assign("default/b", svc("b", ann={"metallb.io/address-pool": "v6"}), None)
    m = Metrics()
    m.set_pools({name: al.counts(p) for name, p in al.pools.items()})
    text = m.exposition().decode()
    assert 'metallb_allocator_addresses_in_use_total{pool="big"} 1.0' in text
    assert 'metallb_allocator_addresses_total{pool="big"} 65024.0' in text
    m.set_pools({"v6": (0, 0)})  # pool "big" deleted: its series go
    text = m.exposition().decode()
    assert 'pool="big"' not in text and 'metallb_allocator_addresses_total{pool="v6"} 0.0' in text
    m.responses.inc("10.0.0.1")
    m.responses.inc("10.0.0.1")
    text = m.exposition().decode()
    assert "# TYPE metallb_layer2_responses_sent untyped" in text  # upstream's name, no _total added
    assert 'metallb_layer2_responses_sent{ip="10.0.0.1"} 2.0' in text


def test_sharing_rules() -> None:
    al = pools.Allocator(pools={"p": pool("p", "10.0.0.1-10.0.0.2")})
    share = {"metallb.io/allow-shared-ip": "k"}
    a = al.assign("default/a", svc("a", ann=share, ports=[80], loadBalancerIP="10.0.0.1"), None)
    b = al.assign("default/b", svc("b", ann=share, ports=[443], loadBalancerIP="10.0.0.1"), None)
    assert a.ips == b.ips
    with pytest.raises(pools.AllocationError, match="port 80/TCP is already in use"):
        al.assign("default/c", svc("c", ann=share, ports=[80], loadBalancerIP="10.0.0.1"), None)
    with pytest.raises(pools.AllocationError, match="sharing key"):
        al.assign("default/d", svc("d", ports=[8080], loadBalancerIP="10.0.0.1"), None)
    with pytest.raises(pools.AllocationError, match="externalTrafficPolicy"):
        al.assign(
            "default/e", svc("e", ann=share, ports=[81], loadBalancerIP="10.0.0.1", externalTrafficPolicy="Local"), None
        )
    auto = al.assign("default/f", svc("f", ann=share, ports=[22]), None)
    assert str(auto.ips[0]) == "10.0.0.1"  # the first address held by a compatible sharer
    assert al.still_valid("default/a", svc("a", ann=share, ports=[80], loadBalancerIP="10.0.0.1"), None)


def test_service_allocation_namespaces_and_selectors() -> None:
    p = pool(
        "team",
        "10.0.0.0/29",
        serviceAllocation={
            "namespaces": ["shop"],
            "namespaceSelectors": [{"matchLabels": {"team": "x"}}],
            "serviceSelectors": [{"matchLabels": {"expose": "yes"}}],
        },
    )
    assert p.allows(svc("a", ns="shop", labels={"expose": "yes"}), {})
    assert p.allows(svc("a", ns="other", labels={"expose": "yes"}), {"team": "x"})
    assert not p.allows(svc("a", ns="other", labels={"expose": "yes"}), {})
    assert not p.allows(svc("a", ns="shop"), {})


def _slice(*eps: tuple[str, bool]) -> Obj:
    return {"endpoints": [{"nodeName": n, "conditions": {"ready": r}} for n, r in eps]}


def test_leader_is_first_by_sha256_among_eligible_nodes() -> None:
    nodes = {n: {"metadata": {"name": n, "labels": {"zone": n[-1]}}} for n in ("node1", "node2", "node3")}
    adv = [{"spec": {"ipAddressPools": ["p"]}}]
    ip = "192.168.77.100"
    order = sorted(nodes, key=lambda n: hashlib.sha256(f"{n}#{ip}".encode()).digest())
    common: Any = {"pool": "p", "pool_labels": {}, "nodes": nodes, "interface": "eth0"}
    live = set(nodes)
    cands = election.candidates(svc("a"), advertisements=adv, live=live, slices=[_slice(("node1", True))], **common)
    assert election.leader(ip, cands) == order[0]
    assert (
        election.candidates(svc("a"), advertisements=adv, live=live, slices=[_slice(("node1", False))], **common)
        == set()
    )
    local = svc("a", externalTrafficPolicy="Local")
    assert election.candidates(local, advertisements=adv, live=live, slices=[_slice(("node2", True))], **common) == {
        "node2"
    }
    sel = [{"spec": {"ipAddressPools": ["p"], "nodeSelectors": [{"matchLabels": {"zone": "3"}}]}}]
    assert election.candidates(svc("a"), advertisements=sel, live=live, slices=[_slice(("node1", True))], **common) == {
        "node3"
    }
    other_pool = [{"spec": {"ipAddressPools": ["q"]}}]
    assert (
        election.candidates(svc("a"), advertisements=other_pool, live=live, slices=[_slice(("node1", True))], **common)
        == set()
    )
    nodes["node1"]["metadata"]["labels"][election.EXCLUDE_LABEL] = ""
    got = election.candidates(
        svc("a"), advertisements=adv, live={"node1", "node2"}, slices=[_slice(("node1", True))], **common
    )
    assert got == {"node2"}


def test_arp_request_parsed_and_reply_framed() -> None:
    mac, asker = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    req = arp._frame(
        arp.BROADCAST, asker, 1, asker, socket.inet_aton("192.168.77.2"), b"\0" * 6, socket.inet_aton("192.168.77.100")
    )
    assert arp.parse_request(req) == (asker, "192.168.77.2", "192.168.77.100")
    reply = arp._frame(asker, mac, 2, mac, socket.inet_aton("192.168.77.100"), asker, socket.inet_aton("192.168.77.2"))
    assert arp.parse_request(reply) is None  # a reply is not a request
    assert len(req) == 42 and ipaddress.ip_address(socket.inet_ntoa(reply[28:32])) == ipaddress.ip_address(
        "192.168.77.100"
    )


def test_webhook_refuses_overlapping_and_malformed_pools_and_unknown_pool_references() -> None:
    existing = {"metadata": {"name": "first"}, "spec": {"addresses": ["192.168.77.100-192.168.77.120"]}}
    overlapping = {"metadata": {"name": "second"}, "spec": {"addresses": ["192.168.77.0/25"]}}
    why = webhook.review_pool(overlapping, [existing])
    assert why == (
        "CIDR 192.168.77.0-192.168.77.127 in pool second overlaps with already defined CIDR "
        "192.168.77.100-192.168.77.120 (pool first)"
    )
    assert webhook.review_pool(existing, [existing]) == ""  # an update of the same pool
    bad = {"metadata": {"name": "bad"}, "spec": {"addresses": ["192.168.77.9-192.168.77.1"]}}
    assert "is after end" in webhook.review_pool(bad, [])
    adv = {"metadata": {"name": "l2"}, "spec": {"ipAddressPools": ["first", "nope"]}}
    assert "'nope'" in webhook.review_l2(adv, {"first"})
    review = {"request": {"uid": "u-1"}}
    assert webhook.admission_response(review, "no")["response"] == {
        "uid": "u-1",
        "allowed": False,
        "status": {"code": 403, "message": "no", "reason": "Forbidden"},
    }


def test_webhook_certificate_names_the_service_and_is_signed_by_its_ca() -> None:
    certs = webhook.make_certs("metallb-system")
    assert webhook._valid_for(certs, "metallb-system") and not webhook._valid_for(certs, "other")
    ca = x509.load_pem_x509_certificate(certs["ca.crt"])
    cert = x509.load_pem_x509_certificate(certs["tls.crt"])
    cert.verify_directly_issued_by(ca)


def test_heartbeats_authenticated_with_the_memberlist_key_and_replays_dropped() -> None:
    a = members.Members("node1", dict, key=b"k1")
    b = members.Members("node2", dict, key=b"k1")
    msg = a.message()
    assert b.sender(msg) == "node1"
    assert b.sender(msg) is None  # the same heartbeat again: a replay
    assert b.sender(a.message()) == "node1"
    forged = members.Members("node1", dict, key=b"other").message()
    assert b.sender(forged) is None
    assert b.sender(msg.replace(b"node1", b"node3")) is None  # a changed name breaks the MAC
    plain = members.Members("node2", dict)
    assert plain.sender(members.Members("node1", dict).message()) == "node1"
    assert "node1" not in b.alive() and b.alive() == {"node2"}
