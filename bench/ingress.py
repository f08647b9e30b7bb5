"""Ingress data-plane benchmark: kwire's ingress proxy vs nginx configured by hand vs HAProxy, side by side.

    .venv/bin/python bench/ingress.py [--duration 5] [--rounds 3] [--connections 64]

Everything runs in one network namespace of our own (`kwire-bi<pid>`, loopback only; removed at the end):
- backends: one nginx (`return 200` of a 2-byte body) listening on 10 ports, i.e. 10 endpoints;
- the proxies under test, each with ONE worker pinned to core 0, taking turns (each round runs every proxy once):
  * `hand`:    nginx configured by hand as a reverse proxy: a static upstream of the 10 endpoints, keep-alive to
               them, the same forwarded headers as kwire sets (Host, X-Forwarded-*, X-Real-Ip);
  * `kwire`:   the configuration kwire's ingress controller renders (`kwire.ingress.nginxconf`) for one Ingress
               (host bench.local, Prefix /), endpoints pushed through its control socket (Lua balancer);
  * `haproxy`: HAProxy 2.6 with 16 `server-template` slots filled through its runtime API (`set server ... addr`,
               `state ready`), as haproxytech's kubernetes-ingress does, keep-alive and `http-reuse always`;
- the client: wrk, 1 thread, N keep-alive connections, pinned to core 1 with the backends.
Prints requests/s per proxy and round, the proxy's CPU time per request (master + workers, from /proc: on a
shared machine the truer comparison, as other work steals the proxy's core), medians, and the ratios
kwire/hand and haproxy/hand.
Stops by itself: about rounds x 3 x (duration + 1 s) plus a few seconds of set-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kwire.ingress.model import Backend, Route, Table  # noqa: E402
from kwire.ingress.nginx import Nginx  # noqa: E402
from kwire.ingress.nginxconf import Paths, Render, backend_lines, render  # noqa: E402

PROXY_CORE = "0"
CLIENT_CORE = "1"
BACKEND_PORTS = list(range(18001, 18011))
IP = shutil.which("ip") or "/usr/sbin/ip"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
HEADERS = """
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $http_host;
    proxy_set_header X-Forwarded-Port $server_port;
    proxy_set_header X-Forwarded-Server $hostname;
    proxy_set_header X-Real-Ip $remote_addr;
"""


def nsexec(ns: str, *cmd: str, core: str | None = None) -> list[str]:
    pin = ["taskset", "-c", core] if core is not None else []
    return [IP, "netns", "exec", ns, *pin, *cmd]


def backend_conf(d: Path) -> str:
    listens = "\n".join(f"    listen 127.0.0.1:{p};" for p in BACKEND_PORTS)
    return f"""worker_processes 1;
daemon off;
pid {d}/backend.pid;
error_log stderr warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {d}/bb; proxy_temp_path {d}/bp; fastcgi_temp_path {d}/bf; uwsgi_temp_path {d}/bu;
  scgi_temp_path {d}/bs;
  server {{
{listens}
    location / {{ return 200 "ok"; }}
  }}
}}
"""


def hand_conf(d: Path, port: int) -> str:
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in BACKEND_PORTS)
    return f"""worker_processes 1;
daemon off;
pid {d}/hand.pid;
error_log stderr warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path {d}/hb; proxy_temp_path {d}/hp; fastcgi_temp_path {d}/hf; uwsgi_temp_path {d}/hu;
  scgi_temp_path {d}/hs;
  upstream be {{
{servers}
    keepalive 512;
    keepalive_requests 100000;
  }}
  server {{
    listen 127.0.0.1:{port};
    server_name bench.local;
    location / {{ {HEADERS} proxy_pass http://be; }}
  }}
}}
"""


def haproxy_conf(d: Path, port: int) -> str:
    return f"""global
  nbthread 1
  maxconn 8000
  stats socket {d}/haproxy.sock mode 600 level admin
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
frontend web
  bind 127.0.0.1:{port}
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Port %[dst_port]
  http-request set-header X-Real-Ip %[src]
  use_backend be if {{ hdr(host) -m str bench.local }}
backend be
  balance roundrobin
  http-reuse always
  server-template s 1-16 127.0.0.1:1 disabled
