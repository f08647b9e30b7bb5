"""The `kwire agent` role: one node. Registers the Node, runs flannel, the CNI config, the pod runtime and the
kubelet part, and reports Ready once the pod network is in place.

The same program runs on a lab node (inside the node's network namespace) and on a real host. Stopping the agent
leaves the data path (flannel.1, routes, nft tables) and running pods alone, so a restart disturbs no traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import signal
import socket
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from kwire.agent.flannel.flannel import Flannel
from kwire.agent.kubelet.kubelet import Kubelet
from kwire.agent.kubelet.logs import LogServer
from kwire.agent.kubelet.runtime_client import RuntimeClient
from kwire.agent.netpol.controller import NetworkPolicyController, delete_table
from kwire.agent.node import NodeIdentity, NodeRegistration, parse_labels, parse_taints
from kwire.agent.proxy.proxier import Proxier
from kwire.agent.servers import follow_servers
from kwire.client import ApiClient, ApiStatusError, Config, Informers, load_kubeconfig
from kwire.client.client import CONFIGMAPS, ENDPOINTSLICES, NAMESPACES, NETWORKPOLICIES, NODES, PODS, SERVICES
from kwire.cni import invoke as cni
from kwire.config import AgentConfig

log = logging.getLogger(__name__)

CLUSTER_CONFIG = "kwire-config"


class AgentError(RuntimeError):
    pass


def _fetch_ca(server: str, token: str) -> bytes:
    """The cluster CA from the server's /cacerts. A K3s-style token `K10<sha256 of the CA>::...` pins it;
    with a plain token the CA is trusted on first use, as K3s does (with a warning)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(server.rstrip("/") + "/cacerts", context=ctx, timeout=5) as r:  # noqa: S310
        ca = bytes(r.read())
    if token.startswith("K10") and "::" in token:
        want = token[3:].split("::", 1)[0]
        got = hashlib.sha256(ca).hexdigest()
        if want != got:
            raise AgentError(f"the server's CA hash {got} does not match the token's {want}")
    else:
        log.warning("agent: trusting the server CA on first use (use a K10... token to pin it)")
    return ca


def _plain_token(token: str) -> str:
    """`K10<hash>::server:<secret>` -> `<secret>` (K3s's secure token format); a plain token is returned as is."""
    if token.startswith("K10") and "::" in token:
        rest = token.split("::", 1)[1]
        return rest.split(":", 1)[1] if ":" in rest else rest
    return token


def _addresses() -> list[tuple[str, str]]:
    """(interface, IPv4 address) of every global address in this network namespace."""
    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=socket.AF_INET):
            ip = a.get_attr("IFA_ADDRESS")
            if ip and not ipaddress.ip_address(ip).is_loopback and a["scope"] == 0:
                out.append((str(names.get(a["index"], "")), str(ip)))
    return out


def _node_ip_and_iface(cfg: AgentConfig) -> tuple[str, str]:
    """--node-ip / --flannel-iface, or what K3s picks: the address of the default route's interface."""
    addrs = _addresses()
    if cfg.flannel_iface:
        for iface, ip in addrs:
            if iface == cfg.flannel_iface and (not cfg.node_ip or ip == cfg.node_ip):
                return (cfg.node_ip or ip), iface
        raise AgentError(f"flannel-iface {cfg.flannel_iface} has no IPv4 address")
    if cfg.node_ip:
        for iface, ip in addrs:
            if ip == cfg.node_ip:
                return ip, iface
        raise AgentError(f"node-ip {cfg.node_ip} is not an address of this host")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: the kernel only picks the route's source
            ip = str(s.getsockname()[0])
        for iface, a in addrs:
            if a == ip:
                return ip, iface
    except OSError:
        pass
    if addrs:
        return addrs[0][1], addrs[0][0]
    raise AgentError("no usable IPv4 address; set --node-ip")


def _bridge_netfilter() -> None:
    """Bridged pod-to-pod replies must pass netfilter so a ClusterIP DNAT to a pod on the same bridge is undone
    (kube-proxy's requirement; K3s loads br_netfilter for it). The sysctl is per network namespace."""
    path = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not path.exists():
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
    try:
        if path.read_text().strip() != "1":
            path.write_text("1")
    except OSError as exc:
        log.warning("agent: cannot enable bridge-nf-call-iptables (%s); same-node service traffic may fail", exc)


@dataclass
class ClusterSettings:
    cluster_cidr: str
    service_cidr: str
    cluster_dns: str
    cluster_domain: str
    flannel_backend: str
    disable_network_policy: bool = False
    node_monitor_grace_period: int = 40


async def _cluster_settings(client: ApiClient, *, timeout: float = 60.0) -> ClusterSettings:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            cm = await client.get(CONFIGMAPS, CLUSTER_CONFIG, "kube-system")
            d = cm.get("data") or {}
            return ClusterSettings(
                cluster_cidr=d.get("cluster-cidr", "10.42.0.0/16"),
                service_cidr=d.get("service-cidr", "10.43.0.0/16"),
                cluster_dns=d.get("cluster-dns", "10.43.0.10"),
                cluster_domain=d.get("cluster-domain", "cluster.local"),
                flannel_backend=d.get("flannel-backend", "vxlan"),
                disable_network_policy=d.get("disable-network-policy", "false") == "true",
                node_monitor_grace_period=int(d.get("node-monitor-grace-period") or 40),
            )
        except (ApiStatusError, OSError, TimeoutError) as exc:
            if loop.time() > end:
                raise AgentError(f"cannot read the cluster settings from the server: {exc}") from None
            await asyncio.sleep(0.2)


