"""The `kwire server` role: store + API + in-server lifecycle, TLS and the admin kubeconfig.

`run(cfg)` is what the CLI calls; `start(cfg)` returns a running `Server` for tests and the lab.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kwire.api import frontproxy
from kwire.api.admission import Admission
from kwire.api.aggregator import Aggregator
from kwire.api.allocator import ServiceAllocator
from kwire.api.authn import Authenticator, lookup_in
from kwire.api.authn.serviceaccount import TokenIssuer, TokenValidator, ensure_signing_key, issuer_for
from kwire.api.authn.tokens import JoinTokens, ensure_agent_token
from kwire.api.authz.chain import Authorization
from kwire.api.authz.escalation import EscalationCheck
from kwire.api.authz.noderestriction import NodeRestriction
from kwire.api.authz.reconcile import reconcile as reconcile_rbac
from kwire.api.bootstrap import (
    DATASTORE_KEY,
    SHARED_FILES,
    Bootstrap,
    JoinError,
    fetch_bootstrap,
    seal,
    unseal,
)
from kwire.api.certs import (
    ClientCa,
    Pki,
    ensure_client_ca,
    ensure_client_cert,
    ensure_etcd_tls,
    ensure_pki,
    ensure_token,
)
from kwire.api.encryptionkeys import open_encryption
from kwire.api.frontproxy import FrontProxy
from kwire.api.lifecycle import Lifecycle
from kwire.api.masterleases import MasterLeases
from kwire.api.maxinflight import MaxInFlight, limits_from_args
from kwire.api.nodecerts import NodeCertAuthority, NodeCerts
from kwire.api.registry import by_path
from kwire.api.resources import Resources
from kwire.api.server import ApiServer
from kwire.api.user import MASTERS
from kwire.api.webhookadmission import WebhookAdmission
from kwire.base import memory, process
from kwire.base.files import atomic_write, private_dir
from kwire.client.kubeconfig import Config, write_kubeconfig
from kwire.config import CLUSTER_CONFIG, ClusterSettings, ConfigError, ServerConfig
from kwire.controllers.addons import AddonSettings
from kwire.controllers.elected import ElectedControllers
from kwire.controllers.leaderelection import ElectionTiming
from kwire.controllers.manager import ControllerManager
from kwire.store import snapshots
from kwire.store.base import KeyExists, Store
from kwire.store.embedded import EmbeddedEtcd, EtcdTls
from kwire.store.etcd import EtcdStore
from kwire.store.etcdcluster import member_add, member_list
from kwire.store.migrate import migrate_sqlite
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
    assert ns_kind and svc_kind
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
    # default/kubernetes Endpoints: every live server's address, kept by `MasterLeases` (kwire/api/masterleases.py).


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


async def _publish_cluster_config(resources: Resources, cfg: ServerConfig) -> None:
    """kube-system/kwire-config: the cluster-wide settings agents need (K3s agents get them from the server)."""
    cm_kind = by_path("", "v1", "configmaps")
    assert cm_kind
    data = ClusterSettings.of_server(cfg).to_configmap()
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
    master_leases: MasterLeases | None = None
    election: ElectedControllers | None = None
    etcd: EmbeddedEtcd | None = None  # --cluster-init: the etcd member this server supervises

    @property
    def controllers(self) -> ControllerManager | None:
        """This server's controller manager while it holds the kube-controller-manager Lease, else None."""
        return self.election.current if self.election is not None else None

    async def close(self) -> None:
        if self.election is not None:
            await self.election.stop()
        for t in self.tasks:
            t.cancel()
        self.api.stop_watches()
        if self.master_leases is not None:
            await self.master_leases.stop()
        await self.lifecycle.stop()
        await self.api.authorization.stop()
        if self.api.aggregator is not None:
            await self.api.aggregator.stop()
        if self.resources.admission is not None:
            await self.resources.admission.stop()
        await self.resources.conversion.close()
        await self.runner.cleanup()
        if self.api.encryption is not None:
            await self.api.encryption.stop()
        await self.store.close()
        if self.etcd is not None:
            await self.etcd.stop()


