"""Soak: mixed load on a 3-node lab for N minutes with one random kill -9 of a kwire process per minute.

    .venv/bin/python bench/soak.py [--minutes 10] [--seed 1]

Load, all at once, each loop bounded and stopping by itself at the end:
- writes: ConfigMaps created and updated through the API (every acknowledged write is remembered);
- watches: 4 watchers following ConfigMaps, re-watching when a stream ends (as informers do);
- lists: a full ConfigMap list every 0.5 s;
- exec: `kubectl exec` of a command in a pod every 2 s;
- DNS: `dig` of a Service name from a pod every 0.5 s;
- policy churn: a NetworkPolicy created and deleted every 2 s.
Once a minute one kwire process is killed with SIGKILL: the server, an agent, a pod runtime or a cluster DNS pod's
process, each kind in turn in a random order (so each is killed at least once in four minutes); the lab's supervisor, the agents and the Deployment bring it back.

Printed: requests and failures per kind, acknowledged writes lost (checked at the end: every acknowledged
ConfigMap must be there with the last acknowledged value; goal 0), p99 latency per minute, and the server's and
agents' RSS at the start and at the end, and over the longest life of each process (a killed process starts anew;
goal: growth within 20 %). Everything runs in a lab of its own
(`kwire-kws-*`), removed at the end even on failure; traffic stays inside the lab's namespaces and 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

# The checkout first, and not bench/ itself: bench/dns.py would shadow dnspython's `dns` package.
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]
from kwire.client import load_kubeconfig  # noqa: E402
from kwire.lab import lab as labmod  # noqa: E402
from kwire.lab import procs  # noqa: E402
from tests.integration.labkit import IP, KUBECTL, Lab  # noqa: E402

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: nginx, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""


class Stats:
    def __init__(self) -> None:
        self.ok: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.latency: dict[int, list[float]] = defaultdict(list)  # minute -> seconds
        self.t0 = time.monotonic()

    def record(self, kind: str, ok: bool, seconds: float) -> None:
        (self.ok if ok else self.failed)[kind] += 1
        if ok:
            self.latency[int((time.monotonic() - self.t0) // 60)].append(seconds)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


async def timed(stats: Stats, kind: str, coro: Any) -> Any:
    t = time.monotonic()
    try:
        result = await coro
    except Exception:  # noqa: BLE001 - a failed request is what the soak counts
        stats.record(kind, False, 0)
        return None
    stats.record(kind, True, time.monotonic() - t)
    return result


async def run_command(*cmd: str, timeout: float = 10) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}")
    return out.decode()


async def soak(lab: Lab, *, minutes: float, seed: int) -> int:
    rng = random.Random(seed)
    cfg = load_kubeconfig(lab.topo.kubeconfig)
    ctx = cfg.ssl_context()  # the kubeconfig's CA (and client certificate, where it has one)
    headers = {"Authorization": f"Bearer {cfg.token}"} if cfg.token else {}
    url = cfg.server
    stats = Stats()
    acked: dict[str, str] = {}
    end = time.monotonic() + minutes * 60
    kube_env = {"KUBECONFIG": str(lab.topo.kubeconfig), "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
    pods = await asyncio.to_thread(lab.wait_pods_ready, "app=web", 3, timeout=120)
    probe = pods[0]["metadata"]["name"]
    probe_ns = await asyncio.to_thread(lab.netns_of, probe)

    def lab_pids() -> dict[str, int]:
        st = labmod.LabState.load(lab.name)
        assert st is not None
        out = {k: v for k, v in st.pids.items() if k != labmod.SUPERVISOR}
        for d in lab.topo.state_dir.glob("*/runtime/runtime.pid"):
            out[f"runtime-{d.parent.parent.name}"] = procs.read_pid(d)
        return out

    start_rss = {k: rss_mb(p) for k, p in lab_pids().items() if not k.startswith("runtime")}
    lives: dict[tuple[str, int], list[tuple[float, float]]] = {}

    async with aiohttp.ClientSession(
        headers=headers, connector=aiohttp.TCPConnector(ssl=ctx), timeout=aiohttp.ClientTimeout(total=10)
    ) as http:

        async def api(method: str, path: str, body: Any = None) -> Any:
            async with http.request(method, url + path, json=body) as r:
                if r.status >= 400:
                    raise RuntimeError(f"{method} {path}: {r.status}")
                return await r.json()

        async def writer(w: int) -> None:
            n = 0
            while time.monotonic() < end:
                name = f"soak-{w}-{n % 200}"
                value = f"{n}"
                path = "/api/v1/namespaces/default/configmaps"
                body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": value}}
                if name in acked:
                    res = await timed(stats, "write", api("PUT", f"{path}/{name}", body))
                else:
                    res = await timed(stats, "write", api("POST", path, body))
                    if res is None:  # created before a kill, unacknowledged: update it from now on
                        res = await timed(stats, "write", api("PUT", f"{path}/{name}", body))
                if res is not None:
                    acked[name] = value
                n += 1
                await asyncio.sleep(0.01)

        async def watcher() -> None:
            while time.monotonic() < end:
                try:
                    async with http.get(
                        url + "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=30",
                        timeout=aiohttp.ClientTimeout(total=None, sock_read=40),
                    ) as r:
                        async for _ in r.content:
                            if time.monotonic() >= end:
                                return
                    stats.record("watch", True, 0)
                except Exception:  # noqa: BLE001
                    stats.record("watch", False, 0)
                    await asyncio.sleep(0.5)

        async def lister() -> None:
            while time.monotonic() < end:
                await timed(stats, "list", api("GET", "/api/v1/namespaces/default/configmaps"))
                await asyncio.sleep(0.5)

        async def execer() -> None:
            while time.monotonic() < end:
                cmd = [KUBECTL, "exec", probe, "--", "true"]
                await timed(stats, "exec", asyncio.wait_for(_kubectl(cmd, kube_env), 15))
                await asyncio.sleep(2)

        async def dns() -> None:
            while time.monotonic() < end:
                q = [
                    IP,
                    "netns",
                    "exec",
                    probe_ns,
                    "dig",
                    "+short",
                    "+time=2",
                    "+tries=2",
                    "web.default.svc.cluster.local",
                ]
                await timed(stats, "dns", run_command(*q))
                await asyncio.sleep(0.5)

        async def policies() -> None:
            i = 0
            path = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies"
            while time.monotonic() < end:
                name = f"soak-{i % 5}"
                body = {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {"name": name},
                    "spec": {"podSelector": {"matchLabels": {"app": "nothing"}}, "policyTypes": ["Ingress"]},
                }
                await timed(stats, "policy", api("POST", path, body))
                await asyncio.sleep(1)
                await timed(stats, "policy", api("DELETE", f"{path}/{name}"))
                await asyncio.sleep(1)
                i += 1

        async def killer() -> None:
            kills = 0
            order: list[str] = []
            while time.monotonic() + 60 < end:
                await asyncio.sleep(60)
                if not order:  # every kind of process in turn, in a random order: each is killed at least once
                    order.extend(rng.sample(["server", "agent", "runtime", "dns-pod"], 4))
                kind = order.pop(0)
                pids = lab_pids()
                dns_pids = [p for p in procs.pids_in_namespaces(_dns_netns(lab)) if "kwire.dns" in _cmdline(p)]
                by_kind = {
                    "server": [("server", pids.get("server", 0))],
                    "agent": [(k, p) for k, p in pids.items() if k.startswith("node")],
                    "runtime": [(k, p) for k, p in pids.items() if k.startswith("runtime")],
                    "dns-pod": [("dns-pod", p) for p in dns_pids],
                }
                choices = [(k, p) for k, p in by_kind[kind] if p > 0]
                if not choices:
                    continue
                what, pid = rng.choice(choices)
                if procs.alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                    print(f"  minute {kills}: kill -9 {what} (pid {pid})", flush=True)

        async def sampler() -> None:
            """Each process's RSS every 15 s, by (kind, pid): a process killed and restarted starts a new life."""
            while time.monotonic() < end:
                now = time.monotonic()
                for k, p in lab_pids().items():
                    if p > 0 and not k.startswith("runtime"):
                        mb = rss_mb(p)
                        if mb:
                            lives.setdefault((k, p), []).append((now, mb))
                await asyncio.sleep(15)

        tasks = [writer(w) for w in range(4)] + [watcher() for _ in range(4)]
        tasks += [lister(), execer(), dns(), policies(), killer(), sampler()]
        await asyncio.gather(*tasks)

        # Let everything come back, then check every acknowledged write.
        await asyncio.sleep(5)
        lost = 0
        for _ in range(30):
            try:
                items = (await api("GET", "/api/v1/namespaces/default/configmaps"))["items"]
                break
            except Exception:  # noqa: BLE001 - the server may be restarting after the last kill
                await asyncio.sleep(1)
        else:
            print("the API did not come back after the soak")
            return 1
        stored = {i["metadata"]["name"]: i.get("data", {}).get("v") for i in items}
        for name, value in acked.items():
            have = stored.get(name)
            if have is None or int(have) < int(value):
                lost += 1

    end_rss = {k: rss_mb(p) for k, p in lab_pids().items() if not k.startswith("runtime")}
    print(f"soak: {minutes:g} minutes, 3 nodes, one kill -9 per minute")
    for kind in sorted(set(stats.ok) | set(stats.failed)):
        print(f"  {kind:7s} ok {stats.ok[kind]:6d}  failed {stats.failed[kind]:5d}")
    print(f"  acknowledged writes: {len(acked)} names, lost {lost} (goal 0)")
    print(
        "  p99 latency per minute (ms): " + " ".join(f"{p99(v) * 1000:.0f}" for _, v in sorted(stats.latency.items()))
    )
    for k in sorted(start_rss):
        s, e = start_rss[k], end_rss.get(k, 0.0)
        print(
            f"  RSS {k:8s} {s:6.0f} MB -> {e:6.0f} MB ({(e / s - 1) * 100 if s else 0:+.0f} %; restarted processes start anew)"
        )
    # The growth that matters: the longest life of each kind of process, from its first sample after a minute of
    # warm-up (a restarted server reloads its state and caches) to its last.
    for k in sorted(start_rss):
        warm = [[x for x in v if x[0] >= v[0][0] + 60] for (kind, _pid), v in lives.items() if kind == k]
        mine = [v for v in warm if len(v) >= 2]
        if not mine:
            continue
        life = max(mine, key=lambda v: v[-1][0] - v[0][0])
        (t0, first), (t1, last) = life[0], life[-1]
        print(
            f"  RSS {k:8s} longest life {(t1 - t0) / 60:4.1f} min: {first:6.0f} MB -> {last:6.0f} MB"
            f" ({(last / first - 1) * 100:+.0f} %, goal <= +20 %)"
        )
    return 0 if lost == 0 else 1


async def _kubectl(cmd: list[str], env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        raise RuntimeError("kubectl exec failed")


def _dns_netns(lab: Lab) -> list[str]:
    out = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(lab.topo.netns_prefix)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    lab = Lab("kws", 3, "vxlan")
    try:
        lab.up()
        lab.apply(WEB)
        return asyncio.run(soak(lab, minutes=args.minutes, seed=args.seed))
    finally:
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
