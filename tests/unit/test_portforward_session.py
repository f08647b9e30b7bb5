"""The kubelet's port-forward sessions against a real WebSocket and real TCP on 127.0.0.1 (netns "" = this
process's namespace, as for a hostNetwork pod): kubectl's SPDY stream pairs (SYN_REPLY to each, bytes both ways,
the client's FIN reaching the server as end-of-input, the error stream carrying containerd's refusal, PING echoed,
half-opened pairs bounded) and the Python client's v4.channel.k8s.io channels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from kwire.agent.kubelet import portforward, spdy
from kwire.agent.kubelet.portforward import ForwardTarget, serve_port_forward
from tests.integration.apiserver import free_port


@contextlib.asynccontextmanager
async def _kubelet() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_port_forward(request, target=ForwardTarget(netns="", pod_uid="uid-1"))

    app = web.Application()
    app.router.add_get("/portForward/ns/pod", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/portForward/ns/pod"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _upper_server() -> AsyncIterator[int]:
    """Answers each line (or what precedes the client's half-close), upper-cased; closes after the client's EOF."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


class Client:
    """kubectl's side of the SPDY session, as client-go's portforward writes it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.headers = spdy.Headers()
        self.parser = spdy.Parser()
        self.frames: list[spdy.Frame] = []
        self.next_id = 1

    async def open(self, kind: str, port: int, request_id: str) -> int:
        sid, self.next_id = self.next_id, self.next_id + 2
        block = self.headers.encode({"streamType": kind, "port": str(port), "requestID": request_id})
        await self.ws.send_bytes(spdy.control(spdy.SYN_STREAM, sid.to_bytes(4, "big") + bytes(6) + block))
        return sid

    async def until(self, pred: object, timeout: float = 10.0) -> spdy.Frame:
        assert callable(pred)
        async with asyncio.timeout(timeout):
            while True:
                for f in self.frames:
                    if pred(f):
                        self.frames.remove(f)
                        return f
                msg = await self.ws.receive()
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                self.frames += self.parser.feed(msg.data)

    async def read_stream(self, sid: int) -> bytes:
        out = b""
        while True:
            f = await self.until(lambda f, sid=sid: not f.control and f.stream_id == sid)
            out += f.payload
            if f.flags & spdy.FLAG_FIN:
                return out


async def test_spdy_streams_forward_bytes_and_report_refusals() -> None:
    async with _kubelet() as url, _upper_server() as port, aiohttp.ClientSession() as session:
        async with session.ws_connect(url, protocols=[portforward.PROTOCOL]) as ws:
            assert ws.protocol == portforward.PROTOCOL
            c = Client(ws)
            err = await c.open("error", port, "0")
            await c.until(lambda f: f.control and f.type == spdy.SYN_REPLY and f.stream_id == err)
            data = await c.open("data", port, "0")
            await c.until(lambda f: f.control and f.type == spdy.SYN_REPLY and f.stream_id == data)
            await ws.send_bytes(spdy.data(data, b"hello ") + spdy.data(data, b"pod", fin=True))
            assert await c.read_stream(data) == b"HELLO POD"
            assert await c.read_stream(err) == b""  # no error: an empty FIN

            await ws.send_bytes(spdy.control(spdy.PING, (5).to_bytes(4, "big")))
            pong = await c.until(lambda f: f.control and f.type == spdy.PING)
            assert pong.payload == (5).to_bytes(4, "big")

            closed = free_port()  # nothing listens there
            err2 = await c.open("error", closed, "1")
            data2 = await c.open("data", closed, "1")
            message = (await c.read_stream(err2)).decode()
            assert message.startswith(f"error forwarding port {closed} to pod uid-1, uid : ")
            assert f"dial tcp4 127.0.0.1:{closed}: connect: connection refused" in message
            assert await c.read_stream(data2) == b""


async def test_half_opened_pairs_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(portforward, "MAX_PENDING_PAIRS", 2)
    async with _kubelet() as url, aiohttp.ClientSession() as session:
        async with session.ws_connect(url, protocols=[portforward.PROTOCOL]) as ws:
            c = Client(ws)
            for request_id in ("a", "b", "c"):
                await c.open("error", 1, request_id)
            rst = await c.until(lambda f: f.control and f.type == spdy.RST_STREAM)
            assert rst.stream_id == 5 and rst.payload[4:] == spdy.RST_REFUSED_STREAM.to_bytes(4, "big")


async def test_channel_protocol_of_the_python_client() -> None:
    async with _kubelet() as url, _upper_server() as port, aiohttp.ClientSession() as session:
        closed = free_port()
        async with session.ws_connect(f"{url}?ports={port},{closed}", protocols=[portforward.CHANNEL_PROTOCOL]) as ws:
            assert ws.protocol == portforward.CHANNEL_PROTOCOL
            opening = [await ws.receive_bytes(timeout=10) for _ in range(4)]
            assert opening == [
                b"\x00" + port.to_bytes(2, "little"),
                b"\x01" + port.to_bytes(2, "little"),
                b"\x02" + closed.to_bytes(2, "little"),
                b"\x03" + closed.to_bytes(2, "little"),
            ]
            refused = await ws.receive_bytes(timeout=10)
            assert refused[0] == 3 and b"connect: connection refused" in refused
            await ws.send_bytes(b"\x00abc\n")
            assert await ws.receive_bytes(timeout=10) == b"\x00ABC\n"