def _self_url(cfg: ServerConfig) -> str:
    """Where in-process clients reach this server: loopback, unless it listens on one address only."""
    host = str(cfg.bind_address)
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{int(cfg.https_listen_port)}"


def _leader_identity(cfg: ServerConfig, data_dir: Path) -> str:
    """kube-controller-manager's `<hostname>_<uuid>`, kept in the data dir: a restarted server is the same
    candidate and re-takes a lease it still holds at once instead of waiting for it to expire."""
    path = data_dir / "cred" / "leader-identity"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    identity = f"{cfg.node_name or socket.gethostname()}_{uuid.uuid4()}"
    atomic_write(path, identity.encode() + b"\n", mode=0o644)
    return identity


async def _compactor(store: Store) -> None:
    while True:
        await asyncio.sleep(COMPACT_INTERVAL)
        try:
            await store.compact(store.revision - COMPACT_KEEP)
        except Exception:
            log.exception("compaction failed")


async def open_store(
    cfg: ServerConfig, data_dir: Path, *, address: str, join: Bootstrap | None = None
) -> tuple[Store, EmbeddedEtcd | None]:
    """K3s's datastore choice: `--datastore-endpoint` http(s):// URLs are etcd v3, postgres:// (postgresql://)
    PostgreSQL in kine's layout; `--cluster-init`, `--server`
    (joining) or a data dir that already holds an embedded etcd start and use an embedded etcd member; otherwise
    embedded SQLite."""
    db_dir = data_dir / "db"
    endpoint = str(cfg.datastore_endpoint)
    if not endpoint and (cfg.cluster_init or join is not None or EmbeddedEtcd.exists(db_dir)):
        return await _open_embedded_etcd(cfg, data_dir, address=address, join=join)
    if not endpoint:
        return SQLiteStore(db_dir / "state.db"), None
    # Imported here: asyncpg costs a server that does not use it ~4.5 MB.
    from kwire.store import postgres

    if endpoint.startswith(postgres.SCHEMES):  # kine's Postgres (the table is followed like etcd's watch)
        pg = postgres.PostgresStore(
            endpoint,
            cafile=str(cfg.datastore_cafile),
            certfile=str(cfg.datastore_certfile),
            keyfile=str(cfg.datastore_keyfile),
        )
        await pg.start()
        return pg, None
    urls = [u.strip() for u in endpoint.split(",") if u.strip()]
    if not all(u.startswith(("http://", "https://")) for u in urls):
        raise ConfigError(
            f"datastore-endpoint {postgres.redact(endpoint)!r}: not an etcd (http:// or https://) or postgres:// URL"
        )
    ctx = None
    if any(u.startswith("https://") for u in urls):
        ctx = ssl.create_default_context(cafile=str(cfg.datastore_cafile) or None)
        if cfg.datastore_certfile:
            ctx.load_cert_chain(str(cfg.datastore_certfile), str(cfg.datastore_keyfile) or None)
    etcd = EtcdStore(urls, ssl_context=ctx)
    await etcd.start()
    return etcd, None


def _member(cfg: ServerConfig, data_dir: Path, *, address: str, tls: EtcdTls) -> EmbeddedEtcd:
    return EmbeddedEtcd(
        data_dir / "db",
        node_name=str(cfg.node_name) or socket.gethostname(),
        address=address,
        client_port=int(cfg.etcd_client_port),
        peer_port=int(cfg.etcd_peer_port),
        tls=tls,
        extra_args=tuple(cfg.etcd_arg),
    )


def snapshot_dir(cfg: ServerConfig) -> Path:
    return Path(cfg.etcd_snapshot_dir) if cfg.etcd_snapshot_dir else Path(cfg.data_dir) / "db" / "snapshots"


