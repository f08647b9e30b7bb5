"""Lab benchmarks: 3-node bring-up time, pod-to-pod vs node-to-node TCP throughput (iperf3), memory per role.

    .venv/bin/python bench/lab.py [--seconds 2] [--rounds 7] [--pods 30] [--against OTHER_CHECKOUT] [--json F]

Everything runs in labs of its own (`kwire-kwb-*`, and `kwire-kwba-*` for `--against`) that are removed at the
end, even on failure. Throughput is measured side by side in the same run: iperf3 between two node namespaces over
the lab LAN, then between two pods on those nodes across the overlay; the ratio is what the overlay costs. For
scale, the same rounds also measure flannel's data path built by hand in four bare namespaces (veth + cni0 bridge
+ VXLAN, no kwire, no netfilter): its ratio is the kernel's own ceiling for this topology on this machine.

`--against DIR` compares with another checkout of kwire (e.g. a `git worktree` of an older commit) in the same
run, as this shared machine's load swings too much between runs: bring-ups alternate between the two codes, then
both labs stay up at once, every iperf3 round visits each lab and the hand-built path in turn, and both get the
same responder pods before memory is read. Each lab is brought up by its own code (`lab up` in a child process
with that checkout first on PYTHONPATH, so every process of the lab runs it); the measuring is this file's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

# The checkout first, and not bench/ itself: bench/dns.py would shadow dnspython's `dns` package.
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]
from kwire.kernel.netns import path as netns_path  # noqa: E402
from kwire.lab import lab as labmod  # noqa: E402
from kwire.lab import procs  # noqa: E402
from tests.integration.labkit import IP, Lab, free_port, wait_for  # noqa: E402

IPERF_POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{bench: iperf}}}}
spec:
  nodeName: {node}
  containers: [{{name: iperf, image: kwire/host, command: [iperf3, -s, -p, "5201"]}}]
"""


def _iperf(client_ns: str, server_ip: str, seconds: int) -> float:
    out = subprocess.run(
        [IP, "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", "5201", "-t", str(seconds), "-J"],
        capture_output=True,
        text=True,
        timeout=seconds + 20,
        check=True,
    ).stdout
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def _ip(*args: str) -> str:
    return subprocess.run([IP, *args], check=True, capture_output=True, text=True).stdout


class DataPath(NamedTuple):
    """One data path iperf3 measures: node-to-node (client namespace, server IP) and pod-to-pod."""

    node_client: str
    node_server_ip: str
    pod_client: str
    pod_server_ip: str


