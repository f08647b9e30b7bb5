"""`python -m kwire.ingress [flags]`: the ingress controller process (the `traefik` pod's command).

Reads the API with the pod's service account (or --kubeconfig), runs nginx as its child in the same network
namespace, and exits non-zero when it cannot serve (the kubelet restarts it).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from kwire.base import process
from kwire.client import ApiClient
from kwire.client.kubeconfig import flag_or_in_cluster
from kwire.ingress.controller import IngressController, Settings

log = logging.getLogger("kwire.ingress")


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(prog="kwire.ingress", description=__doc__)
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster service account)")
    p.add_argument("--service", default="kube-system/traefik", help="the Service whose addresses Ingresses report")
    p.add_argument("--state-dir", default="", help="private directory for nginx's files (default: a new temp dir)")
    p.add_argument("--http-port", type=int, default=80)
    p.add_argument("--https-port", type=int, default=443)
    p.add_argument("--ping-port", type=int, default=9000, help="readiness: GET /ping answers 200 once serving")
    p.add_argument("--workers", type=int, default=1, help="nginx worker processes")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    ns, _, name = str(a.service).partition("/")
    state = Path(a.state_dir) if a.state_dir else Path(tempfile.mkdtemp(prefix="kwire-ingress-"))
    return a, Settings(
        service_namespace=ns,
        service_name=name,
        state_dir=state,
        http_port=a.http_port,
        https_port=a.https_port,
        ping_port=a.ping_port,
        workers=a.workers,
    )


async def _main(a: argparse.Namespace, settings: Settings) -> None:
    async with ApiClient(flag_or_in_cluster(a.kubeconfig)) as client:
        await IngressController(client, settings).run()


def main(argv: list[str] | None = None) -> int:
    a, settings = parse(argv)
    process.start(level=logging.DEBUG if a.verbose else logging.INFO)
    try:  # RuntimeError: nginx refused the configuration or did not start
        return process.run_daemon(lambda: _main(a, settings), log=log, fatal=(OSError, RuntimeError))
    finally:
        if not a.state_dir:  # the temporary directory made for this run (configuration, certificates, socket)
            shutil.rmtree(settings.state_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
