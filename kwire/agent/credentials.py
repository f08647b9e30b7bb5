"""The agent's own credentials: what it exchanges the agent token for at join, and keeps renewed.

As K3s's agent (pkg/agent/config: getNodeNamedCrt, getServingCert, getKubeProxyCrt, getK3sControllerCrt), the
agent asks the server's `/v1-k3s/` endpoints (kwire/api/nodecerts.py) for one client certificate per component —
the kubelet's `system:node:<name>` in `system:nodes`, kube-proxy's `system:kube-proxy`, the agent controllers'
`system:k3s-controller` — and the kubelet's serving certificate for :10250, each for a key generated here, so
private keys never leave the node (it POSTs a PKCS#10 request; K3s's server sends generated keys instead). The
files live under `<data-dir>/tls/` (directory 0700, every file 0600) with K3s's names, alongside the client CA
(to verify callers of :10250), the cluster CA and the node password (K3s's /etc/rancher/node/password: a random
per-node secret the server stores hashed, so another machine cannot take this node's name). The token is sent
once, at join, when a certificate is missing; it is never written here.

Renewal: a certificate is requested again when less than a third of its validity remains, or when the server's
CA changed; a running agent renews with its current kubelet certificate (mTLS, no token), and `CertReloader`
loads renewed files into live TLS contexts so open connections and watches are not disturbed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kwire.base.files import atomic_write
from kwire.client import Config

log = logging.getLogger(__name__)

KUBELET_CLIENT = "client-kubelet"
KUBELET_SERVING = "serving-kubelet"
KUBE_PROXY_CLIENT = "client-kube-proxy"
CONTROLLER_CLIENT = "client-k3s-controller"
COMPONENTS = (KUBELET_CLIENT, KUBELET_SERVING, KUBE_PROXY_CLIENT, CONTROLLER_CLIENT)
PASSWORD_FILE = "node-password"
RENEW_CHECK_SECONDS = 3600.0


class CredentialsError(RuntimeError):
    pass


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A PKCS#10 request proving possession of `key`; the server sets the real subject."""
    req = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    return req.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def needs_renewal(cert_pem: bytes, *, ca_pem: bytes, now: dt.datetime | None = None) -> bool:
    """True when the certificate is not from this CA or less than a third of its validity is left."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        return True
    if cert.issuer != ca.subject:
        return True
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return True
    now = now or dt.datetime.now(dt.UTC)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime / 3


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
        return self.dir / f"{component}.crt"

    def key_path(self, component: str) -> Path:
        return self.dir / f"{component}.key"

    @property
    def client_ca_path(self) -> Path:
        return self.dir / "client-ca.crt"

    @property
    def server_ca_path(self) -> Path:
        return self.dir / "server-ca.crt"

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
            cert=self.cert_path(KUBELET_SERVING), key=self.key_path(KUBELET_SERVING), client_ca=self.client_ca_path
        )

    def stale(self) -> list[str]:
        """The components whose certificate is missing, from another CA, due for renewal, or no longer naming
        this node (a new node name, or a node IP the serving certificate lacks)."""
        out = []
        for comp in COMPONENTS:
            crt, key = self.cert_path(comp), self.key_path(comp)
            ca = self.server_ca if comp == KUBELET_SERVING else self._client_ca_or_empty()
            if not (crt.exists() and key.exists()) or not ca:
                out.append(comp)
                continue
            pem = crt.read_bytes()
            if needs_renewal(pem, ca_pem=ca) or not self._names_this_node(comp, pem):
                out.append(comp)
        return out

    def _names_this_node(self, component: str, pem: bytes) -> bool:
        cert = x509.load_pem_x509_certificate(pem)
        if component == KUBELET_CLIENT:
            cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            return bool(cns) and cns[0].value == f"system:node:{self.node_name}"
        if component == KUBELET_SERVING:
            try:
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                return False
            ips = {str(i) for i in sans.get_values_for_type(x509.IPAddress)}
            return self.node_name in sans.get_values_for_type(x509.DNSName) and set(self.node_ips) <= ips
        return True

    def _client_ca_or_empty(self) -> bytes:
        return self.client_ca_path.read_bytes() if self.client_ca_path.exists() else b""

    def _session(self, token: str | None) -> tuple[aiohttp.ClientSession, dict[str, str]]:
        ctx = ssl.create_default_context(cadata=self.server_ca.decode())
        ctx.check_hostname = False  # the URL may name any server address; the pinned CA is what is checked
        headers = {
            "K3s-Node-Name": self.node_name,
            "K3s-Node-Password": self.password(),
            "K3s-Node-IP": ",".join(self.node_ips),
        }
        if token:
            headers["Authorization"] = "Basic " + base64.b64encode(f"node:{token}".encode()).decode()
        else:  # renewal: the node's current kubelet certificate vouches for it
            ctx.load_cert_chain(self.cert_path(KUBELET_CLIENT), self.key_path(KUBELET_CLIENT))
        timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), timeout=timeout), headers

    async def _call(self, session: aiohttp.ClientSession, method: str, name: str, **kw: object) -> bytes:
        errors = []
        for server in dict.fromkeys([*self.servers, self.server]):
            url = f"{server.rstrip('/')}/v1-k3s/{name}"
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
        if token is None and not self.cert_path(KUBELET_CLIENT).exists():
            raise CredentialsError("no kubelet certificate to renew with, and no token")
        # The client CA is fetched every time (one small request): certificates from a CA the server no longer
        # trusts are then seen as stale and replaced.
        session, headers = self._session(token)
        async with session:
            client_ca = await self._call(session, "GET", "client-ca.crt", headers=headers)
            atomic_write(self.client_ca_path, client_ca, mode=0o600)
            stale = self.stale()
            for comp in stale:
                key = ec.generate_private_key(ec.SECP256R1())
                pem = await self._call(session, "POST", f"{comp}.crt", headers=headers, data=_csr(key, comp))
                # nothing reads the pair meanwhile: live contexts reload only once `ensure` has returned
                atomic_write(self.key_path(comp), _key_pem(key), mode=0o600)
                atomic_write(self.cert_path(comp), pem, mode=0o600)
                log.info("agent: %s issued for node %s", comp, self.node_name)
        return stale

    async def cluster_settings(self) -> dict[str, str]:
        """The cluster settings from the server (`/v1-k3s/config`), asked with the node's kubelet certificate."""
        session, headers = self._session(None)
        async with session:
            body = await self._call(session, "GET", "config", headers=headers)
        data = json.loads(body)
        if not isinstance(data, dict):
            raise CredentialsError("the server's /v1-k3s/config is not a JSON object")
        return {str(k): str(v) for k, v in data.items()}


class CertReloader:
    """Live TLS contexts to reload when their certificate files are renewed (SSLContext.load_cert_chain applies
    to later handshakes; open connections keep theirs)."""

    def __init__(self, creds: NodeCredentials) -> None:
        self.creds = creds
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

    async def run(self, *, interval: float = RENEW_CHECK_SECONDS) -> None:
        """Renew what is due, every `interval` seconds; a failure is retried after 5 s, doubling up to `interval`."""
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                renewed = await self.creds.ensure(token=None)
                if renewed:
                    self.reload(renewed)
                delay = interval
            except (CredentialsError, OSError, aiohttp.ClientError, TimeoutError) as exc:
                delay = 5.0 if delay >= interval else min(interval, delay * 2)
                log.warning("agent: certificate renewal failed (retrying in %.0f s): %s", delay, exc)
