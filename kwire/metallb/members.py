"""Which speakers are alive, without waiting for the Node Lease (the role memberlist plays in MetalLB).

Every speaker sends a small UDP heartbeat (`kwire-metallb <node>`) to every other speaker's host IP on port 7946
(memberlist's port, which MetalLB's manifest declares) every 0.2 s, and counts a peer alive while it heard it in
the last second. Chosen over one coordination Lease per node renewed every 0.5 s because it puts no load on the
API server (which matters on a 2-core machine running many nodes), keeps working while the API is slow, and a
node unplugged from the LAN stops being heard at once — which is what a client on that LAN sees too. A speaker
always counts itself alive. With the memberlist Secret's key (what MetalLB's manifest mounts at
METALLB_ML_SECRET_KEY_PATH), each heartbeat is `kwire-metallb <node> <wall-clock ns> <HMAC-SHA256>`: one with a bad
MAC, or not newer than the last one from that node (a replay), is dropped. Without the key (not mounted) the
heartbeats are plain, as memberlist is without its secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import cast

log = logging.getLogger("kwire.metallb.members")

PORT = 7946
INTERVAL = 0.2
DEAD_AFTER = 1.0
MAGIC = b"kwire-metallb "


class Members(asyncio.DatagramProtocol):
    def __init__(
        self, node: str, peers: Callable[[], dict[str, str]], *, port: int = PORT, key: bytes | None = None
    ) -> None:
        self.node = node
        self.key = key
        self._last: dict[str, int] = {}  # node -> newest authenticated timestamp (replays are dropped)
        self.peers = peers  # node name -> host IP, of the other speakers
        self.port = port
        self.heard: dict[str, float] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's UDPTransport is one in all but name

    def message(self) -> bytes:
        if self.key is None:
            return MAGIC + self.node.encode()
        body = MAGIC + f"{self.node} {time.time_ns()}".encode()
        return body + b" " + hmac.new(self.key, body, hashlib.sha256).hexdigest().encode()

    def sender(self, data: bytes) -> str | None:
        """The node a heartbeat comes from, or None when it is not a valid one."""
        if not data.startswith(MAGIC) or len(data) > 300:
            return None
        if self.key is None:
            return data[len(MAGIC) :].decode(errors="replace")
        body, _, mac = data.rpartition(b" ")
        if not hmac.compare_digest(mac, hmac.new(self.key, body, hashlib.sha256).hexdigest().encode()):
            return None
        name, _, stamp = body[len(MAGIC) :].decode(errors="replace").rpartition(" ")
        try:
            ts = int(stamp)
        except ValueError:
            return None
        if ts <= self._last.get(name, 0):
            return None
        self._last[name] = ts
        return name

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        name = self.sender(data)
        if name and name != self.node:
            self.heard[name] = time.monotonic()

    def alive(self) -> set[str]:
        now = time.monotonic()
        live = {n for n, t in self.heard.items() if now - t <= DEAD_AFTER}
        live.add(self.node)
        return live

    async def run(self, bind: str = "0.0.0.0") -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(bind, self.port))
        while True:
            assert self.transport is not None
            msg = self.message()
            for name, ip in self.peers().items():
                if name != self.node and ip:
                    try:
                        self.transport.sendto(msg, (ip, self.port))
                    except OSError as exc:
                        log.debug("heartbeat to %s: %s", name, exc)
            if len(self.heard) > 4096:  # bounded: forget speakers not heard for a minute
                cutoff = time.monotonic() - 60
                self.heard = {n: t for n, t in self.heard.items() if t >= cutoff}
                self._last = {n: ts for n, ts in self._last.items() if n in self.heard}
            await asyncio.sleep(INTERVAL)
