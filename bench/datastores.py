"""The store layer alone (no API, no HTTP): creates/s and CPU per create on SQLite and PostgreSQL, alternated A/B.

Each round creates N keys of 1 KB with C concurrent writers and measures wall time and CPU time: this process's
(getrusage) plus, for Postgres, every process of the private cluster (/proc/PID/stat of the postmaster and its
children), so the database's own work is counted. CPU per write is what a loaded machine disturbs least.
Postgres runs with fsync on (`tests/integration/pgkit.py`), SQLite in its default mode (WAL, synchronous=NORMAL:
no fsync per commit), so wall-clock numbers compare a durable and a not-quite-durable store.

    .venv/bin/python bench/datastores.py [--objects 5000] [--clients 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # off the path: bench/dns.py would shadow dnspython
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from kwire.store.base import Store  # noqa: E402
from kwire.store.postgres import PostgresStore  # noqa: E402
from kwire.store.sqlite import SQLiteStore  # noqa: E402
from tests.integration.pgkit import Postgres  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _tree_cpu(root: int) -> float:
    """CPU seconds of `root` and its children (the postmaster and its backends)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid, ppid = int(entry), int(fields[1])
        if pid == root or ppid == root:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


async def _round(
    store: Store, *, prefix: str, objects: int, clients: int, db_pid: int | None
) -> tuple[float, float, float]:
    value = b"x" * 1024
    queue = iter(range(objects))

    async def writer() -> None:
        for i in queue:
            await store.create(f"/registry/bench/{prefix}/{i:07d}", value)

    cpu0, db0, t0 = _own_cpu(), _tree_cpu(db_pid) if db_pid else 0.0, time.perf_counter()
    await asyncio.gather(*[writer() for _ in range(clients)])
    elapsed = time.perf_counter() - t0
    own = _own_cpu() - cpu0
    db = (_tree_cpu(db_pid) - db0) if db_pid else 0.0
    return objects / elapsed, (own + db) / objects * 1e6, db / objects * 1e6


async def _main(objects: int, clients: int, rounds: int) -> None:
    pg = Postgres(fsync=True)
    with tempfile.TemporaryDirectory(prefix="kwire-bench-ds-") as tmp:
        try:
            pg.start()
            assert pg.proc is not None
            stores: dict[str, tuple[Store, int | None]] = {
                "sqlite": (SQLiteStore(Path(tmp) / "state.db"), None),
                "postgres": (PostgresStore(pg.url("bench")), pg.proc.pid),
            }
            pgstore = stores["postgres"][0]
            assert isinstance(pgstore, PostgresStore)
            await pgstore.start()
            results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in stores}
            for r in range(rounds):
                for name, (store, pid) in stores.items():
                    results[name].append(
                        await _round(store, prefix=f"r{r}", objects=objects, clients=clients, db_pid=pid)
                    )
            for store, _ in stores.values():
                await store.close()
        finally:
            pg.stop()
    print(f"datastores bench: {objects} creates of 1 KB with {clients} writers, {rounds} alternated rounds")
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, rows in results.items():
        best = max(w for w, _, _ in rows)
        cpu, db = min((c, d) for _, c, d in rows)
        print(
            f"  {name:<9} {best:>7.0f} creates/s (best)   {cpu:>6.0f} us CPU per create (least; database {db:.0f} us)"
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    asyncio.run(_main(args.objects, args.clients, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
