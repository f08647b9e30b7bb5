"""Authentication (kwire/api/authn): client-certificate names, service-account JWTs as kube issues and refuses
them, TokenRequest's checks, and the join tokens that are no API credential."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kwire.api.authn import reviews, tokens
from kwire.api.authn.serviceaccount import (
    BoundObject,
    InvalidToken,
    TokenIssuer,
    TokenValidator,
    ensure_signing_key,
    issuer_for,
)
from kwire.api.errors import ApiError
from kwire.api.user import from_peercert as user_from_peercert

Obj = dict[str, Any]
ISSUER = issuer_for("cluster.local")
AUDIENCES = (ISSUER, "k3s")


def test_certificate_subject_maps_to_user_and_groups() -> None:
    cert = {
        "subject": (
            (("organizationName", "system:nodes"),),
            (("organizationName", "team-a"),),
            (("commonName", "system:node:node1"),),
        )
    }
    user = user_from_peercert(cert)
    assert user is not None
    assert user.name == "system:node:node1"
    assert user.groups == ("system:nodes", "team-a", "system:authenticated")
    assert user.node_name == "node1"
    assert user_from_peercert({"subject": ((("organizationName", "x"),),)}) is None  # no CN: no user
    assert user_from_peercert({}) is None and user_from_peercert(None) is None


class World:
    """The objects token validation looks up, by (plural, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], Obj] = {}

    def put(self, plural: str, namespace: str | None, name: str, uid: str, **extra: Any) -> None:
        self.objects[(plural, namespace, name)] = {"metadata": {"name": name, "uid": uid}, **extra}

    def lookup(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        return self.objects.get((plural, namespace, name))


@pytest.fixture(scope="module")
def key_pem(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("sa")
    pem = ensure_signing_key(d)
    assert ensure_signing_key(d) == pem  # kept across starts
    assert oct((d / "tls" / "service.key").stat().st_mode & 0o777) == "0o600"
    return pem


def _setup(key_pem: bytes) -> tuple[World, TokenIssuer, TokenValidator]:
    world = World()
    world.put("serviceaccounts", "prod", "app", "sa-uid")
    world.put("pods", "prod", "web-1", "pod-uid", spec={"serviceAccountName": "app", "nodeName": "node1"})
    world.put("nodes", None, "node1", "node-uid")
    issuer = TokenIssuer(key_pem, issuer=ISSUER, audiences=AUDIENCES)
    validator = TokenValidator(issuer.public_pem, issuer=ISSUER, audiences=AUDIENCES, lookup=world.lookup)
    return world, issuer, validator


def test_a_token_request_token_authenticates_as_its_service_account(key_pem: bytes) -> None:
    world, issuer, validator = _setup(key_pem)
    answer = reviews.token_request(
        {"spec": {"expirationSeconds": 600, "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-1"}}},
        namespace="prod",
        name="app",
        issuer=issuer,
        lookup=world.lookup,
    )
    token = answer["status"]["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "https://kubernetes.default.svc.cluster.local"
    assert claims["sub"] == "system:serviceaccount:prod:app"
    assert claims["aud"] == list(AUDIENCES)
    assert claims["exp"] - claims["iat"] == 600 and claims["nbf"] == claims["iat"]
    assert claims["kubernetes.io"]["pod"] == {"name": "web-1", "uid": "pod-uid"}
    assert claims["kubernetes.io"]["node"] == {"name": "node1", "uid": "node-uid"}
    assert claims["kubernetes.io"]["serviceaccount"] == {"name": "app", "uid": "sa-uid"}
    result = validator.authenticate(token)
    assert result.user.name == "system:serviceaccount:prod:app"
    assert result.user.groups == ("system:serviceaccounts", "system:serviceaccounts:prod", "system:authenticated")
    assert result.user.uid == "sa-uid"
    assert result.user.extra["authentication.kubernetes.io/pod-name"] == ("web-1",)
    assert result.user.extra["authentication.kubernetes.io/pod-uid"] == ("pod-uid",)
    assert answer["spec"]["boundObjectRef"]["uid"] == "pod-uid"


def test_forged_expired_unbound_and_misaddressed_tokens_are_refused(key_pem: bytes) -> None:
    world, issuer, validator = _setup(key_pem)
    now = time.time()
    bound = issuer.issue(
        namespace="prod", service_account=("app", "sa-uid"), bound=BoundObject("Pod", "web-1", "pod-uid")
    ).token
    validator.authenticate(bound)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged_key = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    forged = TokenIssuer(forged_key, issuer=ISSUER, audiences=AUDIENCES).issue(
        namespace="prod", service_account=("app", "sa-uid")
    )
    with pytest.raises(InvalidToken):
        validator.authenticate(forged.token)
    # a valid signature over edited claims is not a valid signature
    head, body, sig = bound.split(".")
    claims = jwt.decode(bound, options={"verify_signature": False})
    claims["sub"] = "system:serviceaccount:kube-system:admin"
    edited = base64.urlsafe_b64encode(jwt.api_jws.json.dumps(claims).encode()).decode().rstrip("=")
    with pytest.raises(InvalidToken):
        validator.authenticate(f"{head}.{edited}.{sig}")
    expired = issuer.issue(namespace="prod", service_account=("app", "sa-uid"), expiration_seconds=600, now=now - 700)
    with pytest.raises(InvalidToken, match="expired"):
        validator.authenticate(expired.token)
    elsewhere = issuer.issue(namespace="prod", service_account=("app", "sa-uid"), audiences=("vault",))
    with pytest.raises(InvalidToken, match="audiences"):
        validator.authenticate(elsewhere.token)
    assert validator.authenticate(elsewhere.token, audiences=("vault",)).audiences == ("vault",)
    # the pod is deleted, then one of the same name comes back: the token stays dead
    del world.objects[("pods", "prod", "web-1")]
    with pytest.raises(InvalidToken, match="not found"):
        validator.authenticate(bound)
    world.put("pods", "prod", "web-1", "new-pod-uid")
    with pytest.raises(InvalidToken, match="UID"):
        validator.authenticate(bound)
    # the ServiceAccount is recreated: every token of the old one is refused
    plain = issuer.issue(namespace="prod", service_account=("app", "sa-uid")).token
    validator.authenticate(plain)
    world.put("serviceaccounts", "prod", "app", "another-uid")
    with pytest.raises(InvalidToken):
        validator.authenticate(plain)
    for garbage in ("", "abc", "a.b.c"):
        with pytest.raises(InvalidToken):
            validator.authenticate(garbage)


def test_legacy_secret_tokens_authenticate_while_their_secret_holds_them(key_pem: bytes) -> None:
    world, issuer, validator = _setup(key_pem)
    token = issuer.issue_legacy(namespace="prod", service_account=("app", "sa-uid"), secret="app-token")
    world.put("secrets", "prod", "app-token", "secret-uid", data={"token": base64.b64encode(token.encode()).decode()})
    assert validator.authenticate(token).user.name == "system:serviceaccount:prod:app"
    world.put("secrets", "prod", "app-token", "secret-uid", data={"token": base64.b64encode(b"other").decode()})
    with pytest.raises(InvalidToken):
        validator.authenticate(token)


def test_token_request_is_checked_as_kube_apiserver_checks_it(key_pem: bytes) -> None:
    world, issuer, _ = _setup(key_pem)
    world.put("serviceaccounts", "prod", "other", "other-uid")

    def request(spec: Obj, name: str = "app") -> Obj:
        return reviews.token_request({"spec": spec}, namespace="prod", name=name, issuer=issuer, lookup=world.lookup)

    with pytest.raises(ApiError) as err:
        request({"expirationSeconds": 599})
    assert err.value.code == 422
    assert err.value.message == (
        'TokenRequest.authentication.k8s.io "app" is invalid: spec.expirationSeconds: Invalid value: 599: '
        "may not specify a duration less than 10 minutes"
    )
    assert request({})["spec"]["expirationSeconds"] == 3600
    with pytest.raises(ApiError) as err:
        request({}, name="missing")
    assert (err.value.code, err.value.message) == (404, 'serviceaccounts "missing" not found')
    with pytest.raises(ApiError) as err:
        request({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-1"}}, name="other")
    assert err.value.code == 400 and "different serviceaccount name" in err.value.message
    with pytest.raises(ApiError) as err:
        request({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-1", "uid": "stale"}})
    assert err.value.code == 409
    with pytest.raises(ApiError) as err:
        request({"boundObjectRef": {"kind": "ConfigMap", "apiVersion": "v1", "name": "x"}})
    assert err.value.code == 400 and "cannot bind token to object of type" in err.value.message


def test_token_review_answers_authenticated_user_and_audiences(key_pem: bytes) -> None:
    _, issuer, validator = _setup(key_pem)
    token = issuer.issue(namespace="prod", service_account=("app", "sa-uid")).token
    ok = reviews.token_review({"spec": {"token": token}}, validator=validator)["status"]
    assert ok["authenticated"] is True
    assert ok["user"]["username"] == "system:serviceaccount:prod:app"
    assert ok["audiences"] == list(AUDIENCES)
    bad = reviews.token_review({"spec": {"token": token + "x"}}, validator=validator)["status"]
    assert "authenticated" not in bad and bad["error"].startswith("[invalid bearer token")
    with pytest.raises(ApiError):
        reviews.token_review({"spec": {}}, validator=validator)


def test_join_tokens_are_checked_and_rotated(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("server-secret\n")
    join = tokens.JoinTokens(tmp_path)
    assert join.server_may_join("server-secret") and join.agent_may_join("server-secret")  # agent token unset
    assert tokens.ensure_agent_token(tmp_path, "K10abc::node:agent-secret") == "agent-secret"
    assert join.agent_may_join("agent-secret")
    assert join.agent_may_join(tokens.secure_form("agent-secret", ca_pem=b"CA", user="node"))
    assert not join.server_may_join("agent-secret")
    assert not join.agent_may_join("") and not join.agent_may_join("wrong")
    time.sleep(0.01)
    new = tokens.rotate(tmp_path, agent=True)
    assert new != "agent-secret" and join.agent_may_join(new) and not join.agent_may_join("agent-secret")
    assert tokens.ca_hash(tokens.secure_form("s", ca_pem=b"CA")) == hashlib.sha256(b"CA").hexdigest()
    assert tokens.ca_hash("plain") is None and tokens.plain("K10ab::server:s") == "s"


def test_kubeconfig_client_certificates_in_data_and_file_forms(tmp_path: Path) -> None:
    from kwire.client.kubeconfig import load_kubeconfig, write_kubeconfig

    write_kubeconfig(
        tmp_path / "data.yaml", server="https://s:6443", ca_pem=b"CA", client_cert=b"CERT", client_key=b"KEY"
    )
    assert oct((tmp_path / "data.yaml").stat().st_mode & 0o777) == "0o600"
    cfg = load_kubeconfig(tmp_path / "data.yaml")
    assert (cfg.client_cert, cfg.client_key, cfg.token) == (b"CERT", b"KEY", None)
    (tmp_path / "c.pem").write_bytes(b"FILE-CERT")
    (tmp_path / "k.pem").write_bytes(b"FILE-KEY")
    (tmp_path / "files.yaml").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://s:6443'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {client-certificate: c.pem, client-key: k.pem}}]\n"
    )
    cfg = load_kubeconfig(tmp_path / "files.yaml")  # relative to the kubeconfig, as kubectl resolves them
    assert (cfg.client_cert, cfg.client_key) == (b"FILE-CERT", b"FILE-KEY")


async def test_an_in_cluster_client_picks_up_its_rotated_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet rewrites a pod's token before it expires; the pod's client sends the new one (client-go's
    cachingTokenSource re-reads the file every minute)."""
    from aiohttp import web

    from kwire.client import client as client_mod
    from kwire.client.kubeconfig import in_cluster_config

    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"kind": "NamespaceList", "items": [], "metadata": {}})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("first\n")
    cfg = in_cluster_config({"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}, sa)
    cfg = client_mod.Config(server=f"http://127.0.0.1:{port}", token=cfg.token, token_file=cfg.token_file)
    try:
        async with client_mod.ApiClient(cfg) as c:
            await c.request("GET", "/api/v1/namespaces")
            (sa / "token").write_text("second\n")
            await c.request("GET", "/api/v1/namespaces")  # within the period: the cached token
            monkeypatch.setattr(client_mod, "TOKEN_FILE_PERIOD", 0.0)
            await c.request("GET", "/api/v1/namespaces")
    finally:
        await runner.cleanup()
    assert seen == ["Bearer first", "Bearer first", "Bearer second"]
