"""Cluster records against the Kubernetes DNS specification's examples (kubernetes/dns docs/specification.md,
schema 1.1.0) and CoreDNS's kubernetes plugin (`pods insecure`, `fallthrough in-addr.arpa ip6.arpa`): every
record type, NXDOMAIN vs NODATA with the zone's SOA, case, TTL, readiness, updates."""

from __future__ import annotations

import dns.flags
import dns.rcode
import dns.rdatatype
import dns.reversename

from kwire.dns.records import ClusterRecords
from kwire.dns.wire import PTR, A, labels_of
from tests.unit.dns_helpers import answers, ask, eps, handler, namespace, records, rrset_texts, svc

# The spec's examples: a ClusterIP Service, a headless one with pets, an ExternalName.
KUBERNETES = svc("kubernetes", ip="10.3.0.1", ports=[("https", 443, "TCP")])
HEADLESS = svc("headless", headless=True, ports=[("https", 443, "TCP")])
HEADLESS_EPS = eps(
    "headless",
    [
        ("10.3.0.100", "my-pet", True),
        ("10.3.0.101", "my-pet-2", True),
        ("10.3.0.102", None, True),
        ("10.3.0.103", None, False),  # not ready: not published
    ],
    ports=[("https", 443, "TCP")],
)
FOO = svc("foo", external="www.example.com")
SPEC = (KUBERNETES, HEADLESS, HEADLESS_EPS, FOO)
FWD = {("www.example.com.", "A"): ["192.0.2.53"]}


def test_schema_version_txt() -> None:
    m = ask(handler(*SPEC), "dns-version.cluster.local.", "TXT")
    assert m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA
    assert rrset_texts(m.answer) == ['dns-version.cluster.local. 28800 IN TXT "1.1.0"']


def test_clusterip_a_srv_ptr() -> None:
    h = handler(*SPEC)
    m = ask(h, "kubernetes.default.svc.cluster.local.")
    assert rrset_texts(m.answer) == ["kubernetes.default.svc.cluster.local. 5 IN A 10.3.0.1"]
    m = ask(h, "_https._tcp.kubernetes.default.svc.cluster.local.", "SRV")
    assert rrset_texts(m.answer) == [
        "_https._tcp.kubernetes.default.svc.cluster.local. 5 IN SRV 0 100 443 kubernetes.default.svc.cluster.local."
    ]
    # The additional section has the target's A record.
    assert rrset_texts(m.additional) == ["kubernetes.default.svc.cluster.local. 5 IN A 10.3.0.1"]
    m = ask(h, "1.0.3.10.in-addr.arpa.", "PTR")
    assert rrset_texts(m.answer) == ["1.0.3.10.in-addr.arpa. 5 IN PTR kubernetes.default.svc.cluster.local."]
    # No AAAA for an IPv4 Service: the name exists (NODATA + SOA), it is not NXDOMAIN.
    m = ask(h, "kubernetes.default.svc.cluster.local.", "AAAA")
    assert m.rcode() == dns.rcode.NOERROR and not m.answer
    assert m.authority[0].rdtype == dns.rdatatype.SOA


