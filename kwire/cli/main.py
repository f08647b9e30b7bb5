"""`kwire` command line: argument parsing only; each command hands a config to a role's run()."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from kwire import config


def _run(coro: Coroutine[Any, Any, Any]) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency, but the stdlib loop works too
        asyncio.run(coro)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _cmd_server(ns: argparse.Namespace) -> int:
    from kwire import server

    cfg = config.load_config(cls=config.ServerConfig, flags=config.flags_from_namespace(ns), config_file=ns.config)
    _run(server.run(cfg))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kwire", description="The K3s cluster networking stack, on real Linux networking."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("server", help="run the control plane (API server, store, controllers)")
    p.add_argument("-c", "--config", default=None, help="config file (K3s keys); default /etc/kwire/config.yaml")
    config.add_arguments(p, config.ServerConfig)
    p.set_defaults(func=_cmd_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    _setup_logging(ns.verbose)
    try:
        return int(ns.func(ns) or 0)
    except config.ConfigError as exc:
        print(f"kwire: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
