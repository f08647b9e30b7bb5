"""`python -m kwire.metricsserver [metrics-server flags]`: the metrics-server pod's program.

It takes the flags K3s's metrics-server manifest passes (`--secure-port`, `--metric-resolution`, `--cert-dir`);
the others (`--kubelet-preferred-address-types`, `--kubelet-use-node-status-port`, `--tls-cipher-suites`, ...) are
about dialling kubelets and TLS tuning that this implementation does not do, and are logged as ignored.
"""

from __future__ import annotations

import argparse
import logging

from kwire.base import process
from kwire.client import ApiClient, in_cluster_config
from kwire.metricsserver.server import Settings, run

log = logging.getLogger("kwire.metricsserver")


def _duration(text: str) -> float:
    """A Go duration as metrics-server takes it: `15s`, `1m`, `500ms`."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def parse(argv: list[str] | None) -> tuple[Settings, list[str]]:
    p = argparse.ArgumentParser(prog="metrics-server")
    p.add_argument("--secure-port", type=int, default=10250)
    p.add_argument("--metric-resolution", type=_duration, default=60.0)
    p.add_argument("--cert-dir", default="")
    args, unknown = p.parse_known_args(argv)
    return Settings(secure_port=args.secure_port, resolution=args.metric_resolution, cert_dir=args.cert_dir), unknown


def main(argv: list[str] | None = None) -> int:
    process.start()
    settings, ignored = parse(argv)
    if ignored:
        log.info("ignoring flags kwire's metrics-server does not use: %s", " ".join(ignored))
    return process.run_daemon(lambda: run(ApiClient(in_cluster_config()), settings), log=log)


if __name__ == "__main__":
    raise SystemExit(main())
