"""A small HTTP/1.1 server on asyncio streams, for the processes that must stay small.

The pod runtime (one per node, next to every agent) serves a unix-socket JSON API and the responders' single
route. aiohttp's server would cost it ~17 MB of RSS per process just by being imported, which is most of the lab's
memory budget, so these use h11 (python-hyper's sans-IO HTTP/1.1 state machine: parsing, framing, keep-alive,
100-continue) and this module only moves bytes between h11 and a socket. Daemons that already import aiohttp (the
API server, the agent, the DNS pod) keep using aiohttp.web.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
MAX_HEAD = 64 * 1024
READ_CHUNK = 65536


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: list[tuple[str, str]]  # in the sender's order and letter case
    body: bytes
    peer: tuple[str, int] | None  # None on a unix socket

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"


Handler = Callable[[Request], Awaitable[Response]]


class _BodyTooLarge(Exception):
    pass


async def _next_request(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[h11.Request, bytes] | None:
    """The next whole request on the connection, or None when the client closed it."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            conn.receive_data(await reader.read(READ_CHUNK))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _BodyTooLarge
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _response_bytes(conn: h11.Connection, resp: Response, *, head_only: bool, close: bool = False) -> bytes:
    headers = [("content-type", resp.content_type), ("content-length", str(len(resp.body)))]
    if close:
        headers.append(("connection", "close"))
    try:
        reason = http.HTTPStatus(resp.status).phrase.encode("ascii")
    except ValueError:
        reason = b""
    out = conn.send(h11.Response(status_code=resp.status, headers=headers, reason=reason))
    if not head_only and resp.body:
        out += conn.send(h11.Data(data=resp.body))
    return out + conn.send(h11.EndOfMessage())


async def _serve_connection(handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    peername = writer.get_extra_info("peername")
    peer = (str(peername[0]), int(peername[1])) if isinstance(peername, tuple) and len(peername) >= 2 else None
    try:
        while True:
            try:
                got = await _next_request(conn, reader, writer)
            except (h11.RemoteProtocolError, _BodyTooLarge) as exc:
                # A malformed or oversized request gets its 4xx (when the response has not started) and the
                # connection is closed: never a dead task or a half-written reply.
                status = 413 if isinstance(exc, _BodyTooLarge) else getattr(exc, "error_status_hint", 400)
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    body = b'{"error": "bad request"}\n' if status != 413 else b'{"error": "request body too large"}\n'
                    with contextlib.suppress(h11.LocalProtocolError):
                        writer.write(_response_bytes(conn, Response(status, body), head_only=False, close=True))
                        await writer.drain()
                return
            if got is None:
                return
            head, body = got
            req = Request(
                method=head.method.decode("ascii", "replace"),
                target=head.target.decode("utf-8", "replace"),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers.raw_items()],
                body=body,
                peer=peer,
            )
            try:
                resp = await handler(req)
            except Exception:  # a handler bug answers 500; the server and other connections go on
                log.exception("http: %s %s failed", req.method, req.target)
                resp = Response(500, b'{"error": "internal error"}\n')
            writer.write(_response_bytes(conn, resp, head_only=req.method == "HEAD"))
            await writer.drain()
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


class HttpServer:
    """One listening socket served with `handler`; close() also ends its open keep-alive connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            await _serve_connection(self.handler, reader, writer)
        finally:
            self._conns.discard(writer)

    async def start_socket(self, sock: socket.socket) -> None:
        """Serve an already bound and listening TCP socket (one opened inside a pod's namespace, say)."""
        self._server = await asyncio.start_server(self._conn, sock=sock)

    async def start_unix(self, path: str) -> None:
        """Serve a unix socket at `path` (replacing a stale socket file)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._conn, path=path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()
