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
from aiohttp import web

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
    runners: list[web.AppRunner] = field(default_factory=list)
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


def _http_app(ident: PodIdentity, port: int) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        body: dict[str, Any] = {
            "pod": ident.name,
            "namespace": ident.namespace,
            "node": ident.node,
            "podIP": ident.pod_ip,
            "port": port,
            "clientIP": peer[0] if peer else None,
            "clientPort": peer[1] if peer else None,
            "method": request.method,
            "path": request.path_qs,
            "headers": {str(k): v for k, v in request.headers.items()},
        }
        return web.Response(body=orjson.dumps(body) + b"\n", content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class Responders:
    """The set of responders of one node, keyed by pod uid."""

    def __init__(self) -> None:
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
                    sock = netns.open_socket(ident.netns, socket.AF_INET, socket.SOCK_DGRAM, bind=("0.0.0.0", port))
                    transport, _ = await loop.create_datagram_endpoint(_Echo, sock=sock)
                    servers.transports.append(transport)
                elif proto == "TCP":
                    sock = netns.open_socket(ident.netns, socket.AF_INET, socket.SOCK_STREAM, bind=("0.0.0.0", port))
                    sock.listen(128)
                    runner = web.AppRunner(_http_app(ident, port), access_log=None, handle_signals=False)
                    await runner.setup()
                    await web.SockSite(runner, sock).start()
                    servers.runners.append(runner)
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
        for r in servers.runners:
            await r.cleanup()

    async def close(self) -> None:
        for uid in list(self._pods):
            await self.remove(uid)
