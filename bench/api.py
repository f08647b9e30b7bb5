"""API write throughput and watch delivery latency, for a built-in kind and for a custom resource.

Starts a `kwire server` (its own process, on loopback), creates N ConfigMaps over HTTPS with C concurrent
clients while one watcher follows the namespace, and prints writes/s and watch delivery p50/p99, where delivery
latency is measured from the moment a create request is sent to the moment its ADDED event is read (so it
includes the request's own time: an upper bound). Then the same for N MetalLB IPAddressPools (the upstream CRD:
schema validation, defaulting and pruning on every write), and the custom/built-in ratios of writes/s (goal >= 0.8)
and of server CPU per write (goal <= 1.25), per round and their median, with the load average.

    .venv/bin/python bench/api.py [--objects 10000] [--clients 16] [--rounds 3] [--warmup 300]
                                  [--datastore sqlite|etcd|postgres] [--as-user]

Besides wall-clock numbers it prints the server's CPU time per write (from /proc, user+system), which a loaded
machine disturbs far less than throughput. `--as-user` writes as user `bench` (impersonated by the admin), whom a
RoleBinding allows exactly those creates: every request then goes through RBAC instead of the `system:masters`
short cut.

`--datastore etcd` runs the server on a one-member embedded etcd (`--cluster-init`), `--datastore postgres` on a
private PostgreSQL cluster (Debian's, fsync on, `tests/integration/pgkit.py`); bench/ha.py compares SQLite,
Postgres, one and three etcd members in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

# The checkout first, and not bench/ itself: bench/dns.py would shadow dnspython's `dns` package.
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]
from tests.integration.apiserver import ServerProcess, free_port  # noqa: E402
from tests.integration.pgkit import Postgres  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


METALLB = Path(__file__).resolve().parents[1].parent / "shared" / "upstream" / "metallb-native-v0.14.9.yaml"
Body = Callable[[str, int], dict[str, Any]]


def _configmap(name: str, i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"bench": "api"}},
        "data": {"i": str(i)},
    }


def _pool(name: str, i: int) -> dict[str, Any]:
    return {
        "apiVersion": "metallb.io/v1beta1",
        "kind": "IPAddressPool",
        "metadata": {"name": name, "labels": {"bench": "api"}},
        "spec": {"addresses": [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32"]},
    }


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BENCH_RBAC = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "bench", "namespace": "default"},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "list", "watch"]},
            {"apiGroups": ["metallb.io"], "resources": ["ipaddresspools"], "verbs": ["create", "list", "watch"]},
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "bench", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bench"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench"}],
    },
]


async def _install_crd(srv: ServerProcess, *, rbac: bool = False) -> None:
    crd = next(
        d
        for d in yaml.safe_load_all(METALLB.read_text())
        if d and d["kind"] == "CustomResourceDefinition" and d["metadata"]["name"] == "ipaddresspools.metallb.io"
    )
    ctx = srv.admin_ssl_context(verify=False)  # the admin's client certificate
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), headers=headers) as session:
        url = f"{srv.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        async with session.post(url, data=orjson.dumps(crd)) as r:
            if r.status != 201:
                raise RuntimeError(f"create CRD: {r.status} {await r.text()}")
        if rbac:
            base = f"{srv.url}/apis/rbac.authorization.k8s.io/v1/namespaces/default"
            for obj, plural in zip(BENCH_RBAC, ("roles", "rolebindings"), strict=True):
                async with session.post(f"{base}/{plural}", data=orjson.dumps(obj)) as r:
                    if r.status != 201:
                        raise RuntimeError(f"create {plural}: {r.status} {await r.text()}")


async def _bench(
    srv: ServerProcess,
    objects: int,
    clients: int,
    *,
    path: str,
    make: Body,
    prefix: str = "bench",
    as_user: bool = False,
) -> dict[str, float]:
    ctx = srv.admin_ssl_context(verify=False)  # the admin's client certificate
    headers = {"Content-Type": "application/json"}
    if as_user:
        headers["Impersonate-User"] = "bench"
    url = f"{srv.url}{path}"
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    all_seen = asyncio.Event()
    conn = aiohttp.TCPConnector(ssl=ctx, limit=clients + 2)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
        async with session.get(url, params={"limit": "1"}) as r:
            rv = (await r.json())["metadata"]["resourceVersion"]

        async def watcher() -> None:
            params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "600"}
            async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=None)) as r:
                async for line in r.content:
                    ev = orjson.loads(line)
                    if ev["type"] == "ADDED":
                        seen[ev["object"]["metadata"]["name"]] = time.perf_counter()
                        if len(seen) >= objects:
                            all_seen.set()
                            return

        wtask = asyncio.create_task(watcher())
        await asyncio.sleep(0.3)
        counter = iter(range(objects))

        async def writer() -> None:
            for i in counter:
                name = f"{prefix}-{i}"
                body = orjson.dumps(make(name, i))
                sent[name] = time.perf_counter()
                async with session.post(url, data=body) as r:
                    if r.status != 201:
                        raise RuntimeError(f"create {name}: {r.status} {await r.text()}")
                    await r.read()

        assert srv.proc is not None
        cpu_before = _cpu_seconds(srv.proc.pid)
        client_before = time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds(srv.proc.pid) - cpu_before
        client_cpu = time.process_time() - client_before
        await asyncio.wait_for(all_seen.wait(), 60)
        wtask.cancel()
    lat = [(seen[n] - sent[n]) * 1000 for n in sent]
    return {
        "objects": objects,
        "clients": clients,
        "seconds": elapsed,
        "writes_per_s": objects / elapsed,
        "watch_p50_ms": statistics.median(lat),
        "watch_p99_ms": _pct(lat, 0.99),
        "watch_max_ms": max(lat),
        "cpu_us_per_write": cpu / objects * 1e6,
        "client_cpu_us_per_write": client_cpu / objects * 1e6,  # this process: the clients and the watcher
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--datastore", choices=("sqlite", "etcd", "postgres"), default="sqlite")
    ap.add_argument("--rounds", type=int, default=1, help="alternate built-in/custom rounds; the best of each counts")
    ap.add_argument("--warmup", type=int, default=300, help="creates of each kind before the rounds, not counted")
    ap.add_argument("--as-user", action="store_true", help="write as an RBAC-authorized user, not system:masters")
    args = ap.parse_args()
    pg = Postgres(fsync=True) if args.datastore == "postgres" else None
    with tempfile.TemporaryDirectory(prefix="kwire-bench-") as tmp:
        extra = []
        if args.datastore == "etcd":
            extra = ["--cluster-init", "--etcd-client-port", str(free_port()), "--etcd-peer-port", str(free_port())]
        srv = ServerProcess(Path(tmp), free_port(), extra_args=extra)
        try:
            if pg is not None:
                pg.start()
                srv.extra_args = ["--config", str(pg.config_file(Path(tmp) / "datastore.yaml"))]
            srv.start(timeout=90)
            asyncio.run(_install_crd(srv, rbac=args.as_user))
            kinds = {
                "built-in": ("/api/v1/namespaces/default/configmaps", _configmap, "cm"),
                "custom": ("/apis/metallb.io/v1beta1/namespaces/default/ipaddresspools", _pool, "pool"),
            }

            def run(which: str, objects: int, label: str) -> dict[str, float]:
                path, make, prefix = kinds[which]
                return asyncio.run(
                    _bench(
                        srv,
                        objects,
                        args.clients,
                        path=path,
                        make=make,
                        prefix=f"{prefix}{label}",
                        as_user=args.as_user,
                    )
                )

            if args.warmup:  # first writes of a kind pay one-time costs: not counted
                for which in kinds:
                    run(which, args.warmup, "warm")
            rounds: list[tuple[dict[str, float], dict[str, float]]] = []
            for r in range(args.rounds):
                # alternate which kind goes first, so neither always follows the other
                order = ("built-in", "custom") if r % 2 == 0 else ("custom", "built-in")
                got = {which: run(which, args.objects, str(r)) for which in order}
                rounds.append((got["built-in"], got["custom"]))
            res = max((b for b, _ in rounds), key=lambda x: x["writes_per_s"])
            custom = max((c for _, c in rounds), key=lambda x: x["writes_per_s"])
        finally:
            srv.stop()
            if pg is not None:
                pg.stop()
    print(
        f"api bench ({args.datastore}): {res['objects']} creates with {res['clients']} clients in {res['seconds']:.2f}s"
    )
    print(f"  writes/s        {res['writes_per_s']:.0f}   (goal >= 2000)")
    print(f"  watch p50       {res['watch_p50_ms']:.1f} ms")
    print(f"  watch p99       {res['watch_p99_ms']:.1f} ms   (goal < 50)")
    print(f"  watch max       {res['watch_max_ms']:.1f} ms")
    print(f"  server CPU      {min(b['cpu_us_per_write'] for b, _ in rounds):.0f} us/write (least of the rounds)")
    ratio = custom["writes_per_s"] / res["writes_per_s"]
    print(f"custom resources (IPAddressPool, upstream CRD): {custom['objects']} creates in {custom['seconds']:.2f}s")
    print(f"  writes/s        {custom['writes_per_s']:.0f}   ({ratio:.2f}x built-in; goal >= 0.8x)")
    print(f"  watch p50       {custom['watch_p50_ms']:.1f} ms")
    print(f"  watch p99       {custom['watch_p99_ms']:.1f} ms")
    print(f"  server CPU      {min(c['cpu_us_per_write'] for _, c in rounds):.0f} us/write")
    # Each round runs both kinds back to back (alternating which goes first), so its ratio compares like with like
    # even when the load moves between rounds; CPU per write is the number load disturbs least.
    cpu_ratios = [c["cpu_us_per_write"] / b["cpu_us_per_write"] for b, c in rounds]
    rate_ratios = [c["writes_per_s"] / b["writes_per_s"] for b, c in rounds]
    print("per round (built-in | custom):")
    for i, (b, c) in enumerate(rounds):
        print(
            f"  round {i + 1}  {b['writes_per_s']:6.0f} | {c['writes_per_s']:6.0f} writes/s ({rate_ratios[i]:.2f}x),"
            f"  CPU {b['cpu_us_per_write']:4.0f} | {c['cpu_us_per_write']:4.0f} us/write ({cpu_ratios[i]:.2f}x),"
            f"  client CPU {b['client_cpu_us_per_write']:4.0f} | {c['client_cpu_us_per_write']:4.0f}"
        )
    print(
        f"  median          writes/s {statistics.median(rate_ratios):.2f}x (goal >= 0.8x), "
        f"CPU/write {statistics.median(cpu_ratios):.2f}x (goal <= 1.25x); load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
