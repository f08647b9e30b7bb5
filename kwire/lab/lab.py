"""`kwire lab`: a whole K3s-style cluster on one machine, each node a network namespace on a virtual LAN.

up: the LAN and host namespaces (network.py), `kwire server` in node 1's namespace (also listening on the
machine's 127.0.0.1:<api-port> through a socket the lab opens and hands over), `kwire agent` in every node's
namespace, then it waits for every node to be Ready and for the pod network to carry traffic. With `--servers N`
node 1's server runs `--cluster-init` (embedded etcd) and nodes 2..N's join it with `--server`, one after the
other; all of them accept on the same 127.0.0.1 listener, so kubectl reaches whichever is alive.
State (PIDs, token, settings) lives in /var/lib/kwire/labs/<name>/state.json (state.py); `down` works from it and
from the namespaces' names alone, so it also cleans a lab whose processes were killed. Starting the server and
agent processes is start.py's, which the supervisor uses too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from kwire.client import ApiClient, load_kubeconfig, write_kubeconfig
from kwire.client.client import NODES, PODS
from kwire.kernel import netns, utsns
from kwire.kernel.pyroute import IPRoute
from kwire.lab import network, procs, topology, usable
from kwire.lab.start import SERVER_PORT, node_dir, server_dir, start_agent, start_server
from kwire.lab.state import SUPERVISOR, LabState, server_procs
from kwire.lab.topology import Topology

log = logging.getLogger(__name__)

ETC_NETNS = Path("/etc/netns")
IP = shutil.which("ip") or "/usr/sbin/ip"

# Callers' `lab.X` names for what lives in state.py and start.py (modules the supervisor imports alone).
__all__ = ["SERVER_PORT", "SUPERVISOR", "LabError", "LabState", "server_procs", "start_agent", "start_server"]


class LabError(RuntimeError):
    pass


def _topo(st: LabState) -> Topology:
    return topology.build(st.name, nodes=st.nodes)


def _listen_loopback(port: int) -> socket.socket:
    """The one thing a lab adds to the machine's own namespace: a listener on 127.0.0.1 for kubectl."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError as exc:
        s.close()
        raise LabError(f"127.0.0.1:{port} is in use (another lab? pick --api-port)") from exc
    s.listen(512)
    return s


def _wait_server_ready(topo: Topology, st: LabState, proc: str, *, timeout: float) -> None:
    """A server prints `kwire server ready` once it serves (a joined one: once its etcd member is in)."""
    log_path = topo.state_dir / "logs" / f"{proc}.log"
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if "kwire server ready" in log_path.read_text(errors="replace"):
                return
        if time.monotonic() > end or not procs.alive(st.pids.get(proc, 0)):
            raise LabError(f"{proc} did not start; see {log_path}")
        time.sleep(0.1)


def _write_kubeconfig(topo: Topology, st: LabState, *, timeout: float = 20.0) -> None:
    """The lab's kubeconfig: the server's admin credentials (client certificate system:admin/system:masters, as
    K3s writes its k3s.yaml) for the 127.0.0.1 listener."""
    _wait_server_ready(topo, st, "server", timeout=timeout)
    admin = load_kubeconfig(server_dir(topo, "server") / "admin.kubeconfig")
    assert admin.ca_data and admin.client_cert and admin.client_key
    write_kubeconfig(
        topo.kubeconfig,
        server=f"https://127.0.0.1:{st.api_port}",
        ca_pem=admin.ca_data,
        client_cert=admin.client_cert,
        client_key=admin.client_key,
    )


