"""High availability numbers (issue 16): API writes/s and watch delivery p99 on SQLite, on PostgreSQL (a private
cluster, `--datastore-endpoint postgres://`), on a one-member embedded etcd and on a three-member embedded etcd (three servers, the bench writing to the first), all in one run; then,
in a `kwire lab up --servers 3`, the time from kill -9 of the server holding the controller Lease to the next
successful write through the lab's 127.0.0.1 address, and to the controllers acting again (a Deployment created
after the kill getting its ReplicaSet).

    .venv/bin/python bench/ha.py [--objects 3000] [--clients 16] [--skip-lab]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

_HERE = Path(__file__).resolve().parent  # off the path: bench/dns.py would shadow dnspython (kwire.lab uses it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from bench.api import _bench, _configmap  # noqa: E402
from kwire.client import load_kubeconfig  # noqa: E402
from kwire.lab import lab  # noqa: E402
from tests.integration.apiserver import ServerProcess, free_port  # noqa: E402
from tests.integration.pgkit import Postgres  # noqa: E402

BASE = ["--disable", "coredns,servicelb,traefik,metrics-server", "--etcd-disable-snapshots"]
ETCD_TIMING = ["--etcd-arg", "heartbeat-interval=100", "--etcd-arg", "election-timeout=1000"]


def _etcd_server(root: Path, name: str, join: str | None) -> ServerProcess:
    (root / name).mkdir()
    args = [*BASE, *ETCD_TIMING, "--etcd-client-port", str(free_port()), "--etcd-peer-port", str(free_port())]
    args += ["--server", join] if join else ["--cluster-init"]
    return ServerProcess(data_dir=root / name, port=free_port(), extra_args=args)


CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def _run(srv: ServerProcess, objects: int, clients: int) -> dict[str, float]:
    return asyncio.run(_bench(srv, objects, clients, path=CONFIGMAPS, make=_configmap))


def store_benches(objects: int, clients: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kwire-bench-ha-") as tmp:
        root = Path(tmp)
        (root / "sqlite").mkdir()
        srv = ServerProcess(data_dir=root / "sqlite", port=free_port(), extra_args=BASE)
        srv.start(timeout=60)
        try:
            out["sqlite"] = _run(srv, objects, clients)
        finally:
            srv.stop()
        (root / "postgres").mkdir()
        pg = Postgres(fsync=True)  # a private cluster (Debian's PostgreSQL), durable as a user's would be
        srv = ServerProcess(data_dir=root / "postgres", port=free_port(), extra_args=BASE)
        try:
            pg.start()
            srv.extra_args = [*BASE, "--config", str(pg.config_file(root / "postgres.yaml"))]
            srv.start(timeout=90)
            out["postgres"] = _run(srv, objects, clients)
        finally:
            srv.stop()
            pg.stop()
        one = _etcd_server(root, "etcd1", None)
        one.start(timeout=90)
        try:
            out["etcd, 1 member"] = _run(one, objects, clients)
        finally:
            one.stop()
        servers = [_etcd_server(root, "s1", None)]
        try:
            servers[0].start(timeout=90)
            for name in ("s2", "s3"):
                servers.append(_etcd_server(root, name, servers[0].url))
                servers[-1].start(timeout=120)
            out["etcd, 3 members"] = _run(servers[0], objects, clients)
        finally:
            for s in servers:
                s.stop()
    return out


async def _failover(api: str, kubeconfig: Path) -> tuple[float, float]:
    ctx = load_kubeconfig(kubeconfig).ssl_context()  # the lab's admin client certificate
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), headers=headers) as session:
        lease_url = f"{api}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager"
        async with session.get(lease_url) as r:
            holder = (await r.json())["spec"]["holderIdentity"]
        node = holder.split("_", 1)[0]
        st = lab.LabState.load(LAB)
        assert st is not None
        proc = next(p for p, n in lab.server_procs(st).items() if n == node)
        os.kill(st.pids[proc], signal.SIGKILL)
        t0 = time.perf_counter()
        cm_url = f"{api}/api/v1/namespaces/default/configmaps"
        write_at = 0.0
        i = 0
        while not write_at:
            i += 1
            body = orjson.dumps({"metadata": {"name": f"failover-{i}"}})
            try:
                async with session.post(cm_url, data=body, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 201:
                        write_at = time.perf_counter() - t0
            except (aiohttp.ClientError, TimeoutError):
                pass
            if not write_at:
                await asyncio.sleep(0.05)
        deploy = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "failover"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "failover"}},
                "template": {
                    "metadata": {"labels": {"app": "failover"}},
                    "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]},
                },
            },
        }
        async with session.post(f"{api}/apis/apps/v1/namespaces/default/deployments", data=orjson.dumps(deploy)) as r:
            assert r.status == 201, await r.text()
        rs_url = f"{api}/apis/apps/v1/namespaces/default/replicasets"
        while True:
            async with session.get(rs_url, params={"labelSelector": "app=failover"}) as r:
                if r.status == 200 and (await r.json()).get("items"):
                    return write_at, time.perf_counter() - t0
            await asyncio.sleep(0.1)


LAB = f"bench-ha{'-' + os.environ['KWIRE_TEST_ID'] if os.environ.get('KWIRE_TEST_ID') else ''}"


def lab_failover() -> tuple[float, float]:
    port = free_port()
    st, _ = lab.up(LAB, nodes=3, servers=3, api_port=port, timeout=120)
    try:
        return asyncio.run(_failover(f"https://127.0.0.1:{port}", lab.topology.build(LAB, nodes=3).kubeconfig))
    finally:
        lab.down(LAB)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=3000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--skip-lab", action="store_true")
    args = ap.parse_args()
    results = store_benches(args.objects, args.clients)
    print(f"ha bench: {args.objects} creates with {args.clients} clients per store")
    print(f"  {'store':<18} {'writes/s':>9} {'watch p50':>10} {'watch p99':>10}")
    for name, res in results.items():
        print(f"  {name:<18} {res['writes_per_s']:>9.0f} {res['watch_p50_ms']:>8.1f}ms {res['watch_p99_ms']:>8.1f}ms")
    print("  goals: 3-member etcd >= 2000 writes/s, watch p99 < 50 ms")
    if not args.skip_lab:
        write_s, ctl_s = lab_failover()
        print("  lab --servers 3, kill -9 of the controller leader's server:")
        print(f"    next successful write via 127.0.0.1  {write_s:.1f} s   (goal <= 3)")
        print(f"    controllers acting again             {ctl_s:.1f} s   (goal <= 5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
