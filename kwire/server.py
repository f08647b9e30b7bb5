"""The `kwire server` role: store + API + in-server lifecycle, TLS and the admin kubeconfig.

`run(cfg)` is what the CLI calls; `start(cfg)` returns a running `Server` for tests and the lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import signal
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kwire.api.admission import Admission
from kwire.api.allocator import ServiceAllocator
from kwire.api.certs import ensure_pki, ensure_token
from kwire.api.errors import ApiError
from kwire.api.lifecycle import Lifecycle
from kwire.api.registry import by_path
from kwire.api.resources import Resources
from kwire.api.server import ApiServer
from kwire.api.webhookadmission import WebhookAdmission
from kwire.base import memory
from kwire.client.kubeconfig import Config, write_kubeconfig
from kwire.config import ConfigError, ServerConfig
from kwire.controllers.addons import AddonSettings
from kwire.controllers.manager import ControllerManager
from kwire.store.base import Store
from kwire.store.etcd import EtcdStore
from kwire.store.sqlite import SQLiteStore

log = logging.getLogger(__name__)

COMPACT_INTERVAL = 300.0
COMPACT_KEEP = 20000  # revisions kept for watchers to resume from (kine keeps 1000)

NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def _node_address(cfg: ServerConfig) -> str:
    """The address the `kubernetes` Endpoints point at (K3s: the node IP)."""
    for candidate in (cfg.advertise_address, cfg.node_ip):
        if candidate:
            return str(candidate)
    if cfg.bind_address and cfg.bind_address not in ("0.0.0.0", "::"):
        return str(cfg.bind_address)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only asks the kernel which source it would use
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


async def bootstrap(resources: Resources, cfg: ServerConfig, *, address: str) -> None:
    """Objects every cluster has (kube-apiserver's bootstrap controller), reconciled on every start."""
    ns_kind = by_path("", "v1", "namespaces")
    svc_kind = by_path("", "v1", "services")
    ep_kind = by_path("", "v1", "endpoints")
    eps_kind = by_path("discovery.k8s.io", "v1", "endpointslices")
    assert ns_kind and svc_kind and ep_kind and eps_kind
    for ns in NAMESPACES:
        if resources.get_or_none(ns_kind, None, ns) is None:
            await resources.create(ns_kind, None, {"metadata": {"name": ns}})
    port = int(cfg.https_listen_port)
    await _publish_cluster_config(resources, cfg)
    await _bootstrap_classes(resources, local_storage=not cfg.disabled("local-storage"))
    if resources.get_or_none(svc_kind, "default", "kubernetes") is None:
        await resources.create(
            svc_kind,
            "default",
            {
                "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": str(cfg.api_service_ip),
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                },
            },
        )
    endpoints: dict[str, Any] = {
        "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    }
    slice_: dict[str, Any] = {
        "metadata": {
            "name": "kubernetes",
            "labels": {
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True, "serving": True, "terminating": False}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }
    for kind, desired in ((ep_kind, endpoints), (eps_kind, slice_)):
        current = resources.get_or_none(kind, "default", "kubernetes")
        if current is None:
            await resources.create(kind, "default", desired)
        else:
            merged = {**current, **{k: v for k, v in desired.items() if k != "metadata"}}
            merged["metadata"] = {**current["metadata"], "labels": desired["metadata"]["labels"]}
            try:
                await resources.update(kind, "default", "kubernetes", merged)
            except ApiError as err:
                log.warning("bootstrap: updating %s default/kubernetes: %s", kind.plural, err.message)


SYSTEM_PRIORITY_CLASSES = {
    # kube-apiserver's scheduling bootstrap (pkg/apis/scheduling: SystemPriorityClasses)
    "system-node-critical": (
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    "system-cluster-critical": (
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
}
LOCAL_PATH_CLASS: dict[str, Any] = {
    # K3s's local-storage manifest (the local-path-provisioner's StorageClass)
    "metadata": {
        "name": "local-path",
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        "labels": {"objectset.rio.cattle.io/hash": "kwire-local-storage"},
    },
    "provisioner": "rancher.io/local-path",
    "volumeBindingMode": "WaitForFirstConsumer",
    "reclaimPolicy": "Delete",
}


async def _bootstrap_classes(resources: Resources, *, local_storage: bool) -> None:
    """The two system PriorityClasses (kube-apiserver creates them) and K3s's `local-path` StorageClass."""
    pc_kind = by_path("scheduling.k8s.io", "v1", "priorityclasses")
    sc_kind = by_path("storage.k8s.io", "v1", "storageclasses")
    assert pc_kind and sc_kind
    for name, (value, description) in SYSTEM_PRIORITY_CLASSES.items():
        if resources.get_or_none(pc_kind, None, name) is None:
            await resources.create(
                pc_kind, None, {"metadata": {"name": name}, "value": value, "description": description}
            )
    if local_storage and resources.get_or_none(sc_kind, None, "local-path") is None:
        await resources.create(sc_kind, None, copy.deepcopy(LOCAL_PATH_CLASS))


CLUSTER_CONFIG = "kwire-config"


async def _publish_cluster_config(resources: Resources, cfg: ServerConfig) -> None:
    """kube-system/kwire-config: the cluster-wide settings agents need (K3s agents get them from the server)."""
    cm_kind = by_path("", "v1", "configmaps")
    assert cm_kind
    data = {
        "cluster-cidr": str(cfg.cluster_cidr),
        "service-cidr": str(cfg.service_cidr),
        "cluster-dns": str(cfg.cluster_dns),
        "cluster-domain": str(cfg.cluster_domain),
        "flannel-backend": str(cfg.flannel_backend),
        "service-node-port-range": str(cfg.service_node_port_range),
        "disable-network-policy": "true" if cfg.disable_network_policy else "false",
        "disable": ",".join(sorted(str(x) for x in cfg.disable)),  # packaged components left out (lab up waits)
        # Agents renew their node Lease well within this (a quarter of it), or nodes would flap NotReady.
        "node-monitor-grace-period": str(int(cfg.node_monitor_grace_period)),
    }
    current = resources.get_or_none(cm_kind, "kube-system", CLUSTER_CONFIG)
    if current is None:
        await resources.create(cm_kind, "kube-system", {"metadata": {"name": CLUSTER_CONFIG}, "data": data})
    elif current.get("data") != data:
        await resources.update(cm_kind, "kube-system", CLUSTER_CONFIG, {**current, "data": data})


@dataclass
class Server:
    cfg: ServerConfig
    store: Store
    resources: Resources
    api: ApiServer
    lifecycle: Lifecycle
    runner: web.AppRunner
    token: str
    ca_pem: bytes
    url: str
    kubeconfig: Path
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    controllers: ControllerManager | None = None

    async def close(self) -> None:
        if self.controllers is not None:
            await self.controllers.stop()
        for t in self.tasks:
            t.cancel()
        self.api.stop_watches()
        await self.lifecycle.stop()
        if self.resources.admission is not None:
            await self.resources.admission.stop()
        await self.resources.conversion.close()
        await self.runner.cleanup()
        await self.store.close()


def _self_url(cfg: ServerConfig) -> str:
    """Where in-process clients reach this server: loopback, unless it listens on one address only."""
    host = str(cfg.bind_address)
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{int(cfg.https_listen_port)}"


async def _compactor(store: Store) -> None:
    while True:
        await asyncio.sleep(COMPACT_INTERVAL)
        try:
            await store.compact(store.revision - COMPACT_KEEP)
        except Exception:
            log.exception("compaction failed")


async def open_store(cfg: ServerConfig, data_dir: Path) -> Store:
    """K3s's datastore choice: `--datastore-endpoint` http(s):// URLs are etcd v3, nothing is embedded SQLite."""
    endpoint = str(cfg.datastore_endpoint)
    if not endpoint:
        return SQLiteStore(data_dir / "db" / "state.db")
    urls = [u.strip() for u in endpoint.split(",") if u.strip()]
    if not all(u.startswith(("http://", "https://")) for u in urls):
        raise ConfigError(f"datastore-endpoint {endpoint!r}: only etcd (http:// or https:// URLs) is supported")
    ctx = None
    if any(u.startswith("https://") for u in urls):
        ctx = ssl.create_default_context(cafile=str(cfg.datastore_cafile) or None)
        if cfg.datastore_certfile:
            ctx.load_cert_chain(str(cfg.datastore_certfile), str(cfg.datastore_keyfile) or None)
    etcd = EtcdStore(urls, ssl_context=ctx)
    await etcd.start()
    return etcd


async def start(cfg: ServerConfig, *, sockets: list[socket.socket] | None = None) -> Server:
    """Start the server on bind-address:https-listen-port, plus `sockets`: extra pre-opened listening sockets
    (the lab passes one it opened on the machine's 127.0.0.1, the only thing a lab adds to the root namespace)."""
    data_dir = Path(cfg.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = await open_store(cfg, data_dir)
    allocator = ServiceAllocator(service_cidr=str(cfg.service_cidr), node_port_range=cfg.node_port_range)
    plugins = Admission(
        not_ready_toleration_seconds=cfg.default_not_ready_toleration_seconds,
        unreachable_toleration_seconds=cfg.default_unreachable_toleration_seconds,
    )
    resources = Resources(store, allocator=allocator, plugins=plugins)
    await resources.load()
    address = _node_address(cfg)
    await bootstrap(resources, cfg, address=address)
    lifecycle = Lifecycle(resources)
    await lifecycle.start()
    admission = WebhookAdmission(store, lookup=resources, namespace_labels=resources.namespace_labels)
    await admission.start()
    resources.admission = admission

    sans_ip = sorted(
        {"127.0.0.1", address, str(cfg.api_service_ip)}
        | ({str(cfg.bind_address)} if cfg.bind_address not in ("0.0.0.0", "::", "") else set())
    )
    pki = ensure_pki(
        data_dir,
        sans_dns=["kubernetes", f"kubernetes.default.svc.{cfg.cluster_domain}", socket.gethostname()],
        sans_ip=sans_ip,
    )
    token = ensure_token(data_dir, cfg.token)
    port = int(cfg.https_listen_port)
    api = ApiServer(resources, tokens={token}, server_address=f"{address}:{port}", ca_pem=pki.ca_pem)
    runner = web.AppRunner(api.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    ssl_ctx = pki.server_ssl_context()
    await web.TCPSite(runner, host=str(cfg.bind_address), port=port, ssl_context=ssl_ctx, reuse_address=True).start()
    for sock in sockets or []:
        await web.SockSite(runner, sock, ssl_context=ssl_ctx).start()
    url = f"https://127.0.0.1:{port}"
    kubeconfig = Path(cfg.write_kubeconfig) if cfg.write_kubeconfig else data_dir / "cred" / "admin.kubeconfig"
    write_kubeconfig(kubeconfig, server=url, ca_pem=pki.ca_pem, token=token)
    server = Server(cfg, store, resources, api, lifecycle, runner, token, pki.ca_pem, url, kubeconfig)
    server.tasks.append(asyncio.create_task(_compactor(store)))
    server.tasks.append(asyncio.create_task(memory.trim_periodically()))
    # The controllers are API clients of this server, over its own HTTPS endpoint.
    server.controllers = ControllerManager(
        Config(server=_self_url(cfg), token=token, ca_data=pki.ca_pem),
        cluster_cidr=str(cfg.cluster_cidr),
        node_cidr_mask_size=int(cfg.node_cidr_mask_size),
        node_monitor_grace_period=float(cfg.node_monitor_grace_period),
        addons=AddonSettings(
            cluster_dns=str(cfg.cluster_dns), cluster_domain=str(cfg.cluster_domain), disable=tuple(cfg.disable)
        ),
    )
    server.controllers.start()
    log.info("kwire server listening on %s:%d (kubeconfig %s)", cfg.bind_address, port, kubeconfig)
    return server


async def run(cfg: ServerConfig, *, sockets: list[socket.socket] | None = None) -> None:
    server = await start(cfg, sockets=sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"kwire server ready: {server.url}  kubeconfig: {server.kubeconfig}", flush=True)
    await stop.wait()
    await server.close()
