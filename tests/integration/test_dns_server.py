"""The cluster DNS server against a real (in-process) kwire API server, queried with dnspython and dig.

Only loopback is used. The upstream servers are small responders on 127.0.53.2:53 and 127.0.53.3:53 (root is
needed for port 53: resolv.conf has no port), and the DNS server runs with `allow_loopback_upstream` (the
test-only switch; normally loopback upstreams are refused). Checks: /health, /ready before and after the
informers sync (cluster names SERVFAIL until then, never NXDOMAIN), records for Services, EndpointSlices,
ExternalName and pods as the API changes, NodeHosts and coredns-custom reloads, forwarding with failover, the
cache, TC over UDP -> TCP (from the upstream and to the client), /metrics, and `python -m kwire.dns`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from kwire.client import ApiClient, NotFound, load_kubeconfig
from kwire.client.client import CONFIGMAPS, ENDPOINTSLICES, NAMESPACES, SERVICES
from kwire.config import ServerConfig
from kwire.dns import DnsConfig, DnsServer
from kwire.dns import start as start_dns
from kwire.server import Server
from kwire.server import start as start_api
from tests.integration.apiserver import free_port, free_udp_tcp_port, server_config
from tests.polling import until
from tests.unit.dns_helpers import TinyUpstream

UP1, UP2 = "127.0.53.2", "127.0.53.3"
NS = f"kwire-dnstest{os.environ.get('KWIRE_TEST_ID', '')}"
ZONE = "cluster.local"
DIG = shutil.which("dig")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (upstream responders on port 53)")

UPSTREAM_TABLE = {
    "www.upstream.test.": ["192.0.2.80", "2001:db8::80"],
    "big.upstream.test.": ["192.0.2.81"],
    "api.upstream.test.": ["192.0.2.82"],
    "stub.corp.test.": ["10.99.0.1"],
}


@dataclass
class Env:
    tmp: Path
    api_cfg: ServerConfig
    api: Server | None
    dns: DnsServer
    up1: TinyUpstream
    up2: TinyUpstream

    @property
    def kubeconfig(self) -> Path:
        return self.tmp / "kubeconfig"

    def client(self) -> ApiClient:
        return ApiClient(load_kubeconfig(self.kubeconfig))


async def q(env: Env, name: str, rdtype: str = "A", *, tcp: bool = False) -> dns.message.Message:
    msg = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(msg, "127.0.0.1", port=env.dns.port, timeout=5)
    return await dns.asyncquery.udp(msg, "127.0.0.1", port=env.dns.port, timeout=5)


def ans(m: dns.message.Message) -> list[str]:
    return sorted(rr.to_text() for rrset in m.answer for rr in rrset)


async def dig(env: Env, *args: str) -> str:
    assert DIG is not None
    p = await asyncio.create_subprocess_exec(
        DIG, "@127.0.0.1", "-p", str(env.dns.port), "+time=3", "+tries=1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(p.communicate(), 20)
    return out.decode()


async def http(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[TinyUpstream, TinyUpstream]]:
    u1, u2 = TinyUpstream(UPSTREAM_TABLE), TinyUpstream(UPSTREAM_TABLE)
    try:
        await u1.start(UP1, 53)
        await u2.start(UP2, 53)
    except OSError as exc:
        await u1.stop()
        pytest.skip(f"cannot bind the upstream responders on port 53: {exc}")
    try:
        yield u1, u2
    finally:
        await u1.stop()
        await u2.stop()


def dns_config(tmp: Path, **kw: object) -> DnsConfig:
    (tmp / "resolv.conf").write_text(f"search example\nnameserver {UP1}\nnameserver {UP2}\noptions ndots:5\n")
    args: dict[str, object] = {
        "kubeconfig": str(tmp / "kubeconfig"),
        "listen": "127.0.0.1",
        "port": free_udp_tcp_port(),
        "health_port": free_port(),
        "ready_port": free_port(),
        "metrics_port": free_port(),
        "resolv_conf": str(tmp / "resolv.conf"),
        "node_hosts_configmap": f"{NS}/nodehosts",
        "custom_configmap": f"{NS}/custom",
        "allow_loopback_upstream": True,
    }
    args.update(kw)
    return DnsConfig(**args)  # type: ignore[arg-type]


@pytest.fixture
async def env(tmp_path: Path, upstreams: tuple[TinyUpstream, TinyUpstream]) -> AsyncIterator[Env]:
    api_cfg = server_config(tmp_path, token="dns-test", disable=("coredns",))
    api = await start_api(api_cfg)
    async with ApiClient(load_kubeconfig(api.kubeconfig)) as c:
        await c.create(NAMESPACES, {"metadata": {"name": NS}})
    srv = await start_dns(dns_config(tmp_path))
    e = Env(tmp_path, api_cfg, api, srv, *upstreams)
    try:
        await until(lambda: srv.ready, what="DNS ready")
        yield e
    finally:
        await srv.close()
        if e.api is not None:
            await e.api.close()


async def test_ready_only_after_sync_and_servfail_before(
    tmp_path: Path, upstreams: tuple[TinyUpstream, TinyUpstream]
) -> None:
    api_cfg = server_config(tmp_path, token="dns-test", disable=("coredns",))
    api = await start_api(api_cfg)  # writes the kubeconfig and CA
    await api.close()
    srv = await start_dns(dns_config(tmp_path))
    api2: Server | None = None
    try:
        env = Env(tmp_path, api_cfg, None, srv, *upstreams)
        assert await http(srv.health_port, "/health") == (200, "OK")
        assert (await http(srv.ready_port, "/ready"))[0] == 503
        for name in ("kubernetes.default.svc.cluster.local.", f"nosuch.{NS}.svc.cluster.local."):
            assert (await q(env, name)).rcode() == dns.rcode.SERVFAIL  # never a false NXDOMAIN
        assert ans(await q(env, "www.upstream.test.")) == ["192.0.2.80"]  # forwarding works meanwhile
        api2 = await start_api(api_cfg)
        await until(lambda: srv.ready, timeout=20, what="sync after the API came up")
        assert await http(srv.ready_port, "/ready") == (200, "OK")
        assert ans(await q(env, "kubernetes.default.svc.cluster.local.")) == ["10.43.0.1"]
        assert (await q(env, f"nosuch.{NS}.svc.cluster.local.")).rcode() == dns.rcode.NXDOMAIN
    finally:
        await srv.close()
        if api2 is not None:
            await api2.close()


async def test_cluster_records_follow_the_api(env: Env) -> None:
    async with env.client() as c:
        web = await c.create(
            SERVICES, {"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80}]}}, NS
        )
        ip = web["spec"]["clusterIP"]
        await c.create(
            SERVICES,
            {"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}},
            NS,
        )
        await c.create(
            ENDPOINTSLICES,
            {
                "metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": True}},
                    {"addresses": ["10.42.1.6"], "conditions": {"ready": True}},
                    {"addresses": ["10.42.1.7"], "conditions": {"ready": False}},
                ],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            },
            NS,
        )
        await c.create(
            SERVICES,
            {"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "www.upstream.test"}},
            NS,
        )
        web_name = f"web.{NS}.svc.{ZONE}."
        await until(lambda: env.dns.records.services.get((NS, "ext")), what="services seen")
        await until(lambda: env.dns.records.endpoints((NS, "db")), what="endpoints seen")
        assert ans(await q(env, web_name)) == [ip]
        assert ans(await q(env, f"_http._tcp.web.{NS}.svc.{ZONE}.", "SRV")) == [f"0 100 80 {web_name}"]
        assert ans(await q(env, f"db.{NS}.svc.{ZONE}.")) == ["10.42.0.5", "10.42.1.6"]
        assert ans(await q(env, f"db-0.db.{NS}.svc.{ZONE}.")) == ["10.42.0.5"]
        srv = await q(env, f"_pg._tcp.db.{NS}.svc.{ZONE}.", "SRV")
        assert ans(srv) == [f"0 50 5432 10-42-1-6.db.{NS}.svc.{ZONE}.", f"0 50 5432 db-0.db.{NS}.svc.{ZONE}."]
        assert len(srv.additional) == 2
        assert ans(await q(env, "5.0.42.10.in-addr.arpa.", "PTR")) == [f"db-0.db.{NS}.svc.{ZONE}."]
        rev = ".".join(reversed(ip.split("."))) + ".in-addr.arpa."
        assert ans(await q(env, rev, "PTR")) == [web_name]
        m = await q(env, f"ext.{NS}.svc.{ZONE}.")
        assert ans(m) == ["192.0.2.80", "www.upstream.test."]
        assert ans(await q(env, f"10-1-2-3.{NS}.pod.{ZONE}.")) == ["10.1.2.3"]
        m = await q(env, f"{NS}.svc.{ZONE}.")
        assert m.rcode() == dns.rcode.NOERROR and not m.answer and m.authority
        m = await q(env, f"nosuch.{NS}.svc.{ZONE}.")
        assert m.rcode() == dns.rcode.NXDOMAIN and "hostmaster.cluster.local." in m.authority[0].to_text()
        assert ans(await q(env, f"dns-version.{ZONE}.", "TXT")) == ['"1.1.0"']

        if DIG is not None:
            assert (await dig(env, web_name, "+short")).split() == [ip]
            assert (await dig(env, "-x", "10.42.0.5", "+short")).split() == [f"db-0.db.{NS}.svc.{ZONE}."]
            out = await dig(env, f"WEB.{NS.upper()}.svc.{ZONE}.", "+tcp")
            assert f"WEB.{NS.upper()}.svc.{ZONE}. 5 IN A {ip}" in re.sub(r"\s+", " ", out)
            assert "status: NXDOMAIN" in await dig(env, f"nope.{NS}.svc.{ZONE}.")

        # Changes show up without delay (the precomputed answers are dropped on every change).
        await c.patch(
            ENDPOINTSLICES,
            "db-1",
            {"endpoints": [{"addresses": ["10.42.2.9"], "hostname": "db-0", "conditions": {"ready": True}}]},
            namespace=NS,
        )
        await until(lambda: env.dns.records.endpoints((NS, "db"))[0].ip.packed == bytes([10, 42, 2, 9]))
        assert ans(await q(env, f"db.{NS}.svc.{ZONE}.")) == ["10.42.2.9"]
        await c.delete(SERVICES, "web", NS)
        await until(lambda: (NS, "web") not in env.dns.records.services)
        assert (await q(env, web_name)).rcode() == dns.rcode.NXDOMAIN


async def test_node_hosts_and_custom_configmap_reload(env: Env) -> None:
    async with env.client() as c:
        await c.create(
            CONFIGMAPS, {"metadata": {"name": "nodehosts"}, "data": {"NodeHosts": "192.0.2.11 server-1\n"}}, NS
        )
        await until(lambda: env.dns.handler.node_hosts.names, what="NodeHosts read")
        assert ans(await q(env, "server-1.")) == ["192.0.2.11"]
        assert ans(await q(env, "11.2.0.192.in-addr.arpa.", "PTR")) == ["server-1."]
        custom = {
            "hosts": "198.51.100.7 registry.lab\n",
            "forward": f"corp.test {UP2}\n",
            "rewrite": "api.lab api.upstream.test\nbroken line here\n",
        }
        await c.create(CONFIGMAPS, {"metadata": {"name": "custom"}, "data": custom}, NS)
        await until(lambda: env.dns.handler.custom.rewrite, what="coredns-custom read")
        assert env.dns.handler.custom.invalid == 1
        assert ans(await q(env, "registry.lab.")) == ["198.51.100.7"]
        n2 = len(env.up2.udp_queries)
        assert ans(await q(env, "stub.corp.test.")) == ["10.99.0.1"]
        assert env.up2.udp_queries[n2:] == ["stub.corp.test."]
        m = await q(env, "api.lab.")
        assert [rrset.to_text() for rrset in m.answer] == ["api.lab. 30 IN A 192.0.2.82"]
        # Re-read on change, without a restart.
        await c.patch(
            CONFIGMAPS,
            "custom",
            {"data": {"hosts": "198.51.100.8 registry.lab\n"}},
            namespace=NS,
        )
        await until(
            lambda: any(ip.packed[-1] == 8 for ips in env.dns.handler.custom.hosts.names.values() for ip in ips)
        )
        assert ans(await q(env, "registry.lab.")) == ["198.51.100.8"]
        await c.delete(CONFIGMAPS, "custom", NS)
        await until(lambda: not env.dns.handler.custom.hosts.names)
        assert (await q(env, "registry.lab.")).rcode() == dns.rcode.NXDOMAIN
        await c.delete(CONFIGMAPS, "nodehosts", NS)
        await until(lambda: not env.dns.handler.node_hosts.names)
        with pytest.raises(NotFound):
            await c.get(CONFIGMAPS, "nodehosts", NS)


async def test_forwarding_cache_failover_truncation_and_metrics(env: Env) -> None:
    # Forwarded and cached: the second query does not reach an upstream.
    m = await q(env, "www.upstream.test.")
    assert ans(m) == ["192.0.2.80"] and m.answer[0].ttl == 30
    seen = len(env.up1.udp_queries) + len(env.up2.udp_queries)
    assert ans(await q(env, "www.upstream.test.")) == ["192.0.2.80"]
    assert len(env.up1.udp_queries) + len(env.up2.udp_queries) == seen
    assert (await q(env, "nosuch.upstream.test.")).rcode() == dns.rcode.NXDOMAIN
    # A truncated upstream answer is fetched again over TCP.
    env.up1.truncate.add("big.upstream.test.")
    env.up2.truncate.add("big.upstream.test.")
    assert ans(await q(env, "big.upstream.test.")) == ["192.0.2.81"]
    assert env.up1.tcp_queries + env.up2.tcp_queries == ["big.upstream.test."]
    # A dead first upstream: the other one answers.
    env.up1.silent = True
    env.up2.silent = False
    for _ in range(3):
        assert ans(await q(env, "api.upstream.test.")) == ["192.0.2.82"]
        env.dns.handler.fcache.clear()
        env.dns.handler.invalidate()
    # Too many records for 512 bytes: TC over UDP, the client retries over TCP (dig does by itself).
    async with env.client() as c:
        await c.create(SERVICES, {"metadata": {"name": "many"}, "spec": {"clusterIP": "None"}}, NS)
        await c.create(
            ENDPOINTSLICES,
            {
                "metadata": {"name": "many-1", "labels": {"kubernetes.io/service-name": "many"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [f"10.42.3.{i}"], "conditions": {"ready": True}} for i in range(1, 61)],
                "ports": [],
            },
            NS,
        )
    name = f"many.{NS}.svc.{ZONE}."
    await until(lambda: len(env.dns.records.endpoints((NS, "many"))) == 60)
    m = await q(env, name)
    assert m.flags & dns.flags.TC and not m.answer
    assert len(ans(await q(env, name, tcp=True))) == 60
    if DIG is not None:
        out = await dig(env, name, "+noedns")
        assert "Truncated, retrying in TCP mode" in out
        assert re.sub(r"\s+", " ", out).count(" IN A 10.42.3.") == 60

    status, text = await http(env.dns.metrics_port, "/metrics")
    assert status == 200

    def metric(pattern: str) -> float:
        return sum(float(v) for v in re.findall(pattern + r"(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M))

    assert metric("coredns_dns_requests_total") >= 10
    assert re.search(r'coredns_dns_requests_total\{[^}]*proto="tcp"', text)
    assert re.search(r'coredns_dns_responses_total\{[^}]*plugin="forward",rcode="NOERROR"', text)
    assert metric("coredns_cache_hits_total") >= 1 and metric("coredns_cache_misses_total") >= 3
    assert re.search(rf'coredns_forward_requests_total\{{to="{UP2}:53"\}}', text)
    assert "coredns_dns_request_duration_seconds_bucket" in text and "coredns_build_info{" in text


async def test_python_m_kwire_dns(env: Env) -> None:
    cfg = dns_config(env.tmp)
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kwire.dns", "--kubeconfig", str(env.kubeconfig), "--listen", "127.0.0.1",
        "--port", str(cfg.port), "--health-port", str(cfg.health_port), "--ready-port", str(cfg.ready_port),
        "--metrics-port", str(cfg.metrics_port), "--resolv-conf", cfg.resolv_conf, "--allow-loopback-upstream",
        "--ttl", "7",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:

        async def ready() -> bool:
            try:
                return (await http(cfg.ready_port, "/ready"))[0] == 200
            except aiohttp.ClientError:
                return False

        await until(ready, timeout=20, what="python -m kwire.dns ready")
        m = await dns.asyncquery.udp(
            dns.message.make_query("kubernetes.default.svc.cluster.local.", "A"), "127.0.0.1", port=cfg.port, timeout=5
        )
        assert ans(m) == ["10.43.0.1"] and m.answer[0].ttl == 7
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(p.communicate(), 15)
    assert p.returncode == 0, out.decode()
    assert b"refusing upstream" not in out
