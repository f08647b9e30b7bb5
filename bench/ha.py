"""High availability numbers (issue 16): API writes/s and watch delivery p99 on SQLite, on PostgreSQL (a private
cluster, `--datastore-endpoint postgres://`), on a one-member embedded etcd and on a three-member embedded etcd
(three servers, the bench writing to the first), all in one run; then, in a `kwire lab up --servers 3`, the time from kill -9 of the server holding the controller Lease to the next
successful write through the lab's 127.0.0.1 address, and to the controllers acting again (a Deployment created
after the kill getting its ReplicaSet).

    .venv/bin/python bench/ha.py [--objects 3000] [--clients 16] [--skip-lab] [--skip-check-perf]

Besides wall-clock rates (which the load of a shared machine disturbs) it prints CPU per write of the kwire
servers and of the datastore's processes (the etcd members, or PostgreSQL's; from /proc, counted per write etcd
committed), and fsyncs per write from etcd's
own metrics; and, on the same three members, the bounds kwire's numbers sit under: kwire's etcd store without the
API, etcd's JSON gateway without kwire, and etcd's own gRPC client (`etcdctl check perf --load l`, 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

_HERE = Path(__file__).resolve().parent  # off the path: bench/dns.py would shadow dnspython (kwire.lab uses it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from bench.api import _bench, _configmap, _cpu_seconds  # noqa: E402
from kwire.api.certs import etcd_tls_files  # noqa: E402
from kwire.client import load_kubeconfig  # noqa: E402
from kwire.lab import lab  # noqa: E402
from kwire.store.embedded import EtcdTls  # noqa: E402
from kwire.store.etcd import EtcdStore  # noqa: E402
from tests.integration.apiserver import ServerProcess, free_port  # noqa: E402
from tests.integration.pgkit import Postgres  # noqa: E402

BASE = ["--disable", "coredns,servicelb,traefik,metrics-server", "--etcd-disable-snapshots"]
ETCD_TIMING = ["--etcd-arg", "heartbeat-interval=100", "--etcd-arg", "election-timeout=1000"]
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
CHECK_PERF_SECONDS = 60  # etcdctl check perf's fixed duration


def _etcd_server(root: Path, name: str, join: str | None) -> ServerProcess:
    (root / name).mkdir()
    args = [*BASE, *ETCD_TIMING, "--etcd-client-port", str(free_port()), "--etcd-peer-port", str(free_port())]
    args += ["--server", join] if join else ["--cluster-init"]
    return ServerProcess(data_dir=root / name, port=free_port(), extra_args=args)


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (an embedded etcd is its kwire server's child; PostgreSQL's
    backends and workers are its postmaster's)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == parent:
            out.append(int(stat.parent.name))
    return out


def _etcd_pid(server_pid: int) -> int:
    """The embedded etcd child of a kwire server process."""
    for pid in _children(server_pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "etcd":
                return pid
    raise RuntimeError(f"no etcd child of {server_pid}")


def _client_url(srv: ServerProcess) -> str:
    return f"https://127.0.0.1:{srv.extra_args[srv.extra_args.index('--etcd-client-port') + 1]}"


def _etcd_tls(srv: ServerProcess) -> EtcdTls:
    return etcd_tls_files(srv.data_dir)  # the files the server issued itself


@dataclass
class Cpu:
    """CPU seconds (user+system, /proc) of the kwire and the datastore processes around one measurement."""

    kwire: list[int]
    store: list[int]

    def take(self) -> tuple[float, float]:
        return sum(_cpu_seconds(p) for p in self.kwire), sum(_cpu_seconds(p) for p in self.store)


async def _committed(srv: ServerProcess) -> tuple[float, float, float]:
    """etcd's own counters on a member: proposals committed, WAL fsyncs and their total seconds."""
    want = (
        "etcd_server_proposals_committed_total",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_wal_fsync_duration_seconds_sum",
    )
    got = dict.fromkeys(want, 0.0)
    ctx = _etcd_tls(srv).client_ssl_context()
    async with aiohttp.ClientSession() as session, session.get(_client_url(srv) + "/metrics", ssl=ctx) as r:
        for line in (await r.text()).splitlines():
            name, _, value = line.partition(" ")
            if name in got:
                got[name] = float(value)
    return got[want[0]], got[want[1]], got[want[2]]


