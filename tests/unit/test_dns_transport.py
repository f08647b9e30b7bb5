"""The server's sockets on 127.0.0.1 (no privileges, no cluster; records fed directly): the UDP fast path,
TCP with pipelining, truncation and the client's TCP retry, forwarding to real upstream responders (TC -> TCP,
failover, deadline), and /health, /ready, /metrics."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest

from kwire.dns.config import DnsConfig
from kwire.dns.forward import Upstream
from kwire.dns.server import DnsServer
from tests.unit.dns_helpers import TinyUpstream, answers, eps, local_config, namespace, svc


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DnsServer]:
    srv = DnsServer(local_config(tmp_path, forward_timeout=1.0))
    await srv.open()
    rec = srv.records
    rec.set_namespace(namespace("default"))
    rec.set_service(svc("web", ip="10.43.0.20"))
    rec.set_service(svc("many", headless=True))
    rec.set_slice(eps("many", [(f"10.42.0.{i}", None, True) for i in range(1, 101)]))
    rec.set_service(svc("three", headless=True))
    rec.set_slice(eps("three", [(f"10.42.1.{i}", None, True) for i in range(1, 4)]))
    try:
        yield srv
    finally:
        await srv.close()


async def udp(srv: DnsServer, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    return await dns.asyncquery.udp(q, "127.0.0.1", port=srv.port, timeout=3)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_health_ready_metrics(server: DnsServer) -> None:
    base = "http://127.0.0.1:"
    assert await get(f"{base}{server.health_port}/health") == (200, "OK")
    assert (await get(f"{base}{server.ready_port}/ready"))[0] == 503
    assert (await udp(server, "web.default.svc.cluster.local.")).rcode() == dns.rcode.SERVFAIL
    server.records.set_synced()
    assert await get(f"{base}{server.ready_port}/ready") == (200, "OK")
    assert answers(await udp(server, "web.default.svc.cluster.local.")) == ["10.43.0.20"]
    status, text = await get(f"{base}{server.metrics_port}/metrics")
    assert status == 200
    for name in (
        "coredns_dns_requests_total",
        "coredns_dns_responses_total",
        "coredns_dns_request_duration_seconds_bucket",
        "coredns_cache_hits_total",
        "coredns_cache_misses_total",
        "coredns_forward_requests_total",
        "coredns_build_info",
    ):
        assert name in text


async def test_udp_fast_path_case_rotation_and_counting(server: DnsServer) -> None:
    server.records.set_synced()
    for _ in range(3):
        assert answers(await udp(server, "web.default.svc.cluster.local.")) == ["10.43.0.20"]
    m = await udp(server, "WEB.Default.svc.cluster.local.")
    assert m.answer[0].name.to_text() == "WEB.Default.svc.cluster.local." and answers(m) == ["10.43.0.20"]
    firsts = [answers(await udp(server, "three.default.svc.cluster.local."))[0] for _ in range(6)]
    assert firsts == ["10.42.1.1", "10.42.1.2", "10.42.1.3"] * 2
    m = await udp(server, "web.default.svc.cluster.local.", use_edns=0)
    assert m.edns == 0 and answers(m) == ["10.43.0.20"]
    reqs = server.stats.requests()
    assert reqs[("udp", "1", "A")] == 11
    assert server.stats.responses()[("NOERROR", "kubernetes")] == 11


async def test_truncation_then_tcp(server: DnsServer) -> None:
    server.records.set_synced()
    m = await udp(server, "many.default.svc.cluster.local.")
    assert m.flags & dns.flags.TC and not m.answer
    q = dns.message.make_query("many.default.svc.cluster.local.", "A")
    m, used_tcp = await dns.asyncquery.udp_with_fallback(q, "127.0.0.1", port=server.port, timeout=3)
    assert used_tcp and len(answers(m)) == 100
    m = await dns.asyncquery.tcp(q, "127.0.0.1", port=server.port, timeout=3)
    assert len(answers(m)) == 100  # again, from the TCP fast path


async def test_tcp_pipelining_and_garbage(server: DnsServer) -> None:
    server.records.set_synced()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    msgs = []
    for i, name in enumerate(["web", "three", "nosuch"]):
        q = dns.message.make_query(f"{name}.default.svc.cluster.local.", "A")
        q.id = 100 + i
        w = q.to_wire()
        msgs.append(struct.pack("!H", len(w)) + w)
    writer.write(b"".join(msgs) + struct.pack("!H", 3) + b"abc")  # and a short garbage message (dropped)
    got = {}
    for _ in range(3):
        n = struct.unpack("!H", await reader.readexactly(2))[0]
        m = dns.message.from_wire(await reader.readexactly(n))
        got[m.id] = m
    assert answers(got[100]) == ["10.43.0.20"] and len(answers(got[101])) == 3
    assert got[102].rcode() == dns.rcode.NXDOMAIN
    writer.close()


async def test_forwarding_tc_retry_failover_and_deadline(server: DnsServer) -> None:
    server.records.set_synced()
    good = TinyUpstream({"example.com.": ["192.0.2.1"], "big.example.": ["192.0.2.9"], "old.example.": ["192.0.2.1"]})
    dead = TinyUpstream({})
    dead.silent = True
    await good.start()
    await dead.start()
    try:
        server.handler.upstreams = [Upstream("127.0.0.1", good.port)]
        assert answers(await udp(server, "example.com.")) == ["192.0.2.1"]
        assert (await udp(server, "nosuch.example.")).rcode() == dns.rcode.NXDOMAIN
        # A truncated UDP answer from upstream is asked again over TCP.
        good.truncate.add("big.example.")
        assert answers(await udp(server, "big.example.")) == ["192.0.2.9"]
        assert good.udp_queries.count("big.example.") == 1 and good.tcp_queries == ["big.example."]
        # Cached: upstream not asked again.
        n = len(good.udp_queries)
        assert answers(await udp(server, "example.com.")) == ["192.0.2.1"]
        assert len(good.udp_queries) == n
        # An upstream that rejects EDNS is asked again without it.
        good.no_edns = True
        n = len(good.udp_queries)
        assert answers(await udp(server, "old.example.", "A", use_edns=0)) == ["192.0.2.1"]
        assert good.udp_queries[n:] == ["old.example.", "old.example."]
        good.no_edns = False
        # A dead upstream first: the next one answers, within the deadline.
        server.handler.fcache.clear()
        server.handler.invalidate()
        server.handler.upstreams = [Upstream("127.0.0.1", dead.port), Upstream("127.0.0.1", good.port)]
        server.forwarder._rr.clear()
        t0 = time.monotonic()
        assert answers(await udp(server, "example.com.")) == ["192.0.2.1"]
        assert time.monotonic() - t0 < 1.5 and dead.udp_queries == ["example.com."]
        # Nobody answers: SERVFAIL at the deadline (1 s here), not cached.
        server.handler.upstreams = [Upstream("127.0.0.1", dead.port)]
        t0 = time.monotonic()
        assert (await udp(server, "other.example.")).rcode() == dns.rcode.SERVFAIL
        assert 0.8 < time.monotonic() - t0 < 2.5
        assert server.forwarder.requests[f"127.0.0.1:{good.port}"] >= 3
    finally:
        await good.stop()
        await dead.stop()


def test_kube_config_sources(tmp_path: Path) -> None:
    from kwire.dns.server import kube_config

    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok\n")
    (sa / "ca.crt").write_text("CA")
    env = {
        "KUBERNETES_SERVICE_HOST": "10.43.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KWIRE_SERVICEACCOUNT_DIR": str(sa),
    }
    c = kube_config(DnsConfig(), env)
    assert (c.server, c.token, c.ca_data) == ("https://10.43.0.1:443", "tok", b"CA")
    with pytest.raises(ValueError):
        kube_config(DnsConfig(), {})  # not in a cluster, no --kubeconfig


async def test_overload_limits(server: DnsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import kwire.dns.server as srvmod

    server.records.set_synced()
    dead = TinyUpstream({})
    dead.silent = True
    await dead.start()
    try:
        server.handler.upstreams = [Upstream("127.0.0.1", dead.port)]
        monkeypatch.setattr(srvmod, "MAX_PENDING", 2)
        replies = await asyncio.gather(*(udp(server, f"n{i}.example.") for i in range(4)))
        rcodes = sorted(m.rcode() for m in replies)
        assert rcodes == [dns.rcode.SERVFAIL] * 2 + [dns.rcode.REFUSED] * 2
        assert server.stats.overloaded == 2
        monkeypatch.setattr(srvmod, "MAX_TCP_CONNECTIONS", 1)
        r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.05)
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(r2.read(), 2) == b""  # closed at once
        w1.close()
        w2.close()
    finally:
        await dead.stop()
