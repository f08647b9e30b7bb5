"""Ingress benchmark: kwire's ingress (controller + nginx) vs nginx configured by hand vs HAProxy, and the goals.

    .venv/bin/python bench/ingress.py [--duration 5] [--rounds 3] [--connections 64] [--changes 100] [--ingresses 1000]
                                      [--parts throughput,changes,scale,memory] [--tree DIR]

Everything runs in one network namespace of our own (`kwire-bi<pid>`, loopback only; removed at the end), plus an
in-process kwire API server listening on 127.0.0.1 (of the machine and of that namespace):
- backends: 10 nginx processes (`return 200` of a 2-byte body), one port each = 10 endpoints, pinned to core 1;
- the proxies under test, each with ONE worker pinned to core 0, taking turns (each round runs every proxy once):
  * `hand`:    nginx configured by hand as a reverse proxy: a static upstream of the 10 endpoints, keep-alive to
               them, the same forwarded headers as kwire sets (Host, X-Forwarded-*, X-Real-Ip);
  * `kwire`:   `python -m kwire.ingress` as the traefik pod runs it, reading one Ingress (host bench.local,
               Prefix /) and a Service whose EndpointSlices list the 10 endpoints; its nginx, Lua balancer;
  * `haproxy`: HAProxy 2.6 with 16 `server-template` slots filled through its runtime API (`set server ... addr`,
               `state ready`), as haproxytech's kubernetes-ingress does, keep-alive and `http-reuse always`;
- the client: wrk, 1 thread, N keep-alive connections, pinned to core 1 with the backends.
Then, on kwire's ingress: route changes (a new Ingress created -> its host answers 200, polled every 2 ms by a
client process of its own from before the create call; then a new IngressRoute; both are data for the Lua router,
never a reload; p50/p99; one change every 0.25 s), the backend scaling 10 -> 2 -> 10 under wrk load (failed requests counted; as with pods, an endpoint
leaves the EndpointSlice first and its backend stops once the proxy no longer sends to it, and a new backend is
added once it listens), and the memory of controller + nginx after N Ingresses (RSS and PSS summed over the
process tree).
Prints requests/s per proxy and round, the proxy's CPU time per request (master + workers, from /proc: on a
shared machine the truer comparison, as other work steals the proxy's core), medians, and the ratios.
`--tree DIR` runs the ingress controller of another kwire tree (e.g. `git archive REF` unpacked) against the same
bench, for A/B runs of the controller.
Stops by itself: about rounds x 3 x (duration + 1 s) + 10 s of scaling + the changes and creations.
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
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kwire.client import ApiClient, ApiStatusError, load_kubeconfig  # noqa: E402
from kwire.client.client import (  # noqa: E402
    ENDPOINTSLICES,
    INGRESSCLASSES,
    INGRESSES,
    INGRESSROUTES,
    NAMESPACES,
    SERVICES,
)
from kwire.config import ServerConfig  # noqa: E402
from kwire.controllers.addons import traefik_crds  # noqa: E402
from kwire.kernel import netns  # noqa: E402
from kwire.server import start as start_api  # noqa: E402

NS = "bench"
TRAEFIK_CLASS = {  # what the traefik add-on installs (the add-on itself is disabled here: no nodes run its pod)
    "metadata": {"name": "traefik", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
    "spec": {"controller": "traefik.io/ingress-controller"},
}
CHANGE_SPACING = 0.25  # seconds between timed route changes (back-to-back reloads would time each other's drain)
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


def backend_conf(d: Path, port: int) -> str:
    listens = f"    listen 127.0.0.1:{port};"
    return f"""worker_processes 1;
