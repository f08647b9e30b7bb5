"""Fake Kubernetes objects and helpers for the DNS unit tests (the shapes the API serves)."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from kwire.dns.config import DnsConfig
from kwire.dns.forward import Forwarder, Upstream
from kwire.dns.handler import DnsHandler
from kwire.dns.metrics import SockStats, Stats
from kwire.dns.records import ClusterRecords

Obj = dict[str, Any]


def local_config(tmp: Path, *, forward_timeout: float) -> DnsConfig:
    """A DnsServer on 127.0.0.1 with every port (DNS, health, ready, metrics) picked by the kernel, and an empty
    resolv.conf in `tmp` (nothing to forward to)."""
    (tmp / "resolv.conf").write_text("")
    return DnsConfig(
        listen="127.0.0.1",
        port=0,
        health_port=0,
        ready_port=0,
        metrics_port=0,
        resolv_conf=str(tmp / "resolv.conf"),
        forward_timeout=forward_timeout,
    )


def svc(
    name: str,
    ns: str = "default",
    ip: str | None = "10.43.0.20",
    ports: list[tuple[str, int, str]] | None = None,
    *,
    headless: bool = False,
    external: str | None = None,
    publish: bool = False,
) -> Obj:
    spec: Obj = {
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in (ports or [("http", 80, "TCP")])]
    }
    if external is not None:
        spec = {"type": "ExternalName", "externalName": external}
    elif headless:
        spec["clusterIP"] = "None"
        spec["clusterIPs"] = ["None"]
    else:
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]
    if publish:
        spec["publishNotReadyAddresses"] = True
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": "1"}, "spec": spec}


def eps(
    service: str,
    endpoints: list[tuple[str, str | None, bool]],
    ns: str = "default",
    ports: list[tuple[str, int, str]] | None = None,
    *,
    name: str | None = None,
    family: str = "IPv4",
) -> Obj:
    return {
        "metadata": {
            "name": name or f"{service}-abcde",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": family,
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready}, **({"hostname": host} if host else {})}
            for ip, host, ready in endpoints
        ],
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in (ports or [("http", 8080, "TCP")])],
    }


def namespace(name: str) -> Obj:
    return {"metadata": {"name": name}}


def records(
    *objs: Obj, synced: bool = True, namespaces: tuple[str, ...] = ("default", "kube-system")
) -> ClusterRecords:
    r = ClusterRecords("cluster.local", 5)
    for ns in namespaces:
        r.set_namespace(namespace(ns))
    for o in objs:
        if "addressType" in o:
            r.set_slice(o)
        else:
            r.set_service(o)
    r.set_synced(synced)
    return r


class FakeForwarder(Forwarder):
    """Answers from a table {(name, type): [rdata text]} (NXDOMAIN otherwise), counting calls."""

    def __init__(self, table: dict[tuple[str, str], list[str]] | None = None, ttl: int = 300) -> None:
        super().__init__(timeout=1.0)
        self.table = table or {}
        self.ttl = ttl
        self.calls: list[tuple[str, str, str]] = []
        self.fail = False

    async def exchange(self, ups: Any, query: bytes, question: bytes) -> bytes | None:
        q = dns.message.from_wire(query)
        name = q.question[0].name.to_text().lower()
        rdtype = dns.rdatatype.to_text(q.question[0].rdtype)
        self.calls.append((str(ups[0]) if ups else "", name, rdtype))
        if self.fail:
            return None
        r = dns.message.make_response(q)
        rdatas = self.table.get((name, rdtype))
        if rdatas is None and not any(k[0] == name for k in self.table):
            r.set_rcode(dns.rcode.NXDOMAIN)
            r.authority.append(
                dns.rrset.from_text("example.", 900, "IN", "SOA", "ns.example. host.example. 1 2 3 4 60")
            )
        elif rdatas:
            r.answer.append(dns.rrset.from_text(q.question[0].name, self.ttl, "IN", rdtype, *rdatas))
        return r.to_wire()


def handler(
    *objs: Obj,
    table: dict[tuple[str, str], list[str]] | None = None,
    synced: bool = True,
    upstreams: list[Upstream] | None = None,
) -> DnsHandler:
    rec = records(*objs, synced=synced)
    fwd = FakeForwarder(table)
    ups = upstreams if upstreams is not None else [Upstream("192.0.2.53")]
    return DnsHandler(rec, fwd, Stats("dns://:53"), upstreams=ups)


def sock(h: DnsHandler, proto: str = "udp") -> SockStats:
    if not h.stats.sockets:
        h.stats.socket("udp", "1")
        h.stats.socket("tcp", "1")
    return h.stats.sockets[0 if proto == "udp" else 1]


def raw(h: DnsHandler, data: bytes, *, tcp: bool = False) -> bytes | None:
    """Run the handler on raw bytes (awaiting a forwarded answer if needed)."""
    out = h.handle(data, tcp, sock(h, "tcp" if tcp else "udp"), 0.0)
    if inspect.iscoroutine(out):
        return asyncio.run(out)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


def ask(
    h: DnsHandler,
    name: str,
    rdtype: str = "A",
    *,
    edns: int | None = None,
    payload: int = 1232,
    tcp: bool = False,
    qid: int = 4242,
) -> dns.message.Message:
    if edns is None:
        q = dns.message.make_query(name, rdtype)
    else:
        q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload)
    q.id = qid
    out = raw(h, q.to_wire(), tcp=tcp)
    assert out is not None
    return dns.message.from_wire(out)


def answers(m: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in m.answer for rr in rrset]


def rrset_texts(section: list[Any]) -> list[str]:
    return [line for rrset in section for line in rrset.to_text().splitlines()]


class TinyUpstream:
    """A small authoritative-ish DNS responder on UDP and TCP (tests' upstream): answers A/AAAA/TXT from a table
    {name: [rdata]} (NXDOMAIN otherwise). Names in `truncate` get an empty TC answer over UDP (the full one over
    TCP); with `silent`, UDP queries are ignored (a dead upstream)."""

    def __init__(self, table: dict[str, list[str]], *, ttl: int = 300) -> None:
        self.table = {k.lower(): v for k, v in table.items()}
        self.ttl = ttl
        self.truncate: set[str] = set()
        self.silent = False
        self.no_edns = False  # answer FORMERR to queries with EDNS (an old server)
        self.udp_queries: list[str] = []
        self.tcp_queries: list[str] = []
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None

    def answer(self, wire: bytes, tcp: bool) -> bytes | None:
        q = dns.message.from_wire(wire)
        name = q.question[0].name.to_text().lower()
        (self.tcp_queries if tcp else self.udp_queries).append(name)
        if self.silent and not tcp:
            return None
        r = dns.message.make_response(q)
        if self.no_edns and q.edns >= 0:
            r = dns.message.make_response(q)
            r.use_edns(False)
            r.set_rcode(dns.rcode.FORMERR)
            return r.to_wire()
        rdtype = dns.rdatatype.to_text(q.question[0].rdtype)
        if name not in self.table:
            r.set_rcode(dns.rcode.NXDOMAIN)
            r.authority.append(dns.rrset.from_text("test.", 60, "IN", "SOA", "ns.test. h.test. 1 2 3 4 20"))
        elif not tcp and name in self.truncate:
            r.flags |= dns.flags.TC
        else:
            want = [v for v in self.table[name] if (":" in v) == (rdtype == "AAAA") and rdtype in ("A", "AAAA")]
            if rdtype == "TXT":
                want = [f'"{v}"' for v in self.table[name]]
            if want:
                r.answer.append(dns.rrset.from_text(q.question[0].name, self.ttl, "IN", rdtype, *want))
        return r.to_wire()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        up = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                out = up.answer(data, False)
                if out is not None:
                    self.t.sendto(out, addr)  # type: ignore[attr-defined]

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                    out = up.answer(await reader.readexactly(n), True)
                    if out is not None:
                        writer.write(len(out).to_bytes(2, "big") + out)
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self._tcp = await asyncio.start_server(tcp, host, port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, self.port))

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
