"""`python -m kwire.dns [flags]`: the cluster DNS server process (the coredns pod's command)."""

from __future__ import annotations

import logging

from kwire.base import process
from kwire.dns.config import from_args
from kwire.dns.server import run


def main(argv: list[str] | None = None) -> int:
    cfg = from_args(argv)
    process.start()
    return process.run_daemon(lambda: run(cfg), log=logging.getLogger("kwire.dns"))


if __name__ == "__main__":
    raise SystemExit(main())
