"""Responders: what answers on a pod's declared containerPorts when its image is not one kwire runs itself.

Every TCP containerPort answers HTTP with a JSON document describing the pod and the request (pod name,
namespace, node, pod IP, the client's address and port as the pod sees it, path, headers); every UDP port
echoes each datagram back, prefixed by nothing (a plain echo, so DNS-style clients and `nc -u` both work).
All responders of a node are served from one event loop: each listening socket is created inside its pod's
network namespace and keeps that namespace for its whole life.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from kwire.base import http11
from kwire.kernel import netns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodIdentity:
    name: str
    namespace: str
    node: str
    pod_ip: str
    netns: str


@dataclass
class _PodServers:
    ident: PodIdentity
    servers: list[http11.HttpServer] = field(default_factory=list)
    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    ports: list[tuple[int, str]] = field(default_factory=list)


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)


def _http_handler(ident: PodIdentity, port: int) -> http11.Handler:
    async def handle(request: http11.Request) -> http11.Response:
        peer = request.peer
        body: dict[str, Any] = {
            "pod": ident.name,
            "namespace": ident.namespace,
            "node": ident.node,
            "podIP": ident.pod_ip,
            "port": port,
            "clientIP": peer[0] if peer else None,
            "clientPort": peer[1] if peer else None,
            "method": request.method,
            "path": request.target,
            "headers": dict(request.headers),
        }
        return http11.Response(200, orjson.dumps(body) + b"\n")

    return handle


class Responders:
    """The set of responders of one node, keyed by pod uid."""

    def __init__(self, *, bind_host: str = "0.0.0.0") -> None:
        # bind_host is 0.0.0.0 in a pod's namespace (as a container listens); tests in the machine's own
        # namespace use 127.0.0.1.
        self.bind_host = bind_host
        self._pods: dict[str, _PodServers] = {}

    def pods(self) -> dict[str, list[tuple[int, str]]]:
        return {uid: list(p.ports) for uid, p in self._pods.items()}

    async def ensure(self, uid: str, ident: PodIdentity, ports: list[tuple[int, str]]) -> None:
        """Serve exactly `ports` ((port, "TCP"|"UDP")) for pod `uid` (idempotent)."""
        cur = self._pods.get(uid)
        if cur is not None and cur.ident == ident and sorted(cur.ports) == sorted(ports):
            return
        if cur is not None:
            await self.remove(uid)
        servers = _PodServers(ident)
        self._pods[uid] = servers
        loop = asyncio.get_running_loop()
        for port, proto in ports:
            try:
                if proto == "UDP":
                    sock = netns.open_socket(
                        ident.netns, socket.AF_INET, socket.SOCK_DGRAM, bind=(self.bind_host, port)
                    )
                    transport, _ = await loop.create_datagram_endpoint(_Echo, sock=sock)
                    servers.transports.append(transport)
                elif proto == "TCP":
                    sock = netns.open_socket(
                        ident.netns, socket.AF_INET, socket.SOCK_STREAM, bind=(self.bind_host, port)
                    )
                    sock.listen(128)
                    srv = http11.HttpServer(_http_handler(ident, port))
                    await srv.start_socket(sock)
                    servers.servers.append(srv)
                else:
                    log.warning(
                        "responder: %s/%s port %d/%s: protocol not served", ident.namespace, ident.name, port, proto
                    )
                    continue
                servers.ports.append((port, proto))
            except OSError as exc:
                # A port that cannot be bound (taken by a hostNetwork pod, say) must not stop the others.
                log.warning("responder: %s/%s cannot serve %d/%s: %s", ident.namespace, ident.name, port, proto, exc)

    async def remove(self, uid: str) -> None:
        servers = self._pods.pop(uid, None)
        if servers is None:
            return
        for t in servers.transports:
            t.close()
        for srv in servers.servers:
            await srv.close()

    async def close(self) -> None:
        for uid in list(self._pods):
            await self.remove(uid)
