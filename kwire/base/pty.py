"""Reading a pseudo-terminal's master side from asyncio (for `kubectl exec -t` and `tty: true` containers).

Stdlib only: the pod runtime imports it and must stay small.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
from collections.abc import AsyncIterator

READ_CHUNK = 64 * 1024
TIOCSPTLCK = 0x40045431  # unlock the slave (what unlockpt() does)
TIOCGPTPEER = 0x5441  # open the slave through the master: no path lookup, whatever the opener's /dev/pts


def open_pty(root: str = "/") -> tuple[int, int]:
    """(master, slave) of a new pseudo-terminal from the devpts instance of the filesystem under `root`: a
    container's own (`/proc/<pid>/root`), so its programs find their terminal in their /dev/pts, as a container
    runtime's console gives them; the node's with the default."""
    if root == "/":
        return os.openpty()
    master = os.open(os.path.join(root, "dev/ptmx"), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        os.close(master)
        raise
    return master, slave


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
