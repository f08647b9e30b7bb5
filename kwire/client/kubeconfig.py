"""Kubeconfig files and in-cluster configuration: where the API is and how to authenticate to it."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kwire.base.files import atomic_write

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeconfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    server: str
    token: str | None = None
    ca_data: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    insecure: bool = False
    # A file the bearer token is read from, again whenever it may have changed (a pod's service-account token,
    # which the kubelet rotates; client-go's cachingTokenSource re-reads it the same way).
    token_file: str | None = None
    # kubeconfig's `as` / `as-groups` (kubectl's --as/--as-group): sent as Impersonate-User / Impersonate-Group
    impersonate_user: str | None = None
    impersonate_groups: tuple[str, ...] = ()

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https://"):
            return False
        ctx = ssl.create_default_context(cadata=self.ca_data.decode() if self.ca_data else None)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert and self.client_key:
            load_client_cert(ctx, cert=self.client_cert, key=self.client_key)
        return ctx


def load_client_cert(ctx: ssl.SSLContext, *, cert: bytes, key: bytes) -> None:
    """Load a PEM certificate and key into `ctx` (ssl reads only files: a private temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        cert_path.write_bytes(cert)
        ctx.load_cert_chain(cert_path, key_path)


def _data_or_file(entry: Mapping[str, Any], key: str, base: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        p = Path(entry[key])
        return (p if p.is_absolute() else base / p).read_bytes()
    return None


def _named(items: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return dict(item.get(what) or {})
    raise KubeconfigError(f"{what} {name!r} not found in kubeconfig")


def load_kubeconfig(path: str | Path, *, context: str | None = None) -> Config:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KubeconfigError(f"{p}: {exc}") from None
    ctx_name = context or doc.get("current-context")
    if not ctx_name:
        raise KubeconfigError(f"{p}: no current-context")
    ctx = _named(doc.get("contexts", []), ctx_name, "context")
    cluster = _named(doc.get("clusters", []), ctx.get("cluster", ""), "cluster")
    user = _named(doc.get("users", []), ctx.get("user", ""), "user") if ctx.get("user") else {}
    token = user.get("token")
    token_file = None
    if not token and user.get("tokenFile"):
        token_file = str(user["tokenFile"])
        token = Path(token_file).read_text().strip()
    return Config(
        server=str(cluster.get("server", "")).rstrip("/"),
        token=token,
        ca_data=_data_or_file(cluster, "certificate-authority", p.parent),
        client_cert=_data_or_file(user, "client-certificate", p.parent),
        client_key=_data_or_file(user, "client-key", p.parent),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        token_file=token_file,
        impersonate_user=str(user["as"]) if user.get("as") else None,
        impersonate_groups=tuple(str(g) for g in user.get("as-groups") or ()),
    )


def in_cluster_config(env: Mapping[str, str] = os.environ, sa_dir: Path | None = None) -> Config:
    """The API and credentials a pod uses: KUBERNETES_SERVICE_HOST/PORT and the service account's token and CA.

    kwire pods have no mount namespace of their own, so the kubelet points KWIRE_SERVICEACCOUNT_DIR at the files
    instead of mounting them at /var/run/secrets/kubernetes.io/serviceaccount.
    """
    if sa_dir is None:
        sa_dir = Path(env.get("KWIRE_SERVICEACCOUNT_DIR") or SA_DIR)
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeconfigError("not running in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set")
    if ":" in host:
        host = f"[{host}]"
    ca = sa_dir / "ca.crt"
    return Config(
        server=f"https://{host}:{port}",
        token=(sa_dir / "token").read_text().strip(),
        ca_data=ca.read_bytes() if ca.exists() else None,
        token_file=str(sa_dir / "token"),
    )


def flag_or_in_cluster(kubeconfig: str | None, env: Mapping[str, str] = os.environ) -> Config:
    """A pod program's `--kubeconfig FILE`, else the in-cluster service account (client-go's BuildConfigFromFlags
    with an empty path falling back to InClusterConfig)."""
    return load_kubeconfig(kubeconfig) if kubeconfig else in_cluster_config(env)


def write_kubeconfig(
    path: str | Path,
    *,
    server: str,
    ca_pem: bytes,
    token: str = "",
    client_cert: bytes = b"",
    client_key: bytes = b"",
    cluster_name: str = "default",
    user: str = "default",
    mode: int = 0o600,
) -> None:
    """Write a kubeconfig laid out as K3s's /etc/rancher/k3s/k3s.yaml (atomically): a client certificate
    (client-certificate-data/client-key-data, as K3s writes the admin's) or a bearer token."""
    creds: dict[str, str] = {}
    if client_cert and client_key:
        creds["client-certificate-data"] = base64.b64encode(client_cert).decode()
        creds["client-key-data"] = base64.b64encode(client_key).decode()
    if token:
        creds["token"] = token
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()},
            }
        ],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": cluster_name,
        "preferences": {},
        "users": [{"name": user, "user": creds}],
    }
    atomic_write(path, yaml.safe_dump(doc, sort_keys=False), mode=mode)
