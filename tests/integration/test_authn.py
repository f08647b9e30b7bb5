"""Authentication as K3s configures kube-apiserver, seen through the real kubectl and raw HTTPS: the admin's
client certificate, service-account tokens from `kubectl create token` (bound ones die with their pod), legacy
token Secrets, TokenReview, anonymous requests, and the cluster token no longer opening the API."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from kwire.base import pki
from tests.integration.apiserver import KUBECTL, ServerProcess

BOOTSTRAP = "/v1-kwire/server-bootstrap"

pytestmark = pytest.mark.kubectl


def _request(
    server: ServerProcess,
    path: str,
    *,
    token: str | None = None,
    ctx: ssl.SSLContext | None = None,
    body: Any = None,
) -> tuple[int, Any]:
    """(status, JSON or text) of one HTTPS request with the given credentials (none: anonymous)."""
    if ctx is None:
        ctx = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "server-ca.crt"))
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
            raw, code = r.read(), r.status
    except urllib.error.HTTPError as err:
        raw, code = err.read(), err.code
    try:
        return code, json.loads(raw)
    except ValueError:
        return code, raw.decode()


def _token_kubeconfig(server: ServerProcess, token: str, path: Path) -> Path:
    ca = (server.data_dir / "tls" / "server-ca.crt").read_bytes()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": server.url, "certificate-authority-data": base64.b64encode(ca).decode()},
            }
        ],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _kubectl_as(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent), "PATH": "/usr/bin:/bin"}
    return subprocess.run([KUBECTL, *args], capture_output=True, text=True, env=env, timeout=30)


def test_admin_kubeconfig_is_a_client_certificate_for_system_admin(server: ServerProcess) -> None:
    doc = yaml.safe_load(server.kubeconfig.read_text())
    user = doc["users"][0]["user"]
    assert set(user) == {"client-certificate-data", "client-key-data"}  # K3s's layout, no token
    assert stat.S_IMODE(server.kubeconfig.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:admin"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    out = server.kubectl("auth", "whoami").stdout
    assert out.split() == [
        "ATTRIBUTE",
        "VALUE",
        "Username",
        "system:admin",
        "Groups",
        "[system:masters",
        "system:authenticated]",
    ]
    assert stat.S_IMODE((server.data_dir / "tls" / "service.key").stat().st_mode) == 0o600


def test_anonymous_requests_get_401_except_health_and_version(server: ServerProcess) -> None:
    for path in ("/api/v1/namespaces", "/api", "/apis", "/metrics", "/openapi/v2"):
        code, body = _request(server, path)
        assert code == 401, path
        assert body == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }
    for path in ("/healthz", "/livez", "/readyz", "/readyz/ping", "/livez/etcd", "/version"):
        code, _ = _request(server, path)
        assert code == 200, path


def test_cluster_token_and_wrong_credentials_are_refused(server: ServerProcess, tmp_path: Path) -> None:
    assert _request(server, "/api/v1/namespaces", token=server.token)[0] == 401
    assert _request(server, "/healthz", token="not-a-token")[0] == 401  # bad credentials fail even here
    res = _kubectl_as(_token_kubeconfig(server, server.token, tmp_path / "kc"), "get", "ns")
    assert res.returncode != 0 and "You must be logged in to the server" in res.stderr  # kubectl's words for 401
    # a client certificate from another CA is refused at the TLS handshake
    key = pki.new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "system:admin"),
        ]
    )
    cert = pki.issue(subject=name, public_key=key.public_key(), issuer=name, signer=key, days=1, ca=None)
    (tmp_path / "c.pem").write_bytes(pki.cert_pem(cert))
    (tmp_path / "k.pem").write_bytes(pki.key_pem(key))
    ctx = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "server-ca.crt"))
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _request(server, "/api/v1/namespaces", ctx=ctx)


def test_kubectl_create_token_authenticates_as_the_service_account(server: ServerProcess, tmp_path: Path) -> None:
    token = server.kubectl("create", "token", "default", "--duration", "10m").stdout.strip()
    kc = _token_kubeconfig(server, token, tmp_path / "kc")
    out = _kubectl_as(kc, "auth", "whoami").stdout.split()
    assert out[:4] == ["ATTRIBUTE", "VALUE", "Username", "system:serviceaccount:default:default"]
    groups = " ".join(out[out.index("Groups") + 1 :])
    assert groups.startswith("[system:serviceaccounts system:serviceaccounts:default system:authenticated]")
    # authenticated as the ServiceAccount, which RBAC grants nothing here: kube's 403 names it (not a 401)
    code, body = _request(server, "/api/v1/namespaces/default/configmaps", token=token)
    assert code == 403
    assert 'User "system:serviceaccount:default:default" cannot list resource "configmaps"' in body["message"]
    short = server.kubectl("create", "token", "default", "--duration", "5m", check=False)
    assert short.returncode != 0
    assert "spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes" in short.stderr
    missing = server.kubectl("create", "token", "nobody", check=False)
    assert 'serviceaccounts "nobody" not found' in missing.stderr


def test_a_pod_bound_token_is_refused_once_its_pod_is_deleted(server: ServerProcess, tmp_path: Path) -> None:
    server.kubectl("run", "holder", "--image=nginx", "--restart=Never")  # never scheduled: no nodes here
    token = server.kubectl(
        "create", "token", "default", "--bound-object-kind", "Pod", "--bound-object-name", "holder"
    ).stdout.strip()
    kc = _token_kubeconfig(server, token, tmp_path / "kc")
    assert "system:serviceaccount:default:default" in _kubectl_as(kc, "auth", "whoami").stdout
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    code, body = _request(
        server, "/apis/authentication.k8s.io/v1/tokenreviews", ctx=server.admin_ssl_context(), body=review
    )
    assert code == 201 and body["status"]["authenticated"] is True
    assert body["status"]["user"]["username"] == "system:serviceaccount:default:default"
    assert body["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["holder"]
    server.kubectl("delete", "pod", "holder", "--wait=true")
    res = _kubectl_as(kc, "auth", "whoami")
    assert res.returncode != 0 and "Unauthorized" in res.stderr
    code, body = _request(
        server, "/apis/authentication.k8s.io/v1/tokenreviews", ctx=server.admin_ssl_context(), body=review
    )
    assert code == 201 and "authenticated" not in body["status"] and body["status"]["error"]


def test_legacy_token_secret_is_filled_and_authenticates(server: ServerProcess, tmp_path: Path) -> None:
    server.kubectl("create", "serviceaccount", "robot")
    server.apply(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "robot-token", "annotations": {"kubernetes.io/service-account.name": "robot"}},
                "type": "kubernetes.io/service-account-token",
            }
        )
    )
    deadline = time.monotonic() + 30
    secret: dict[str, Any] = {}
    while time.monotonic() < deadline:
        secret = json.loads(server.kubectl("get", "secret", "robot-token", "-o", "json").stdout)
        if (secret.get("data") or {}).get("token"):
            break
        time.sleep(0.3)
    data = secret["data"]
    assert set(data) == {"token", "ca.crt", "namespace"}
    assert base64.b64decode(data["namespace"]) == b"default"
    assert base64.b64decode(data["ca.crt"]) == (server.data_dir / "tls" / "server-ca.crt").read_bytes()
    token = base64.b64decode(data["token"]).decode()
    out = _kubectl_as(_token_kubeconfig(server, token, tmp_path / "kc"), "auth", "whoami").stdout
    assert "system:serviceaccount:default:robot" in out
    server.kubectl("delete", "serviceaccount", "robot")  # its token Secret goes with it, and the token dies
    deadline = time.monotonic() + 30
    while server.kubectl("get", "secret", "robot-token", check=False).returncode == 0:
        assert time.monotonic() < deadline, "the token Secret of a deleted ServiceAccount was not deleted"
        time.sleep(0.3)
    assert _request(server, "/api/v1/namespaces", token=token)[0] == 401


def _kwire_token(server: ServerProcess, *args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    res = subprocess.run(
        [sys.executable, "-m", "kwire", "token", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=True,
    )
    pairs = (
        line.split(":", 1) for line in res.stdout.splitlines() if line.startswith(("server token:", "agent token:"))
    )
    return {k: v.strip() for k, v in pairs}


def test_kwire_token_prints_and_rotates_the_join_tokens(server: ServerProcess) -> None:
    ca_hash = hashlib.sha256((server.data_dir / "tls" / "server-ca.crt").read_bytes()).hexdigest()
    shown = _kwire_token(server)
    assert shown["server token"] == f"K10{ca_hash}::server:{server.token}"
    assert shown["agent token"] == f"K10{ca_hash}::node:{server.token}"  # no separate agent token yet
    # the server token opens the bootstrap endpoint only (404 here: no embedded etcd), never the API
    assert _request(server, BOOTSTRAP, token=server.token)[0] == 404
    assert _request(server, BOOTSTRAP, token="wrong")[0] == 401
    assert _request(server, BOOTSTRAP)[0] == 401
    refused = subprocess.run(
        [sys.executable, "-m", "kwire", "token", "rotate", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "only the agent token can be rotated" in refused.stderr
    agent = _kwire_token(server, "rotate", "--agent")["agent token"]
    assert agent.startswith(f"K10{ca_hash}::node:") and not agent.endswith(server.token)
    new = _kwire_token(server, "rotate", "--agent", env={"KWIRE_NEW_TOKEN": "agent-secret"})
    assert new["agent token"] == f"K10{ca_hash}::node:agent-secret"
    assert new["server token"] == shown["server token"]
