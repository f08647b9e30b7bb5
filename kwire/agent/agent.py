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
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp

from kwire.agent.credentials import CertReloader, CredentialsError, NodeCredentials
from kwire.agent.flannel.flannel import Flannel
from kwire.agent.kubelet.kubelet import Kubelet
from kwire.agent.kubelet.kubeletauth import KubeletAuth
from kwire.agent.kubelet.logs import LogServer
from kwire.agent.kubelet.runtime_client import RuntimeClient
from kwire.agent.metrics import DEFAULT_BIND, AgentMetrics, AgentMetricsServer
from kwire.agent.netpol.controller import NetworkPolicyController, delete_table
from kwire.agent.node import NodeIdentity, NodeRegistration, parse_labels, parse_taints
from kwire.agent.proxy.proxier import Proxier
from kwire.agent.servers import follow_servers
from kwire.base import jointoken, memory, process
from kwire.base.backoff import Backoff
from kwire.base.files import private_dir
from kwire.base.k3snode import CONTROLLER_CLIENT, KUBE_PROXY_CLIENT, KUBELET_CLIENT, KUBELET_SERVING
from kwire.client import ApiClient, Informers
from kwire.client.client import ENDPOINTSLICES, NAMESPACES, NETWORKPOLICIES, NODES, PODS, SERVICES
from kwire.client.events import EventRecorder
from kwire.cni import invoke as cni
from kwire.config import AgentConfig, ClusterSettings
from kwire.kernel.pyroute import IPRoute

log = logging.getLogger(__name__)


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
    want = jointoken.ca_hash(token)
    if want is not None:
        got = hashlib.sha256(ca).hexdigest()
        if want != got:
            raise AgentError(f"the server's CA hash {got} does not match the token's {want}")
    else:
        log.warning("agent: trusting the server CA on first use (use a K10... token to pin it)")
    return ca


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


T = TypeVar("T")

# Joining retries while the server is not up yet: from a short first wait, doubling to JOIN_RETRY_CAP, each wait
# stretched by up to 10% (client-go's retry.DefaultBackoff jitter) so nodes started together spread out. The cap
# bounds how late a node notices the server is up (2 s) while a server that is away gets a request every 2 s, not
# five a second.
JOIN_RETRY_CAP = 2.0
JOIN_RETRY_JITTER = 0.1


def join_backoff(first: float) -> Backoff:
    return Backoff(first, JOIN_RETRY_CAP, jitter=JOIN_RETRY_JITTER)


async def _retry_until(
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[Exception], ...],
    timeout: float,
    backoff: Backoff,
    failure: str,
) -> T:
    """`attempt()`, again after each of `backoff`'s waits while it raises one of `retry_on` (the server is not up
    yet), for `timeout` seconds; then AgentError("{failure}: {the last error}"), as K3s's agent gives up joining."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            return await attempt()
        except retry_on as exc:
            if loop.time() > end:
                raise AgentError(f"{failure}: {exc}") from None
            await backoff.sleep()


async def _cluster_settings(creds: NodeCredentials, *, timeout: float = 60.0) -> ClusterSettings:
    """The cluster's settings as K3s's agent gets them: from the server's /v1-k3s/config (the data of the
    kube-system/kwire-config ConfigMap the server publishes), asked as this node."""

    async def read() -> ClusterSettings:
        return ClusterSettings.from_configmap(await creds.cluster_settings())

    return await _retry_until(
        read,
        retry_on=(CredentialsError, OSError, aiohttp.ClientError, TimeoutError, ValueError),
        timeout=timeout,
        backoff=join_backoff(0.2),
        failure="cannot read the cluster settings from the server",
    )


async def _server_ca(cfg: AgentConfig) -> bytes:
    """The cluster CA, pinned by a K10 token, retried while the server is not up yet (60 s)."""
    return await _retry_until(
        lambda: asyncio.to_thread(_fetch_ca, cfg.server, cfg.token),
        retry_on=(OSError,),
        timeout=60,
        backoff=join_backoff(0.2),
        failure=f"cannot reach the server at {cfg.server}",
    )


async def _node_credentials(cfg: AgentConfig, *, node_name: str, node_ip: str) -> NodeCredentials:
    """Join: the agent token (presented once) for this node's own certificates (credentials.py)."""
    if cfg.kubeconfig:
        raise AgentError(
            "--kubeconfig is not supported: an agent joins with --server and --token for its own certificates"
        )
    if not cfg.server or not cfg.token:
        raise AgentError("kwire agent needs --server and --token")
    creds = NodeCredentials(
        data_dir=Path(cfg.data_dir),
        server=cfg.server.rstrip("/"),
        node_name=node_name,
        node_ips=tuple(i for i in (node_ip, cfg.node_external_ip) if i),
        server_ca=await _server_ca(cfg),
    )
    try:
        issued = await _retry_until(
            lambda: creds.ensure(token=jointoken.plain(cfg.token)),
            retry_on=(OSError, aiohttp.ClientError, TimeoutError),
            timeout=60,
            backoff=join_backoff(0.5),
            failure=f"cannot get node certificates from {cfg.server}",
        )
    except CredentialsError as exc:  # the server refused the token: no retry
        raise AgentError(str(exc)) from None
    if issued:
        log.info("agent: node certificates issued: %s", ", ".join(issued))
    return creds


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
    metrics: AgentMetricsServer | None = None
    clients: list[ApiClient] = field(default_factory=list)  # kube-proxy's and the controllers' (besides `client`)
    informer_sets: list[Informers] = field(default_factory=list)
    renewal: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.renewal is not None:
            self.renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.renewal
        if self.metrics is not None:
            await self.metrics.close()
        if self.logs is not None:
            await self.logs.close()
        if self.netpol is not None:
            await self.netpol.stop()
        await self.proxier.stop()
        await self.kubelet.stop()
        await self.flannel.stop()
        await self.registration.stop()
        await self.informers.stop()
        for informers in self.informer_sets:
            await informers.stop()
        await self.runtime.close()
        await self.client.close()
        for client in self.clients:
            await client.close()


