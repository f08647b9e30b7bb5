"""Forwarding to upstream servers (CoreDNS's `forward . /etc/resolv.conf`).

Upstreams come from a resolv.conf (`nameserver` lines) or from coredns-custom forward zones (`ip[:port]`).
A loopback upstream is refused with a log line: in the DNS pod, 127.0.0.x is the pod itself (or a node-local
stub resolver such as systemd-resolved's 127.0.0.53 that the pod cannot reach), so forwarding there loops or
fails - the check K3s makes on the host's resolv.conf. `allow_loopback` lifts it for tests.

Queries go over UDP (one connected socket per upstream, random IDs, the question checked in the answer) and are
retried over TCP when the answer is truncated. Upstreams are used round-robin; one that times out or refuses is
skipped for 5 s (unless all are), and the next one is tried. The whole exchange has a deadline (2 s by default):
past it the caller answers SERVFAIL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DOWN_FOR = 5.0


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback


def parse_upstream(text: str) -> Upstream:
    """`1.2.3.4`, `1.2.3.4:5353`, `fd00::1`, `[fd00::1]:53` -> Upstream; ValueError otherwise."""
    s = text.strip()
    port = 53
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':port' after ']'")
            port = _port(rest[1:], text)
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        port = _port(p, text)
    else:
        host = s
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: not an IP address") from None
    return Upstream(str(ip), port)


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 0 < int(p) < 65536:
        raise ValueError(f"{text!r}: invalid port")
    return int(p)


def read_resolv_conf(path: str | Path) -> list[Upstream]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        log.error("cannot read %s: %s; no upstream servers", path, exc)
        return []
    out = []
    for raw in text.splitlines():
        fields = raw.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                up = Upstream(str(ipaddress.ip_address(fields[1].split("%", 1)[0])))
            except ValueError:
                log.warning("%s: ignoring nameserver %r: not an IP address", path, fields[1])
                continue
            if up not in out:
                out.append(up)
    return out


def usable_upstreams(ups: Sequence[Upstream], source: str, *, allow_loopback: bool = False) -> list[Upstream]:
    out = []
    for up in ups:
        if up.is_loopback and not allow_loopback:
            log.error(
                "refusing upstream %s from %s: it is a loopback address, and forwarding to it from the DNS pod "
                "would loop back to this server (the K3s resolv.conf check); give a resolv.conf with real "
                "nameservers (--resolv-conf)",
                up,
                source,
            )
            continue
        out.append(up)
    return out


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < 12 or not data[2] & 0x80:
            return
        entry = self.pending.get(data[0] << 8 | data[1])
        if entry is None:
            return
        fut, question = entry
        if data[12 : 12 + len(question)].lower() != question or fut.done():
            return
        fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port/host unreachable on the connected socket: fail what is waiting, the caller tries the next one.
        for fut, _ in list(self.pending.values()):
            if not fut.done():
                fut.set_exception(ConnectionRefusedError(str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.error_received(exc or ConnectionResetError("closed"))
        self.transport = None


class _State:
    __slots__ = ("udp", "down_until", "opening")

    def __init__(self) -> None:
        self.udp: _Udp | None = None
        self.down_until = 0.0
        self.opening: asyncio.Lock = asyncio.Lock()


class Forwarder:
    def __init__(self, *, timeout: float = 2.0, attempt_timeout: float = 1.0) -> None:
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self._state: dict[Upstream, _State] = {}
        self._rr: dict[tuple[Upstream, ...], int] = {}
        self.requests: dict[str, int] = {}  # coredns_forward_requests_total{to}
        self.responses: dict[tuple[str, str], int] = {}  # coredns_forward_responses_total{to, rcode}

    def _st(self, up: Upstream) -> _State:
        st = self._state.get(up)
        if st is None:
            st = self._state[up] = _State()
        return st

    def order(self, ups: Sequence[Upstream]) -> list[Upstream]:
        """Round-robin start, upstreams marked down moved to the end."""
        key = tuple(ups)
        i = self._rr.get(key, 0)
        self._rr[key] = (i + 1) % max(1, len(key))
        rotated = list(key[i:] + key[:i])
        now = time.monotonic()
        return [u for u in rotated if self._st(u).down_until <= now] + [
            u for u in rotated if self._st(u).down_until > now
        ]

    async def exchange(self, ups: Sequence[Upstream], query: bytes, question: bytes) -> bytes | None:
        """Send `query` (its ID is replaced per attempt) until an upstream answers or the deadline passes.
        `question` is the lower-cased question section (name + type + class) the answer must echo."""
        if not ups:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        order = self.order(ups)
        i = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0.005:
                return None
            up = order[i % len(order)]
            i += 1
            budget = min(remaining, self.attempt_timeout)
            try:
                resp = await self._udp_exchange(up, query, question, budget)
                if resp[2] & 0x02:  # TC: ask again over TCP
                    resp = await self._tcp_exchange(up, query, question, max(0.01, deadline - loop.time()))
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                log.debug("forward to %s failed: %s", up, exc)
                self._st(up).down_until = time.monotonic() + DOWN_FOR
                continue
            self._st(up).down_until = 0.0
            rcode = resp[3] & 0xF
            key = (str(up), _RCODES.get(rcode, str(rcode)))
            self.responses[key] = self.responses.get(key, 0) + 1
            return resp

    def _count(self, up: Upstream) -> None:
        k = str(up)
        self.requests[k] = self.requests.get(k, 0) + 1

    async def _udp(self, up: Upstream) -> _Udp:
        st = self._st(up)
        if st.udp is not None and st.udp.transport is not None:
            return st.udp
        async with st.opening:
            if st.udp is None or st.udp.transport is None:
                loop = asyncio.get_running_loop()
                _, proto = await loop.create_datagram_endpoint(_Udp, remote_addr=(up.host, up.port))
                st.udp = proto
        return st.udp

    async def _udp_exchange(self, up: Upstream, query: bytes, question: bytes, timeout: float) -> bytes:
        proto = await self._udp(up)
        loop = asyncio.get_running_loop()
        qid = random.getrandbits(16)
        while qid in proto.pending:
            qid = random.getrandbits(16)
        fut: asyncio.Future[bytes] = loop.create_future()
        proto.pending[qid] = (fut, question)
        try:
            assert proto.transport is not None
            self._count(up)
            proto.transport.sendto(struct.pack("!H", qid) + query[2:])
            return await asyncio.wait_for(fut, timeout)
        finally:
            proto.pending.pop(qid, None)

    async def _tcp_exchange(self, up: Upstream, query: bytes, question: bytes, timeout: float) -> bytes:
        async def go() -> bytes:
            reader, writer = await asyncio.open_connection(up.host, up.port)
            try:
                qid = random.getrandbits(16)
                msg = struct.pack("!H", qid) + query[2:]
                self._count(up)
                writer.write(struct.pack("!H", len(msg)) + msg)
                await writer.drain()
                while True:
                    n = struct.unpack("!H", await reader.readexactly(2))[0]
                    resp = await reader.readexactly(n)
                    if len(resp) >= 12 and struct.unpack_from("!H", resp)[0] == qid:
                        if resp[12 : 12 + len(question)].lower() != question:
                            raise ValueError("answer to another question")
                        return resp
            finally:
                writer.close()

        return await asyncio.wait_for(go(), timeout)

    def close(self) -> None:
        for st in self._state.values():
            if st.udp is not None and st.udp.transport is not None:
                st.udp.transport.close()
        self._state.clear()


_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