def _measured(cpu: Cpu, member: ServerProcess | None, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run one measurement and add CPU per write of the kwire and etcd processes, counted by etcd's committed
    proposals when there is etcd (so writes nobody but the measurement sees count too), and fsyncs per write."""
    before = cpu.take()
    m0 = asyncio.run(_committed(member)) if member else (0.0, 0.0, 0.0)
    load = os.getloadavg()[0]
    res = run()
    after = cpu.take()
    m1 = asyncio.run(_committed(member)) if member else (0.0, 0.0, 0.0)
    writes = (m1[0] - m0[0]) if member else res["objects"]
    res["kwire_us"] = (after[0] - before[0]) / writes * 1e6
    res["store_us"] = (after[1] - before[1]) / writes * 1e6
    res["fsyncs_per_write"] = (m1[1] - m0[1]) / writes if member else 0.0
    res["fsync_ms"] = (m1[2] - m0[2]) / max(m1[1] - m0[1], 1) * 1000
    res["load"] = load
    return res


def _api(srv: ServerProcess, objects: int, clients: int, prefix: str) -> Callable[[], dict[str, float]]:
    return lambda: asyncio.run(_bench(srv, objects, clients, path=CONFIGMAPS, make=_configmap, prefix=prefix))


def _value(i: int) -> bytes:
    """About the size of what the API stores for a bench ConfigMap (metadata, managedFields, data)."""
    return orjson.dumps({"kind": "ConfigMap", "metadata": {"name": f"store-{i}", "pad": "x" * 420}, "data": {"i": i}})


async def _store_writes(srv: ServerProcess, objects: int, inflight: int, *, tag: str = "s") -> dict[str, float]:
    """kwire's etcd store alone (no API), in this process: creates with `inflight` at once, each returning
    once the store's own watch delivered it, as in the server."""
    store = EtcdStore([_client_url(srv)], ssl_context=_etcd_tls(srv).client_ssl_context())
    await store.start()
    try:
        counter = iter(range(objects))

        async def writer() -> None:
            for i in counter:
                await store.create(f"/registry/configmaps/bench-store/{tag}{i}", _value(i))

        start = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(inflight)))
        return {"objects": objects, "writes_per_s": objects / (time.perf_counter() - start)}
    finally:
        await store.close()


async def _gateway_writes(srv: ServerProcess, objects: int, inflight: int) -> dict[str, float]:
    """etcd's JSON gateway alone: the same create transactions kwire sends, from plain aiohttp, no watch."""
    ctx = _etcd_tls(srv).client_ssl_context()
    url = _client_url(srv) + "/v3/kv/txn"
    counter = iter(range(objects))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=inflight)) as session:

        async def writer() -> None:
            for i in counter:
                key = base64.b64encode(f"/registry/configmaps/bench-gw/g{i}".encode()).decode()
                body = {
                    "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
                    "success": [{"request_put": {"key": key, "value": base64.b64encode(_value(i)).decode()}}],
                    "failure": [{"request_range": {"key": key}}],
                }
                async with session.post(url, data=orjson.dumps(body)) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"txn: {r.status}")

        start = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(inflight)))
        return {"objects": objects, "writes_per_s": objects / (time.perf_counter() - start)}


def _check_perf(servers: list[ServerProcess]) -> dict[str, float]:
    """etcd's own gRPC client at its largest load (`etcdctl check perf --load l`: 8,000 puts/s offered for 60 s
    from many clients): what these members commit with no JSON gateway and no kwire at all."""
    tls = _etcd_tls(servers[0])
    cmd = ["etcdctl", "--endpoints", ",".join(_client_url(s) for s in servers), "--cacert", str(tls.ca_cert)]
    cmd += ["--cert", str(tls.client_cert), "--key", str(tls.client_key), "check", "perf", "--load", "l"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, check=False)
    m = re.search(r"(\d+) writes/s", out.stdout)
    if not m:
        raise RuntimeError(f"etcdctl check perf: {out.stdout[-500:]} {out.stderr[-500:]}")
    return {"objects": float(m.group(1)) * CHECK_PERF_SECONDS, "writes_per_s": float(m.group(1))}


