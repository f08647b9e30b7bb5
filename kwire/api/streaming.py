"""Large responses written in bounded chunks: list bodies and a watch's initial events.

kube-apiserver streams list responses and serves a watch's initial events one by one from its watch cache.
Building a whole list as one object and one bytes string per request made a 500 MB list stall the event loop for
seconds, and 200 concurrent watches with initial events over 16 MB of ConfigMaps took the server to gigabytes that
the allocator never gave back. Here objects are decoded and serialized one batch at a time (`CHUNK` bytes), each
batch is written with the transport's back-pressure (a slow reader holds one batch, not the list) and followed by
a turn of the event loop, so a response's memory is bounded by a batch and health checks stay responsive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from kwire.base import memory

JSON = "application/json"
CHUNK = 128 * 1024
LARGE = 4 * 1024 * 1024  # a response this big has freed enough memory to be worth a trim


class ChunkWriter:
    """Collects byte strings and writes them to a prepared stream response about `chunk` bytes at a time."""

    def __init__(self, resp: web.StreamResponse, *, chunk: int = CHUNK) -> None:
        self._resp = resp
        self._chunk = chunk
        self._parts: list[bytes] = []
        self._size = 0
        self.written = 0

    async def add(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= self._chunk:
            await self.flush()

    async def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts, self._size = [], 0
            self.written += len(data)
            await self._resp.write(data)
        await asyncio.sleep(0)  # let other requests (health checks, writes) in between batches

    def done(self) -> None:
        """The response is complete: after a large one, give the freed buffers back to the system."""
        if self.written >= LARGE:
            memory.trim_soon()


async def write_list(
    request: web.Request,
    *,
    kind: str,
    api_version: str,
    items: Iterable[dict[str, Any]],
    metadata: Any,
) -> web.StreamResponse:
    """Stream `{"kind", "apiVersion", "items": [...], "metadata": {...}}`.

    `items` is consumed lazily; `metadata` is called after the items (a list's continue token is known only once
    the scan has stopped at its limit), which is why it is written last: JSON members have no order.
    """
    resp = web.StreamResponse(status=200, headers={"Content-Type": JSON})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    out = ChunkWriter(resp)
    await out.add(b'{"kind":' + orjson.dumps(kind) + b',"apiVersion":' + orjson.dumps(api_version) + b',"items":[')
    sep = b""
    for obj in items:
        await out.add(sep + orjson.dumps(obj))
        sep = b","
    await out.add(b'],"metadata":' + orjson.dumps(metadata()) + b"}")
    await out.flush()
    await resp.write_eof()
    out.done()
    return resp
