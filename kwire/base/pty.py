"""Reading a pseudo-terminal's master side from asyncio (for `kubectl exec -t` and `tty: true` containers).

Stdlib only: the pod runtime imports it and must stay small.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

READ_CHUNK = 64 * 1024


async def read_master(master: int) -> AsyncIterator[bytes]:
    """What the terminal's programs write, chunk by chunk, until it closes: the master reads EIO once every
    holder of the slave side (the command and its children) has exited."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    os.set_blocking(master, False)
    loop.add_reader(master, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            try:
                chunk = os.read(master, READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not chunk:
                return
            yield chunk
    finally:
        loop.remove_reader(master)