daemon off;
pid {d}/backend-{port}.pid;
error_log stderr warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {d}/bb{port}; proxy_temp_path {d}/bp{port}; fastcgi_temp_path {d}/bf{port};
  uwsgi_temp_path {d}/bu{port}; scgi_temp_path {d}/bs{port};
  server {{
{listens}
    location / {{ return 200 "{port}"; }}
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


def wrk(ns: str, port: int, seconds: float, conns: int, *, check: bool = True) -> tuple[float, int]:
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
    if check and (bad or "Socket errors" in res.stdout):
        raise RuntimeError(f"wrk saw failed requests: {res.stdout}")
    if not check:
        errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", res.stdout))
        if errs or bad:
            print("  wrk: " + " | ".join(x.strip() for x in res.stdout.splitlines() if "error" in x or "Non-2xx" in x))
        return float(bad.group(1) if bad else 0) + errs, int(n.group(1)) if n else 0
    return float(m.group(1)), int(n.group(1)) if n else 0


def stop(p: subprocess.Popen[bytes] | None) -> None:
    if p is not None and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def start_backend(ns: str, d: Path, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    (d / f"backend-{port}.conf").write_text(backend_conf(d, port))
    return subprocess.Popen(nsexec(ns, NGINX, "-c", f"{d}/backend-{port}.conf", "-p", str(d), core=CLIENT_CORE),
                            stdout=log, stderr=log)  # fmt: skip


def setup(ns: str, d: Path, log: IO[bytes]) -> list[subprocess.Popen[bytes]]:
    """The namespace, the hand-configured nginx and HAProxy (backends and kwire are started separately)."""
    procs: list[subprocess.Popen[bytes]] = []
    subprocess.run([IP, "netns", "add", ns], check=True)
    subprocess.run([IP, "-n", ns, "link", "set", "lo", "up"], check=True)
    (d / "hand.conf").write_text(hand_conf(d, 8081))
    (d / "haproxy.cfg").write_text(haproxy_conf(d, 8082))
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


def http_get(ns: str, port: int, host: str) -> tuple[int, bytes]:
    """One request from inside the namespace (a socket opened there): (status, body); 0 when it fails."""
    try:
        s = netns.open_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return 0, b""
    data = b""
    with s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            return 0, b""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)) if m else 0), data.partition(b"\r\n\r\n")[2]


def http_status(ns: str, port: int, host: str) -> int:
    return http_get(ns, port, host)[0]


async def wait_backends(ns: str, ports: list[int], timeout: float = 30) -> float:
    """Until 30 requests in a row through kwire's proxy were answered by these backend ports only."""
    t0 = time.monotonic()
    run = 0
    while run < 30:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the proxy still uses other endpoints than {ports} after {timeout} s")
        code, body = await asyncio.to_thread(http_get, ns, 8090, "bench.local")
        run = run + 1 if code == 200 and int(body or 0) in ports else 0
    return time.monotonic() - t0


def tree_memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB summed over a process and its descendants (controller + nginx master + workers)."""
    rss = pss = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return rss, pss


def slice_for(ports: list[int]) -> dict[str, Any]:
    return {
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 0, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}, "hostname": f"b{p}"} for p in ports],
    }


def per_port_slices(ports: list[int]) -> list[dict[str, Any]]:
    """EndpointSlice ports are per slice: one slice per backend port (each endpoint 127.0.0.1 on its own port)."""
    out = []
    for p in ports:
        sl = slice_for([p])
        sl["metadata"]["name"] = f"web-{p}"
        sl["ports"][0]["port"] = p
        out.append(sl)
    return out


def ingressroute(name: str, host: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "routes": [{"kind": "Rule", "match": f"Host(`{host}`)", "services": [{"name": "web", "port": "http"}]}]
        },
    }


def ingress(name: str, host: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {"path": "/", "pathType": "Prefix",
                             "backend": {"service": {"name": "web", "port": {"name": "http"}}}}
                        ]
                    },
                }
            ]
        },
    }  # fmt: skip


async def set_endpoints(c: ApiClient, ports: list[int]) -> None:
    """The Service's endpoints become exactly these backend ports (one slice each)."""
    want = {s["metadata"]["name"]: s for s in per_port_slices(ports)}
    have = await c.list(ENDPOINTSLICES, NS)
    for s in have.get("items") or []:
        if s["metadata"]["name"] not in want:
            await c.delete(ENDPOINTSLICES, s["metadata"]["name"], NS)
    names = {s["metadata"]["name"] for s in have.get("items") or []}
    for name, s in want.items():
        if name not in names:
            await c.create(ENDPOINTSLICES, s, NS)


