"""The agent's own credentials: what it exchanges the agent token for at join, and keeps renewed.

As K3s's agent (pkg/agent/config: getNodeNamedCrt, getServingCert, getKubeProxyCrt, getK3sControllerCrt), the
agent asks the server's `/v1-k3s/` endpoints (kwire/api/nodecerts.py) for one client certificate per component —
the kubelet's `system:node:<name>` in `system:nodes`, kube-proxy's `system:kube-proxy`, the agent controllers'
`system:k3s-controller` — and the kubelet's serving certificate for :10250, each for a key generated on the node
(certwork.py, in a short-lived child process, so the agent itself never imports cryptography), so private keys
never leave the node (it POSTs a PKCS#10 request; K3s's server sends generated keys instead). The
files live under `<data-dir>/tls/` (directory 0700, every file 0600) with K3s's names, alongside the client CA
(to verify callers of :10250), the cluster CA and the node password (K3s's /etc/rancher/node/password: a random
per-node secret the server stores hashed, so another machine cannot take this node's name). The token is sent
once, at join, when a certificate is missing; it is never written here.

Renewal: a certificate is requested again when less than a third of its validity remains, or when the server's
CA changed; a running agent renews with its current kubelet certificate (mTLS, no token), and `CertReloader`
loads renewed files into live TLS contexts so open connections and watches are not disturbed. The check runs every
hour; one that fails is retried after a `Backoff` of 5 s doubling to the hour, reset by the next good check.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kwire.base import k3snode
from kwire.base.backoff import Backoff
from kwire.base.files import atomic_write
from kwire.client import Config

log = logging.getLogger(__name__)

PASSWORD_FILE = "node-password"
RENEW_CHECK_SECONDS = 3600.0
RENEW_RETRY_SECONDS = 5.0  # the first wait after a failed renewal check, doubling to RENEW_CHECK_SECONDS


class CredentialsError(RuntimeError):
    pass


class _CertWork:
    """certwork.check in a child process (`python -m kwire.agent.certwork`), so that the agent never imports
    cryptography (~10 MB of RSS, for work done at start and once an hour; see certwork.py). The child is started
    first and asked later (`answer`): it imports cryptography while the agent fetches the client CA."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> _CertWork:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kwire.agent.certwork",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(proc)

    async def answer(self, request: dict[str, object]) -> dict[str, Any]:
        out, err = await self.proc.communicate(json.dumps(request).encode())
        if self.proc.returncode != 0:
            raise CredentialsError(f"checking the node's certificates failed: {err.decode(errors='replace')[-500:]}")
        answer: dict[str, Any] = json.loads(out)
        return answer

    async def cancel(self) -> None:
        """End a child that will not be asked (the client CA could not be fetched)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


def serving_context(*, cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """:10250's TLS (kubelet's --tls-cert-file and --client-ca-file): the serving certificate; a client
    certificate from the client CA is asked for (optional: without one the request goes on as anonymous or with
    a bearer token, and the kubelet's authenticator decides); one from another CA fails the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=str(client_ca))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


@dataclass
class NodeCredentials:
    """The certificates of one node under `<data-dir>/tls/`, and how to get or renew them from `server`."""

    data_dir: Path
    server: str
    node_name: str
    node_ips: tuple[str, ...]
    server_ca: bytes
    servers: list[str] = field(default_factory=list)  # fail-over list, learned as the agent runs

    @property
    def dir(self) -> Path:
        return self.data_dir / "tls"

    def cert_path(self, component: str) -> Path:
        return self.dir / k3snode.cert_file(component)

    def key_path(self, component: str) -> Path:
        return self.dir / f"{component}.key"

    @property
    def client_ca_path(self) -> Path:
        return self.dir / k3snode.CLIENT_CA

    @property
    def server_ca_path(self) -> Path:
        return self.dir / k3snode.SERVER_CA

    def password(self) -> str:
        """The node password: generated once, 0600, kept for every later join and renewal."""
        path = self.dir / PASSWORD_FILE
        if path.exists():
            stored = path.read_text().strip()
            if stored:
                return stored
        new = secrets.token_hex(16)
        atomic_write(path, new + "\n", mode=0o600)
        return new

    def client_config(self, component: str) -> Config:
        """How `component` (kubelet, kube-proxy, k3s-controller) reaches the API: its own certificate."""
        return Config(
            server=self.server,
            ca_data=self.server_ca,
            client_cert=self.cert_path(component).read_bytes(),
            client_key=self.key_path(component).read_bytes(),
        )

    def kubelet_serving_context(self) -> ssl.SSLContext:
        return serving_context(
            cert=self.cert_path(k3snode.KUBELET_SERVING),
            key=self.key_path(k3snode.KUBELET_SERVING),
            client_ca=self.client_ca_path,
        )

    def _check_request(self) -> dict[str, object]:
        """What certwork.check needs: each component's file, the CA it must come from and what it must name."""
        client_ca = self._client_ca_or_empty().decode()
        names = {k3snode.KUBELET_CLIENT: "node-client", k3snode.KUBELET_SERVING: "node-serving"}
        return {
            "tls_dir": str(self.dir),
            "node_name": self.node_name,
            "node_ips": list(self.node_ips),
            "components": {
                comp: {
                    "ca": self.server_ca.decode() if comp == k3snode.KUBELET_SERVING else client_ca,
                    "names": names.get(comp, ""),
                }
                for comp in k3snode.COMPONENTS
            },
        }

    def _client_ca_or_empty(self) -> bytes:
        return self.client_ca_path.read_bytes() if self.client_ca_path.exists() else b""

    def _session(self, token: str | None) -> tuple[aiohttp.ClientSession, dict[str, str]]:
        ctx = ssl.create_default_context(cadata=self.server_ca.decode())
        ctx.check_hostname = False  # the URL may name any server address; the pinned CA is what is checked
        headers = {
            k3snode.NAME_HEADER: self.node_name,
            k3snode.PASSWORD_HEADER: self.password(),
            k3snode.IP_HEADER: ",".join(self.node_ips),
        }
        if token:
            headers["Authorization"] = "Basic " + base64.b64encode(f"node:{token}".encode()).decode()
        else:  # renewal: the node's current kubelet certificate vouches for it
            ctx.load_cert_chain(self.cert_path(k3snode.KUBELET_CLIENT), self.key_path(k3snode.KUBELET_CLIENT))
        timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), timeout=timeout), headers

    async def _call(self, session: aiohttp.ClientSession, method: str, name: str, **kw: object) -> bytes:
        errors = []
        for server in dict.fromkeys([*self.servers, self.server]):
            url = f"{server.rstrip('/')}{k3snode.PREFIX}{name}"
            try:
                async with session.request(method, url, **kw) as r:  # type: ignore[arg-type]
                    body = await r.read()
                    if r.status == 200:
                        return body
                    detail = body[:300].decode(errors="replace")
                    raise CredentialsError(f"{method} {url}: {r.status} {detail}")
            except aiohttp.ClientConnectionError as exc:
                errors.append(f"{url}: {exc}")
        raise CredentialsError("cannot reach a server for node credentials: " + "; ".join(errors))

    async def ensure(self, *, token: str | None) -> list[str]:
        """Fetch the client CA and every stale certificate (with the agent token at join, else the node's own
        certificate); returns what was (re)issued, nothing when every certificate is current."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        atomic_write(self.server_ca_path, self.server_ca, mode=0o600)
        if token is None and not self.cert_path(k3snode.KUBELET_CLIENT).exists():
            raise CredentialsError("no kubelet certificate to renew with, and no token")
        # The client CA is fetched every time (one small request): certificates from a CA the server no longer
        # trusts are then seen as stale and replaced.
        session, headers = self._session(token)
        child = await _CertWork.start()
        async with session:
            try:
                client_ca = await self._call(session, "GET", k3snode.CLIENT_CA, headers=headers)
            except BaseException:
                await child.cancel()
                raise
            atomic_write(self.client_ca_path, client_ca, mode=0o600)
            # The components whose certificate is missing, from another CA, due for renewal, or no longer naming
            # this node (a new node name, or a node IP the serving certificate lacks), with a new key for each.
            work = await child.answer(self._check_request())
            stale: list[str] = work["stale"]
            for comp in stale:
                key, csr = work["keys"][comp]["key"].encode(), work["keys"][comp]["csr"].encode()
                pem = await self._call(session, "POST", k3snode.cert_file(comp), headers=headers, data=csr)
                # nothing reads the pair meanwhile: live contexts reload only once `ensure` has returned
                atomic_write(self.key_path(comp), key, mode=0o600)
                atomic_write(self.cert_path(comp), pem, mode=0o600)
                log.info("agent: %s issued for node %s", comp, self.node_name)
        return stale

    async def cluster_settings(self) -> dict[str, str]:
        """The cluster settings from the server (`/v1-k3s/config`), asked with the node's kubelet certificate."""
        session, headers = self._session(None)
        async with session:
            body = await self._call(session, "GET", k3snode.CONFIG, headers=headers)
        data = json.loads(body)
        if not isinstance(data, dict):
            raise CredentialsError("the server's /v1-k3s/config is not a JSON object")
        return {str(k): str(v) for k, v in data.items()}


