"""The kubelet API's authentication and authorization (kubeletauth.py) over real TLS: client certificates from the
client CA, bearer tokens by TokenReview, anonymous refused, kubelet's path -> SubjectAccessReview mapping, the
decision cache, and kubelet's 401/403 answers. The API's review endpoints are a stand-in (kubelet_helpers.FakeApi)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kwire.agent.kubelet.kubeletauth import Attributes, attributes_for
from kwire.agent.kubelet.logs import LogServer
from kwire.api import certs
from tests.integration.apiserver import free_port
from tests.unit.kubelet_helpers import FakeApi, Pki, kubelet_auth, kubelet_tls, make_pki


@pytest.mark.parametrize(
    ("method", "path", "verb", "sub"),
    [
        ("GET", "/containerLogs/default/web/c", "get", "proxy"),
        ("POST", "/exec/default/web/c", "create", "proxy"),
        ("GET", "/exec/default/web/c", "get", "proxy"),  # kubectl's WebSocket exec is a GET
        ("GET", "/attach/default/web/c", "get", "proxy"),
        ("POST", "/portForward/default/web", "create", "proxy"),
        ("GET", "/stats/summary", "get", "stats"),
        ("GET", "/stats", "get", "stats"),
        ("GET", "/metrics", "get", "metrics"),
        ("GET", "/metrics/cadvisor", "get", "metrics"),
        ("GET", "/metricsx", "get", "proxy"),  # not under /metrics
        ("GET", "/logs/syslog", "get", "log"),
        ("GET", "/spec/", "get", "spec"),
        ("POST", "/checkpoint/default/web/c", "create", "checkpoint"),
        ("PUT", "/pods", "update", "proxy"),
        ("PATCH", "/x", "patch", "proxy"),
        ("DELETE", "/x", "delete", "proxy"),
        ("HEAD", "/healthz", "get", "proxy"),
    ],
)
def test_kubelet_paths_map_to_node_subresources(method: str, path: str, verb: str, sub: str) -> None:
    assert attributes_for(method, path, node="node1") == Attributes(verb=verb, subresource=sub, node="node1")


def test_the_review_names_the_user_and_the_node() -> None:
    from kwire.api.user import authenticated

    user = authenticated("jane", ("devs",), uid="u1")
    review = attributes_for("GET", "/stats/summary", node="node2").review(user)
    assert review["kind"] == "SubjectAccessReview"
    assert review["spec"] == {
        "user": "jane",
        "groups": ["devs", "system:authenticated"],
        "uid": "u1",
        "resourceAttributes": {
            "verb": "get",
            "group": "",
            "version": "v1",
            "resource": "nodes",
            "subresource": "stats",
            "name": "node2",
        },
    }


@contextlib.asynccontextmanager
async def _kubelet(tmp_path: Path, api: FakeApi) -> AsyncIterator[tuple[str, Pki]]:
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "default_web_c.log").write_bytes(b"2024-01-02T03:04:05Z stdout F hello from web\n")
    port = free_port()
    async with api.serve() as client:
        srv = LogServer(
            logs_dir=tmp_path,
            auth=kubelet_auth(client, node="node1"),
            ssl_context=kubelet_tls(pki),
            host="127.0.0.1",
            port=port,
        )
        await srv.start()
        try:
            yield f"https://127.0.0.1:{port}", pki
        finally:
            await srv.close()


async def _get(url: str, ctx: ssl.SSLContext, **kw: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s, s.get(url, **kw) as r:
        return r.status, await r.text()


def _allow_masters(spec: dict[str, Any]) -> bool:
    return "system:masters" in spec["groups"]


async def test_anonymous_gets_401_on_every_path(tmp_path: Path) -> None:
    api = FakeApi(allow=lambda _s: True)
    async with _kubelet(tmp_path, api) as (base, pki):
        for path in ("/containerLogs/default/web/c", "/exec/default/web/c", "/stats/summary", "/no/such/path"):
            assert await _get(base + path, pki.client_context()) == (401, "Unauthorized")
    assert api.reviews == []  # nothing is authorized for nobody


async def test_a_certificate_from_another_ca_fails_the_handshake(tmp_path: Path) -> None:
    other = certs.ensure_client_ca(tmp_path / "other")
    crt, key = tmp_path / "o.crt", tmp_path / "o.key"
    certs.ensure_client_cert(
        other, cert_path=crt, key_path=key, common_name="system:apiserver", organizations=("system:masters",)
    )
    async with _kubelet(tmp_path, FakeApi(allow=_allow_masters)) as (base, pki):
        ctx = pki.client_context()
        ctx.load_cert_chain(crt, key)
        with pytest.raises(aiohttp.ClientError):  # the kubelet rejects the certificate: no HTTP answer at all
            await _get(base + "/containerLogs/default/web/c", ctx)


async def test_the_api_servers_certificate_reads_logs_and_decisions_are_cached(tmp_path: Path) -> None:
    api = FakeApi(allow=_allow_masters)
    async with _kubelet(tmp_path, api) as (base, pki):
        ctx = pki.client_context("apiserver", cn="system:apiserver", orgs=("system:masters",))
        for _ in range(3):
            assert await _get(base + "/containerLogs/default/web/c", ctx) == (200, "hello from web\n")
    assert len(api.reviews) == 1  # allowed decisions are cached (kubelet's 5 minutes)
    assert api.reviews[0]["user"] == "system:apiserver"
    assert api.reviews[0]["groups"] == ["system:masters", "system:authenticated"]
    assert api.reviews[0]["resourceAttributes"]["subresource"] == "proxy"
    assert api.reviews[0]["resourceAttributes"]["name"] == "node1"


async def test_a_node_certificate_without_the_right_gets_kubelets_403(tmp_path: Path) -> None:
    api = FakeApi(allow=_allow_masters)
    async with _kubelet(tmp_path, api) as (base, pki):
        ctx = pki.client_context("node2", cn="system:node:node2", orgs=("system:nodes",))
        for _ in range(2):
            status, text = await _get(base + "/containerLogs/default/web/c", ctx)
            assert status == 403
            assert text == "Forbidden (user=system:node:node2, verb=get, resource=nodes, subresource(s)=[proxy])"
        status, text = await _get(base + "/stats/summary", ctx)
        assert status == 403 and "subresource(s)=[stats]" in text
    assert len(api.reviews) == 2  # the denial is cached too (30 s); another subresource is another decision


async def test_bearer_tokens_are_reviewed_with_the_api(tmp_path: Path) -> None:
    api = FakeApi(
        allow=lambda spec: (
            spec["user"] == "system:serviceaccount:kube-system:metrics-server"
            and spec["resourceAttributes"]["subresource"] == "stats"
        ),
        tokens={"good": {"username": "system:serviceaccount:kube-system:metrics-server", "groups": []}},
    )
    async with _kubelet(tmp_path, api) as (base, pki):
        ctx = pki.client_context()
        ok = {"Authorization": "Bearer good"}
        assert (await _get(base + "/stats/summary", ctx, headers=ok))[0] == 404  # authorized; kwire serves no stats
        assert (await _get(base + "/containerLogs/default/web/c", ctx, headers=ok))[0] == 403
        bad = {"Authorization": "Bearer forged"}
        assert await _get(base + "/stats/summary", ctx, headers=bad) == (401, "Unauthorized")
        assert await _get(base + "/stats/summary", ctx, headers=bad) == (401, "Unauthorized")
    assert api.token_reviews == ["good", "forged"]  # both answers cached


async def test_without_an_authorization_api_only_system_masters_is_let_in(tmp_path: Path) -> None:
    api = FakeApi(sar=False)
    async with _kubelet(tmp_path, api) as (base, pki):
        masters = pki.client_context("apiserver", cn="system:apiserver", orgs=("system:masters",))
        node = pki.client_context("node1", cn="system:node:node1", orgs=("system:nodes",))
        assert (await _get(base + "/containerLogs/default/web/c", masters))[0] == 200
        assert (await _get(base + "/containerLogs/default/web/c", node))[0] == 403
