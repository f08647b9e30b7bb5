"""Newline-delimited JSON read from a byte stream, one parsed value per non-blank line.

What a Kubernetes watch response (`?watch=1`: one WatchEvent a line, as client-go's StreamWatcher decodes it) and
etcd's gRPC gateway streams (`/v3/maintenance/snapshot`: one response message a line) send. Chunks rarely end at a
line's end, so the partial last line is kept until its newline arrives; that buffer is bounded (`max_line`), so a
peer that never sends a newline cannot grow it without end.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

MAX_LINE = 64 * 1024 * 1024  # as kwire/store/etcd.py's MAX_WATCH_MESSAGE


async def json_lines(chunks: AsyncIterable[bytes], *, max_line: int = MAX_LINE) -> AsyncIterator[Any]:
    """The JSON value of every non-blank line in `chunks` (e.g. aiohttp's `response.content.iter_any()`);
    raises ValueError on a line that is not JSON or that grows over `max_line` bytes without ending."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = bytes(buf[start:end])
            start = end + 1
            if line.strip():
                yield orjson.loads(line)
        del buf[:start]  # one copy per chunk, not one per line
        if len(buf) > max_line:
            raise ValueError(f"a line of newline-delimited JSON over {max_line} bytes")
