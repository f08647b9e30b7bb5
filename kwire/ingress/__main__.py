"""`python -m kwire.ingress [flags]`: the ingress controller process (the `traefik` pod's command).

Reads the API with the pod's service account (or --kubeconfig), runs nginx as its child in the same network
namespace, and exits non-zero when it cannot serve (the kubelet restarts it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import uvloop

from kwire.base import memory
from kwire.client import ApiClient, in_cluster_config, load_kubeconfig
from kwire.client.kubeconfig import Config
from kwire.ingress.controller import IngressController, Settings

SA_DIR_ENV = "KWIRE_SERVICEACCOUNT_DIR"


def kube_config(kubeconfig: str | None) -> Config:
    if kubeconfig:
        return load_kubeconfig(kubeconfig)
    sa_dir = os.environ.get(SA_DIR_ENV)
    return in_cluster_config(os.environ, Path(sa_dir)) if sa_dir else in_cluster_config(os.environ)


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
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    async with ApiClient(kube_config(a.kubeconfig)) as client:
        try:
            await IngressController(client, settings).run()
        except asyncio.CancelledError:
            logging.getLogger("kwire.ingress").info("stopping")


def main(argv: list[str] | None = None) -> int:
    memory.pin_mmap_threshold()
    a, settings = parse(argv)
    level = logging.DEBUG if a.verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvloop.run(_main(a, settings))
    except (OSError, RuntimeError) as exc:
        logging.getLogger("kwire.ingress").error("cannot serve: %s", exc)
        return 1
    finally:
        if not a.state_dir:  # the temporary directory made for this run (configuration, certificates, socket)
            shutil.rmtree(settings.state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