def _metrics_bind(cfg: AgentConfig) -> str:
    """kube-proxy's metrics-bind-address from `--kube-proxy-arg` (K3s's flag), else kube-proxy's default."""
    bind = DEFAULT_BIND
    for arg in cfg.kube_proxy_arg:
        key, _, value = arg.lstrip("-").partition("=")
        if key == "metrics-bind-address" and value:
            bind = value
        else:
            log.info("agent: kube-proxy-arg %r is not used by kwire's service proxy", arg)
    return bind


async def start(cfg: AgentConfig) -> Agent:
    # 0700: credentials, pods' service-account files and volumes, container logs (pods see theirs through mounts)
    data_dir = private_dir(cfg.data_dir)
    node_ip, iface = await asyncio.to_thread(_node_ip_and_iface, cfg)
    node_name = cfg.node_name or socket.gethostname()
    creds = await _node_credentials(cfg, node_name=node_name, node_ip=node_ip)
    # One identity per component, as K3s's agent: the kubelet (Node, Lease, pods, their status and volumes),
    # kube-proxy (Services, EndpointSlices) and the agent's controllers (flannel's node watch, NetworkPolicy).
    client = ApiClient(creds.client_config(KUBELET_CLIENT))
    proxy_client = ApiClient(creds.client_config(KUBE_PROXY_CLIENT))
    controller_client = ApiClient(creds.client_config(CONTROLLER_CLIENT))
    clients = {KUBELET_CLIENT: client, KUBE_PROXY_CLIENT: proxy_client, CONTROLLER_CLIENT: controller_client}
    settings = await _cluster_settings(creds)
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
    pods = informers.get(PODS, field_selector=f"spec.nodeName={node_name}")
    proxy_informers = Informers(proxy_client)
    services = proxy_informers.get(SERVICES)
    slices = proxy_informers.get(ENDPOINTSLICES)

    def servers_learned(urls: list[str]) -> None:
        for c in clients.values():
            c.set_servers(urls)
        creds.servers = client.servers
        log.info("API servers: %s", ", ".join(client.servers))

    follow_servers(slices, apply=servers_learned)
    controller_informers = Informers(controller_client)
    nodes = controller_informers.get(NODES)
    metrics = AgentMetrics()
    proxier = Proxier(
        metrics=metrics.proxy,
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
            pods=controller_informers.get(PODS),
            namespaces=controller_informers.get(NAMESPACES),
            policies=controller_informers.get(NETWORKPOLICIES),
            node=node_name,
            node_ips=(node_ip,),
            observer=metrics.netpol,
        )
    for group in (informers, proxy_informers, controller_informers):
        group.start()
    for group in (informers, proxy_informers, controller_informers):
        await group.wait_synced()
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
    reloader = CertReloader(creds)
    serving = creds.kubelet_serving_context()
    reloader.track(KUBELET_SERVING, serving)

    def renewed(component: str) -> None:
        if component in clients:
            clients[component].renew_client_cert(
                cert=creds.cert_path(component).read_bytes(), key=creds.key_path(component).read_bytes()
            )

    reloader.on_renew(renewed)
    logs = LogServer(
        logs_dir=data_dir / "runtime" / "logs",
        auth=KubeletAuth(client, node=node_name),
        ssl_context=serving,
        host=node_ip,
        exec_target=kubelet.exec_target,
        attach_target=kubelet.attach_target,
        resource_containers=kubelet.resource_containers,
        forward_target=kubelet.forward_target,
    )
    await logs.start()
    metrics_server = AgentMetricsServer(metrics, bind=_metrics_bind(cfg))
    await metrics_server.start()
    # kube-proxy's and kubelet's node reference: the Node's uid is its name
    node_ref = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": node_name, "uid": node_name}}
    proxy_events = EventRecorder(proxy_client, component="kube-proxy", host=node_name)

    async def proxy_failed(exc: Exception) -> None:
        await proxy_events.event(node_ref, "Warning", "SyncProxyRulesFailed", f"nftables sync failed: {exc}")

    proxier.reconciler.on_failure = proxy_failed
    if netpol is not None:
        policy_events = EventRecorder(controller_client, component="network-policy-controller", host=node_name)

        async def netpol_failed(exc: Exception) -> None:
            await policy_events.event(
                node_ref, "Warning", "SyncNetworkPolicyFailed", f"NetworkPolicy nftables sync failed: {exc}"
            )

        netpol.reconciler.on_failure = netpol_failed
    reg.set_ready(True)
    await reg.post_status(force=True)
    log.info("agent: node %s (%s on %s) is Ready", node_name, node_ip, iface)
    return Agent(
        client,
        informers,
        reg,
        flannel,
        kubelet,
        runtime,
        proxier,
        netpol,
        logs,
        metrics=metrics_server,
        clients=[proxy_client, controller_client],
        informer_sets=[proxy_informers, controller_informers],
        renewal=asyncio.create_task(reloader.run()),
    )


async def run(cfg: AgentConfig) -> None:
    memory.one_arena()  # before the first worker thread (kwire/base/memory.py)
    agent = await start(cfg)
    print(f"kwire agent ready: node {agent.registration.ident.name}", flush=True)
    await process.wait_for_stop_signal()
    await agent.close()