@contextlib.contextmanager
def _hand_built(prefix: str) -> Iterator[DataPath]:
    """Flannel's VXLAN data path built by hand, without kwire, with iperf3 servers on its far node and pod.

    Four namespaces: two "nodes" joined by one veth, each with a cni0 bridge, a pod behind a veth pair and a
    flannel.1 VXLAN device set up as the agent does (VNI 1, UDP 8472, no learning, MTU 1450, onlink route,
    neighbour + FDB entry); no netfilter table and no process of kwire's. Its ratio is the ceiling for this
    topology on this machine: what bridges, veths and VXLAN cost in the kernel alone.
    """
    nodes, pods = [f"{prefix}fn1", f"{prefix}fn2"], [f"{prefix}fp1", f"{prefix}fp2"]
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for ns in nodes + pods:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", nodes[0], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", nodes[1])
        for i, (node, pod) in enumerate(zip(nodes, pods, strict=True), start=1):
            subprocess.run([IP, "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
            for args in (
                ["addr", "add", f"192.168.99.{i}/24", "dev", "eth0"],
                ["link", "set", "eth0", "up"],
                ["link", "add", "cni0", "type", "bridge"],
                ["addr", "add", f"10.99.{i}.1/24", "dev", "cni0"],
                ["link", "set", "cni0", "mtu", "1450", "up"],
                ["link", "add", "veth0", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "netns", pod],
                ["link", "set", "veth0", "master", "cni0", "up"],
                ["link", "add", "flannel.1", "mtu", "1450", "type", "vxlan", "id", "1", "local", f"192.168.99.{i}"]
                + ["dev", "eth0", "dstport", "8472", "nolearning"],
                ["addr", "add", f"10.99.{i}.0/32", "dev", "flannel.1"],
                ["link", "set", "flannel.1", "up"],
            ):
                _ip("-n", node, *args)
            _ip("-n", pod, "addr", "add", f"10.99.{i}.2/24", "dev", "eth0")
            _ip("-n", pod, "link", "set", "eth0", "up")
            _ip("-n", pod, "route", "add", "default", "via", f"10.99.{i}.1")
        macs = [json.loads(_ip("-j", "-n", n, "link", "show", "flannel.1"))[0]["address"] for n in nodes]
        for i, node in enumerate(nodes):
            j = 1 - i
            _ip(
                "-n",
                node,
                "route",
                "add",
                f"10.99.{j + 1}.0/24",
                "via",
                f"10.99.{j + 1}.0",
                "dev",
                "flannel.1",
                "onlink",
            )
            _ip("-n", node, "neigh", "add", f"10.99.{j + 1}.0", "lladdr", macs[j], "dev", "flannel.1")
            subprocess.run(
                ["bridge", "-n", node, "fdb", "add", macs[j], "dev", "flannel.1", "dst", f"192.168.99.{j + 1}"],
                check=True,
                capture_output=True,
            )
        servers = [_iperf_server(ns) for ns in (nodes[1], pods[1])]
        yield DataPath(nodes[0], "192.168.99.2", pods[0], "10.99.2.2")
    finally:
        for srv in servers:
            srv.terminate()
            srv.wait(timeout=10)
        for ns in nodes + pods:
            subprocess.run([IP, "netns", "del", ns], capture_output=True)


def _iperf_server(ns: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [IP, "netns", "exec", ns, "iperf3", "-s", "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _mem_kb(pid: int, *, field: str, path: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# Roles the 352-357 MB row (and the code before the nft model, f1b914a^1) did not have: K3s's packaged ingress
# (traefik, here kwire.ingress + nginx, with its ServiceLB pods) and metrics-server. The like-for-like row leaves
# them out; the whole-lab total counts them.
ADDED_SINCE = ("kube-system/traefik", "kube-system/svclb-traefik", "kube-system/metrics-server")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pod_roles(b: Lab, names: list[str]) -> dict[str, str]:
    """Pod network namespace -> its workload (`namespace/owner`, e.g. `kube-system/coredns`), by the pod's IP."""
    by_ip: dict[str, str] = {}
    for pod in json.loads(b.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]:
        meta, ip = pod["metadata"], pod.get("status", {}).get("podIP")
        owner = (meta.get("ownerReferences") or [{"kind": "", "name": meta["name"]}])[0]
        base = owner["name"]
        if owner["kind"] == "ReplicaSet":
            base = base.rsplit("-", 1)[0]  # Deployment name
        elif owner["kind"] == "DaemonSet" and base.startswith("svclb-"):
            base = base.rsplit("-", 1)[0]  # svclb-<service>-<hash>
        if ip:
            by_ip[ip] = f"{meta['namespace']}/{base}"
    roles = {}
    for ns in names:
        if "-pod-" not in ns:
            continue
        with contextlib.suppress(subprocess.CalledProcessError, ValueError, IndexError, KeyError):
            addrs = json.loads(_ip("-j", "-4", "-n", ns, "addr", "show", "dev", "eth0"))[0]["addr_info"]
            roles[ns] = by_ip.get(addrs[0]["local"], "other pods")
    return roles


def _role_memory(b: Lab) -> dict[str, tuple[int, float, float]]:
    """Role -> (processes, RSS MB, PSS MB) for every process of the lab: the supervisor, servers and agents (by
    their recorded PIDs), each node's pod runtime, and each pod's processes (its tini/unshare wrappers included)
    by the workload the pod belongs to. RSS counts pages shared between processes once per process (what the goal
    is stated in); PSS divides shared pages (libpython, extension modules) among the processes that map them."""
    names = __import__("kwire.kernel.netns", fromlist=["list_names"]).list_names(f"kwire-{b.name}-")
    st = labmod.LabState.load(b.name)
    assert st is not None
    by_pid = {
        pid: ("supervisor" if key == labmod.SUPERVISOR else "server" if key.startswith("server") else "agents")
        for key, pid in st.pids.items()
    }
    inode_role: dict[int, str] = {}
    pod_roles = _pod_roles(b, names)
    for ns in names:
        with contextlib.suppress(OSError):
            inode_role[os.stat(netns_path(ns)).st_ino] = pod_roles.get(ns, "node")
    out: dict[str, tuple[int, float, float]] = {}
    for pid in sorted(set(procs.pids_in_namespaces(names)) | set(st.pids.values())):
        role = by_pid.get(pid)
        if role is None:
            try:
                role = inode_role.get(os.stat(f"/proc/{pid}/ns/net").st_ino, "node")
            except OSError:
                continue
            if role == "node":
                role = "runtimes" if "kubelet.runtime_main" in _cmdline(pid) else "node, other"
        rss, pss = _mem_kb(pid, field="VmRSS", path="status"), _mem_kb(pid, field="Pss", path="smaps_rollup")
        n, r, p = out.get(role, (0, 0.0, 0.0))
        out[role] = (n + 1, r + rss / 1024, p + pss / 1024)
    return out


@contextlib.contextmanager
def _lab_path(b: Lab) -> Iterator[DataPath]:
    """node2 -> node3 over the lab LAN, and a pod on node2 -> a pod on node3 over VXLAN (iperf3 servers up)."""
    node2, node3 = b.topo.host("node2"), b.topo.host("node3")
    assert node2 and node3
    b.apply(IPERF_POD.format(name="iperf-server", node="node3"))
    b.apply(IPERF_POD.format(name="iperf-client", node="node2").replace('[iperf3, -s, -p, "5201"]', '[sleep, "3600"]'))
    wait_for(
        lambda: len([p for p in b.pods("bench=iperf") if p["status"].get("phase") == "Running"]) == 2,
        what="iperf pods",
        timeout=60,
    )
    node_server = _iperf_server(node3.netns)
    try:
        yield DataPath(
            node2.netns, node3.ip, b.netns_of("iperf-client"), b.get("pod", "iperf-server")["status"]["podIP"]
        )
    finally:
        node_server.terminate()
        node_server.wait(timeout=10)
        b.kubectl("delete", "pod", "-l", "bench=iperf", "--wait=true")


def _throughput(labs: dict[str, Lab], *, seconds: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median Gbit/s node-to-node and pod-to-pod per lab and for the hand-built path, every round visiting each
    in turn (the order rotating), so that all of them see the same machine load."""
    with contextlib.ExitStack() as stack:
        paths = {label: stack.enter_context(_lab_path(b)) for label, b in labs.items()}
        paths["hand-built"] = stack.enter_context(_hand_built(next(iter(labs.values())).topo.netns_prefix))
        time.sleep(0.5)
        runs: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label in paths}
        order = list(paths)
        for r in range(rounds):
            for label in order[r % len(order) :] + order[: r % len(order)]:
                path = paths[label]
                runs[label][0].append(_iperf(path.node_client, path.node_server_ip, seconds))
                runs[label][1].append(_iperf(path.pod_client, path.pod_server_ip, seconds))
    out = {}
    for label, (node, pod) in runs.items():
        ratios = [p / n for n, p in zip(node, pod, strict=True)]
        out[label] = {
            "node_gbps": statistics.median(node),
            "pod_gbps": statistics.median(pod),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    return out


UP = """
import json, sys, time
from kwire.lab import lab

class Stages:
    def __init__(self):
        self.t0 = time.monotonic()
        self.ends = {}
    def start(self, stage):
        pass
    def done(self, stage, seconds):
        self.ends[stage] = time.monotonic() - self.t0

stages = Stages()
_, total = lab.up(sys.argv[1], nodes=3, flannel_backend="vxlan", api_port=int(sys.argv[2]), progress=stages)
print(json.dumps({"ready_s": stages.ends["pod network between nodes"], "bringup_s": total}))
"""


def _up(b: Lab, checkout: Path) -> dict[str, float]:
    """`lab up` by `checkout`'s code (in a child with it first on PYTHONPATH, so every lab process runs it):
    seconds to all nodes Ready with the pod network working, and to usable (DNS, add-ons)."""
    b.down()
    b.api_port = free_port()
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, "-c", UP, b.name, str(b.api_port)],
        env=env,
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"lab up ({checkout}) failed: {out.stderr[-2000:]}")
    times: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return times


def _responders(b: Lab, pods: int) -> None:
    b.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: mem}\nspec:\n"
        f"  replicas: {pods}\n  selector: {{matchLabels: {{app: mem}}}}\n"
        "  template:\n    metadata: {labels: {app: mem}}\n    spec:\n"
        "      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]\n"
    )


def _report(label: str, res: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"{label}:")
    print(f"  bring-up to all Ready + pod network   {res['ready_s']:.2f} s   (goal <= 5 s; median of {args.runs})")
    print(f"  bring-up to usable (DNS, add-ons)      {res['bringup_s']:.2f} s   (what `kwire lab up` waits for)")
    if "tcp" in res:
        tcp = res["tcp"]
        print(f"  node-to-node TCP (iperf3, LAN)         {tcp['node_gbps']:.2f} Gbit/s   (median of {args.rounds})")
        print(f"  pod-to-pod TCP across nodes (VXLAN)    {tcp['pod_gbps']:.2f} Gbit/s   (median of {args.rounds})")
        print(
            f"  ratio pod/node                         {tcp['ratio']:.2f}     (per-round median, range"
            f" {tcp['ratio_min']:.2f}-{tcp['ratio_max']:.2f}; goal >= 0.85)"
        )
    roles = res["roles"]
    print(f"  memory, lab + {args.pods} responder pods, per role:   processes   RSS MB   PSS MB")
    for role, (n, rss, pss) in sorted(roles.items(), key=lambda kv: -kv[1][1]):
        print(f"    {role:40s} {n:5d}   {rss:7.1f}  {pss:7.1f}")
    like = [v for k, v in roles.items() if not k.startswith(ADDED_SINCE)]
    for name, rows in (
        ("like-for-like (no traefik, svclb-traefik, metrics-server)", like),
        ("whole lab", list(roles.values())),
    ):
        n, rss, pss = (sum(r[i] for r in rows) for i in range(3))
        print(f"  {name:58s} {rss:4.0f} MB RSS, {pss:4.0f} MB PSS in {int(n)} processes (goal < 400 MB RSS)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=2, help="length of one iperf3 run")
    ap.add_argument("--rounds", type=int, default=7, help="iperf3 rounds, each visiting every path (medians)")
    ap.add_argument("--pods", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3, help="bring-up repetitions (the median is reported)")
    ap.add_argument("--no-throughput", action="store_true", help="bring-up and memory only (no iperf3 runs)")
    ap.add_argument("--against", default="", help="another kwire checkout to measure side by side with this one")
    ap.add_argument("--json", default="", help="also write the numbers (and memory per role) to this file")
    args = ap.parse_args()
    load = os.getloadavg()
    here = Path(__file__).resolve().parents[1]
    checkouts = {"this checkout": here}
    if args.against:
        checkouts[f"against {args.against}"] = Path(args.against).resolve()
    labs = {label: Lab("kwb" if i == 0 else "kwba", 3, "vxlan") for i, label in enumerate(checkouts)}
    res: dict[str, dict[str, Any]] = {label: {} for label in labs}
    try:
        ups: dict[str, list[dict[str, float]]] = {label: [] for label in labs}
        for _ in range(args.runs):
            for label, b in labs.items():  # alternating: both codes see the same load
                ups[label].append(_up(b, checkouts[label]))
        for label in labs:
            for key in ("ready_s", "bringup_s"):
                res[label][key] = statistics.median(u[key] for u in ups[label])
        if not args.no_throughput:
            tcp = _throughput(labs, seconds=args.seconds, rounds=args.rounds)
            for label in labs:
                res[label]["tcp"] = tcp[label]
            res["hand-built"] = {"tcp": tcp["hand-built"]}
        for b in labs.values():
            _responders(b, args.pods)
        for b in labs.values():
            b.wait_pods_ready("app=mem", args.pods, timeout=180)
        time.sleep(1.0)
        for label, b in labs.items():
            res[label]["roles"] = _role_memory(b)
    finally:
        for b in labs.values():
            b.down()
    print(f"lab bench (3 nodes, vxlan; this machine: {os.cpu_count()} cores)")
    for label in labs:
        _report(label, res[label], args)
    if "hand-built" in res:
        hb = res["hand-built"]["tcp"]
        print(
            f"the same data path built by hand (veth + cni0 + VXLAN, no kwire, no netfilter), in the same rounds:"
            f" {hb['pod_gbps']:.2f} vs {hb['node_gbps']:.2f} Gbit/s, ratio {hb['ratio']:.2f}"
            f" ({hb['ratio_min']:.2f}-{hb['ratio_max']:.2f})"
        )
    print(f"load average {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": res, "load": [load[0], os.getloadavg()[0]]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
