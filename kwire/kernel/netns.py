"""Named network namespaces (the `ip netns` convention: bind mounts under /run/netns).

Creation and removal go through pyroute2. `inside(name)` switches the *calling thread* into a namespace
(setns(2) is per thread), which is how a socket is opened inside a pod or node namespace and then served from
any thread: a socket keeps the namespace it was created in.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)

RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def path(name: str) -> str:
    return os.path.join(RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def create(name: str) -> None:
    """Create a named namespace (idempotent) with its loopback up."""
    if exists(name):
        return
    # pyroute2 is imported here, not at module level: it costs ~8 MB of RSS (kernel/pyroute.py), and the pod runtime, which only
    # opens sockets inside namespaces, never needs it.
    from kwire.kernel.pyroute import netns as _netns

    _netns.create(name)

    def lo_up() -> None:
        from kwire.kernel.pyroute import IPRoute

        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname="lo")
            if idx:
                ipr.link("set", index=idx[0], state="up")

    # pyroute2's sync IPRoute must not run on a thread with a running asyncio loop: use the worker thread.
    run_in(name, lo_up)


def remove(name: str) -> None:
    """Remove a named namespace (idempotent). Processes still inside keep it alive until they exit."""
    if not exists(name):
        return
    from kwire.kernel.pyroute import netns as _netns

    try:
        _netns.remove(name)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def list_names(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(RUN_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the body with the calling thread in namespace `name`, then switch back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path(name), os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kwire-netns")
_lock = threading.Lock()


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Call fn in a worker thread that is inside namespace `name` (the caller's thread is never moved)."""

    def call() -> T:
        with inside(name):
            return fn()

    with _lock:
        fut = _pool.submit(call)
    return fut.result()


def open_socket(
    name: str, family: int, type_: int, *, bind: tuple[str, int] | None = None, reuse: bool = True
) -> socket.socket:
    """A socket created (and optionally bound) inside namespace `name` ("" = the caller's namespace)."""

    def make() -> socket.socket:
        s = socket.socket(family, type_)
        try:
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if bind is not None:
                s.bind(bind)
        except OSError:
            s.close()
            raise
        return s

    if not name:  # the caller's own namespace (a hostNetwork pod)
        return make()
    return run_in(name, make)