async def cluster_reset(cfg: ServerConfig) -> str:
    """K3s's --cluster-reset: the embedded etcd becomes a one-member cluster again, restored from
    --cluster-reset-restore-path when given (else keeping its data, etcd's --force-new-cluster)."""
    data_dir = Path(cfg.data_dir)
    address = _node_address(cfg)
    _pki(cfg, data_dir, address=address)
    member = _member(cfg, data_dir, address=address, tls=ensure_etcd_tls(data_dir, sans_ip=[address]))
    if cfg.cluster_reset_restore_path:
        old = snapshots.restore(
            Path(cfg.cluster_reset_restore_path), etcd_dir=member.data_dir, name=member.name, peer_url=member.peer_url
        )
        log.info("etcd restored from %s; the previous member data is in %s", cfg.cluster_reset_restore_path, old)
    else:
        if not EmbeddedEtcd.exists(data_dir / "db"):
            raise ConfigError(f"cluster-reset: {data_dir / 'db' / 'etcd'} holds no etcd member")
        member.force_new_cluster()
    await member.start()  # a one-member cluster now; started once so the reset is committed
    await member.stop()
    return (
        "Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. "
        f"Backup and delete {data_dir / 'db'} on each peer etcd server and rejoin the nodes."
    )


async def _open_embedded_etcd(
    cfg: ServerConfig, data_dir: Path, *, address: str, join: Bootstrap | None
) -> tuple[Store, EmbeddedEtcd]:
    tls = ensure_etcd_tls(data_dir, sans_ip=[address])
    member = _member(cfg, data_dir, address=address, tls=tls)
    if join is not None:  # a new member of the cluster the bootstrap came from (etcdctl member add, then start)
        members = await member_add(
            join.etcd_client_urls, name=member.name, peer_url=member.peer_url, ssl_context=tls.client_ssl_context()
        )
        member.join(members)
        if len(members) % 2 == 0:  # K3s's warning
            log.warning(
                "this server is a part of a cluster with an even number (%d) of etcd members: an odd number is "
                "recommended (losing one of %d members leaves no more fault tolerance than one fewer)",
                len(members),
                len(members),
            )
    await member.start()
    store = EtcdStore([member.client_url], ssl_context=tls.client_ssl_context())
    try:
        await store.start()
        if join is None:
            await migrate_sqlite(data_dir / "db" / "state.db", store)
    except BaseException:
        await store.close()
        await member.stop()
        raise
    return store, member


def _install_ca(data_dir: Path, join: Bootstrap) -> None:
    """A joining server takes the cluster's CA and shared keys (K3s servers share theirs); a different CA already
    in the data dir is an error, not something to overwrite."""
    tls = data_dir / "tls"
    crt, key = tls / "server-ca.crt", tls / "server-ca.key"
    if crt.exists():
        if crt.read_bytes() != join.ca_cert:
            raise JoinError(f"{crt} holds a different cluster CA than the server being joined; use a fresh data dir")
    else:
        atomic_write(key, join.ca_key, mode=0o600)
        atomic_write(crt, join.ca_cert, mode=0o644)
    for name, content in join.shared.items():
        path = tls / name
        if not path.exists() or path.read_bytes() != content:
            atomic_write(path, content, mode=0o644 if name.endswith(".crt") else 0o600)


def _shared_files(data_dir: Path) -> dict[str, bytes]:
    """The keys every server of the cluster shares (client CA, service-account key), as this server has them."""
    tls = data_dir / "tls"
    return {name: (tls / name).read_bytes() for name in SHARED_FILES if (tls / name).exists()}


def _ensure_shared(data_dir: Path) -> tuple[ClientCa, bytes]:
    """The client CA and the service-account signing key (kept, or made on a cluster's first server)."""
    return ensure_client_ca(data_dir), ensure_signing_key(data_dir)


