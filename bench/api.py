"""API write throughput and watch delivery latency.

Starts a `kwire server` (its own process, on loopback), creates N ConfigMaps over HTTPS with C concurrent
clients while one watcher follows the namespace, and prints writes/s and watch delivery p50/p99, where delivery
latency is measured from the moment a create request is sent to the moment its ADDED event is read (so it
includes the request's own time: an upper bound).

    .venv/bin/python bench/api.py [--objects 10000] [--clients 16] [--datastore sqlite|etcd]

`--datastore etcd` runs the server on a one-member embedded etcd (`--cluster-init`); bench/ha.py compares SQLite,
one and three etcd members in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.apiserver import ServerProcess, free_port  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _bench(srv: ServerProcess, objects: int, clients: int) -> dict[str, float]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {srv.token}", "Content-Type": "application/json"}
    url = f"{srv.url}/api/v1/namespaces/default/configmaps"
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
                name = f"bench-{i}"
                body = orjson.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": name, "labels": {"bench": "api"}},
                        "data": {"i": str(i)},
                    }
                )
                sent[name] = time.perf_counter()
                async with session.post(url, data=body) as r:
                    if r.status != 201:
                        raise RuntimeError(f"create {name}: {r.status} {await r.text()}")
                    await r.read()

        start = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(clients)))
        elapsed = time.perf_counter() - start
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
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--datastore", choices=("sqlite", "etcd"), default="sqlite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kwire-bench-") as tmp:
        extra = []
        if args.datastore == "etcd":
            extra = ["--cluster-init", "--etcd-client-port", str(free_port()), "--etcd-peer-port", str(free_port())]
        srv = ServerProcess(Path(tmp), free_port(), extra_args=extra)
        srv.start(timeout=90)
        try:
            res = asyncio.run(_bench(srv, args.objects, args.clients))
        finally:
            srv.stop()
    print(
        f"api bench ({args.datastore}): {res['objects']} creates with {res['clients']} clients in {res['seconds']:.2f}s"
    )
    print(f"  writes/s        {res['writes_per_s']:.0f}   (goal >= 2000)")
    print(f"  watch p50       {res['watch_p50_ms']:.1f} ms")
    print(f"  watch p99       {res['watch_p99_ms']:.1f} ms   (goal < 50)")
    print(f"  watch max       {res['watch_max_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