async def _wait_ready(topo: Topology, st: LabState, *, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    want = {h.name for h in topo.nodes}
    async with ApiClient(load_kubeconfig(str(topo.kubeconfig)), timeout=5) as client:
        while True:
            ready: set[str] = set()
            with contextlib.suppress(Exception):
                for n in (await client.list(NODES)).get("items") or []:
                    conds = {c.get("type"): c.get("status") for c in (n.get("status") or {}).get("conditions") or []}
                    if conds.get("Ready") == "True" and (n.get("spec") or {}).get("podCIDR"):
                        ready.add(n["metadata"]["name"])
            if ready >= want:
                return
            for name, pid in st.pids.items():
                if not procs.alive(pid):
                    raise LabError(f"{name} exited; see {topo.state_dir / 'logs' / (name + '.log')}")
            if loop.time() > end:
                raise LabError(f"nodes not Ready after {timeout:.0f}s: {sorted(want - ready)}")
            await asyncio.sleep(0.1)


def _pod_network_works(topo: Topology, st: LabState) -> bool:
    """Every node reaches every other node's pod subnet over the backend (vxlan: flannel.1's `.0` address)."""
    if st.flannel_backend != "vxlan":
        return _routes_present(topo)
    subnets = _subnets(topo)
    checks = []
    for node in topo.nodes[:1]:
        for other in topo.nodes:
            if other.name != node.name and other.name in subnets:
                gw = subnets[other.name].split("/")[0]
                checks.append(
                    subprocess.Popen(
                        [IP, "netns", "exec", node.netns, "ping", "-c1", "-W1", gw],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
    return all(p.wait() == 0 for p in checks)


def _subnets(topo: Topology) -> dict[str, str]:
    out = {}
    for node in topo.nodes:
        env = node_dir(topo, node.name) / "flannel" / "subnet.env"
        with contextlib.suppress(OSError):
            for line in env.read_text().splitlines():
                if line.startswith("FLANNEL_SUBNET="):
                    ip, plen = line.split("=", 1)[1].split("/")
                    base = ip.rsplit(".", 1)[0] + ".0"
                    out[node.name] = f"{base}/{plen}"
    return out


def _routes_present(topo: Topology) -> bool:
    subnets = _subnets(topo)
    for node in topo.nodes:
        with IPRoute(netns=node.netns) as ipr:
            have = {f"{r.get_attr('RTA_DST')}/{r['dst_len']}" for r in ipr.get_routes(family=socket.AF_INET)}
        for other, subnet in subnets.items():
            if other != node.name and subnet not in have:
                return False
    return True


class Progress(Protocol):
    """What `up` reports: each stage as it starts and when it is done (with its seconds)."""

    def start(self, stage: str) -> None: ...

    def done(self, stage: str, seconds: float) -> None: ...


class _Silent:
    def start(self, stage: str) -> None:
        pass

    def done(self, stage: str, seconds: float) -> None:
        log.info("lab: %s in %.1fs", stage, seconds)


@contextlib.contextmanager
def _stage(progress: Progress, name: str) -> Iterator[None]:
    t = time.monotonic()
    progress.start(name)
    yield
    progress.done(name, time.monotonic() - t)


async def _wait_usable(topo: Topology, *, timeout: float, progress: Progress) -> None:
    async with ApiClient(load_kubeconfig(str(topo.kubeconfig)), timeout=5) as client:
        settings = await usable.cluster_settings(client)
        if "coredns" not in settings.get("disable", "").split(","):
            with _stage(progress, "cluster DNS answers on every node"):
                await usable.wait_dns(
                    topo,
                    server=settings.get("cluster-dns", "10.43.0.10"),
                    domain=settings.get("cluster-domain", "cluster.local"),
                    timeout=timeout,
                )
        with _stage(progress, "add-ons serving"):
            await usable.wait_addons(client, timeout=timeout)


def up(
    name: str = topology.DEFAULT_LAB,
    *,
    nodes: int = 3,
    flannel_backend: str = "vxlan",
    config_file: str = "",
    api_port: int = 6443,
    timeout: float = 60.0,
    wait: bool = True,
    progress: Progress | None = None,
    servers: int = 1,
) -> tuple[LabState, float]:
    """Bring a lab up (a running lab of the same name is reused); returns its state and the seconds it took.
    With `wait` (the default) it returns once the cluster is usable: nodes Ready, the pod network carrying
    traffic, cluster DNS answering on every node and every add-on serving (usable.py); without, once the nodes
    are Ready and the pod network works."""
    progress = progress or _Silent()
    t0 = time.monotonic()
    existing = LabState.load(name)
    if existing and all(procs.alive(p) for p in existing.pids.values()):
        return existing, 0.0
    if existing:
        down(name)
    if not 1 <= servers <= nodes:
        raise LabError(f"--servers {servers}: a lab runs 1 to --nodes ({nodes}) servers, one per node")
    topo = topology.build(name, nodes=nodes)
    st = LabState(
        name=name,
        nodes=nodes,
        servers=servers,
        api_port=api_port,
        token=secrets.token_hex(16),
        flannel_backend=flannel_backend,
        config_file=str(Path(config_file).resolve()) if config_file else "",
        created=time.time(),
    )
    lsock = _listen_loopback(api_port)
    try:
        with _stage(progress, "LAN and node namespaces"):
            network.up(topo)
        with LabState.locked(name):
            st.save()
            st.pids["server"] = start_server(topo, st, lsock)
            st.save()
        with _stage(progress, "API server"):
            _write_kubeconfig(topo, st)  # once the server serves
        for proc in list(server_procs(st))[1:]:
            with _stage(progress, f"{proc} joined"):
                _wait_server_ready(topo, st, "server", timeout=timeout)
                with LabState.locked(name):
                    st.pids[proc] = start_server(topo, st, lsock, proc)
                    st.save()
                _wait_server_ready(topo, st, proc, timeout=timeout)
        with LabState.locked(name):
            for host in topo.nodes:
                st.pids[host.name] = start_agent(topo, st, host.name)
            st.pids[SUPERVISOR] = _start_supervisor(topo, lsock)
            st.save()
    finally:
        lsock.close()  # the server and the supervisor hold their own copies
    try:
        with _stage(progress, f"{nodes} node{'s' if nodes > 1 else ''} Ready"):
            asyncio.run(_wait_ready(topo, st, timeout=timeout))
        with _stage(progress, "pod network between nodes"):
            end = time.monotonic() + timeout
            while not _pod_network_works(topo, st):
                if time.monotonic() > end:
                    raise LabError("the pod network does not carry traffic between nodes")
                time.sleep(0.1)
        if wait:
            try:
                asyncio.run(_wait_usable(topo, timeout=timeout, progress=progress))
            except TimeoutError as exc:
                raise LabError(str(exc)) from None
    except BaseException:
        log.error("lab %s failed to come up; logs are in %s", name, topo.state_dir / "logs")
        raise
    return st, time.monotonic() - t0


def _start_supervisor(topo: Topology, lsock: socket.socket) -> int:
    """The lab's supervisor (kwire/lab/supervisor.py), in the machine's namespace, holding the API listener."""
    args = ["lab", "supervise", "--name", topo.name, "--listen-fd", str(lsock.fileno())]
    return procs.spawn(None, args, log_path=topo.state_dir / "logs" / "supervisor.log", pass_fds=(lsock.fileno(),))


def down(name: str = topology.DEFAULT_LAB) -> list[str]:
    """Stop every process of the lab, remove its namespaces, /etc/netns entries and state; idempotent."""
    topology.validate_name(name)
    st = LabState.load(name)
    nodes = st.nodes if st else 50
    topo = topology.build(name, nodes=nodes)
    if st:  # first the supervisor, or it would start again what is being stopped
        procs.stop([st.pids.get(SUPERVISOR, 0)], grace=3.0)
    pids = list(st.pids.values()) if st else []
    for d in topo.state_dir.glob("*/runtime/runtime.pid"):
        pids.append(procs.read_pid(d))
    procs.stop(pids, grace=5.0)
    names = netns.list_names(topo.netns_prefix)
    procs.stop(procs.pids_in_namespaces(names), grace=2.0)
    removed = network.down(topo)
    for d in ETC_NETNS.glob(f"{topo.netns_prefix}*"):
        shutil.rmtree(d, ignore_errors=True)
    utsns.remove_prefixed(topo.netns_prefix)  # the pods' UTS namespaces (hostnames)
    shutil.rmtree(topo.state_dir, ignore_errors=True)
    return removed


def status(name: str = topology.DEFAULT_LAB) -> dict[str, Any]:
    st = LabState.load(name)
    if st is None:
        return {"name": name, "running": False}
    topo = _topo(st)
    out: dict[str, Any] = {
        "name": name,
        "running": all(procs.alive(p) for p in st.pids.values()),
        "api": f"https://127.0.0.1:{st.api_port}",
        "kubeconfig": str(topo.kubeconfig),
        "flannelBackend": st.flannel_backend,
        "processes": {k: {"pid": v, "alive": procs.alive(v)} for k, v in st.pids.items()},
        "hosts": {h.name: {"ip": h.ip, "netns": h.netns} for h in topo.hosts},
    }

    async def nodes() -> list[dict[str, Any]]:
        async with ApiClient(load_kubeconfig(str(topo.kubeconfig)), timeout=3) as client:
            items = (await client.list(NODES)).get("items") or []
            pods = (await client.list(PODS)).get("items") or []
        rows = []
        for n in items:
            conds = {c.get("type"): c.get("status") for c in (n.get("status") or {}).get("conditions") or []}
            name_ = n["metadata"]["name"]
            rows.append(
                {
                    "name": name_,
                    "ready": conds.get("Ready"),
                    "podCIDR": (n.get("spec") or {}).get("podCIDR"),
                    "pods": sum(1 for p in pods if (p.get("spec") or {}).get("nodeName") == name_),
                }
            )
        return rows

    try:
        out["nodes"] = asyncio.run(nodes())
    except Exception as exc:
        out["nodes"] = f"API unreachable: {exc}"
    return out


def exec_target(name: str, target: str, *, namespace: str = "default") -> str:
    """The network namespace a `lab exec` target runs in: a node, the client, or a pod (by name)."""
    st = LabState.load(name)
    if st is None:
        raise LabError(f"lab {name} is not up")
    topo = _topo(st)
    host = topo.host(target)
    if host is not None:
        return host.netns

    async def find() -> dict[str, Any]:
        async with ApiClient(load_kubeconfig(str(topo.kubeconfig)), timeout=5) as client:
            return await client.get(PODS, target, namespace)

    try:
        pod = asyncio.run(find())
    except Exception as exc:
        raise LabError(f"{target} is not a node, the client, or a pod in namespace {namespace}: {exc}") from None
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        node = topo.host(str(spec.get("nodeName")))
        if node is None:
            raise LabError(f"pod {target} is on no node of this lab")
        return node.netns
    ns = f"kwire-{name}-pod-{str(pod['metadata']['uid']).replace('-', '')[:12]}"
    if not netns.exists(ns):
        raise LabError(f"pod {namespace}/{target} has no sandbox yet (phase {(pod.get('status') or {}).get('phase')})")
    return ns


def _node(name: str, node: str) -> tuple[LabState, Topology, topology.Host]:
    st = LabState.load(name)
    if st is None:
        raise LabError(f"lab {name} is not up")
    topo = _topo(st)
    host = topo.host(node)
    if host is None or host.is_client:
        raise LabError(f"{node} is not a node of lab {name}")
    return st, topo, host


def node_stop(name: str, node: str) -> None:
    """Simulate a node failing: its agent stops and its LAN cable is unplugged (its pods keep running).
    The supervisor leaves it stopped until `node_start`."""
    with LabState.locked(name):
        st, topo, host = _node(name, node)
        if node not in st.stopped:
            st.stopped.append(node)
            st.save()
        on_node = [p for p, n in server_procs(st).items() if n == node and st.servers > 1]
        procs.stop([st.pids.get(node, 0), *(st.pids.get(p, 0) for p in on_node)])
    network.set_link(topo, host, up=False)


def node_start(name: str, node: str, *, timeout: float = 60.0) -> None:
    """Plug the node back in and start its agent (and the server, on the server's node, should it be dead with
    nobody supervising it); returns once the node reports Ready, or raises LabError saying what is wrong."""
    with LabState.locked(name):
        st, topo, host = _node(name, node)
        if node in st.stopped:
            st.stopped.remove(node)
        network.set_link(topo, host, up=True)
        if not procs.alive(st.pids.get(SUPERVISOR, 0)):
            if host == topo.server and not procs.alive(st.pids.get("server", 0)):
                lsock = _listen_loopback(st.api_port)
                try:
                    st.pids["server"] = start_server(topo, st, lsock)
                    st.pids[SUPERVISOR] = _start_supervisor(topo, lsock)
                finally:
                    lsock.close()
            else:
                log.warning("lab %s has no supervisor: dead processes will not be restarted", name)
        # A server on this node (several servers) is started again by the supervisor now the node is not stopped.
        if not procs.alive(st.pids.get(node, 0)):
            st.pids[node] = start_agent(topo, st, node)
        st.save()
    try:
        asyncio.run(_wait_node_ready(topo, node, timeout=timeout))
    except TimeoutError:
        raise LabError(f"{node} did not become Ready within {timeout:.0f}s; see {topo.state_dir / 'logs'}") from None


async def _wait_node_ready(topo: Topology, node: str, *, timeout: float) -> None:
    client = ApiClient(load_kubeconfig(topo.kubeconfig))
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(Exception):  # the server may be starting: ask again
                    obj = await client.get(NODES, node)
                    conds = (obj.get("status") or {}).get("conditions") or []
                    if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                        return
                await asyncio.sleep(0.3)
    finally:
        await client.close()