async def _client_config(cfg: AgentConfig) -> Config:
    if cfg.kubeconfig:
        return load_kubeconfig(cfg.kubeconfig)
    if not cfg.server or not cfg.token:
        raise AgentError("kwire agent needs --server and --token (or --kubeconfig)")
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while True:
        try:
            ca = await asyncio.to_thread(_fetch_ca, cfg.server, cfg.token)
            break
        except OSError as exc:
            if loop.time() > end:
                raise AgentError(f"cannot reach the server at {cfg.server}: {exc}") from None
            await asyncio.sleep(0.2)
    return Config(server=cfg.server.rstrip("/"), token=_plain_token(cfg.token), ca_data=ca)


@dataclass
class Agent:
    client: ApiClient
    informers: Informers
    registration: NodeRegistration
    flannel: Flannel
    kubelet: Kubelet
    runtime: RuntimeClient
    proxier: Proxier
    netpol: NetworkPolicyController | None = None
    logs: LogServer | None = None

    async def close(self) -> None:
        if self.logs is not None:
            await self.logs.close()
        if self.netpol is not None:
            await self.netpol.stop()
        await self.proxier.stop()
        await self.kubelet.stop()
        await self.flannel.stop()
        await self.registration.stop()
        await self.informers.stop()
        await self.runtime.close()
        await self.client.close()


async def start(cfg: AgentConfig) -> Agent:
    data_dir = Path(cfg.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    node_ip, iface = await asyncio.to_thread(_node_ip_and_iface, cfg)
    node_name = cfg.node_name or socket.gethostname()
    client = ApiClient(await _client_config(cfg))
    settings = await _cluster_settings(client)
    ident = NodeIdentity(
        name=node_name,
        ip=node_ip,
        external_ip=cfg.node_external_ip,
        labels=parse_labels(cfg.node_label),
        taints=parse_taints(cfg.node_taint),
    )
    # A lease longer than the server's grace period would let the node go NotReady between two renewals.
    lease_duration = max(1, min(int(cfg.node_lease_duration_seconds), settings.node_monitor_grace_period))
    reg = NodeRegistration(client, ident, lease_duration=lease_duration)
    await reg.register()
    reg.start()
    informers = Informers(client)
    nodes = informers.get(NODES)
    pods = informers.get(PODS, field_selector=f"spec.nodeName={node_name}")
    services = informers.get(SERVICES)
    slices = informers.get(ENDPOINTSLICES)
    follow_servers(client, slices)
    proxier = Proxier(
        services=services,
        slices=slices,
        node=node_name,
        node_ips=(node_ip,),
        cluster_cidr=settings.cluster_cidr,
        service_cidr=settings.service_cidr,
    )
    netpol = None
    if not settings.disable_network_policy:
        netpol = NetworkPolicyController(
            pods=informers.get(PODS),
            namespaces=informers.get(NAMESPACES),
            policies=informers.get(NETWORKPOLICIES),
            node=node_name,
            node_ips=(node_ip,),
        )
    informers.start()
    await informers.wait_synced()
    reg.current_node = lambda: nodes.get(None, node_name)

    flannel = Flannel(
        registration=reg,
        nodes=nodes,
        data_dir=data_dir,
        backend_type=settings.flannel_backend,
        iface=iface,
        cluster_cidr=settings.cluster_cidr,
    )
    await flannel.setup()
    _bridge_netfilter()
    proxier.set_pod_cidr(flannel.subnet)
    proxier.start()
    if netpol is not None:
        netpol.start()
    else:
        await asyncio.to_thread(delete_table)
    cni_dir = data_dir / "cni"
    conflist = cni_dir / "net.d" / "10-flannel.conflist"
    await asyncio.to_thread(cni.write_conflist, conflist, subnet_file=flannel.subnet_env, data_dir=cni_dir / "flannel")
    await asyncio.to_thread(cni.install_plugin_shim, cni_dir / "bin")
    runtime = RuntimeClient(data_dir / "runtime")
    await runtime.ensure_running()
    kubelet = Kubelet(
        client=client,
        pods=pods,
        node_name=node_name,
        node_ip=node_ip,
        data_dir=data_dir,
        netns_prefix=cfg.pod_netns_prefix,
        cluster_dns=settings.cluster_dns,
        cluster_domain=settings.cluster_domain,
        conflist=conflist,
        cni_bin_dir=cni_dir / "bin",
        runtime=runtime,
        logs_dir=data_dir / "runtime" / "logs",
    )
    await kubelet.start()
    logs = LogServer(
        logs_dir=data_dir / "runtime" / "logs",
        # the kubelet API's credential until it serves HTTPS: the join token the server presents (sc's work)
        token=_plain_token(cfg.token) if cfg.token else (client.config.token or ""),
        host=node_ip,
        exec_target=kubelet.exec_target,
        attach_target=kubelet.attach_target,
    )
    await logs.start()
    reg.set_ready(True)
    await reg.post_status(force=True)
    log.info("agent: node %s (%s on %s) is Ready", node_name, node_ip, iface)
    return Agent(client, informers, reg, flannel, kubelet, runtime, proxier, netpol, logs)


async def run(cfg: AgentConfig) -> None:
    agent = await start(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"kwire agent ready: node {agent.registration.ident.name}", flush=True)
    await stop.wait()
    await agent.close()