async def wait_status(ns: str, port: int, host: str, want: int, timeout: float = 30) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await asyncio.to_thread(http_status, ns, port, host) == want:
            return time.monotonic() - t0
        await asyncio.sleep(0.002)
    raise RuntimeError(f"{host} did not answer {want} within {timeout} s")


# The route-change client: its own process in the namespace, on the client's core. Run as a thread of this process,
# its polls took the GIL from the in-process API server (whose watch delivers the change to the controller) and
# waited for it behind the controller's status write: both counted into the change's latency.
POLLER = r"""
import socket, sys, time
port = int(sys.argv[1])
def status(host):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return 0
    return int(head[9:12]) if head.startswith(b"HTTP/1.") and head[9:12].isdigit() else 0
for line in sys.stdin:
    host, want = line.split()
    end = time.monotonic() + 30
    while status(host) != int(want):
        if time.monotonic() > end:
            print("timeout", flush=True)
            break
        time.sleep(0.002)
    else:
        print(f"{time.monotonic():.6f}", flush=True)
"""


class Poller:
    """Polls a host through the proxy until it answers a status; says when (CLOCK_MONOTONIC, as this process)."""

    def __init__(self, ns: str, port: int) -> None:
        self.proc = subprocess.Popen(nsexec(ns, sys.executable, "-c", POLLER, str(port), core=CLIENT_CORE),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip

    def start(self, host: str, want: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{host} {want}\n")
        self.proc.stdin.flush()

    async def done(self) -> float:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line or line.strip() == "timeout":
            raise RuntimeError("a route change was not served within 30 s")
        return float(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--changes", type=int, default=100, help="route changes timed")
    ap.add_argument("--ingresses", type=int, default=1000, help="Ingresses for the memory figure")
    ap.add_argument("--parts", default="throughput,changes,scale,memory", help="which parts to run (comma-separated)")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the kwire tree whose ingress controller runs (A/B)")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    for tool in ("wrk", "taskset", "curl"):
        if not shutil.which(tool):
            print(f"{tool} is required")
            return 2
    ns = f"kwire-bi{os.getpid()}"
    d = Path(tempfile.mkdtemp(prefix="kwire-bench-ingress-"))
    procs: list[subprocess.Popen[bytes]] = []
    backends: dict[int, subprocess.Popen[bytes]] = {}
    ctl: subprocess.Popen[bytes] | None = None
    api = None
    log = open(d / "log", "wb")  # noqa: SIM115
    try:
        procs += setup(ns, d, log)
        for p in BACKEND_PORTS:
            backends[p] = start_backend(ns, d, p, log)
        # The API listens on 127.0.0.1:PORT of the machine and of the bench namespace (same port, so one kubeconfig).
        port = free_port()
        sock = netns.open_socket(ns, socket.AF_INET, socket.SOCK_STREAM, bind=("127.0.0.1", port))
        sock.listen(128)
        api = await start_api(
            ServerConfig(data_dir=str(d / "api"), bind_address="127.0.0.1", https_listen_port=port, token="bench",
                         write_kubeconfig=str(d / "kubeconfig"), disable=("traefik", "coredns", "servicelb")),
            sockets=[sock],
        )  # fmt: skip
        async with ApiClient(load_kubeconfig(str(d / "kubeconfig"))) as c:
            await c.create(NAMESPACES, {"metadata": {"name": NS}})
            await c.create(INGRESSCLASSES, TRAEFIK_CLASS)
            await c.create(
                SERVICES, {"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80}]}}, NS
            )
            await set_endpoints(c, BACKEND_PORTS)
            await c.create(INGRESSES, ingress("bench", "bench.local"), NS)
            for res, crd in traefik_crds():  # as the traefik add-on installs them
                await c.create(res, crd, None)
            for _ in range(200):  # until the IngressRoute kind is served
                try:
                    await c.list(INGRESSROUTES, NS)
                    break
                except ApiStatusError:
                    await asyncio.sleep(0.05)
            ctl = start_controller(ns, d, log, a.tree)
            fill_haproxy(d / "haproxy.sock")
            await wait_status(ns, 8090, "bench.local", 200)
            kwire_pid = nginx_pid(ctl.pid)
            legs = {"hand": 8081, "kwire": 8090, "haproxy": 8082}
            pids = {"hand": procs[0].pid, "kwire": kwire_pid, "haproxy": procs[1].pid}
            for p in legs.values():
                await asyncio.to_thread(wait_http, ns, p)
                await asyncio.to_thread(wrk, ns, p, 1, a.connections)  # warm-up

            # 1. Throughput, side by side.
            results: dict[str, list[float]] = {k: [] for k in legs}
            cpu_us: dict[str, list[float]] = {k: [] for k in legs}
            for r in range(a.rounds if "throughput" in parts else 0):
                for name, p in legs.items():
                    c0 = tree_cpu(pids[name])
                    rps, n = await asyncio.to_thread(wrk, ns, p, a.duration, a.connections)
                    us = (tree_cpu(pids[name]) - c0) / max(n, 1) * 1e6
                    results[name].append(rps)
                    cpu_us[name].append(us)
                    print(f"round {r + 1} {name:8s} {rps:10.0f} req/s  proxy CPU {us:6.2f} us/request", flush=True)
            med = {k: statistics.median(v) if v else 0.0 for k, v in results.items()}
            cpu = {k: statistics.median(v) if v else 0.0 for k, v in cpu_us.items()}
            print()
            for k, v in med.items() if "throughput" in parts else ():
                print(f"{k:8s} median {v:10.0f} req/s, {cpu[k]:6.2f} us CPU/request  "
                      f"(runs: {', '.join(f'{x:.0f}' for x in results[k])})")  # fmt: skip
            if "throughput" in parts:
                print(f"kwire / hand   = {med['kwire'] / med['hand']:.3f} by req/s, {cpu['hand'] / cpu['kwire']:.3f} "
                      "by CPU per request   (goal >= 0.95)")  # fmt: skip
                print(f"haproxy / hand = {med['haproxy'] / med['hand']:.3f} by req/s, "
                      f"{cpu['hand'] / cpu['haproxy']:.3f} by CPU per request")  # fmt: skip
            if "changes" in parts:
                await route_changes(c, ns, a.changes, d, log)
            if "scale" in parts:
                await scaling(c, ns, d, log, backends, a.connections)
            if "memory" in parts:
                await memory(c, ns, ctl.pid, a.ingresses)
        return 0
    except Exception:
        log.flush()
        print(
            "log of the processes started (last lines):\n"
            + "\n".join((d / "log").read_text(errors="replace").splitlines()[-30:])
        )
        raise
    finally:
        try:
            for proc in [ctl, *procs, *backends.values()]:
                stop(proc)
            if api is not None:
                await api.close()
        finally:  # the namespace and the directory go even when stopping is interrupted (a second Ctrl-C)
            cleanup(ns)
            log.close()
            shutil.rmtree(d, ignore_errors=True)


def sync_times(d: Path, log: IO[bytes]) -> list[tuple[float, ...]]:
    """(whole sync, build + push, build in ms; first event, sync start, push done as monotonic seconds) of the
    controller's syncs so far (its -v log lines)."""
    log.flush()
    pat = re.compile(r"ingress sync ([0-9.]+) ms \(build ([0-9.]+) ms, push ([0-9.]+) ms\) "
                     r"event_at=([0-9.]+) start_at=([0-9.]+) pushed_at=([0-9.]+)")  # fmt: skip
    text = (d / "log").read_text(errors="replace")
    out = []
    for m in pat.finditer(text):
        whole, build, push, *at = (float(x) for x in m.groups())
        out.append((whole, build + push, build, *at))
    return out


def breakdown(changes: list[tuple[float, float]], syncs: list[tuple[float, ...]]) -> str:
    """Where each change's time went: create call -> the controller's first event (watch), -> its sync start
    (coalescing, a sync in progress), -> endpoints and router pushed (build + push), -> served (the data plane:
    the workers reading the shared dict, and the client's polling)."""
    parts: dict[str, list[float]] = {"watch": [], "queue": [], "build+push": [], "serve": []}
    for t0, t4 in changes:
        s = next((x for x in syncs if x[3] >= t0 - 0.0005), None)
        if s is None:
            continue
        parts["watch"].append((s[3] - t0) * 1000)
        parts["queue"].append((s[4] - s[3]) * 1000)
        parts["build+push"].append((s[5] - s[4]) * 1000)
        parts["serve"].append((t4 - s[5]) * 1000)
    return ", ".join(f"{k} p50 {pct(v, 50):.1f} / p99 {pct(v, 99):.1f} ms" for k, v in parts.items() if v)


async def route_changes(c: ApiClient, ns: str, changes: int, d: Path, log: IO[bytes]) -> None:
    """A new Ingress (a new host), then a new IngressRoute, each timed from its create call until its host answers
    200 from inside the namespace (both are routes pushed to the Lua router, never a reload). With
    KWIRE_BENCH_VERBOSE, where the time goes: the controller's syncs (build, push). The client that polls the new
    host (every 2 ms, from before the create call) is a process of its own (`Poller`)."""
    poller = Poller(ns, 8090)
    try:
        for kind in ("Ingress", "IngressRoute"):
            await _changes_of(kind, c, changes, d, log, poller)
    finally:
        poller.close()
    for i in range(changes):
        await c.delete(INGRESSES, f"r{i}", NS)
        await c.delete(INGRESSROUTES, f"q{i}", NS)
    await wait_status(ns, 8090, f"r{changes - 1}.bench.local", 404)
    await asyncio.sleep(1)


async def _changes_of(kind: str, c: ApiClient, changes: int, d: Path, log: IO[bytes], poller: Poller) -> None:
    """One phase: `changes` new routes of one kind, each timed from its create call until its host answers 200."""
    before = len(sync_times(d, log))
    lat = []
    spans: list[tuple[float, float]] = []
    for i in range(changes):
        await asyncio.sleep(CHANGE_SPACING)
        poller.start(f"{'r' if kind == 'Ingress' else 'q'}{i}.bench.local", 200)
        t0 = time.monotonic()
        if kind == "Ingress":
            await c.create(INGRESSES, ingress(f"r{i}", f"r{i}.bench.local"), NS)
        else:
            await c.create(INGRESSROUTES, ingressroute(f"q{i}", f"q{i}.bench.local"), NS)
        t4 = await poller.done()
        lat.append((t4 - t0) * 1000)
        spans.append((t0, t4))
    print(f"\nroute change ({kind}) -> serving: p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
          f"max {max(lat):.1f} ms over {len(lat)} changes   (goal p99 <= 100 ms)")  # fmt: skip
    syncs = sync_times(d, log)[before:]
    if os.environ.get("KWIRE_BENCH_VERBOSE"):
        print("  each change (ms):", " ".join(f"{x:.0f}" for x in lat))
    if syncs:
        print("  where the time went:", breakdown(spans, syncs))
        whole, push, build = ([x[i] for x in syncs] for i in range(3))
        print(f"  controller syncs: {len(syncs)}, whole p50 {pct(whole, 50):.1f} / p99 {pct(whole, 99):.1f} ms, "
              f"build + push p50 {pct(push, 50):.1f} / p99 {pct(push, 99):.1f} ms, "
              f"build p50 {pct(build, 50):.1f} / p99 {pct(build, 99):.1f} ms")  # fmt: skip


async def scaling(
    c: ApiClient, ns: str, d: Path, log: IO[bytes], backends: dict[int, subprocess.Popen[bytes]], connections: int
) -> None:
    """Scale 10 -> 2 -> 10 under load: endpoints leave before their backends stop, as a pod's do (removed from the
    slice on deletion, process stopped after), and come back after they start."""

    async def scale() -> None:
        await asyncio.sleep(2)
        await set_endpoints(c, BACKEND_PORTS[:2])
        await asyncio.sleep(1)
        for p in BACKEND_PORTS[2:]:
            backends[p].send_signal(signal.SIGQUIT)  # nginx's graceful stop
        await asyncio.sleep(2)
        for p in BACKEND_PORTS[2:]:
            await asyncio.to_thread(backends[p].wait)
            backends[p] = start_backend(ns, d, p, log)
        await asyncio.sleep(1)
        await set_endpoints(c, BACKEND_PORTS)

    if os.environ.get("KWIRE_BENCH_VERBOSE"):
        log.flush()
        print("\n".join(x for x in (d / "log").read_text().splitlines() if "ingress sync" in x)[-3000:])
    scaler = asyncio.create_task(scale())
    failed, total = await asyncio.to_thread(wrk, ns, 8090, 10, connections, check=False)
    await scaler
    print(f"scale 10 -> 2 -> 10 under load: {int(failed)} failed of {total} requests   (goal 0)")


async def memory(c: ApiClient, ns: str, ctl_pid: int, ingresses: int) -> None:
    """Memory of controller + nginx with many Ingresses."""
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            await c.create(INGRESSES, ingress(f"m{i}", f"m{i}.bench.local"), NS)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(ingresses)))
    await wait_status(ns, 8090, f"m{ingresses - 1}.bench.local", 200, timeout=120)
    took = time.monotonic() - t0
    await asyncio.sleep(5)  # settle (the controller's heap trim follows its last sync)
    rss, pss = tree_memory(ctl_pid)
    nrss, npss = tree_memory(nginx_pid(ctl_pid))
    print(f"{ingresses} Ingresses created and all served in {took:.1f} s; add-on memory (controller + "
          f"nginx): RSS {rss:.0f} MB, PSS {pss:.0f} MB   (goal RSS <= 120 MB); of which nginx (master + "
          f"workers) RSS {nrss:.0f} MB, PSS {npss:.0f} MB")  # fmt: skip


def start_controller(ns: str, d: Path, log: IO[bytes], tree: Path = ROOT) -> subprocess.Popen[bytes]:
    """`python -m kwire.ingress` of `tree` in the namespace, on the proxy's core, reading the bench API."""
    cmd = nsexec(ns, sys.executable, "-m", "kwire.ingress", "--kubeconfig", str(d / "kubeconfig"),
                 "--state-dir", str(d / "ctl"), "--http-port", "8090", "--https-port", "8443",
                 "--ping-port", "9000", "--service", f"{NS}/none", *(["-v"] if os.environ.get("KWIRE_BENCH_VERBOSE") else []), core=PROXY_CORE)  # fmt: skip
    # cwd: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
    return subprocess.Popen(cmd, stdout=log, stderr=log, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})


def nginx_pid(ctl_pid: int, timeout: float = 10) -> int:
    """The controller's nginx master (its child)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        kids = Path(f"/proc/{ctl_pid}/task/{ctl_pid}/children").read_text().split()
        for k in kids:
            if "nginx" in Path(f"/proc/{k}/cmdline").read_text():
                return int(k)
        time.sleep(0.05)
    raise RuntimeError("the controller started no nginx")


def free_port() -> int:
    with socket.socket() as t:
        t.bind(("127.0.0.1", 0))
        return int(t.getsockname()[1])


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
