"""The query pipeline at the wire level: loadbalance, truncation and TCP, EDNS, FORMERR/NOTIMP/BADVERS, the
fast-path keys, NodeHosts, coredns-custom (hosts, forward, rewrite), forwarding with the cache, upstream
checks, and the metrics' names."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kwire.dns.custom import parse_custom
from kwire.dns.forward import Upstream, parse_upstream, read_resolv_conf, usable_upstreams
from kwire.dns.metrics import DnsCollector
from kwire.dns.wire import fast_key
from tests.unit.dns_helpers import answers, ask, eps, handler, raw, rrset_texts, svc

FWD = {
    ("example.com.", "A"): ["93.184.215.14"],
    ("example.com.", "AAAA"): [],
    ("www.example.com.", "A"): ["192.0.2.80"],
    ("stub.corp.", "A"): ["10.9.9.9"],
}


def headless(n: int) -> tuple[dict, dict]:  # type: ignore[type-arg]
    return svc("many", headless=True), eps("many", [(f"10.42.{i // 250}.{i % 250 + 1}", None, True) for i in range(n)])


def test_loadbalance_rotates_address_records() -> None:
    h = handler(*headless(3))
    firsts = []
    for _ in range(6):
        m = ask(h, "many.default.svc.cluster.local.")
        got = answers(m)
        assert sorted(got) == ["10.42.0.1", "10.42.0.2", "10.42.0.3"]
        firsts.append(got[0])
    assert firsts == ["10.42.0.1", "10.42.0.2", "10.42.0.3"] * 2
    # Single-record answers are left alone; CNAMEs stay in front.
    h = handler(svc("alias", external="www.example.com"), table={("www.example.com.", "A"): ["192.0.2.1", "192.0.2.2"]})
    seen = set()
    for _ in range(4):
        m = ask(h, "alias.default.svc.cluster.local.")
        assert m.answer[0].rdtype == dns.rdatatype.CNAME
        seen.add(answers(m)[1])
    assert seen == {"192.0.2.1", "192.0.2.2"}


def test_truncation_edns_and_tcp() -> None:
    h = handler(*headless(100))
    m = ask(h, "many.default.svc.cluster.local.")  # no EDNS: 512 bytes
    assert m.flags & dns.flags.TC and not m.answer and m.edns < 0
    m = ask(h, "many.default.svc.cluster.local.", edns=0, payload=1232)
    assert m.flags & dns.flags.TC and not m.answer and m.edns == 0
    m = ask(h, "many.default.svc.cluster.local.", edns=0, payload=4096)
    assert not m.flags & dns.flags.TC and len(answers(m)) == 100
    assert m.edns == 0 and m.payload == 1232  # our advertised size
    m = ask(h, "many.default.svc.cluster.local.", tcp=True)
    assert not m.flags & dns.flags.TC and len(answers(m)) == 100
    # The truncated answer is cached too: the second one is identical but for the ID.
    q = dns.message.make_query("many.default.svc.cluster.local.", "A")
    a, b = raw(h, q.to_wire()), raw(h, q.to_wire())
    assert a is not None and b is not None and a[2:] == b[2:]


def test_edns_opt_echo_do_and_badvers() -> None:
    h = handler(svc("web"))
    m = ask(h, "web.default.svc.cluster.local.", edns=0)
    assert m.edns == 0 and answers(m) == ["10.43.0.20"]
    q = dns.message.make_query("web.default.svc.cluster.local.", "A", want_dnssec=True)
    m = dns.message.from_wire(raw(h, q.to_wire()))  # type: ignore[arg-type]
    assert m.ednsflags & dns.flags.DO
    # EDNS options (a cookie) are accepted and not echoed.
    q = dns.message.make_query(
        "web.default.svc.cluster.local.", "A", use_edns=0, options=[dns.edns.GenericOption(10, b"12345678")]
    )
    m = dns.message.from_wire(raw(h, q.to_wire()))  # type: ignore[arg-type]
    assert answers(m) == ["10.43.0.20"] and not m.options
    q = dns.message.make_query("web.default.svc.cluster.local.", "A", use_edns=1)
    m = dns.message.from_wire(raw(h, q.to_wire()))  # type: ignore[arg-type]
    assert m.rcode() == dns.rcode.BADVERS and m.edns == 0


def _hdr(qid: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x03web\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01"


def test_formerr_notimp_and_drops() -> None:
    h = handler(svc("web"))
    for bad in (
        _hdr(7, 0x0100, qd=2) + QUESTION + QUESTION,  # two questions
        _hdr(7, 0x0100, qd=0),  # none
        _hdr(7, 0x0100) + QUESTION[:-3],  # cut short
        _hdr(7, 0x0100) + b"\xc0\x0c\x00\x01\x00\x01",  # pointer in the question
        _hdr(7, 0x0100) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label type 01
        _hdr(7, 0x0100, ar=1) + QUESTION + b"\x00\x00\x29\x10\x00",  # OPT cut short
        _hdr(7, 0x0100, ar=2) + QUESTION + (b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00") * 2,  # two OPTs
        _hdr(7, 0x0100, an=1) + QUESTION + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00",  # OPT in answer
        _hdr(7, 0x0100, ar=3) + QUESTION,  # too many records
    ):
        out = raw(h, bad)
        assert out is not None
        m = dns.message.from_wire(out)
        assert m.id == 7 and m.rcode() == dns.rcode.FORMERR and m.flags & dns.flags.QR and m.flags & dns.flags.RD
    for opcode in (1, 2, 4, 5):
        out = raw(h, _hdr(9, opcode << 11) + QUESTION)
        assert out is not None
        m = dns.message.from_wire(out)
        assert m.rcode() == dns.rcode.NOTIMP and m.opcode() == opcode and m.id == 9
    assert raw(h, b"\x00\x01\x02") is None  # no header: dropped
    assert raw(h, _hdr(7, 0x8180) + QUESTION) is None  # a response: dropped (no reflection loops)
    assert answers(dns.message.from_wire(raw(h, _hdr(7, 0x0100) + QUESTION))) == ["10.43.0.20"]  # type: ignore[arg-type]


def test_fast_key_shapes() -> None:
    plain = _hdr(1, 0x0100) + QUESTION
    fk = fast_key(plain)
    assert fk is not None and fk[0] == plain[2:]
    opt = _hdr(1, 0x0100, ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    fk = fast_key(opt)
    assert fk is not None and fk[0] == opt[2:]
    with_cookie = _hdr(1, 0x0100, ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0c" + bytes(12)
    fk2 = fast_key(with_cookie)
    assert fk2 is not None and fk2[0] == opt[2:]  # options are not part of the key
    upper = _hdr(1, 0x0100) + QUESTION.replace(b"web", b"WEB")
    fk = fast_key(upper)
    assert fk is not None and fk[0] == plain[2:]
    # qtype 65 (HTTPS) and 97 differ although 'A' and 'a' are one letter apart.
    t65 = _hdr(1, 0x0100) + QUESTION[:-4] + b"\x00\x41\x00\x01"
    t97 = _hdr(1, 0x0100) + QUESTION[:-4] + b"\x00\x61\x00\x01"
    assert fast_key(t65)[0] != fast_key(t97)[0]  # type: ignore[index]
    assert fast_key(_hdr(1, 0x2800) + QUESTION) is None  # UPDATE
    assert fast_key(_hdr(1, 0x0100, ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x05") is None


def test_node_hosts_and_fallthrough() -> None:
    h = handler(table=FWD)
    h.set_node_hosts("# nodes\n192.0.2.11 server-1\n192.0.2.12 agent-1 agent-1.lab\nbogus line\n")
    m = ask(h, "server-1.")
    assert rrset_texts(m.answer) == ["server-1. 60 IN A 192.0.2.11"] and m.flags & dns.flags.AA
    assert answers(ask(h, "AGENT-1.lab.")) == ["192.0.2.12"]
    m = ask(h, "server-1.", "AAAA")
    assert m.rcode() == dns.rcode.NOERROR and not m.answer  # the name exists: NODATA
    assert answers(ask(h, "12.2.0.192.in-addr.arpa.", "PTR")) == ["agent-1.", "agent-1.lab."]
    assert answers(ask(h, "example.com.")) == ["93.184.215.14"]  # everything else falls through
    h.set_node_hosts("")
    assert ask(h, "server-1.").rcode() == dns.rcode.NXDOMAIN  # reloaded: gone


def test_custom_hosts_forward_rewrite(caplog: pytest.LogCaptureFixture) -> None:
    h = handler(svc("web"), table=FWD)
    h.set_node_hosts("192.0.2.11 server-1\n")
    with caplog.at_level(logging.WARNING):
        h.set_custom(
            {
                "hosts": "198.51.100.7 registry.local\n198.51.100.8 server-1\n300.1.1.1 broken\n",
                "forward": "corp 192.0.2.200 192.0.2.201:5353\nbad-line\nother 127.0.0.1\nx.corp nonsense\n",
                "rewrite": "www.corp web.default.svc.cluster.local\napi.example.com www.example.com\nonly-one\n",
                "Corefile.override": "log",
            }
        )
    assert "300.1.1.1" in caplog.text and "bad-line" in caplog.text and "only-one" in caplog.text
    assert "refusing upstream 127.0.0.1:53" in caplog.text
    assert h.custom.invalid == 5
    assert answers(ask(h, "registry.local.")) == ["198.51.100.7"]
    assert answers(ask(h, "server-1.")) == ["198.51.100.8"]  # custom hosts come before NodeHosts
    # Stub zone: the longest zone wins, forwarded to its upstreams (not resolv.conf's).
    m = ask(h, "stub.corp.")
    assert answers(m) == ["10.9.9.9"]
    assert h.forwarder.calls[-1][:2] == ("192.0.2.200:53", "stub.corp.")  # type: ignore[attr-defined]
    # Rewrites: the answer carries the asked name.
    m = ask(h, "www.corp.")
    assert rrset_texts(m.answer) == ["www.corp. 5 IN A 10.43.0.20"]
    m = ask(h, "API.example.com.")
    assert rrset_texts(m.answer) == ["API.example.com. 30 IN A 192.0.2.80"]
    # Re-read on change, cached answers dropped.
    h.set_custom({"hosts": "198.51.100.9 registry.local\n"})
    assert answers(ask(h, "registry.local.")) == ["198.51.100.9"]
    assert ask(h, "www.corp.").rcode() == dns.rcode.NXDOMAIN
    h.set_custom(None)
    assert ask(h, "registry.local.").rcode() == dns.rcode.NXDOMAIN


def test_custom_format_parsing() -> None:
    cfg = parse_custom({"forward": "a.b [fd00::1]:53 fd00::2\nc 192.0.2.1\nc 192.0.2.2\n", "rewrite": "x y\nx z\n"})
    assert cfg.forward[(b"a", b"b")] == [Upstream("fd00::1"), Upstream("fd00::2")]
    assert cfg.forward_zone((b"q", b"a", b"b")) == ((b"a", b"b"), [Upstream("fd00::1"), Upstream("fd00::2")])
    assert cfg.forward_zone((b"b",)) is None
    assert cfg.invalid == 2  # duplicate zone, duplicate rewrite
    assert parse_upstream("192.0.2.1:5353") == Upstream("192.0.2.1", 5353)
    for bad in ("x", "1.2.3.4:0", "[fd00::1", "[fd00::1]x", "1.2.3.4:99999"):
        with pytest.raises(ValueError):
            parse_upstream(bad)


def test_forward_cache_ttl_cap_negative_and_expiry() -> None:
    h = handler(table=FWD)
    fwd = h.forwarder
    m = ask(h, "example.com.")
    assert rrset_texts(m.answer) == ["example.com. 30 IN A 93.184.215.14"]  # 300 capped at `cache 30`
    assert not m.flags & dns.flags.AA and m.flags & dns.flags.RA
    ask(h, "EXAMPLE.com.")
    ask(h, "example.com.", edns=0)
    assert len(fwd.calls) == 1  # type: ignore[attr-defined]
    m = ask(h, "nosuch.example.")
    assert m.rcode() == dns.rcode.NXDOMAIN and rrset_texts(m.authority)[0].startswith("example. 30 IN SOA")
    ask(h, "nosuch.example.")
    assert len(fwd.calls) == 2  # type: ignore[attr-defined]
    m = ask(h, "example.com.", "AAAA")  # NODATA: cached as a denial
    assert m.rcode() == dns.rcode.NOERROR and not m.answer
    assert h.cache_entries() == {"success": 1, "denial": 2}
    # TTLs count down in cached answers; an expired entry is fetched again.
    for item in h.fcache.values():
        item.stored -= 12
    for e in h.fast_udp.values():
        e.exp = 1.0
    m = ask(h, "example.com.")
    assert rrset_texts(m.answer) == ["example.com. 18 IN A 93.184.215.14"]
    for item in h.fcache.values():
        item.stored -= 60
    for e in h.fast_udp.values():
        e.exp = 1.0
    ask(h, "example.com.")
    assert len(fwd.calls) == 4  # type: ignore[attr-defined]
    hits = h.stats.cache_hits()
    assert hits["success"] >= 2 and hits["denial"] >= 1 and h.stats.cache_misses == 4


def test_forward_failure_is_servfail_and_not_cached() -> None:
    h = handler(table=FWD)
    h.forwarder.fail = True  # type: ignore[attr-defined]
    assert ask(h, "example.com.").rcode() == dns.rcode.SERVFAIL
    h.forwarder.fail = False  # type: ignore[attr-defined]
    assert answers(ask(h, "example.com.")) == ["93.184.215.14"]


def test_no_usable_upstream(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search default.svc\nnameserver 127.0.0.53\nnameserver ::1\nnameserver nope\noptions ndots:5\n")
    ups = read_resolv_conf(resolv)
    assert ups == [Upstream("127.0.0.53"), Upstream("::1")]
    with caplog.at_level(logging.ERROR):
        assert usable_upstreams(ups, str(resolv)) == []
    assert "refusing upstream 127.0.0.53:53" in caplog.text and "loopback" in caplog.text
    assert usable_upstreams(ups, str(resolv), allow_loopback=True) == ups
    h = handler(svc("web"), upstreams=[])
    with caplog.at_level(logging.ERROR):
        assert ask(h, "example.com.").rcode() == dns.rcode.SERVFAIL
    assert "no usable upstream" in caplog.text
    assert answers(ask(h, "web.default.svc.cluster.local.")) == ["10.43.0.20"]  # the cluster still answers
    assert read_resolv_conf(tmp_path / "missing") == []


def test_zone_transfers_refused() -> None:
    h = handler(svc("web"))
    for t in ("AXFR", "IXFR"):
        assert ask(h, "cluster.local.", t, tcp=True).rcode() == dns.rcode.REFUSED
    assert not h.fast_tcp


def test_classes() -> None:
    h = handler(svc("web"), table=FWD)
    q = dns.message.make_query("web.default.svc.cluster.local.", "A", rdclass="CH")
    assert dns.message.from_wire(raw(h, q.to_wire())).rcode() == dns.rcode.REFUSED  # type: ignore[arg-type]
    q = dns.message.make_query("web.default.svc.cluster.local.", "A", rdclass="ANY")
    assert answers(dns.message.from_wire(raw(h, q.to_wire()))) == ["10.43.0.20"]  # type: ignore[arg-type]


def test_fast_path_entries_are_invalidated_on_change() -> None:
    h = handler(svc("web"))
    assert answers(ask(h, "web.default.svc.cluster.local.")) == ["10.43.0.20"]
    assert h.fast_udp
    h.records.set_service(svc("web", ip="10.43.0.21"))
    assert not h.fast_udp
    assert answers(ask(h, "web.default.svc.cluster.local.")) == ["10.43.0.21"]


def test_metrics_names() -> None:
    h = handler(svc("web"), table=FWD)
    ask(h, "web.default.svc.cluster.local.")
    ask(h, "nosuch.default.svc.cluster.local.")
    ask(h, "example.com.")
    ask(h, "example.com.")
    h.forwarder.requests["192.0.2.53:53"] = 1
    reg = CollectorRegistry(auto_describe=False)
    reg.register(
        DnsCollector(
            h.stats,
            forward_requests=lambda: h.forwarder.requests,
            forward_responses=lambda: h.forwarder.responses,
            cache_entries=h.cache_entries,
            version="0.1.0",
        )
    )
    text = generate_latest(reg).decode()
    for needle in (
        'coredns_dns_requests_total{family="1",proto="udp",server="dns://:53",type="A",zone="."} 4.0',
        'coredns_dns_responses_total{plugin="kubernetes",rcode="NOERROR",server="dns://:53",zone="."} 1.0',
        'coredns_dns_responses_total{plugin="kubernetes",rcode="NXDOMAIN",server="dns://:53",zone="."} 1.0',
        'coredns_dns_responses_total{plugin="forward",rcode="NOERROR",server="dns://:53",zone="."} 1.0',
        'coredns_dns_responses_total{plugin="cache",rcode="NOERROR",server="dns://:53",zone="."} 1.0',
        'coredns_dns_request_duration_seconds_bucket{le="+Inf",server="dns://:53",type="A",zone="."} 4.0',
        'coredns_cache_hits_total{server="dns://:53",type="success"} 1.0',
        'coredns_cache_misses_total{server="dns://:53"} 1.0',
        'coredns_forward_requests_total{to="192.0.2.53:53"} 1.0',
        "coredns_build_info{",
        "coredns_cache_entries{",
        "coredns_panics_total 0.0",
    ):
        assert needle in text, needle


def test_upstream_order_round_robin_and_down() -> None:
    from kwire.dns.forward import Forwarder

    f = Forwarder()
    ups = [Upstream("192.0.2.1"), Upstream("192.0.2.2"), Upstream("192.0.2.3")]
    firsts = [f.order(ups)[0].host for _ in range(4)]
    assert firsts == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.1"]
    f._st(ups[1]).down_until = time.monotonic() + 5
    assert [u.host for u in f.order(ups)] == ["192.0.2.3", "192.0.2.1", "192.0.2.2"]


def test_concurrent_identical_misses_share_one_upstream_query() -> None:
    h = handler(table=FWD)

    async def go() -> list[bytes | None]:
        outs = []
        for qid in range(5):
            q = dns.message.make_query("www.example.com.", "A")
            q.id = qid
            outs.append(h.handle(q.to_wire(), False, h.stats.socket("udp", "1"), 0.0))
        return list(await asyncio.gather(*outs))  # type: ignore[arg-type]

    results = asyncio.run(go())
    assert len(h.forwarder.calls) == 1  # type: ignore[attr-defined]
    assert [dns.message.from_wire(r).id for r in results if r] == [0, 1, 2, 3, 4]


def test_targeted_invalidation() -> None:
    h = handler(svc("a", ip="10.43.0.1"), svc("b", ip="10.43.0.2"))
    assert answers(ask(h, "a.default.svc.cluster.local.")) == ["10.43.0.1"]
    assert answers(ask(h, "b.default.svc.cluster.local.")) == ["10.43.0.2"]
    assert ask(h, "c.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert ask(h, "newns.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert ask(h, "9.9.43.10.in-addr.arpa.", "PTR").rcode() == dns.rcode.NXDOMAIN  # forwarded
    assert len(h.fast_udp) == 5
    # A change to Service a drops a's response only (and the reverse names of its addresses).
    h.records.set_service(svc("a", ip="10.43.0.3"))
    assert len(h.fast_udp) == 4
    assert answers(ask(h, "a.default.svc.cluster.local.")) == ["10.43.0.3"]
    # Created objects replace the negative answers about them.
    h.records.set_service(svc("c", ip="10.43.9.9"))
    assert answers(ask(h, "c.default.svc.cluster.local.")) == ["10.43.9.9"]
    assert answers(ask(h, "9.9.43.10.in-addr.arpa.", "PTR")) == ["c.default.svc.cluster.local."]
    h.records.set_namespace({"metadata": {"name": "newns"}})
    m = ask(h, "newns.svc.cluster.local.")
    assert m.rcode() == dns.rcode.NOERROR and not m.answer
    # Negative answers carry the SOA: they are recomputed after the TTL, so its serial follows the updates.
    for e in h.fast_udp.values():
        if e.exp:
            assert e.exp <= time.monotonic() + 5
    assert sum(1 for e in h.fast_udp.values() if not e.exp) >= 3
