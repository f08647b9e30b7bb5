"""Entry point of the node's pod runtime process: `python -m kwire.agent.kubelet.runtime_main --state-dir DIR`.

The agent starts the runtime with this module rather than `kwire runtime` so that the process, which lives as
long as the node's pods do, imports only what it needs. It never speaks TLS, so the ssl module (libssl and
libcrypto, ~5 MB of RSS per node) is kept out before asyncio would import it for its optional TLS support; for the
same reason it runs the stdlib event loop (uvloop needs ssl). `kwire runtime` runs the same server for manual use.
"""

import sys

# This must come before the first import of asyncio, which treats ssl as optional.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from kwire.agent.kubelet import runtime  # noqa: E402
from kwire.base import process  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kwire-runtime", description=__doc__)
    ap.add_argument("--state-dir", required=True, help="where the runtime keeps its socket, pid file and pod logs")
    ap.add_argument("-v", "--verbose", action="store_true")
    ns = ap.parse_args(argv)
    process.start(level=logging.DEBUG if ns.verbose else logging.INFO)
    state = Path(ns.state_dir)
    asyncio.run(runtime.serve(state, state / "runtime.sock"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
