"""A kubelet API under test: real certificates (cluster CA, client CA, client certificates from kwire's own PKI
code), the real `KubeletAuth` and a small stand-in API server answering SubjectAccessReview and TokenReview, so
the kubelet's authentication and authorization are exercised over real TLS without a cluster."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kwire.agent.credentials import serving_context
from kwire.agent.kubelet.kubeletauth import KubeletAuth
from kwire.api import certs
from kwire.client import ApiClient, Config
from tests.integration.apiserver import free_port

Obj = dict[str, Any]


@dataclass
class Pki:
    dir: Path
    server_ca: Path
    serving_cert: Path
    serving_key: Path
    client_ca: certs.ClientCa

    def client(self, name: str, *, cn: str, orgs: tuple[str, ...] = ()) -> tuple[Path, Path]:
        crt, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        certs.ensure_client_cert(self.client_ca, cert_path=crt, key_path=key, common_name=cn, organizations=orgs)
        return crt, key

    def client_context(self, name: str | None = None, **kw: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.server_ca))
        if name is not None:
            ctx.load_cert_chain(*self.client(name, **kw))
        return ctx


def make_pki(tmp: Path) -> Pki:
    pki = certs.ensure_pki(tmp, sans_dns=[], sans_ip=["127.0.0.1"])
    return Pki(tmp, pki.ca_cert, pki.serving_cert, pki.serving_key, certs.ensure_client_ca(tmp))


@dataclass
class FakeApi:
    """Answers SubjectAccessReviews with `allow(spec)` (or 404 when `sar` is False) and TokenReviews from
    `tokens`; records what it was asked."""

    allow: Callable[[Obj], bool] = lambda _spec: False
    tokens: dict[str, Obj] = field(default_factory=dict)
    sar: bool = True
    reviews: list[Obj] = field(default_factory=list)
    token_reviews: list[str] = field(default_factory=list)

    async def _sar(self, request: web.Request) -> web.Response:
        if not self.sar:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        body = await request.json()
        self.reviews.append(body["spec"])
        return web.json_response({**body, "status": {"allowed": self.allow(body["spec"])}})

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        token = body["spec"]["token"]
        self.token_reviews.append(token)
        user = self.tokens.get(token)
        status = {"authenticated": True, "user": user} if user else {"authenticated": False}
        return web.json_response({**body, "status": status})

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[ApiClient]:
        app = web.Application()
        app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self._sar)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        client = ApiClient(Config(server=f"http://127.0.0.1:{port}"))
        try:
            yield client
        finally:
            await client.close()
            await runner.cleanup()


def kubelet_auth(client: ApiClient, *, node: str = "node1") -> KubeletAuth:
    return KubeletAuth(client, node=node)


def kubelet_tls(pki: Pki) -> ssl.SSLContext:
    return serving_context(cert=pki.serving_cert, key=pki.serving_key, client_ca=pki.client_ca.cert)