"""


def haproxy_cmd(sock: Path, cmd: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        s.sendall(cmd.encode() + b"\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out.decode()


def wait_http(ns: str, port: int, host: str = "bench.local", timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        res = subprocess.run(
            nsexec(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}",
                   f"http://127.0.0.1:{port}/"),
            capture_output=True, text=True,
        )  # fmt: skip
        if res.stdout == "200":
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} does not answer 200")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants (the proxy's master and workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def wrk(ns: str, port: int, seconds: float, conns: int) -> tuple[float, int]:
    res = subprocess.run(
        nsexec(ns, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "-H", "Host: bench.local", f"http://127.0.0.1:{port}/",
               core=CLIENT_CORE),
        capture_output=True, text=True, timeout=seconds + 30,
    )  # fmt: skip
    m = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", res.stdout)
    if not m:
        raise RuntimeError(f"wrk: {res.stdout} {res.stderr}")
    n = re.search(r"(\d+) requests in", res.stdout)
    if bad or "Socket errors" in res.stdout:
        raise RuntimeError(f"wrk saw failed requests: {res.stdout}")
    return float(m.group(1)), int(n.group(1)) if n else 0


def stop(p: subprocess.Popen[bytes] | None) -> None:
    if p is not None and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def setup(ns: str, d: Path, log: IO[bytes]) -> list[subprocess.Popen[bytes]]:
    """The namespace, the backends, the hand-configured nginx and HAProxy (kwire's proxy is started by its class)."""
    procs: list[subprocess.Popen[bytes]] = []
    subprocess.run([IP, "netns", "add", ns], check=True)
    subprocess.run([IP, "-n", ns, "link", "set", "lo", "up"], check=True)
    (d / "backend.conf").write_text(backend_conf(d))
    (d / "hand.conf").write_text(hand_conf(d, 8081))
    (d / "haproxy.cfg").write_text(haproxy_conf(d, 8082))
    procs.append(subprocess.Popen(nsexec(ns, NGINX, "-c", f"{d}/backend.conf", "-p", str(d), core=CLIENT_CORE),
                                  stdout=log, stderr=log))  # fmt: skip
    procs.append(subprocess.Popen(nsexec(ns, NGINX, "-c", f"{d}/hand.conf", "-p", str(d), core=PROXY_CORE),
                                  stdout=log, stderr=log))  # fmt: skip
    procs.append(subprocess.Popen(nsexec(ns, HAPROXY, "-W", "-db", "-f", f"{d}/haproxy.cfg", core=PROXY_CORE),
                                  stdout=log, stderr=log))  # fmt: skip
    return procs


def fill_haproxy(sock: Path) -> None:
    """The 10 endpoints into HAProxy's server slots through its runtime API."""
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    for i, p in enumerate(BACKEND_PORTS, start=1):
        haproxy_cmd(sock, f"set server be/s{i} addr 127.0.0.1 port {p}")
        haproxy_cmd(sock, f"set server be/s{i} state ready")


def cleanup(ns: str) -> None:
    subprocess.run([IP, "netns", "del", ns], check=False)


async def start_kwire(ns: str, d: Path, port: int) -> Nginx:
    """kwire's rendered configuration, run as the controller runs it (but with the bench's netns and core)."""
    paths = Paths(d / "kwire")
    proxy = Nginx(paths)
    proxy.prepare()
    b = Backend("bench", "web", "80")
    table = Table(hosts={"bench.local": [Route("/", "Prefix", b, "bench/web")], "": []})
    rd = Render(known_backends={b.key}, http_port=port, https_port=port + 1, ping_port=port + 2)
    proxy.command_prefix = [IP, "netns", "exec", ns, "taskset", "-c", PROXY_CORE]
    await proxy.apply(render(table, rd, paths))
    await proxy.push(backend_lines({b.key: [f"127.0.0.1:{p}" for p in BACKEND_PORTS]}))
    return proxy


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    a = ap.parse_args()
    for tool in ("wrk", "taskset", "curl"):
        if not shutil.which(tool):
            print(f"{tool} is required")
            return 2
    ns = f"kwire-bi{os.getpid()}"
    d = Path(tempfile.mkdtemp(prefix="kwire-bench-ingress-"))
    procs: list[subprocess.Popen[bytes]] = []
    kw: Nginx | None = None
    log = open(d / "log", "wb")  # noqa: SIM115
    try:
        procs += setup(ns, d, log)
        kw = await start_kwire(ns, d, 8090)
        fill_haproxy(d / "haproxy.sock")
        legs = {"hand": 8081, "kwire": 8090, "haproxy": 8082}
        assert kw.proc is not None
        pids = {"hand": procs[1].pid, "kwire": kw.proc.pid, "haproxy": procs[2].pid}
        for port in legs.values():
            wait_http(ns, port)
            wrk(ns, port, 1, a.connections)  # warm-up
        results: dict[str, list[float]] = {k: [] for k in legs}
        cpu_us: dict[str, list[float]] = {k: [] for k in legs}
        for r in range(a.rounds):
            for name, port in legs.items():
                c0 = tree_cpu(pids[name])
                rps, n = wrk(ns, port, a.duration, a.connections)
                us = (tree_cpu(pids[name]) - c0) / max(n, 1) * 1e6
                results[name].append(rps)
                cpu_us[name].append(us)
                print(f"round {r + 1} {name:8s} {rps:10.0f} req/s  proxy CPU {us:6.2f} us/request", flush=True)
        med = {k: statistics.median(v) for k, v in results.items()}
        cpu = {k: statistics.median(v) for k, v in cpu_us.items()}
        print()
        for k, v in med.items():
            print(
                f"{k:8s} median {v:10.0f} req/s, {cpu[k]:6.2f} us CPU/request  "
                f"(runs: {', '.join(f'{x:.0f}' for x in results[k])})"
            )
        print(f"kwire / hand   = {med['kwire'] / med['hand']:.3f} req/s, {cpu['hand'] / cpu['kwire']:.3f} by CPU per request"
              "   (goal >= 0.95)")  # fmt: skip
        print(
            f"haproxy / hand = {med['haproxy'] / med['hand']:.3f} req/s, {cpu['hand'] / cpu['haproxy']:.3f} by CPU per request"
        )
        return 0
    finally:
        if kw is not None:
            await kw.stop()
        for p in procs:
            stop(p)
        cleanup(ns)
        log.close()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
