"""The kubelet's `/portForward/{namespace}/{pod}` (what `kubectl port-forward` reaches through the API server's
`pods/portforward`), as kubelet's streaming server and containerd's PortForward serve it.

kubectl 1.32 asks for a WebSocket with sub-protocol `SPDY/3.1+portforward.k8s.io` (KEP-4006; its fallback to a
plain SPDY upgrade is not served: the API server accepts the WebSocket, so the fallback is never needed). Inside,
SPDY/3.1 (spdy.py): for every local connection kubectl opens an `error` stream and a `data` stream carrying the
same `requestID` and the remote `port`; each gets a SYN_REPLY at once (kubectl waits for it). Once a pair is
complete, a TCP connection is made to 127.0.0.1:PORT *inside the pod's network namespace* (the socket is created
there, kwire/kernel/netns.py) and bytes are copied both ways: client bytes to the pod, the pod's answers as DATA
frames. A half-close travels on (the client's FIN shuts the pod socket's write side; the pod's EOF is a FIN on the
data stream); when one direction has ended the other gets 1 s, as containerd does, then both streams are FINished.
A connection that cannot be made is reported on the error stream in containerd's words, which kubectl prints as
`an error occurred forwarding 8080 -> 80: error forwarding port 80 to pod ...: connect: connection refused`; the
session stays up for the next connection. PINGs are answered; GOAWAY or the WebSocket's end ends the session and
every forward in it. Buffers are bounded: at most `QUEUE` chunks wait per direction.

The Python client's `portforward()` asks for `v4.channel.k8s.io` instead, kubelet's older WebSocket port-forward:
`ChannelSession` (ports in the query, two channels per port, one connection per port made at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from kwire.agent.kubelet import spdy
from kwire.kernel import netns

log = logging.getLogger(__name__)

PROTOCOL = "SPDY/3.1+portforward.k8s.io"
CHANNEL_PROTOCOL = "v4.channel.k8s.io"
CHUNK = 32 * 1024
QUEUE = 64
HALF_CLOSE_GRACE = 1.0
CONNECT_TIMEOUT = 10.0
MAX_PENDING_PAIRS = 256  # streams waiting for their partner (kubectl opens the two back to back)


@dataclass(frozen=True)
class ForwardTarget:
    """The pod's network namespace ("" = the node's, for hostNetwork pods) and its sandbox name for messages."""

    netns: str
    pod_uid: str = ""


@dataclass
class _Pair:
    port: str = ""
    error: int = 0
    data: int = 0
    inbox: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(QUEUE))


async def dial(target: ForwardTarget, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to 127.0.0.1:port inside the pod's network namespace."""
    sock = await asyncio.to_thread(netns.open_socket, target.netns, socket.AF_INET, socket.SOCK_STREAM, reuse=False)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), CONNECT_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def dial_error(target: ForwardTarget, port: int, exc: BaseException) -> str:
    """containerd's message for a connection that could not be made (what kubectl shows after its own prefix)."""
    if isinstance(exc, TimeoutError):
        reason = "i/o timeout"
    elif isinstance(exc, OSError) and exc.errno is not None:
        reason = (
            "connect: " + os.strerror(exc.errno).lower()
            if exc.errno != errno.ECONNREFUSED
            else "connect: connection refused"
        )
    else:
        reason = str(exc)
    where = netns.path(target.netns) if target.netns else "host"
    return (
        f"error forwarding port {port} to pod {target.pod_uid}, uid : failed to execute portforward in network "
        f'namespace "{where}": failed to connect to localhost:{port} inside namespace "{target.netns}", '
        f"IPv4: dial tcp4 127.0.0.1:{port}: {reason} "
    )