async def _shared_ca(store: Store, cfg: ServerConfig, data_dir: Path, *, address: str) -> Pki:
    """Servers on one external datastore share one CA (K3s keeps its bootstrap data there): the first server
    stores its CA sealed with the token; the others take it (a wrong token is refused)."""
    token = ensure_token(data_dir, cfg.token)
    key = DATASTORE_KEY
    kv = store.get_now(key)
    if kv is not None:
        _install_ca(data_dir, unseal(token, kv.value))
    pki = _pki(cfg, data_dir, address=address)
    _ensure_shared(data_dir)
    if kv is None:
        try:
            sealed = seal(token, ca_cert=pki.ca_pem, ca_key=pki.ca_key.read_bytes(), shared=_shared_files(data_dir))
            await store.create(key, sealed)
        except KeyExists:
            raise JoinError("another server stored its CA in the datastore at the same moment; start again") from None
    return pki


def _bootstrap_provider(pki: Pki, member: EmbeddedEtcd, data_dir: Path) -> Callable[[], Awaitable[dict[str, Any]]]:
    tls_ctx = member.tls.client_ssl_context()

    async def provide() -> dict[str, Any]:
        members = await member_list([member.client_url], ssl_context=tls_ctx)
        urls = [u for m in members for u in m.client_urls]
        return Bootstrap(pki.ca_pem, pki.ca_key.read_bytes(), urls, _shared_files(data_dir)).to_json()

    return provide


def api_audiences(cluster_domain: str) -> tuple[str, ...]:
    """kube-apiserver's --api-audiences as K3s sets them: the issuer and `k3s`."""
    return (issuer_for(cluster_domain), "k3s")


def _client_identity(
    data_dir: Path, ca: ClientCa, name: str, *, common_name: str, organizations: tuple[str, ...] = ()
) -> tuple[bytes, bytes]:
    """(certificate, key) PEM of one of the server's client identities, K3s's `tls/client-<name>.crt/.key`."""
    tls = data_dir / "tls"
    cert, key = tls / f"client-{name}.crt", tls / f"client-{name}.key"
    ensure_client_cert(ca, cert_path=cert, key_path=key, common_name=common_name, organizations=organizations)
    return cert.read_bytes(), key.read_bytes()


def _pki(cfg: ServerConfig, data_dir: Path, *, address: str) -> Pki:
    sans_ip = sorted(
        {"127.0.0.1", address, str(cfg.api_service_ip)}
        | ({str(cfg.bind_address)} if cfg.bind_address not in ("0.0.0.0", "::", "") else set())
    )
    return ensure_pki(
        data_dir,
        sans_dns=["kubernetes", f"kubernetes.default.svc.{cfg.cluster_domain}", socket.gethostname()],
        sans_ip=sans_ip,
    )


def _kubelet_client_ssl(data_dir: Path, pki: Pki, client_ca: ClientCa) -> ssl.SSLContext:
    """The API server's credentials towards kubelets: K3s's `client-kube-apiserver.crt` (CN `system:apiserver`,
    O `system:masters`) from the client CA; kubelets' serving certificates are verified against the cluster CA."""
    tls = data_dir / "tls"
    crt, key = tls / "client-kube-apiserver.crt", tls / "client-kube-apiserver.key"
    ensure_client_cert(client_ca, cert_path=crt, key_path=key, common_name="system:apiserver", organizations=(MASTERS,))
    ctx = ssl.create_default_context(cadata=pki.ca_pem.decode())
    ctx.load_cert_chain(crt, key)
    return ctx