class CertReloader:
    """Live TLS contexts to reload when their certificate files are renewed (SSLContext.load_cert_chain applies
    to later handshakes; open connections keep theirs)."""

    def __init__(self, creds: NodeCredentials, *, interval: float = RENEW_CHECK_SECONDS) -> None:
        self.creds = creds
        self.interval = interval  # how often renewal is checked
        self.backoff = Backoff(min(RENEW_RETRY_SECONDS, interval), interval)  # after a failed check
        self._contexts: list[tuple[str, ssl.SSLContext]] = []
        self._listeners: list[Callable[[str], None]] = []

    def track(self, component: str, ctx: ssl.SSLContext) -> None:
        self._contexts.append((component, ctx))

    def on_renew(self, fn: Callable[[str], None]) -> None:
        self._listeners.append(fn)

    def reload(self, renewed: list[str]) -> None:
        for comp, ctx in self._contexts:
            if comp in renewed:
                ctx.load_cert_chain(self.creds.cert_path(comp), self.creds.key_path(comp))
        for comp in renewed:
            for fn in self._listeners:
                fn(comp)

    async def run(self) -> None:
        """Renew what is due, every `interval` seconds; a failure is retried with back-off, never ends the loop."""
        await self.backoff.pause(self.interval)
        while True:
            try:
                renewed = await self.creds.ensure(token=None)
                if renewed:
                    self.reload(renewed)
            except Exception as exc:  # noqa: BLE001 - retried, never the end of the loop (unexpected ones traced)
                expected = isinstance(exc, (CredentialsError, OSError, aiohttp.ClientError, TimeoutError))
                log.warning(
                    "agent: certificate renewal failed (retrying with back-off): %s", exc, exc_info=not expected
                )
                await self.backoff.sleep()
                continue
            self.backoff.reset()
            await self.backoff.pause(self.interval)
