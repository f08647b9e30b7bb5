"""Giving freed heap memory back to the operating system (glibc's `malloc_trim`).

CPython hands objects larger than 512 bytes (the JSON of every stored object, every response chunk) to glibc's
malloc. glibc returns freed memory to the system only from the top of each heap, so after a burst of large
short-lived buffers (a watch storm's initial events, a huge list) the freed memory stays in the process as
fragmented free space: RSS measured after the burst keeps its peak for good. `malloc_trim(0)` releases the free
pages inside the heaps too. Each call walks the heaps (a few milliseconds for hundreds of MB), so it runs rarely:
`trim_soon()` after a large response has been freed (at most one trim a second), and `trim_periodically` as a
daemon's background safety net. `pin_mmap_threshold()` keeps big buffers out of the heaps in the first place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # asyncio is imported where it is used: the lab's supervisor, which has no event loop, pays
    import asyncio  # ~9 MB of RSS for it (asyncio brings ssl, libssl and libcrypto)

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


M_MMAP_THRESHOLD = -3  # mallopt parameters (glibc's malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Allocations of `threshold` bytes or more always come from their own mmap and go back on free.

    glibc raises its mmap threshold each time such a chunk is freed (up to 32 MB), after which big buffers are
    carved from the heaps and their arenas; a thread's arena keeps them even through `malloc_trim`. The node
    password check's scrypt (16 MB per call, in worker threads) left the server ~50 MB larger for good that way,
    and a burst of large responses does the same. Setting the threshold explicitly turns the adjustment off.
    Called once at start by every kwire process; False where the C library has no mallopt."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


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

    import asyncio

    _pending = asyncio.get_running_loop().call_later(delay, run)


async def trim_periodically(*, interval: float = 60.0) -> None:
    """Run until cancelled, trimming every `interval` seconds."""
    if _TRIM is None:
        log.debug("malloc_trim not available; freed memory is left to the C library")
        return
    import asyncio

    while True:
        await asyncio.sleep(interval)
        trim()


def one_arena() -> bool:
    """Make every thread allocate from glibc's main arena instead of up to 8 per core of its own.

    glibc gives a thread that meets a locked arena an arena of its own (64 MB reserved each), and what a thread
    once allocated there stays resident as that arena's free space. The node agent runs netlink and nftables
    work in worker threads (network namespaces are per thread): one arena measured 6 MB less RSS per agent in a
    3-node lab, at no cost the GIL does not already impose. Call at start, before any thread exists."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False