class Session:
    """One SPDY port-forward session over a WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, target: ForwardTarget) -> None:
        self.ws = ws
        self.target = target
        self.headers = spdy.Headers()
        self.out: asyncio.Queue[tuple[str, int, bytes, bool]] = asyncio.Queue(QUEUE)
        self.pairs: dict[str, _Pair] = {}
        self.inboxes: dict[int, asyncio.Queue[bytes | None]] = {}  # data stream -> bytes for the pod
        self.tasks: set[asyncio.Task[None]] = set()

    async def send(self, kind: str, stream_id: int, payload: bytes = b"", *, fin: bool = False) -> None:
        await self.out.put((kind, stream_id, payload, fin))

    async def _writer(self) -> None:
        # One writer: SYN_REPLY header blocks share one compression context and must leave in order.
        while True:
            kind, sid, payload, fin = await self.out.get()
            if kind == "reply":
                frame = spdy.control(spdy.SYN_REPLY, sid.to_bytes(4, "big") + self.headers.encode({}))
            elif kind == "data":
                frame = spdy.data(sid, payload, fin=fin)
            elif kind == "rst":
                frame = spdy.control(spdy.RST_STREAM, sid.to_bytes(4, "big") + payload)
            else:  # ping
                frame = spdy.control(spdy.PING, payload)
            await self.ws.send_bytes(frame)

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer())
        parser = spdy.Parser()
        try:
            async for msg in self.ws:
                if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    continue
                raw = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                for frame in parser.feed(raw):
                    if not await self._frame(frame):
                        return
        except spdy.ProtocolError as exc:
            log.warning("port-forward: %s; closing the session", exc)
        finally:
            for q in self.inboxes.values():
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(None)
            for t in list(self.tasks):
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    async def _frame(self, frame: spdy.Frame) -> bool:
        """Handle one frame; False ends the session."""
        if not frame.control:
            inbox = self.inboxes.get(frame.stream_id)
            if inbox is not None:
                if frame.payload:
                    await inbox.put(frame.payload)
                if frame.flags & spdy.FLAG_FIN:
                    await inbox.put(None)
                    self.inboxes.pop(frame.stream_id, None)
            return True
        if frame.type == spdy.SYN_STREAM:
            headers = spdy.syn_stream_headers(frame, self.headers)  # always decoded: the context is shared
            kind, port = headers.get("streamtype", ""), headers.get("port", "")
            if kind not in ("error", "data"):
                await self.send("rst", frame.stream_id, spdy.RST_PROTOCOL_ERROR.to_bytes(4, "big"))
                return True
            key = headers.get("requestid") or f"port:{port}"
            if key not in self.pairs and len(self.pairs) >= MAX_PENDING_PAIRS:
                # half-opened pairs are bounded: a client that never completes them gets resets
                await self.send("rst", frame.stream_id, spdy.RST_REFUSED_STREAM.to_bytes(4, "big"))
                return True
            await self.send("reply", frame.stream_id)
            pair = self.pairs.setdefault(key, _Pair(port=port))
            if kind == "error":
                pair.error = frame.stream_id
            else:
                pair.data = frame.stream_id
                self.inboxes[frame.stream_id] = pair.inbox
            if pair.error and pair.data:
                del self.pairs[key]
                task = asyncio.create_task(self._forward(pair))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        elif frame.type == spdy.RST_STREAM:
            inbox = self.inboxes.pop(frame.stream_id, None)
            if inbox is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    inbox.put_nowait(None)
        elif frame.type == spdy.PING:
            await self.send("ping", 0, frame.payload)
        elif frame.type == spdy.GOAWAY:
            return False
        return True  # SETTINGS, WINDOW_UPDATE, HEADERS: nothing port-forward needs

    async def _forward(self, pair: _Pair) -> None:
        try:
            port = int(pair.port)
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            await self._finish(pair, f"invalid port {pair.port!r}")
            return
        try:
            reader, writer = await dial(self.target, port)
        except (OSError, TimeoutError) as exc:
            await self._finish(pair, dial_error(self.target, port, exc))
            return

        async def to_client() -> None:
            while chunk := await reader.read(CHUNK):
                await self.send("data", pair.data, chunk)

        async def to_pod() -> None:
            while (chunk := await pair.inbox.get()) is not None:
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        await _pump(writer, to_client(), to_pod(), grace=HALF_CLOSE_GRACE)
        await self._finish(pair, "")

    async def _finish(self, pair: _Pair, message: str) -> None:
        self.inboxes.pop(pair.data, None)
        if message:
            log.info("port-forward: %s", message)
            await self.send("data", pair.error, message.encode())
        await self.send("data", pair.data, fin=True)
        await self.send("data", pair.error, fin=True)


async def _pump(
    writer: asyncio.StreamWriter,
    to_client: Coroutine[Any, Any, None],
    to_pod: Coroutine[Any, Any, None],
    *,
    grace: float,
) -> None:
    """Both directions of one forwarded connection until one of them ends; the other then gets `grace` seconds to
    finish (a half-close: the client's FIN reached the pod, its answer may still be on the way); then both end and
    the connection to the pod is closed, whatever happened (a session torn down cancels this)."""
    tasks = [asyncio.create_task(to_client), asyncio.create_task(to_pod)]
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class ChannelSession:
    """kubelet's WebSocket port-forward in the channel protocol (`v4.channel.k8s.io`, what the Python client's
    `portforward()` speaks): the ports come in the query (`ports=8080,9090`); port i has data channel 2i and error
    channel 2i+1, each opened by a frame carrying the port number (2 bytes, little-endian); one connection per port
    is made at once, and the session ends when every one of them has ended or the WebSocket closes."""

    def __init__(self, ws: web.WebSocketResponse, target: ForwardTarget, ports: list[int]) -> None:
        self.ws = ws
        self.target = target
        self.ports = ports
        self.inboxes: list[asyncio.Queue[bytes | None]] = [asyncio.Queue(QUEUE) for _ in ports]
        self.lock = asyncio.Lock()

    async def _send(self, channel: int, payload: bytes) -> None:
        async with self.lock:
            await self.ws.send_bytes(bytes([channel]) + payload)

    async def _forward(self, i: int, port: int) -> None:
        try:
            reader, writer = await dial(self.target, port)
        except (OSError, TimeoutError) as exc:
            await self._send(2 * i + 1, dial_error(self.target, port, exc).encode())
            return

        async def to_client() -> None:
            while chunk := await reader.read(CHUNK):
                await self._send(2 * i, chunk)

        async def to_pod() -> None:
            while (chunk := await self.inboxes[i].get()) is not None:
                writer.write(chunk)
                await writer.drain()

        await _pump(writer, to_client(), to_pod(), grace=0.0)

    async def run(self) -> None:
        for i, port in enumerate(self.ports):
            for channel in (2 * i, 2 * i + 1):
                await self._send(channel, port.to_bytes(2, "little"))

        async def forward_all() -> None:
            await asyncio.gather(*(self._forward(i, p) for i, p in enumerate(self.ports)))

        forwards = asyncio.create_task(forward_all())
        reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait([forwards, reader], return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            forwards.cancel()
            await asyncio.gather(reader, forwards, return_exceptions=True)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                continue
            channel, payload = msg.data[0], msg.data[1:]
            if channel % 2 == 0 and channel // 2 < len(self.inboxes) and payload:
                await self.inboxes[channel // 2].put(payload)
        for q in self.inboxes:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)


def query_ports(request: web.Request) -> list[int]:
    """`ports=8080,9090` (or repeated): the remote ports of a channel-protocol session."""
    out: list[int] = []
    for value in request.query.getall("ports", []):
        for part in value.split(","):
            if not part.strip().isdigit() or not 0 < int(part) < 65536:
                raise web.HTTPBadRequest(text=f"invalid port {part!r}")
            out.append(int(part))
    return out


async def serve_port_forward(request: web.Request, *, target: ForwardTarget) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise web.HTTPBadRequest(text=f"port-forward needs a WebSocket with sub-protocol {PROTOCOL}")
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if PROTOCOL in offered:
        ws = web.WebSocketResponse(protocols=[PROTOCOL], heartbeat=30, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        await Session(ws, target).run()
    elif CHANNEL_PROTOCOL in offered:
        ports = query_ports(request)
        if not ports:
            raise web.HTTPBadRequest(text='query parameter "ports" is required')
        ws = web.WebSocketResponse(protocols=[CHANNEL_PROTOCOL], heartbeat=30, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        await ChannelSession(ws, target, ports).run()
    else:
        raise web.HTTPBadRequest(
            text=f"none of the offered sub-protocols {offered} is supported; use {PROTOCOL} or {CHANNEL_PROTOCOL}"
        )
    await ws.close()
    return ws