async def start(cfg: ServerConfig, *, sockets: list[socket.socket] | None = None) -> Server:
    """Start the server on bind-address:https-listen-port, plus `sockets`: extra pre-opened listening sockets
    (the lab passes one it opened on the machine's 127.0.0.1, the only thing a lab adds to the root namespace)."""
    max_inflight = MaxInFlight(limits=limits_from_args(cfg.kube_apiserver_arg))  # a bad value fails here, first
    data_dir = private_dir(cfg.data_dir, "cred", "db", "tls")  # 0700, as K3s's server dir: keys, tokens, store
    address = _node_address(cfg)
    join = None
    if cfg.server and not cfg.datastore_endpoint and not EmbeddedEtcd.exists(data_dir / "db"):
        join = await asyncio.to_thread(fetch_bootstrap, str(cfg.server), str(cfg.token))
        _install_ca(data_dir, join)
    if cfg.datastore_endpoint:  # an external datastore: the CA is shared through it
        store, etcd_member = await open_store(cfg, data_dir, address=address)
        try:
            pki = await _shared_ca(store, cfg, data_dir, address=address)
        except BaseException:
            await store.close()
            raise
    else:
        pki = _pki(cfg, data_dir, address=address)  # before the store: the embedded etcd's TLS comes from its CA
        store, etcd_member = await open_store(cfg, data_dir, address=address, join=join)
    token = ensure_token(data_dir, cfg.token)
    try:
        store, encryption = await open_encryption(
            store, data_dir=data_dir, token=token, enabled=bool(cfg.secrets_encryption)
        )
    except BaseException:
        await store.close()
        raise
    allocator = ServiceAllocator(service_cidr=str(cfg.service_cidr), node_port_range=cfg.node_port_range)
    plugins = Admission(
        not_ready_toleration_seconds=cfg.default_not_ready_toleration_seconds,
        unreachable_toleration_seconds=cfg.default_unreachable_toleration_seconds,
    )
    resources = Resources(store, allocator=allocator, plugins=plugins)
    await resources.load()
    await bootstrap(resources, cfg, address=address)
    await reconcile_rbac(resources)
    authorization = Authorization(store)
    await authorization.start()
    resources.guards.extend([NodeRestriction(), EscalationCheck(authorization)])
    master_leases = MasterLeases(resources, address=address, port=int(cfg.https_listen_port))
    await master_leases.start()
    lifecycle = Lifecycle(resources)
    await lifecycle.start()
    admission = WebhookAdmission(store, lookup=resources, namespace_labels=resources.namespace_labels)
    await admission.start()
    resources.admission = admission

    ensure_agent_token(data_dir, cfg.agent_token)
    join_tokens = JoinTokens(data_dir)
    client_ca, sa_key = _ensure_shared(data_dir)
    issuer = TokenIssuer(
        sa_key, issuer=issuer_for(str(cfg.cluster_domain)), audiences=api_audiences(str(cfg.cluster_domain))
    )
    validator = TokenValidator(
        issuer.public_pem, issuer=issuer.issuer, audiences=issuer.audiences, lookup=lookup_in(resources)
    )
    port = int(cfg.https_listen_port)
    api = ApiServer(
        resources,
        server_address=f"{address}:{port}",
        authorization=authorization,
        ca_pem=pki.ca_pem,
        authn=Authenticator(tokens=validator),
        join_tokens=join_tokens,
        issuer=issuer,
        validator=validator,
        kubelet_ssl=_kubelet_client_ssl(data_dir, pki, client_ca),
        max_inflight=max_inflight,
        node_certs=NodeCerts(
            resources,
            authority=NodeCertAuthority(client_ca.cert, client_ca.key, pki.ca_cert, pki.ca_key),
            token_ok=join_tokens.agent_may_join,  # the agent token (or the server token), K3s's node join
        ),
    )
    front_proxy = FrontProxy(data_dir)
    await frontproxy.publish(
        resources, client_ca_pem=client_ca.pem.decode(), request_header_ca_pem=front_proxy.ca.pem.decode()
    )
    api.aggregator = Aggregator(resources, proxy=front_proxy)
    api.aggregator.start()
    api.encryption = encryption
    if etcd_member is not None:
        api.server_bootstrap = _bootstrap_provider(pki, etcd_member, data_dir)
    runner = web.AppRunner(api.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    ssl_ctx = pki.server_ssl_context(client_ca=client_ca.cert)
    await web.TCPSite(runner, host=str(cfg.bind_address), port=port, ssl_context=ssl_ctx, reuse_address=True).start()
    for sock in sockets or []:
        await web.SockSite(runner, sock, ssl_context=ssl_ctx).start()
    url = f"https://127.0.0.1:{port}"
    kubeconfig = Path(cfg.write_kubeconfig) if cfg.write_kubeconfig else data_dir / "cred" / "admin.kubeconfig"
    admin = _client_identity(
        data_dir, client_ca, "admin", common_name="system:admin", organizations=("system:masters",)
    )
    write_kubeconfig(
        kubeconfig,
        server=url,
        ca_pem=pki.ca_pem,
        client_cert=admin[0],
        client_key=admin[1],
        mode=int(str(cfg.write_kubeconfig_mode or "0600"), 8),  # K3s's --write-kubeconfig-mode
    )
    server = Server(cfg, store, resources, api, lifecycle, runner, token, pki.ca_pem, url, kubeconfig, etcd=etcd_member)
    server.master_leases = master_leases
    if etcd_member is not None and not cfg.etcd_disable_snapshots:
        server.tasks.append(
            asyncio.create_task(
                snapshots.run_schedule(
                    cron=str(cfg.etcd_snapshot_schedule_cron),
                    retention=int(cfg.etcd_snapshot_retention),
                    directory=snapshot_dir(cfg),
                    node=str(cfg.node_name) or socket.gethostname(),
                    client_url=etcd_member.client_url,
                    ssl_context=etcd_member.tls.client_ssl_context(),
                )
            )
        )
    server.tasks.append(asyncio.create_task(_compactor(store)))
    server.tasks.append(asyncio.create_task(memory.trim_periodically()))
    # The controllers are API clients of this server, over its own HTTPS endpoint, on the elected server only.
    controller = _client_identity(data_dir, client_ca, "controller", common_name="system:kube-controller-manager")
    client_config = Config(
        server=_self_url(cfg), ca_data=pki.ca_pem, client_cert=controller[0], client_key=controller[1]
    )

    def sign_legacy(namespace: str, account: str, account_uid: str, secret: str) -> str:
        return issuer.issue_legacy(namespace=namespace, service_account=(account, account_uid), secret=secret)

    def build_controllers() -> ControllerManager:
        return ControllerManager(
            client_config,
            cluster_cidr=str(cfg.cluster_cidr),
            node_cidr_mask_size=int(cfg.node_cidr_mask_size),
            node_monitor_grace_period=float(cfg.node_monitor_grace_period),
            addons=AddonSettings(
                cluster_dns=str(cfg.cluster_dns), cluster_domain=str(cfg.cluster_domain), disable=tuple(cfg.disable)
            ),
            legacy_tokens=(sign_legacy, pki.ca_pem),
        )

    server.election = ElectedControllers(
        client_config,
        identity=_leader_identity(cfg, data_dir),
        build=build_controllers,
        timing=ElectionTiming(
            lease_duration=float(cfg.leader_elect_lease_duration),
            renew_deadline=float(cfg.leader_elect_renew_deadline),
            retry_period=float(cfg.leader_elect_retry_period),
        ),
    )
    await server.election.start()
    log.info("kwire server listening on %s:%d (kubeconfig %s)", cfg.bind_address, port, kubeconfig)
    return server


async def run(cfg: ServerConfig, *, sockets: list[socket.socket] | None = None) -> None:
    if cfg.cluster_reset:
        print(await cluster_reset(cfg), flush=True)
        return
    server = await start(cfg, sockets=sockets)
    print(f"kwire server ready: {server.url}  kubeconfig: {server.kubeconfig}", flush=True)
    await process.wait_for_stop_signal()
    await server.close()