def test_headless_a_hostnames_srv_ptr() -> None:
    h = handler(*SPEC)
    m = ask(h, "headless.default.svc.cluster.local.")
    assert sorted(answers(m)) == ["10.3.0.100", "10.3.0.101", "10.3.0.102"]
    m = ask(h, "my-pet.headless.default.svc.cluster.local.")
    assert rrset_texts(m.answer) == ["my-pet.headless.default.svc.cluster.local. 5 IN A 10.3.0.100"]
    m = ask(h, "_https._tcp.headless.default.svc.cluster.local.", "SRV")
    assert sorted(answers(m)) == [
        "0 33 443 10-3-0-102.headless.default.svc.cluster.local.",
        "0 33 443 my-pet-2.headless.default.svc.cluster.local.",
        "0 33 443 my-pet.headless.default.svc.cluster.local.",
    ]
    assert sorted(rrset_texts(m.additional)) == [
        "10-3-0-102.headless.default.svc.cluster.local. 5 IN A 10.3.0.102",
        "my-pet-2.headless.default.svc.cluster.local. 5 IN A 10.3.0.101",
        "my-pet.headless.default.svc.cluster.local. 5 IN A 10.3.0.100",
    ]
    # An endpoint without a hostname is addressable by its dashed IP (the SRV targets resolve).
    m = ask(h, "10-3-0-102.headless.default.svc.cluster.local.")
    assert answers(m) == ["10.3.0.102"]
    m = ask(h, "100.0.3.10.in-addr.arpa.", "PTR")
    assert rrset_texts(m.answer) == ["100.0.3.10.in-addr.arpa. 5 IN PTR my-pet.headless.default.svc.cluster.local."]
    # The not-ready endpoint is in none of them.
    assert ask(h, "10-3-0-103.headless.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    m = ask(h, "103.0.3.10.in-addr.arpa.", "PTR")  # falls through to the forwarder: NXDOMAIN there
    assert m.rcode() == dns.rcode.NXDOMAIN
    assert h.forwarder.calls[-1][1] == "103.0.3.10.in-addr.arpa."  # type: ignore[attr-defined]


def test_headless_without_ready_endpoints_is_nxdomain_and_publish_not_ready() -> None:
    h = handler(svc("h", headless=True), eps("h", [("10.42.0.5", None, False)]))
    assert ask(h, "h.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    h = handler(svc("h", headless=True, publish=True), eps("h", [("10.42.0.5", None, False)]))
    assert answers(ask(h, "h.default.svc.cluster.local.")) == ["10.42.0.5"]


def test_externalname_cname_and_chase() -> None:
    h = handler(*SPEC, table=FWD)
    m = ask(h, "foo.default.svc.cluster.local.", "CNAME")
    assert rrset_texts(m.answer) == ["foo.default.svc.cluster.local. 5 IN CNAME www.example.com."]
    m = ask(h, "foo.default.svc.cluster.local.")
    assert rrset_texts(m.answer) == [
        "foo.default.svc.cluster.local. 5 IN CNAME www.example.com.",
        "www.example.com. 30 IN A 192.0.2.53",
    ]
    # In-zone targets are resolved locally.
    h = handler(KUBERNETES, svc("alias", external="kubernetes.default.svc.cluster.local"))
    m = ask(h, "alias.default.svc.cluster.local.")
    assert rrset_texts(m.answer) == [
        "alias.default.svc.cluster.local. 5 IN CNAME kubernetes.default.svc.cluster.local.",
        "kubernetes.default.svc.cluster.local. 5 IN A 10.3.0.1",
    ]
    # Endpoint and port names under an ExternalName do not exist.
    assert ask(h, "x.alias.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN


def test_pods_insecure() -> None:
    h = handler()
    assert rrset_texts(ask(h, "1-2-3-4.default.pod.cluster.local.").answer) == [
        "1-2-3-4.default.pod.cluster.local. 5 IN A 1.2.3.4"
    ]
    assert answers(ask(h, "fd00--1.default.pod.cluster.local.", "AAAA")) == ["fd00::1"]
    m = ask(h, "1-2-3-4.default.pod.cluster.local.", "AAAA")
    assert m.rcode() == dns.rcode.NOERROR and not m.answer
    assert ask(h, "1-2-3.default.pod.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert ask(h, "1-2-3-400.default.pod.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert ask(h, "1-2-3-4.nosuchns.pod.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert ask(h, "x.1-2-3-4.default.pod.cluster.local.").rcode() == dns.rcode.NXDOMAIN


def test_nxdomain_vs_nodata_with_soa() -> None:
    h = handler(*SPEC)
    nodata = [
        ("cluster.local.", "A"),
        ("svc.cluster.local.", "A"),
        ("pod.cluster.local.", "A"),
        ("default.svc.cluster.local.", "A"),
        ("default.pod.cluster.local.", "A"),
        ("dns.cluster.local.", "A"),
        ("dns-version.cluster.local.", "A"),
        ("_tcp.kubernetes.default.svc.cluster.local.", "A"),
        ("_https._tcp.kubernetes.default.svc.cluster.local.", "A"),
        ("kubernetes.default.svc.cluster.local.", "MX"),
        ("my-pet.headless.default.svc.cluster.local.", "TXT"),
    ]
    nxdomain = [
        ("nosuch.default.svc.cluster.local.", "A"),
        ("nosuchns.svc.cluster.local.", "A"),
        ("nosuch.cluster.local.", "A"),
        ("a.b.c.d.e.f.svc.cluster.local.", "A"),
        ("_http._tcp.kubernetes.default.svc.cluster.local.", "SRV"),
        ("_udp.kubernetes.default.svc.cluster.local.", "A"),
        ("nosuch.kubernetes.default.svc.cluster.local.", "A"),
        ("x._https._tcp.kubernetes.default.svc.cluster.local.", "SRV"),
    ]
    for name, t in nodata + nxdomain:
        m = ask(h, name, t)
        want = dns.rcode.NOERROR if (name, t) in nodata else dns.rcode.NXDOMAIN
        assert m.rcode() == want, (name, t, m)
        assert not m.answer, (name, t)
        assert m.flags & dns.flags.AA
        soa = rrset_texts(m.authority)
        assert len(soa) == 1 and soa[0].startswith(
            "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
        ), (name, soa)
        assert soa[0].endswith(" 7200 1800 86400 5")


def test_apex_soa_ns_and_ns_address() -> None:
    dns_svc = svc("kube-dns", "kube-system", ip="10.43.0.10", ports=[("dns", 53, "UDP")])
    h = handler(dns_svc)
    m = ask(h, "cluster.local.", "SOA")
    assert rrset_texts(m.answer)[0].startswith("cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster")
    m = ask(h, "cluster.local.", "NS")
    assert rrset_texts(m.answer) == ["cluster.local. 5 IN NS ns.dns.cluster.local."]
    assert rrset_texts(m.additional) == ["ns.dns.cluster.local. 5 IN A 10.43.0.10"]
    assert answers(ask(h, "ns.dns.cluster.local.")) == ["10.43.0.10"]


def test_soa_serial_changes_with_updates() -> None:
    r = records(KUBERNETES)
    s1 = r.soa().rdata.serial  # type: ignore[union-attr]
    r.set_service(svc("other", ip="10.43.0.99"))
    s2 = r.soa().rdata.serial  # type: ignore[union-attr]
    assert s2 > s1


def test_case_insensitive_and_question_case_kept() -> None:
    h = handler(*SPEC)
    m = ask(h, "KuBeRnEtEs.DEFAULT.svc.Cluster.Local.")
    assert rrset_texts(m.answer) == ["KuBeRnEtEs.DEFAULT.svc.Cluster.Local. 5 IN A 10.3.0.1"]
    assert m.question[0].name.to_text() == "KuBeRnEtEs.DEFAULT.svc.Cluster.Local."
    # Once cached, a lower-case asker gets its own case back (the exact-bytes path) and so does an upper one.
    m = ask(h, "kubernetes.default.svc.cluster.local.")
    assert rrset_texts(m.answer) == ["kubernetes.default.svc.cluster.local. 5 IN A 10.3.0.1"]
    m = ask(h, "KUBERNETES.default.svc.cluster.local.")
    assert rrset_texts(m.answer) == ["KUBERNETES.default.svc.cluster.local. 5 IN A 10.3.0.1"]
    m = ask(h, "100.0.3.10.IN-ADDR.ARPA.", "PTR")
    assert answers(m) == ["my-pet.headless.default.svc.cluster.local."]


def test_ttl_is_configurable() -> None:
    r = ClusterRecords("cluster.local", ttl=30)
    r.set_namespace(namespace("default"))
    r.set_service(KUBERNETES)
    r.set_synced()
    ans = r.lookup(labels_of("kubernetes.default.svc.cluster.local"), A)
    assert ans is not None and ans.answer[0].ttl == 30
    assert ans is not None and r.lookup(labels_of("nosuch.default.svc.cluster.local"), A).authority[0].ttl == 30  # type: ignore[union-attr]


def test_other_cluster_domain() -> None:
    r = ClusterRecords("k8s.example", ttl=5)
    r.set_namespace(namespace("default"))
    r.set_service(KUBERNETES)
    r.set_synced()
    assert r.lookup(labels_of("kubernetes.default.svc.k8s.example"), A).answer  # type: ignore[union-attr]
    assert r.lookup(labels_of("kubernetes.default.svc.cluster.local"), A) is None  # not ours: forwarded


def test_updates_and_deletes_are_followed() -> None:
    r = records(HEADLESS, HEADLESS_EPS)
    name = labels_of("headless.default.svc.cluster.local")
    assert len(r.lookup(name, A).answer) == 3  # type: ignore[union-attr]
    changed = eps("headless", [("10.3.0.100", "my-pet", False), ("10.3.0.101", "my-pet-2", True)], ports=[])
    r.set_slice(changed)
    assert [rr.rdata for rr in r.lookup(name, A).answer] == [bytes([10, 3, 0, 101])]  # type: ignore[union-attr]
    # PTR follows readiness.
    assert r.lookup(labels_of("100.0.3.10.in-addr.arpa"), PTR) is None
    r.delete_slice(changed)
    assert r.lookup(name, A).rcode == 3  # type: ignore[union-attr]
    r.delete_service(HEADLESS)
    assert r.lookup(name, A).rcode == 3  # type: ignore[union-attr]
    r.set_service(KUBERNETES)
    r.delete_namespace(namespace("default"))
    # The namespace is gone but its Service object is still in the cache: still answered.
    assert r.lookup(labels_of("kubernetes.default.svc.cluster.local"), A).answer  # type: ignore[union-attr]
    assert r.lookup(labels_of("default.svc.cluster.local"), A).rcode == 3  # type: ignore[union-attr]


def test_slices_merge_and_dual_ports() -> None:
    s = svc("db", headless=True, ports=[("pg", 5432, "TCP"), ("metrics", 9187, "TCP")])
    e1 = eps("db", [("10.42.0.5", "db-0", True)], ports=[("pg", 5432, "TCP")], name="db-1")
    e2 = eps("db", [("10.42.0.5", "db-0", True), ("10.42.1.7", "db-1", True)], ports=[("metrics", 9187, "TCP")],
             name="db-2")  # fmt: skip
    h = handler(s, e1, e2)
    assert sorted(answers(ask(h, "db.default.svc.cluster.local."))) == ["10.42.0.5", "10.42.1.7"]
    m = ask(h, "_metrics._tcp.db.default.svc.cluster.local.", "SRV")
    assert sorted(answers(m)) == [
        "0 50 9187 db-0.db.default.svc.cluster.local.",
        "0 50 9187 db-1.db.default.svc.cluster.local.",
    ]
    m = ask(h, "_pg._tcp.db.default.svc.cluster.local.", "SRV")
    assert answers(m) == ["0 100 5432 db-0.db.default.svc.cluster.local."]
    # SRV at the Service's own name: every (endpoint, port).
    assert len(ask(h, "db.default.svc.cluster.local.", "SRV").answer[0]) == 3


def test_ipv6_records_and_ip6_arpa_ptr() -> None:
    s = svc("v6", ip="fd00:43::10")
    e = eps("h6", [("fd00:42::5", "pet", True)], family="IPv6")
    h = handler(s, svc("h6", headless=True), e)
    assert answers(ask(h, "v6.default.svc.cluster.local.", "AAAA")) == ["fd00:43::10"]
    m = ask(h, "v6.default.svc.cluster.local.", "A")
    assert m.rcode() == dns.rcode.NOERROR and not m.answer
    rev = dns.reversename.from_address("fd00:43::10").to_text()
    assert answers(ask(h, rev, "PTR")) == ["v6.default.svc.cluster.local."]
    rev = dns.reversename.from_address("fd00:42::5").to_text()
    assert answers(ask(h, rev, "PTR")) == ["pet.h6.default.svc.cluster.local."]
    assert answers(ask(h, "fd00-42--5.h6.default.svc.cluster.local.", "AAAA")) == []  # hostname wins
    assert answers(ask(h, "pet.h6.default.svc.cluster.local.", "AAAA")) == ["fd00:42::5"]


def test_unsynced_zone_is_servfail_never_nxdomain() -> None:
    h = handler(*SPEC, synced=False)
    for name in (
        "kubernetes.default.svc.cluster.local.",
        "nosuch.default.svc.cluster.local.",
        "1.0.3.10.in-addr.arpa.",
    ):
        m = ask(h, name, "PTR" if "arpa" in name else "A")
        assert m.rcode() == dns.rcode.SERVFAIL, name
    h.records.set_synced(True)
    assert ask(h, "nosuch.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert answers(ask(h, "kubernetes.default.svc.cluster.local.")) == ["10.3.0.1"]


def test_malformed_objects_are_skipped() -> None:
    r = ClusterRecords()
    r.set_service({"metadata": {}})
    r.set_service({"metadata": {"name": "x", "namespace": "default"}, "spec": {"clusterIP": "bogus", "ports": [1]}})
    r.set_slice({"metadata": {"name": "s", "namespace": "default"}, "addressType": "FQDN", "endpoints": [{}]})
    r.set_slice(
        {
            "metadata": {"name": "t", "namespace": "default", "labels": {"kubernetes.io/service-name": "x"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["nope", "10.1.1.1"]}, "junk"],
            "ports": ["junk", {"port": "80"}],
        }
    )
    r.set_synced()
    ans = r.lookup(labels_of("x.default.svc.cluster.local"), A)
    assert ans is not None and ans.rcode == 0 and not ans.answer
    ans = r.lookup(labels_of("10-1-1-1.x.default.svc.cluster.local"), A)
    assert ans is not None and ans.answer
