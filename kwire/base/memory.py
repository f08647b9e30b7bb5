"""Giving freed heap memory back to the operating system (glibc's `malloc_trim`).

CPython hands objects larger than 512 bytes (the JSON of every stored object, every response chunk) to glibc's
malloc. glibc returns freed memory to the system only from the top of each heap, so after a burst of large
short-lived buffers (a watch storm's initial events, a huge list) the freed memory stays in the process as
fragmented free space: RSS measured after the burst keeps its peak for good. `malloc_trim(0)` releases the free
pages inside the heaps too. Each call walks the heaps (a few milliseconds for hundreds of MB), so it runs rarely:
`trim_soon()` after a large response has been freed (at most one trim a second), and `trim_periodically` as a
daemon's background safety net.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


def _libc_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


_TRIM = _libc_trim()


def trim() -> bool:
    """Release free heap memory to the system now; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


_pending: asyncio.TimerHandle | None = None


def trim_soon(*, delay: float = 1.0) -> None:
    """Trim once, `delay` seconds from now, unless a trim is already scheduled (call from the event loop)."""
    global _pending
    if _TRIM is None or _pending is not None:
        return

    def run() -> None:
        global _pending
        _pending = None
        trim()

    _pending = asyncio.get_running_loop().call_later(delay, run)


async def trim_periodically(*, interval: float = 60.0) -> None:
    """Run until cancelled, trimming every `interval` seconds."""
    if _TRIM is None:
        log.debug("malloc_trim not available; freed memory is left to the C library")
        return
    while True:
        await asyncio.sleep(interval)
        trim()