def store_benches(objects: int, clients: int, *, check_perf: bool) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kwire-bench-ha-") as tmp:
        root = Path(tmp)
        (root / "sqlite").mkdir()
        srv = ServerProcess(data_dir=root / "sqlite", port=free_port(), extra_args=BASE)
        srv.start(timeout=60)
        try:
            assert srv.proc is not None
            out["sqlite"] = _measured(Cpu([srv.proc.pid], []), None, _api(srv, objects, clients, "bench"))
        finally:
            srv.stop()
        (root / "postgres").mkdir()
        pg = Postgres(fsync=True)  # a private cluster (Debian's PostgreSQL), durable as a user's would be
        srv = ServerProcess(data_dir=root / "postgres", port=free_port(), extra_args=BASE)
        try:
            pg.start()
            srv.extra_args = [*BASE, "--config", str(pg.config_file(root / "postgres.yaml"))]
            srv.start(timeout=90)
            assert srv.proc is not None and pg.proc is not None
            cpu = Cpu([srv.proc.pid], [pg.proc.pid, *_children(pg.proc.pid)])  # its connections are made by now
            out["postgres"] = _measured(cpu, None, _api(srv, objects, clients, "bench"))
        finally:
            srv.stop()
            pg.stop()
        one = _etcd_server(root, "etcd1", None)
        one.start(timeout=90)
        try:
            assert one.proc is not None
            cpu = Cpu([one.proc.pid], [_etcd_pid(one.proc.pid)])
            out["etcd, 1 member"] = _measured(cpu, one, _api(one, objects, clients, "bench"))
        finally:
            one.stop()
        servers = [_etcd_server(root, "s1", None)]
        try:
            servers[0].start(timeout=90)
            for name in ("s2", "s3"):
                servers.append(_etcd_server(root, name, servers[0].url))
                servers[-1].start(timeout=120)
            pids = [s.proc.pid for s in servers if s.proc is not None]
            cpu = Cpu(pids, [_etcd_pid(p) for p in pids])
            first = servers[0]
            out["etcd, 3 members"] = _measured(cpu, first, _api(first, objects, clients, "bench"))
            many = 4 * clients  # more writes in flight: etcd commits more of them per raft entry and fsync
            out[f"  {many} clients"] = _measured(cpu, first, _api(first, objects, many, "many"))
            # The bounds, on the same three members: kwire's store without the API (this process is the kwire
            # side then, and the servers' mirrors), the gateway without kwire, and etcd's own gRPC client.
            here = Cpu([os.getpid(), *pids], cpu.store)
            out["  store alone"] = _measured(here, first, lambda: asyncio.run(_store_writes(first, objects, clients)))
            out[f"  store, {many} at once"] = _measured(
                here, first, lambda: asyncio.run(_store_writes(first, objects, many, tag="m"))
            )
            gw = _measured(here, first, lambda: asyncio.run(_gateway_writes(first, objects, clients)))
            out["  gateway alone"] = gw
            if check_perf:
                out["  etcd gRPC"] = _measured(here, first, lambda: _check_perf(servers))
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
    ap.add_argument("--skip-check-perf", action="store_true", help="skip etcdctl check perf (60 s)")
    args = ap.parse_args()
    results = store_benches(args.objects, args.clients, check_perf=not args.skip_check_perf)
    cores = os.cpu_count() or 1
    print(f"ha bench: {args.objects} creates with {args.clients} clients per store, on {cores} cores")
    print(
        f"  {'store':<20} {'writes/s':>9} {'watch p50':>10} {'watch p99':>10} {'kwire CPU':>10} {'store CPU':>10}"
        f" {'CPU bound':>10} {'fsync/write':>11} {'load':>5}"
    )
    for name, res in results.items():
        watch = f"{res['watch_p50_ms']:>8.1f}ms {res['watch_p99_ms']:>8.1f}ms" if "watch_p50_ms" in res else f"{'':>21}"
        bound = cores * 1e6 / (res["kwire_us"] + res["store_us"])
        print(
            f"  {name:<20} {res['writes_per_s']:>9.0f} {watch} {res['kwire_us']:>8.0f}us {res['store_us']:>8.0f}us"
            f" {bound:>7.0f}/s {res['fsyncs_per_write']:>6.2f} x{res['fsync_ms']:.1f}ms {res['load']:>5.1f}"
        )
    print("  goals: 3-member etcd >= 2000 writes/s, watch p99 < 50 ms")
    print("  CPU columns: user+system CPU per write of every kwire server (and of this process for the store rows) and")
    print("  of the datastore (every etcd member, or PostgreSQL's processes); CPU bound = the writes/s those would")
    print("  allow if they had every core to themselves.")
    print("  Below the 3-member row, on the same members: the API with 4 times as many clients, kwire's etcd store")
    print("  without the API (as many writes in flight as the API had, then 4 times as many), the JSON gateway")
    print("  without kwire (the same txns from plain aiohttp), and etcd's own gRPC client (etcdctl check perf -l,")
    print("  60 s, hundreds of writes in flight).")
    if not args.skip_lab:
        write_s, ctl_s = lab_failover()
        print("  lab --servers 3, kill -9 of the controller leader's server:")
        print(f"    next successful write via 127.0.0.1  {write_s:.1f} s   (goal <= 3)")
        print(f"    controllers acting again             {ctl_s:.1f} s   (goal <= 5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
