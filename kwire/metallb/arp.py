"""ARP for the IPs this node leads (MetalLB's `internal/layer2/arp.go`), on a raw AF_PACKET socket.

Hand-written (about 60 lines of struct packing) because the packet libraries on PyPI (scapy) are far heavier than
an ARP reply, and MetalLB does the same with its own small codec. The speaker runs in the node's network namespace
(hostNetwork), so the socket is bound to the node's LAN interface there. Requests for an announced IP get a reply
with this interface's MAC; the kernel itself stays silent for them (the IPs are not local addresses).
`gratuitous` sends the unsolicited request and reply MetalLB sends when it takes over an IP.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kwire.metallb.metrics import Metrics

log = logging.getLogger("kwire.metallb.arp")

ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
BROADCAST = b"\xff" * 6


def _frame(dst: bytes, src: bytes, op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    eth = dst + src + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa + tha + tpa
    return eth + arp


def parse_request(frame: bytes) -> tuple[bytes, str, str] | None:
    """An ARP request frame -> (sender MAC, sender IP, target IP); None for anything else."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if (htype, ptype, hlen, plen, op) != (1, 0x0800, 6, 4, 1):
        return None
    sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
    return sha, socket.inet_ntoa(spa), socket.inet_ntoa(tpa)


class ArpResponder:
    """Answers ARP requests for `announced()` IPs on one interface. Non-blocking; the owner calls `on_readable`
    when the socket is readable (asyncio's add_reader)."""

    def __init__(
        self, interface: str, mac: bytes, announced: Callable[[], set[str]], *, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics
        self.interface = interface
        self.mac = mac
        self.announced = announced
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self.sock.bind((interface, ETH_P_ARP))
        self.sock.setblocking(False)
        self.replies = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def on_readable(self) -> None:
        for _ in range(64):  # bounded per wake-up
            try:
                frame, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                return
            if len(addr) > 2 and addr[2] == PACKET_OUTGOING:
                continue
            req = parse_request(frame)
            if req is None:
                continue
            sha, spa, tpa = req
            if tpa not in self.announced():
                continue
            if self.metrics is not None:
                self.metrics.requests.inc(tpa)
            reply = _frame(sha, self.mac, 2, self.mac, socket.inet_aton(tpa), sha, socket.inet_aton(spa))
            try:
                self.sock.send(reply)
                self.replies += 1
                if self.metrics is not None:
                    self.metrics.responses.inc(tpa)
            except OSError as exc:
                log.debug("arp reply for %s: %s", tpa, exc)

    def gratuitous(self, ip: str) -> None:
        if ipaddress.ip_address(ip).version != 4:
            return
        pa = socket.inet_aton(ip)
        for op in (1, 2):
            try:
                self.sock.send(_frame(BROADCAST, self.mac, op, self.mac, pa, b"\x00" * 6 if op == 1 else BROADCAST, pa))
                if self.metrics is not None:
                    self.metrics.gratuitous.inc(ip)
            except OSError as exc:
                log.debug("gratuitous arp for %s: %s", ip, exc)

    def close(self) -> None:
        self.sock.close()
