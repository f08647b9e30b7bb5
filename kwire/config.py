"""K3s-compatible configuration: flags and config files with K3s's keys, defaults and merge rules.

Sources, lowest priority first: the config file (`--config`, `$KWIRE_CONFIG_FILE`, or /etc/kwire/config.yaml
when present), then its drop-ins `<file>.d/*.yaml` in name order (later files win), then command-line flags.
A key ending in `+` appends to a list instead of replacing it (K3s's rule). Unknown keys are errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

DEFAULT_CONFIG_FILE = "/etc/kwire/config.yaml"
BACKENDS = ("vxlan", "host-gw", "none")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ServerConfig:
    data_dir: str = "/var/lib/kwire/server"
    bind_address: str = "0.0.0.0"
    advertise_address: str = ""
    https_listen_port: int = 6443
    token: str = ""
    token_file: str = ""
    # K3s's --agent-token: what agents join with (the server token when unset); never an API credential.
    agent_token: str = ""
    agent_token_file: str = ""
    # K3s's datastore flags: empty = the embedded SQLite store; http(s)://host:2379[,...] = etcd v3;
    # postgres://user:pass@host:5432/db (or postgresql://) = PostgreSQL in kine's layout (kwire/store/postgres.py).
    datastore_endpoint: str = ""
    datastore_cafile: str = ""
    datastore_certfile: str = ""
    datastore_keyfile: str = ""
    # K3s's --cluster-init: start and supervise an embedded etcd (Debian's etcd-server) and keep the cluster in it.
    # A server whose data dir already holds an embedded etcd keeps using it without the flag (as K3s does).
    cluster_init: bool = False
    # K3s's --server for servers: join the embedded-etcd cluster of the server at this URL (with --token).
    server: str = ""
    # kwire-specific: the embedded etcd's client and peer ports (K3s fixes 2379/2380; several kwire servers on
    # one machine, as in tests, need their own).
    # K3s's snapshot flags: scheduled snapshots of the embedded etcd into etcd-snapshot-dir (default
    # <data-dir>/db/snapshots), the newest etcd-snapshot-retention kept; croniter syntax (6 fields: seconds last).
    etcd_disable_snapshots: bool = False
    etcd_snapshot_schedule_cron: str = "0 */12 * * *"
    etcd_snapshot_retention: int = 5
    etcd_snapshot_dir: str = ""
    # K3s's --cluster-reset [--cluster-reset-restore-path FILE]: make the embedded etcd a one-member cluster again
    # (restored from FILE when given), then exit; the server is started again without the flag.
    cluster_reset: bool = False
    # K3s's --secrets-encryption: Secrets encrypted at rest (aescbc), keys in <data-dir>/cred/encryption-config.json.
    secrets_encryption: bool = False
    cluster_reset_restore_path: str = ""
    # K3s's --etcd-arg KEY=VALUE (repeatable): extra flags for the embedded etcd, after kwire's own (so they win).
    etcd_arg: tuple[str, ...] = ()
    # K3s's --kube-apiserver-arg KEY=VALUE (repeatable): kwire's API server honours max-requests-inflight and
    # max-mutating-requests-inflight (kube's 400 / 200; api/maxinflight.py); other keys are logged as ignored.
    kube_apiserver_arg: tuple[str, ...] = ()
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    write_kubeconfig: str = "/etc/kwire/kwire.yaml"
    write_kubeconfig_mode: str = "0600"
    cluster_cidr: str = "10.42.0.0/16"
    service_cidr: str = "10.43.0.0/16"
    cluster_dns: str = "10.43.0.10"
    cluster_domain: str = "cluster.local"
    service_node_port_range: str = "30000-32767"
    node_cidr_mask_size: int = 24
    flannel_backend: str = "vxlan"
    flannel_iface: str = ""
    disable: tuple[str, ...] = ()
    disable_network_policy: bool = False
    node_name: str = ""
    node_ip: str = ""
    node_external_ip: str = ""
    node_label: tuple[str, ...] = ()
    node_taint: tuple[str, ...] = ()
    # kube-controller-manager's --node-monitor-grace-period, in seconds: a node whose Lease is not renewed for
    # this long is marked Ready=Unknown and tainted node.kubernetes.io/unreachable.
    node_monitor_grace_period: int = 40
    # kube-apiserver's DefaultTolerationSeconds admission: how long a new pod tolerates a node being not-ready /
    # unreachable (NoExecute) before the taint manager evicts it.
    default_not_ready_toleration_seconds: int = 300
    default_unreachable_toleration_seconds: int = 300
    # kube-controller-manager's --leader-elect-lease-duration/-renew-deadline/-retry-period, in seconds: every
    # server campaigns for the kube-system/kube-controller-manager Lease; only its holder runs controllers.
    leader_elect_lease_duration: int = 15
    leader_elect_renew_deadline: int = 10
    leader_elect_retry_period: int = 2

    @property
    def service_network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.service_cidr)

    @property
    def cluster_network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cluster_cidr)

    @property
    def node_port_range(self) -> tuple[int, int]:
        lo, hi = self.service_node_port_range.split("-")
        return int(lo), int(hi)

    @property
    def api_service_ip(self) -> str:
        """The first host address of service-cidr: the `kubernetes` Service (10.43.0.1)."""
        return str(self.service_network.network_address + 1)

    def disabled(self, component: str) -> bool:
        return component in self.disable


@dataclass(frozen=True)
class AgentConfig:
    server: str = ""
    token: str = ""
    token_file: str = ""
    data_dir: str = "/var/lib/kwire/agent"
    node_name: str = ""
    node_ip: str = ""
    node_external_ip: str = ""
    node_label: tuple[str, ...] = ()
    node_taint: tuple[str, ...] = ()
    flannel_backend: str = "vxlan"
    flannel_iface: str = ""
    cluster_dns: str = "10.43.0.10"
    cluster_domain: str = "cluster.local"
    disable_network_policy: bool = False
    kubeconfig: str = ""
    # kwire-specific: the name prefix of pod network namespaces (the lab sets `kwire-<lab>-pod-`).
    pod_netns_prefix: str = "kwire-pod-"
    node_lease_duration_seconds: int = 40
    # K3s's `--kube-proxy-arg KEY=VALUE`: kwire's service proxy honours `metrics-bind-address` (default
    # 127.0.0.1:10249, kube-proxy's); other keys are logged as ignored.
    kube_proxy_arg: tuple[str, ...] = ()


# The ConfigMap (in kube-system) the server publishes the cluster-wide settings in (kwire/server.py).
CLUSTER_CONFIG = "kwire-config"


@dataclass(frozen=True)
class ClusterSettings:
    """The cluster-wide settings the server publishes in `kube-system/kwire-config` (K3s agents get the same from
    the server's /v1-k3s/config): what `kwire trace` and `kwire check` read of the cluster's configuration.
    Each is the server's setting of the same name; in the ConfigMap its key is the flag's name and its value as
    the flag is written (a list comma-separated), and a key the ConfigMap lacks has the server's default."""

    cluster_cidr: str = ServerConfig.cluster_cidr
    service_cidr: str = ServerConfig.service_cidr
    cluster_dns: str = ServerConfig.cluster_dns
    cluster_domain: str = ServerConfig.cluster_domain
    flannel_backend: str = ServerConfig.flannel_backend
    service_node_port_range: str = ServerConfig.service_node_port_range
    disable_network_policy: bool = False
    disable: tuple[str, ...] = ()  # packaged components left out, sorted: `lab up` waits for the rest
    # Agents renew their node Lease well within this (a quarter of it), or nodes would flap NotReady.
    node_monitor_grace_period: int = ServerConfig.node_monitor_grace_period

    @staticmethod
    def of_server(cfg: ServerConfig) -> ClusterSettings:
        """What a server with this configuration publishes."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(ClusterSettings):
            value = getattr(cfg, f.name)
            values[f.name] = tuple(sorted(value)) if isinstance(value, tuple) else value
        return ClusterSettings(**values)

    def to_configmap(self) -> dict[str, str]:
        """The ConfigMap's data."""
        return {_key(f.name): _flag_text(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @staticmethod
    def from_configmap(data: Mapping[str, str]) -> ClusterSettings:
        """The settings in the ConfigMap's data; ConfigError on a value that is not of its setting's type."""
        fields = _fields(ClusterSettings)
        return ClusterSettings(**{f.name: _coerce(f, data[k], CLUSTER_CONFIG) for k, f in fields.items() if k in data})


def _flag_text(value: Any) -> str:
    """A setting's value as its flag is written: true/false, a list comma-separated (sorted), else as is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(sorted(value))
    return str(value)


C = TypeVar("C", ServerConfig, AgentConfig)


def _key(name: str) -> str:
    return name.replace("_", "-")


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {_key(f.name): f for f in dataclasses.fields(cls)}


def _is_list(f: dataclasses.Field[Any]) -> bool:
    return isinstance(f.default, tuple)


def _merge_file(values: dict[str, Any], path: Path, fields: Mapping[str, dataclasses.Field[Any]]) -> None:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
    for raw_key, value in data.items():
        key = str(raw_key)
        append = key.endswith("+")
        if append:
            key = key[:-1]
        f = fields.get(key)
        if f is None:
            raise ConfigError(f"{path}: unknown key {key!r}")
        if _is_list(f):
            items = list(value) if isinstance(value, list) else [value]
            values[key] = (list(values.get(key, [])) + items) if append else items
        else:
            values[key] = value


def _coerce(f: dataclasses.Field[Any], value: Any, source: str) -> Any:
    default = f.default
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, tuple):
            items = value if isinstance(value, (list, tuple)) else [value]
            if _key(f.name) == "disable":  # K3s accepts `--disable a,b` as well as repeated flags
                return tuple(part.strip() for v in items for part in str(v).split(",") if part.strip())
            return tuple(str(v) for v in items)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {_key(f.name)}: invalid value {value!r}") from None


def _validate(cfg: ServerConfig | AgentConfig) -> None:
    if cfg.flannel_backend not in BACKENDS:
        raise ConfigError(f"flannel-backend: {cfg.flannel_backend!r} is not one of {', '.join(BACKENDS)}")
    if isinstance(cfg, ServerConfig):
        try:
            svc = cfg.service_network
            ipaddress.ip_network(cfg.cluster_cidr)
        except ValueError as exc:
            raise ConfigError(f"invalid CIDR: {exc}") from None
        try:
            dns = ipaddress.ip_address(cfg.cluster_dns)
        except ValueError as exc:
            raise ConfigError(f"cluster-dns: {exc}") from None
        if dns not in svc:
            raise ConfigError(f"cluster-dns {cfg.cluster_dns} is not inside service-cidr {cfg.service_cidr}")
        try:
            lo, hi = cfg.node_port_range
        except ValueError:
            raise ConfigError(f"service-node-port-range: {cfg.service_node_port_range!r} is not 'low-high'") from None
        if not 1 <= lo < hi <= 65535:
            raise ConfigError(
                f"service-node-port-range: {cfg.service_node_port_range!r} must satisfy 1 <= low < high <= 65535"
            )
        if not 8 <= cfg.node_cidr_mask_size <= 30:
            raise ConfigError("node-cidr-mask-size must be between 8 and 30")
        if cfg.cluster_network.version == 4 and cfg.node_cidr_mask_size < cfg.cluster_network.prefixlen:
            raise ConfigError(
                f"node-cidr-mask-size {cfg.node_cidr_mask_size} is smaller than the cluster-cidr prefix "
                f"/{cfg.cluster_network.prefixlen}: no node subnet fits in {cfg.cluster_cidr}"
            )
        if not cfg.leader_elect_lease_duration > cfg.leader_elect_renew_deadline > cfg.leader_elect_retry_period >= 1:
            raise ConfigError(
                "leader-elect: lease-duration > renew-deadline > retry-period >= 1 is required "
                f"(got {cfg.leader_elect_lease_duration}, {cfg.leader_elect_renew_deadline}, "
                f"{cfg.leader_elect_retry_period})"
            )
        from croniter import croniter  # only a server's settings need it: ~5 MB (dateutil) for every process

        if not croniter.is_valid(cfg.etcd_snapshot_schedule_cron):
            raise ConfigError(
                f"etcd-snapshot-schedule-cron: {cfg.etcd_snapshot_schedule_cron!r} is not a cron schedule"
            )
        if cfg.etcd_snapshot_retention < 1:
            raise ConfigError("etcd-snapshot-retention must be at least 1")
        if cfg.cluster_reset_restore_path and not cfg.cluster_reset:
            raise ConfigError("cluster-reset-restore-path needs --cluster-reset")
        if cfg.server and not cfg.token:
            raise ConfigError("server: joining a cluster needs its token (--token, --token-file or KWIRE_TOKEN)")
        if cfg.cluster_init and cfg.datastore_endpoint:
            raise ConfigError("cluster-init: an embedded etcd cannot be combined with datastore-endpoint")
        if cfg.node_monitor_grace_period < 1:
            raise ConfigError("node-monitor-grace-period must be at least 1 second")


# K3s's environment variables (K3S_TOKEN, K3S_TOKEN_FILE, K3S_URL...) under kwire's name: each sets its key when
# neither a flag nor a config file did. Secrets belong there or in a token file, never on a command line.
ENV_KEYS = {
    "KWIRE_TOKEN": "token",
    "KWIRE_TOKEN_FILE": "token-file",
    "KWIRE_AGENT_TOKEN": "agent-token",
    "KWIRE_AGENT_TOKEN_FILE": "agent-token-file",
    "KWIRE_URL": "server",
    "KWIRE_DATA_DIR": "data-dir",
    "KWIRE_DATASTORE_ENDPOINT": "datastore-endpoint",  # K3S_DATASTORE_ENDPOINT: a URL with a password
}


def _resolve_token_file(values: dict[str, Any], key: str = "token") -> None:
    if values.get(key) or not values.get(f"{key}-file"):
        return
    path = Path(str(values[f"{key}-file"]))
    try:
        values[key] = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}-file {path}: {exc.strerror or exc}") from None
    if not values[key]:
        raise ConfigError(f"{key}-file {path} is empty")


def load_config(
    *, cls: type[C], flags: Mapping[str, Any], config_file: str | None, env: Mapping[str, str] = os.environ
) -> C:
    """Merge defaults, config file(s) and the flags the user set (dash-case keys, as K3s names them)."""
    fields = _fields(cls)
    values: dict[str, Any] = {}
    path_s = config_file or env.get("KWIRE_CONFIG_FILE") or ""
    explicit = bool(path_s)
    path = Path(path_s or DEFAULT_CONFIG_FILE)
    if path.exists():
        _merge_file(values, path, fields)
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")
    dropins = Path(str(path) + ".d")
    if dropins.is_dir():
        for p in sorted(dropins.glob("*.yaml")) + sorted(dropins.glob("*.yml")):
            _merge_file(values, p, fields)
    for key, value in flags.items():
        k = _key(key)
        if k not in fields:
            raise ConfigError(f"unknown flag --{k}")
        values[k] = value
    for var, k in ENV_KEYS.items():
        if k in fields and var in env and not values.get(k):
            values[k] = env[var]
    _resolve_token_file(values)
    if "agent-token" in fields:
        _resolve_token_file(values, "agent-token")
    kwargs = {fields[k].name: _coerce(fields[k], v, "config") for k, v in values.items()}
    cfg = cls(**kwargs)
    _validate(cfg)
    return cfg


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One dash-case flag per config key (lists repeatable); unset flags stay absent from the namespace."""
    for key, f in _fields(cls).items():
        dest = f"cfg_{f.name}"
        if isinstance(f.default, bool):
            parser.add_argument(f"--{key}", dest=dest, action="store_true", default=argparse.SUPPRESS)
        elif isinstance(f.default, tuple):
            parser.add_argument(f"--{key}", dest=dest, action="append", default=argparse.SUPPRESS)
        else:
            parser.add_argument(f"--{key}", dest=dest, default=argparse.SUPPRESS)


def flags_from_namespace(ns: argparse.Namespace) -> dict[str, Any]:
    return {_key(k[4:]): v for k, v in vars(ns).items() if k.startswith("cfg_")}
