"""Ingress data plane A/B: the proxy CPU per request of kwire's nginx + Lua, this tree against other commits, side by
side with nginx configured by hand, rounds alternating (the per-request cost of the Lua router and balancer).

    .venv/bin/python bench/ingress_ab.py [--against REF ...] [--rounds 8] [--duration 3] [--connections 64] [--perf]

bench/ingress.py measures the whole add-on (controller + nginx) against nginx by hand and HAProxy; on a shared
machine its runs differ from each other as much as a change does. This one runs, in one network namespace of our own
(`kwire-ab<pid>`, loopback only, removed at the end), the same 10 nginx backends and hand-made nginx as
bench/ingress.py (its helpers), and one data plane per tree: this checkout and each `--against` git ref (exported
with `git archive` into a temporary directory) or directory (a kwire tree, e.g. a variant made by hand). A tree's data plane is its own kwire.ingress (nginxconf.render,
the router's chunk of one Ingress `bench.local` Prefix / -> the 10 endpoints, pushed through its control socket as
the controller does), started by a child of this script with that tree first on PYTHONPATH; no API server, no
controller. Every proxy has one worker pinned to core 0; wrk (1 thread, keep-alive) and the backends share core 1.
Each round runs every proxy once, the order reversed every other round; printed: CPU time (user + system of nginx's
master and worker, /proc) per request per round, medians, hand/tree ratios per round, and the load average.

`--perf` adds a second estimate that other work on the machine disturbs much less: after the rounds, each proxy's
worker is sampled by `perf record -e cpu-clock` (software clock: this VM has no hardware counters) during one more
wrk run. Every proxy makes the same system calls per request (strace: 2 writev, 2 recvfrom, 1 getsockopt), so the
kernel's work per request is the same for all and the ratio of their kernel shares is their CPU ratio:
hand/x = kernel share of x / kernel share of hand. Printed with the share of the worker's CPU spent in LuaJIT, the
Lua module and JIT-compiled code (the Lua router and balancer). Two samplings of the same hand-made nginx in one
run agreed within 0.5 %, and one tree measured 0.91-0.95 over four runs, where its rounds' CPU per request ratios
swung 0.78-1.11 within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKEND_KEY = "bench/web:http"
HAND_PORT = 8081


def plane_main(ns: str, d: Path, http: int, noep: int, ping: int) -> None:
    """The child: the data plane of the kwire on PYTHONPATH; prints nginx's master pid, serves until stdin closes."""
    from kwire.ingress import model, router
    from kwire.ingress.nginx import Nginx
    from kwire.ingress.nginxconf import Paths, Render, backend_lines, render

    klass = {"metadata": {"name": "traefik", "annotations": {model.DEFAULT_CLASS_ANNOTATION: "true"}},
             "spec": {"controller": model.CONTROLLER_NAME}}  # fmt: skip
    backend = {"service": {"name": "web", "port": {"name": "http"}}}
    ing = {"metadata": {"name": "bench", "namespace": "bench", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"rules": [{"host": "bench.local",
                               "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]}}  # fmt: skip

    async def run() -> None:
        d.mkdir(parents=True, exist_ok=True)
        paths = Paths(d)
        nginx = Nginx(paths)
        nginx.command_prefix = ["ip", "netns", "exec", ns, "taskset", "-c", "0"]
        nginx.prepare()
        try:
            conf = render(Render(http_port=http, https_port=http + 1, ping_port=ping, noep_port=noep), paths)
            await nginx.apply(conf)
            await nginx.push(backend_lines({BACKEND_KEY: [f"127.0.0.1:{p}" for p in range(18001, 18011)]}))
            routers = router.ingress_routers(model.build([ing], [klass]), {BACKEND_KEY})
            await nginx.push_routes(router.lua_config(routers, {}))
            print(paths.pid.read_text().strip(), flush=True)
            await asyncio.to_thread(sys.stdin.read)
        finally:
            await nginx.stop()

    asyncio.run(run())


def worker_pid(master: int) -> int:
    """The nginx worker under a data plane's master (its one child process)."""
    kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(kids[0]) if kids else master


def perf_shares(pid: int, load: Callable[[], object], out: Path) -> dict[str, float]:
    """Shares of a worker's CPU samples (perf record -e cpu-clock while `load` runs): `kernel`, and `lua` (LuaJIT,
    the Lua module and JIT-compiled code)."""
    rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-o", str(out), "-p", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        load()
    finally:
        rec.send_signal(2)
        rec.wait(60)
    rep = subprocess.run(["perf", "report", "-i", str(out), "--sort", "dso", "-g", "none", "-q", "--stdio"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    shares = {"kernel": 0.0, "lua": 0.0}
    for pct, dso in re.findall(r"([\d.]+)%\s+(.+?)\s*$", rep, re.M):
        if dso == "[kernel.kallsyms]":
            shares["kernel"] += float(pct)
        elif "luajit" in dso or "lua_module" in dso or dso.startswith("[JIT]"):
            shares["lua"] += float(pct)
    return shares


def export(ref: str, into: Path) -> Path:
    """The tree of a git ref, exported into a directory (a directory given is used as it is: a variant by hand)."""
    if Path(ref).is_dir():
        return Path(ref).resolve()
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--plane":
        pns, pdir, http, noep, ping = sys.argv[2:7]
        plane_main(pns, Path(pdir), int(http), int(noep), int(ping))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--against", action="append", default=[], help="a git ref or a kwire tree to compare with (repeatable)"
    )
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--perf", action="store_true", help="also the kernel-share estimate from perf (see above)")
    a = ap.parse_args()
    if a.perf and not shutil.which("perf"):
        print("--perf needs perf (Debian: linux-perf)")
        return 2
    sys.path.insert(0, str(ROOT / "bench"))
    import ingress as bi  # bench/ingress.py: backends, hand-made nginx, wrk, CPU of a process tree

    ns = f"kwire-ab{os.getpid()}"
    d = Path(tempfile.mkdtemp(prefix="kwire-bench-ingress-ab-"))
    trees = {"this": ROOT, **{ref: export(ref, d / f"tree{i}") for i, ref in enumerate(a.against)}}
    log = open(d / "log", "wb")  # noqa: SIM115
    procs: list[subprocess.Popen[bytes]] = []
    planes: list[subprocess.Popen[bytes]] = []
    try:
        procs += bi.setup(ns, d, log)  # hand-made nginx (HAProxy too, idle here)
        for p in bi.BACKEND_PORTS:
            procs.append(bi.start_backend(ns, d, p, log))
        legs, pids = {"hand": HAND_PORT}, {"hand": procs[0].pid}
        for i, (name, tree) in enumerate(trees.items()):
            port = 8100 + 10 * i
            pl = subprocess.Popen(
                [sys.executable, __file__, "--plane", ns, str(d / f"plane{i}"), str(port), str(port + 2), str(port + 3)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONPATH": str(tree)},
            )  # fmt: skip
            planes.append(pl)
            assert pl.stdout is not None
            line = pl.stdout.readline()
            if not line.strip():
                raise RuntimeError(f"the data plane of {name} did not start (log: {d / 'log'})")
            legs[name], pids[name] = port, int(line)
        for port in legs.values():
            bi.wait_http(ns, port)
            bi.wrk(ns, port, 1, a.connections)  # warm-up
        cpu: dict[str, list[float]] = {k: [] for k in legs}
        rps: dict[str, list[float]] = {k: [] for k in legs}
        for r in range(a.rounds):
            for name in list(legs) if r % 2 == 0 else list(reversed(legs)):
                c0 = bi.tree_cpu(pids[name])
                x, n = bi.wrk(ns, legs[name], a.duration, a.connections)
                cpu[name].append((bi.tree_cpu(pids[name]) - c0) / max(n, 1) * 1e6)
                rps[name].append(x)
            print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.2f}" for k, v in cpu.items()) + " us CPU/request",
                  flush=True)  # fmt: skip
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for k in legs:
            per_round = [h / c for h, c in zip(cpu["hand"], cpu[k], strict=True)]
            print(f"{k:10s} median {statistics.median(cpu[k]):6.2f} us CPU/request, {statistics.median(rps[k]):7.0f} "
                  f"req/s; hand/{k}: {statistics.median(cpu['hand']) / statistics.median(cpu[k]):.3f} of medians, "
                  f"per round median {statistics.median(per_round):.3f} ({min(per_round):.3f}-{max(per_round):.3f})")  # fmt: skip
        if a.perf:
            shares = {
                k: perf_shares(
                    worker_pid(pids[k]), partial(bi.wrk, ns, port, a.duration, a.connections), d / f"{i}.perf"
                )
                for i, (k, port) in enumerate(legs.items())
            }
            for k, sh in shares.items():
                print(f"{k:10s} perf: kernel {sh['kernel']:5.2f} %, Lua {sh['lua']:4.2f} % of the worker's CPU; "
                      f"hand/{k} by kernel share {sh['kernel'] / shares['hand']['kernel']:.3f}")  # fmt: skip
        return 0
    finally:
        for pl in planes:
            if pl.stdin is not None:
                pl.stdin.close()
            try:
                pl.wait(20)
            except subprocess.TimeoutExpired:
                pl.kill()
        for proc in procs:
            bi.stop(proc)
        bi.cleanup(ns)
        log.close()
        subprocess.run(["rm", "-rf", str(d)], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
