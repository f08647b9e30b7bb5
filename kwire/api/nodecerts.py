"""Node credentials at join: the certificates an agent exchanges its (agent) token for, as K3s's server hands
them out on `/v1-k3s/client-kubelet.crt`, `/v1-k3s/serving-kubelet.crt`, `/v1-k3s/client-kube-proxy.crt` and
`/v1-k3s/client-k3s-controller.crt`, plus the CAs an agent needs (`/v1-k3s/client-ca.crt`, `/v1-k3s/server-ca.crt`)
and the cluster settings agents run with (`/v1-k3s/config`, K3s's agent config endpoint: the data of
`kube-system/kwire-config`, so reading them needs no RBAC grant on ConfigMaps).

Mirrors K3s's node-cert handlers (pkg/server/router.go) with one difference the brief asks for: the agent POSTs
a PKCS#10 request for a key it generated itself, so private keys never leave the node (K3s's server generates the
key and sends it back). The server decides every subject: the kubelet's client certificate `system:node:<name>` in
`system:nodes`, kube-proxy's `system:kube-proxy`, the agent controllers' `system:k3s-controller` (from the client
CA), and the kubelet's serving certificate for :10250 (SANs: node name and node IPs, from the cluster CA).

A caller proves itself either with the agent token (HTTP basic auth, user `node`, as K3s's agents send it) or,
to renew, with a client certificate of that same node (`system:node:<name>`). Either way the node password is
checked: K3s's per-node secret, stored hashed at first join as the Secret `kube-system/<node>.node-password.k3s`,
so that another machine holding the token cannot take over an existing node's name (`K3s-Node-Password` header;
a mismatch is 403, as K3s answers).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from kwire.api import certs
from kwire.api.errors import ApiError, bad_request, unauthorized
from kwire.api.registry import by_path
from kwire.api.resources import Resources
from kwire.api.user import NODES, UserInfo
from kwire.base import k3snode
from kwire.config import CLUSTER_CONFIG

PASSWORD_SUFFIX = ".node-password.k3s"
MAX_CSR_BYTES = 16 * 1024

CERT_NAMES = tuple(k3snode.cert_file(c) for c in k3snode.COMPONENTS)
KUBE_PROXY_USER = "system:kube-proxy"
CONTROLLER_USER = "system:k3s-controller"

DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

# scrypt parameters of the stored node-password hash (K3s hashes it with scrypt too).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`$scrypt$N$r$p$<salt b64>$<hash b64>`: what the node-password Secret stores, never the password."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"$scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(stored: str, password: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 7 or parts[1] != "scrypt":
        return False
    try:
        n, r, p = int(parts[2]), int(parts[3]), int(parts[4])
        salt, want = base64.b64decode(parts[5]), base64.b64decode(parts[6])
        got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)


class VerifiedPasswords:
    """Which node passwords this server has already checked against which stored hash, so that a node's later
    requests (a join fetches several certificates and files, each with the password) pay scrypt once, not each time.

    Only a keyed HMAC of each password is held, under a key made at start and never stored; one entry per node
    (a changed stored hash or a different password is checked by scrypt again), at most `limit` nodes.
    """

    def __init__(self, *, limit: int = 10_000) -> None:
        self._key = os.urandom(32)
        self._limit = limit
        self._seen: dict[str, tuple[str, bytes]] = {}

    def _mac(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode(), hashlib.sha256).digest()

    def known(self, node: str, stored: str, password: str) -> bool:
        entry = self._seen.get(node)
        return entry is not None and entry[0] == stored and hmac.compare_digest(entry[1], self._mac(password))

    def remember(self, node: str, stored: str, password: str) -> None:
        self._seen.pop(node, None)
        while len(self._seen) >= self._limit:
            del self._seen[next(iter(self._seen))]  # the oldest entry
        self._seen[node] = (stored, self._mac(password))


def password_secret_name(node: str) -> str:
    return f"{node}{PASSWORD_SUFFIX}".lower()


def subject_for(cert_name: str, node: str) -> tuple[str, tuple[str, ...]]:
    """(CN, O) the server puts on each of a node's certificates."""
    if cert_name == k3snode.cert_file(k3snode.KUBELET_CLIENT):
        return f"system:node:{node}", (NODES,)
    if cert_name == k3snode.cert_file(k3snode.KUBE_PROXY_CLIENT):
        return KUBE_PROXY_USER, ()
    if cert_name == k3snode.cert_file(k3snode.CONTROLLER_CLIENT):
        return CONTROLLER_USER, ()
    return node, ()  # serving-kubelet.crt: K3s names it after the node


def _valid_node_name(name: str) -> bool:
    """A DNS-1123 subdomain, as a Node's name must be."""
    return len(name) <= 253 and DNS1123_SUBDOMAIN.fullmatch(name) is not None


@dataclass(frozen=True)
class NodeCertAuthority:
    """What the endpoints sign with: the client CA (client certificates) and the cluster CA (serving)."""

    client_ca_cert: Path
    client_ca_key: Path
    server_ca_cert: Path
    server_ca_key: Path


