"""Cluster DNS benchmark: kwire's DNS server vs dnsmasq serving the same names, one core each, under dnsperf.

    .venv/bin/python bench/dns.py [--services 1000] [--duration 10] [--rounds 1]

Starts an in-process kwire API server with N ClusterIP Services (namespace `bench`), then
- kwire's DNS server (`python -m kwire.dns`, reading the API through its informers), and
- dnsmasq with the same N names -> ClusterIPs (`--addn-hosts`, `--no-resolv --no-hosts`),
each on 127.0.0.1 on a high port, pinned with `taskset -c 1`; dnsperf runs pinned to core 0 (as does this
script and the API server, idle during the runs), with the same query file (A queries for every Service name,
`<svc>.bench.svc.cluster.local`, in order) and the same duration. Each server gets a 2 s warm-up run first
(kwire's first answer for a name is computed, later ones come from its precomputed responses).

Prints queries per second, the kwire/dnsmasq ratio, latency (dnsperf's average and standard deviation, and
p50/p99 computed from dnsperf's per-query report, -v) and the share of its core each server used (a server
below 100% was waiting for dnsperf, which then is the limit). Everything started is stopped at the end, and the whole
run is bounded (about 2 x rounds x (duration + 3 s) plus set-up).
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
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# This file is named dns.py: keep its directory off the path so that `import dns` is dnspython.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
import dns.message  # noqa: E402
import dns.query  # noqa: E402

from kwire.client import ApiClient, load_kubeconfig  # noqa: E402
from kwire.client.client import NAMESPACES, SERVICES  # noqa: E402
from kwire.config import ServerConfig  # noqa: E402
from kwire.server import start as start_api  # noqa: E402
from tests.integration.apiserver import free_udp_tcp_port  # noqa: E402

SERVER_CORE = "1"
CLIENT_CORE = 0
NS = "bench"


@dataclass
class Result:
    name: str
    qps: float
    avg_ms: float
    std_ms: float
    p50_ms: float
    p99_ms: float
    lost: int
    sent: int
    cpu: float = 0.0  # share of its core the server used during the run

    @property
    def us_per_query(self) -> float:
        """Server CPU time per answered query (user + system): its capacity, whatever limits the client."""
        return self.cpu / self.qps * 1e6 if self.qps else float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def dnsperf(port: int, queries: Path, seconds: float, out: Path, name: str, edns: bool = False) -> Result:
    cmd = [
        "taskset", "-c", str(CLIENT_CORE), "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
        "-l", str(seconds), "-t", "2", "-v", *(["-e"] if edns else []),
    ]  # fmt: skip
    with out.open("wb") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=seconds + 30, check=True)
    text = out.read_text(errors="replace")
    lat = sorted(float(m.group(1)) for m in re.finditer(r"^> \S+ \S+ \S+ ([0-9.]+)$", text, re.M))

    def num(pattern: str) -> float:
        m = re.search(pattern, text)
        if m is None:
            raise RuntimeError(f"dnsperf output lacks {pattern!r}:\n{text[-2000:]}")
        return float(m.group(1))

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return Result(
        name=name,
        qps=num(r"Queries per second:\s+([0-9.]+)"),
        avg_ms=num(r"Average Latency \(s\):\s+([0-9.]+)") * 1000,
        std_ms=num(r"Latency StdDev \(s\):\s+([0-9.]+)") * 1000,
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        lost=int(num(r"Queries lost:\s+([0-9]+)")),
        sent=int(num(r"Queries sent:\s+([0-9]+)")),
    )


def wait_answer(port: int, name: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.5)
            if r.answer:
                return r.answer[0][0].to_text()
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"no answer for {name} on port {port}: {last}")


def wait_ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("kwire DNS did not become ready")


async def make_services(kubeconfig: Path, n: int) -> dict[str, str]:
    async with ApiClient(load_kubeconfig(kubeconfig)) as c:
        await c.create(NAMESPACES, {"metadata": {"name": NS}})
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> tuple[str, str]:
            async with sem:
                obj = await c.create(
                    SERVICES,
                    {"metadata": {"name": f"svc-{i}"}, "spec": {"ports": [{"name": "http", "port": 80}]}},
                    NS,
                )
            return f"svc-{i}.{NS}.svc.cluster.local", obj["spec"]["clusterIP"]

        return dict(await asyncio.gather(*(one(i) for i in range(n))))


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=_HERE.parent)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def stop(p: subprocess.Popen[bytes] | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=1, help="alternating kwire/dnsmasq runs per server")
    ap.add_argument("--edns", action="store_true", help="queries with EDNS (dnsperf -e)")
    args = ap.parse_args()
    for tool in ("dnsperf", "dnsmasq", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("needs two cores (server on core 1, dnsperf on core 0)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {CLIENT_CORE})
    tmp = Path(tempfile.mkdtemp(prefix="kwire-bench-dns-"))
    api = None
    kwire_dns: subprocess.Popen[bytes] | None = None
    dnsmasq: subprocess.Popen[bytes] | None = None
    try:
        api = await start_api(
            ServerConfig(
                data_dir=str(tmp / "api"),
                bind_address="127.0.0.1",
                https_listen_port=free_udp_tcp_port(),
                token="bench",
                write_kubeconfig=str(tmp / "kubeconfig"),
            )
        )
        t0 = time.monotonic()
        names = await make_services(api.kubeconfig, args.services)
        print(f"{len(names)} Services created in {time.monotonic() - t0:.1f} s")
        queries = tmp / "queries.txt"
        queries.write_text("".join(f"{n} A\n" for n in names))
        hosts = tmp / "hosts"
        hosts.write_text("".join(f"{ip} {n}\n" for n, ip in names.items()))
        resolv = tmp / "resolv.conf"
        resolv.write_text("nameserver 192.0.2.53\n")  # never used: every query is a cluster name

        kport, hport = free_udp_tcp_port(), free_udp_tcp_port()
        kwire_dns = spawn(
            [
                "taskset",
                "-c",
                SERVER_CORE,
                sys.executable,
                "-m",
                "kwire.dns",
                "--kubeconfig",
                str(api.kubeconfig),
                "--listen",
                "127.0.0.1",
                "--port",
                str(kport),
                "--health-port",
                str(hport),
                "--ready-port",
                str(hport),
                "--metrics-port",
                str(hport),
                "--resolv-conf",
                str(resolv),
                "--node-hosts-configmap",
                f"{NS}/none",
                "--custom-configmap",
                f"{NS}/none",
            ],  # fmt: skip
            tmp / "kwire-dns.log",
        )
        await asyncio.to_thread(wait_ready, hport)
        first = next(iter(names))
        got = await asyncio.to_thread(wait_answer, kport, first)
        assert got == names[first], (got, names[first])

        dport = free_udp_tcp_port()
        dnsmasq = spawn(
            [
                "taskset",
                "-c",
                SERVER_CORE,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={hosts}",
                f"--port={dport}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--user=root",
                "--pid-file=",
                "--cache-size=10000",
                "--log-facility=/dev/null",
            ],  # fmt: skip
            tmp / "dnsmasq.log",
        )
        got = await asyncio.to_thread(wait_answer, dport, first)
        assert got == names[first], (got, names[first])

        results: dict[str, list[Result]] = {"kwire": [], "dnsmasq": []}
        for name, port in (("kwire", kport), ("dnsmasq", dport)):
            await asyncio.to_thread(dnsperf, port, queries, 2, tmp / "warmup.txt", name, args.edns)
        pids = {"kwire": kwire_dns.pid, "dnsmasq": dnsmasq.pid}
        for _ in range(args.rounds):
            for name, port in (("kwire", kport), ("dnsmasq", dport)):
                c0, t0 = cpu_seconds(pids[name]), time.monotonic()
                r = await asyncio.to_thread(dnsperf, port, queries, args.duration, tmp / f"{name}.txt", name, args.edns)
                r.cpu = (cpu_seconds(pids[name]) - c0) / (time.monotonic() - t0)
                results[name].append(r)
                print(
                    f"  {name:8s} {r.qps:10.0f} qps  avg {r.avg_ms:.3f} ms  sd {r.std_ms:.3f} ms  "
                    f"p50 {r.p50_ms:.3f} ms  p99 {r.p99_ms:.3f} ms  lost {r.lost}/{r.sent}  "
                    f"cpu {r.cpu:.0%} = {r.us_per_query:.2f} us/query"
                )
        metrics = await asyncio.to_thread(fetch, f"http://127.0.0.1:{hport}/metrics")
        served = sum(
            float(m.group(1))
            for m in re.finditer(r'^coredns_dns_requests_total\{[^}]*proto="udp"[^}]*\} ([0-9.e+]+)$', metrics, re.M)
        )

        def med(rs: list[Result], attr: str) -> float:
            return statistics.median(getattr(r, attr) for r in rs)

        k, d = results["kwire"], results["dnsmasq"]
        print()
        print(
            f"{args.services} Services, {args.duration:.0f} s per run, {args.rounds} round(s), server on core 1"
            + (", EDNS queries" if args.edns else "")
        )
        print(f"{'':10s}{'qps':>10s}{'avg ms':>9s}{'sd ms':>8s}{'p50 ms':>9s}{'p99 ms':>9s}{'cpu':>6s}{'us/q':>7s}")
        for name, rs in (("kwire", k), ("dnsmasq", d)):
            print(
                f"{name:10s}{med(rs, 'qps'):10.0f}{med(rs, 'avg_ms'):9.3f}{med(rs, 'std_ms'):8.3f}"
                f"{med(rs, 'p50_ms'):9.3f}{med(rs, 'p99_ms'):9.3f}{med(rs, 'cpu'):6.0%}{med(rs, 'us_per_query'):7.2f}"
            )
        print(f"ratio kwire/dnsmasq: {med(k, 'qps') / med(d, 'qps'):.2f}x  (goal >= 0.8x)")
        print(
            f"capacity ratio (server CPU per query, dnsmasq/kwire): "
            f"{med(d, 'us_per_query') / med(k, 'us_per_query'):.2f}x"
            + (
                "  (dnsperf was the limit: a server used < 95% of its core)"
                if min(med(k, "cpu"), med(d, "cpu")) < 0.95
                else ""
            )
        )
        print(f"kwire's coredns_dns_requests_total (udp): {served:.0f}")
        return 0
    finally:
        stop(kwire_dns)
        stop(dnsmasq)
        if api is not None:
            await api.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
