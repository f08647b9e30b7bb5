"""The server never dies of any input: hypothesis feeds the packet handler random bytes and random mutations of
valid queries, and throws them at the real UDP and TCP sockets; every reply it sends is a well-formed
response to the query's ID, and the server keeps answering afterwards."""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kwire.dns.server import DnsServer
from kwire.dns.wire import fast_key
from tests.unit.dns_helpers import eps, handler, local_config, namespace, sock, svc

OBJS = (
    svc("web"),
    svc("db", headless=True, ports=[("pg", 5432, "TCP")]),
    eps("db", [("10.42.0.5", "db-0", True), ("10.42.0.6", None, True)], ports=[("pg", 5432, "TCP")]),
    svc("ext", external="www.example.com"),
)
H = handler(*OBJS, table={("www.example.com.", "A"): ["192.0.2.1"]})
H.set_node_hosts("192.0.2.11 node-1\n")
H.set_custom({"rewrite": "alias.test web.default.svc.cluster.local\n", "hosts": "198.51.100.1 extra\n"})

NAMES = [
    "web.default.svc.cluster.local.",
    "db.default.svc.cluster.local.",
    "_pg._tcp.db.default.svc.cluster.local.",
    "db-0.db.default.svc.cluster.local.",
    "ext.default.svc.cluster.local.",
    "1-2-3-4.default.pod.cluster.local.",
    "5.0.42.10.in-addr.arpa.",
    "dns-version.cluster.local.",
    "cluster.local.",
    "node-1.",
    "alias.test.",
    "www.example.com.",
    "nosuch.example.",
]
TYPES = ["A", "AAAA", "SRV", "PTR", "TXT", "SOA", "NS", "CNAME", "MX", "ANY", "HTTPS"]


def run(out: Any) -> bytes | None:
    if inspect.iscoroutine(out):
        return asyncio.run(out)  # type: ignore[no-any-return]
    return out  # type: ignore[no-any-return]


def check_reply(query: bytes, out: bytes | None) -> None:
    if out is None:
        return
    assert len(out) >= 12
    assert out[:2] == query[:2]  # the query's ID
    assert out[2] & 0x80  # QR
    m = dns.message.from_wire(out)  # well-formed
    assert m.rcode() in (
        dns.rcode.NOERROR,
        dns.rcode.NXDOMAIN,
        dns.rcode.FORMERR,
        dns.rcode.NOTIMP,
        dns.rcode.SERVFAIL,
        dns.rcode.REFUSED,
        dns.rcode.BADVERS,
    )


valid_queries = st.builds(
    lambda name, t, edns, qid, do: dns.message.make_query(
        name, t, use_edns=edns, want_dnssec=do and edns is not None, id=qid
    ).to_wire(),
    st.sampled_from(NAMES),
    st.sampled_from(TYPES),
    st.sampled_from([None, 0]),
    st.integers(0, 65535),
    st.booleans(),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_queries))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "append"]))
        if op in ("flip", "set") and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = (data[i] ^ (1 << draw(st.integers(0, 7)))) if op == "flip" else draw(st.integers(0, 255))
        elif op == "cut" and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            data += draw(st.binary(min_size=1, max_size=40))
    return bytes(data)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    for tcp in (False, True):
        check_reply(data, run(H.handle(data, tcp, sock(H, "tcp" if tcp else "udp"), 0.0)))


@FUZZ
@given(mutated())
def test_mutated_queries(data: bytes) -> None:
    check_reply(data, run(H.handle(data, False, sock(H), 0.0)))


@FUZZ
@given(valid_queries)
def test_valid_queries_answered_and_fast_path_consistent(data: bytes) -> None:
    first = run(H.handle(data, False, sock(H), 0.0))
    check_reply(data, first)
    assert first is not None
    fk = fast_key(data)
    # The hot loop's key (everything after the ID) is the fast-path key of a plain lower-case query.
    if fk is not None and data[12 : fk[1]] == data[12 : fk[1]].lower():
        assert fk[0] == data[2:]
    again = run(H.handle(data, False, sock(H), 0.0))
    assert again is not None
    a, b = dns.message.from_wire(first), dns.message.from_wire(again)
    assert a.rcode() == b.rcode()
    assert sorted(rr.to_text() for s in a.answer for rr in s) == sorted(rr.to_text() for s in b.answer for rr in s)


# -- the real sockets ----------------------------------------------------------------------------------------


class Running:
    def __init__(self, tmp: Path) -> None:
        self.cfg = local_config(tmp, forward_timeout=0.2)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.srv: DnsServer | None = None
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def up() -> None:
            self.srv = DnsServer(self.cfg)
            await self.srv.open()
            rec = self.srv.records
            rec.set_namespace(namespace("default"))
            for o in OBJS:
                (rec.set_slice if "addressType" in o else rec.set_service)(o)
            rec.set_synced()
            self.ready.set()

        self.loop.run_until_complete(up())
        self.loop.run_forever()

    def stop(self) -> None:
        assert self.srv is not None
        fut = asyncio.run_coroutine_threadsafe(self.srv.close(), self.loop)
        fut.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = Running(tmp_path_factory.mktemp("dnsfuzz"))
    yield r
    r.stop()


def alive(r: Running) -> None:
    assert r.srv is not None
    q = dns.message.make_query("web.default.svc.cluster.local.", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(q.to_wire(), ("127.0.0.1", r.srv.port))
        m = dns.message.from_wire(s.recv(4096))
    assert [rr.to_text() for rrset in m.answer for rr in rrset] == ["10.43.0.20"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=300), mutated()), min_size=1, max_size=20))
def test_udp_socket_survives(running: Running, packets: list[bytes]) -> None:
    assert running.srv is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)
        for p in packets:
            s.sendto(p, ("127.0.0.1", running.srv.port))
        while True:
            try:
                out = s.recv(65535)
            except TimeoutError:
                break
            m = dns.message.from_wire(out)
            assert m.flags & 0x8000
    alive(running)
    assert running.srv.stats.panics == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=300), mutated()), min_size=1, max_size=8))
def test_tcp_socket_survives(running: Running, packets: list[bytes]) -> None:
    assert running.srv is not None
    with socket.create_connection(("127.0.0.1", running.srv.port), timeout=2) as s:
        s.sendall(b"".join(struct.pack("!H", len(p)) + p for p in packets))
        s.shutdown(socket.SHUT_WR)
        s.settimeout(1)
        buf = b""
        try:
            while chunk := s.recv(65535):
                buf += chunk
        except TimeoutError:
            pass
        while len(buf) >= 2:
            n = struct.unpack("!H", buf[:2])[0]
            if len(buf) < 2 + n:
                break
            assert dns.message.from_wire(buf[2 : 2 + n]).flags & 0x8000
            buf = buf[2 + n :]
    # Random bytes on the stream: a length of up to 64 KiB may be left waiting, the connection closes idle.
    alive(running)
    assert running.srv.stats.panics == 0
