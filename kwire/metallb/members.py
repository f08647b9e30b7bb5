"""Which speakers are alive, without waiting for the Node Lease (the role memberlist plays in MetalLB).

Every speaker sends a small UDP heartbeat (`kwire-metallb <node>`) to every other speaker's host IP on port 7946
(memberlist's port, which MetalLB's manifest declares) every 0.2 s, and counts a peer alive while it heard it in
the last second. Chosen over one coordination Lease per node renewed every 0.5 s because it puts no load on the
API server (which matters on a 2-core machine running many nodes), keeps working while the API is slow, and a
node unplugged from the LAN stops being heard at once — which is what a client on that LAN sees too. A speaker
always counts itself alive.
"""

from __future__ import annotations

import asyncio
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
    def __init__(self, node: str, peers: Callable[[], dict[str, str]], *, port: int = PORT) -> None:
        self.node = node
        self.peers = peers  # node name -> host IP, of the other speakers
        self.port = port
        self.heard: dict[str, float] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's UDPTransport is one in all but name

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if data.startswith(MAGIC) and len(data) < 300:
            name = data[len(MAGIC) :].decode(errors="replace")
            if name != self.node:
                self.heard[name] = time.monotonic()

    def alive(self) -> set[str]:
        now = time.monotonic()
        live = {n for n, t in self.heard.items() if now - t <= DEAD_AFTER}
        live.add(self.node)
        return live

    async def run(self, bind: str = "0.0.0.0") -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(bind, self.port))
        msg = MAGIC + self.node.encode()
        while True:
            assert self.transport is not None
            for name, ip in self.peers().items():
                if name != self.node and ip:
                    try:
                        self.transport.sendto(msg, (ip, self.port))
                    except OSError as exc:
                        log.debug("heartbeat to %s: %s", name, exc)
            if len(self.heard) > 4096:  # bounded: forget speakers not heard for a minute
                cutoff = time.monotonic() - 60
                self.heard = {n: t for n, t in self.heard.items() if t >= cutoff}
            await asyncio.sleep(INTERVAL)
