"""What every kwire process does at its entry point: memory settings, logging, signals and the event loop.

Owns the start of a process (`start`: glibc's mmap threshold pinned, log lines on stderr in one format at the
level the flags ask for), waiting for SIGTERM/SIGINT (`wait_for_stop_signal`), and running a daemon's main
coroutine on uvloop until a signal cancels it (`run_daemon`). The programs that stand in for upstream pods
(CoreDNS, metrics-server, MetalLB's controller and speaker) stop the way their Go originals do on SIGTERM: the
main task is cancelled, its `finally` blocks close what it opened, and the process exits 0; a socket that cannot
be bound at start is one "cannot serve" line and exit status 1, not a traceback.

asyncio and uvloop are imported only by the functions that run a loop: `start` costs nothing, so the lab's
supervisor (which imports `kwire.cli.main` and nothing of asyncio) and the pod runtime (which keeps ssl, hence
uvloop, out: `kwire.agent.kubelet.runtime_main`) use it too.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from kwire.base import memory

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def log_level(name: str | int) -> int:
    """A level from a flag (`info`, `DEBUG`, 10); a name logging does not know is INFO."""
    if isinstance(name, int):
        return name
    level = getattr(logging, name.strip().upper(), None)
    return level if isinstance(level, int) else logging.INFO


def start(*, level: str | int = logging.INFO) -> None:
    """The first thing a kwire process does: big buffers in their own mmaps (`memory.pin_mmap_threshold`) and
    log lines on stderr as `time LEVEL logger: message`."""
    memory.pin_mmap_threshold()
    logging.basicConfig(level=log_level(level), stream=sys.stderr, format=LOG_FORMAT)


async def wait_for_stop_signal() -> None:
    """Return when the process receives SIGTERM or SIGINT (for a main that closes its parts in order itself)."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError):  # no signal handlers outside the main thread
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run_daemon(
    main: Callable[[], Coroutine[Any, Any, None]],
    *,
    log: logging.Logger,
    fatal: tuple[type[Exception], ...] = (OSError,),
) -> int:
    """Run `main()` on uvloop until it returns or SIGTERM/SIGINT cancels it; the process's exit status.

    A signal cancels the main task ("stopping" is logged; the coroutine's `finally` blocks clean up) and the
    status is 0; an error of a `fatal` type out of the loop (an OSError: a port already taken; the ingress
    controller adds RuntimeError: nginx refused to start) is logged as "cannot serve" and the status is 1.
    """
    import asyncio

    import uvloop

    async def _until_signalled() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, task.cancel)
        try:
            await main()
        except asyncio.CancelledError:
            log.info("stopping")

    try:
        uvloop.run(_until_signalled())
    except fatal as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0
