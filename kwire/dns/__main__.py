"""`python -m kwire.dns [flags]`: the cluster DNS server process (the coredns pod's command)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from kwire.base import memory
from kwire.dns.config import DnsConfig, from_args
from kwire.dns.server import run


async def _main(cfg: DnsConfig) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await run(cfg)
    except asyncio.CancelledError:
        logging.getLogger("kwire.dns").info("stopping")


def main(argv: list[str] | None = None) -> int:
    memory.pin_mmap_threshold()
    cfg = from_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvloop.run(_main(cfg))
    except OSError as exc:
        logging.getLogger("kwire.dns").error("cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