class NodeCerts:
    """The `/v1-k3s/` endpoints. `token_ok(token)` is the agent-token check (the server's token set today;
    helper sa's `--agent-token` check plugs in here)."""

    def __init__(self, resources: Resources, *, authority: NodeCertAuthority, token_ok: Callable[[str], bool]) -> None:
        self.resources = resources
        self.authority = authority
        self.token_ok = token_ok
        self.verified = VerifiedPasswords()

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(k3snode.PREFIX)

    def _basic_token(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password if user == "node" else None

    def _caller_allowed(self, request: web.Request, node: str, user: UserInfo | None) -> bool:
        token = self._basic_token(request)
        if token is not None:
            return self.token_ok(token)
        return user is not None and user.node_name == node

    async def _check_password(self, node: str, password: str) -> None:
        """K3s's nodepassword.Ensure: the first join stores the hash; later ones must present the same password."""
        secrets = by_path("", "v1", "secrets")
        assert secrets is not None
        name = password_secret_name(node)
        current = self.resources.get_or_none(secrets, "kube-system", name)
        if current is not None:
            stored = base64.b64decode((current.get("data") or {}).get("hash") or "").decode(errors="replace")
            if self.verified.known(node, stored, password):
                return
            # scrypt is deliberately slow (tens of ms): off the event loop
            if not await asyncio.to_thread(verify_password, stored, password):
                raise ApiError(403, "Forbidden", f"unable to verify password for node {node}: hash does not match")
            self.verified.remember(node, stored, password)
            return
        secret: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "kube-system"},
            "immutable": True,
            "type": "Opaque",
            "data": {"hash": base64.b64encode((await asyncio.to_thread(hash_password, password)).encode()).decode()},
        }
        try:
            await self.resources.create(secrets, "kube-system", secret, manager="kwire-node-password")
        except ApiError as exc:
            if exc.code != 409:
                raise
            await self._check_password(node, password)  # another join of this node won the race: check it

    def _cluster_settings(self) -> dict[str, str]:
        """What an agent needs of the cluster's settings (cluster/service CIDRs, DNS, flannel backend, ...)."""
        configmaps = by_path("", "v1", "configmaps")
        assert configmaps is not None
        cm = self.resources.get_or_none(configmaps, "kube-system", CLUSTER_CONFIG)
        if cm is None:
            raise ApiError(503, "ServiceUnavailable", "the cluster settings are not published yet")
        return {str(k): str(v) for k, v in (cm.get("data") or {}).items()}

    async def handle(self, request: web.Request, *, user: UserInfo | None) -> web.Response:
        name = request.path[len(k3snode.PREFIX) :]
        node = request.headers.get(k3snode.NAME_HEADER, "")
        password = request.headers.get(k3snode.PASSWORD_HEADER, "")
        if name not in (*CERT_NAMES, k3snode.CLIENT_CA, k3snode.SERVER_CA, k3snode.CONFIG):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not _valid_node_name(node):
            raise bad_request(f"{k3snode.NAME_HEADER} must be a node name (DNS-1123 subdomain), got {node!r}")
        if not password:
            raise bad_request(f"{k3snode.PASSWORD_HEADER} is required")
        if not self._caller_allowed(request, node, user):
            raise unauthorized()
        await self._check_password(node, password)
        a = self.authority
        if name == k3snode.CLIENT_CA:
            return web.Response(body=a.client_ca_cert.read_bytes(), content_type="text/plain")
        if name == k3snode.SERVER_CA:
            return web.Response(body=a.server_ca_cert.read_bytes(), content_type="text/plain")
        if name == k3snode.CONFIG:
            return web.json_response(self._cluster_settings())
        if request.method != "POST":
            raise ApiError(405, "MethodNotAllowed", f"POST a PEM certificate request to {request.path}")
        csr = await request.content.read(MAX_CSR_BYTES + 1)
        if len(csr) > MAX_CSR_BYTES:
            raise ApiError(413, "RequestEntityTooLarge", "the certificate request is too large")
        cn, orgs = subject_for(name, node)
        serving = name == k3snode.cert_file(k3snode.KUBELET_SERVING)
        ips: tuple[str, ...] = ()
        if serving:
            ips = tuple(i.strip() for i in request.headers.get(k3snode.IP_HEADER, "").split(",") if i.strip())
            for ip in ips:
                try:
                    ipaddress.ip_address(ip)
                except ValueError:
                    raise bad_request(f"{k3snode.IP_HEADER}: {ip!r} is not an IP address") from None
        ca = (
            certs.load_ca(a.server_ca_cert, a.server_ca_key)
            if serving
            else certs.load_ca(a.client_ca_cert, a.client_ca_key)
        )
        try:
            pem = certs.sign_csr(
                ca,
                csr,
                common_name=cn,
                organizations=orgs,
                sans_dns=(node, "localhost") if serving else (),
                sans_ip=(*ips, "127.0.0.1") if serving else (),
                server=serving,
            )
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        return web.Response(body=pem, content_type="text/plain")
