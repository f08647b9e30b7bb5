"""Server bootstrap for joining servers: what a server started with `--server URL --token T` fetches from a
running server before it starts its own etcd member (K3s's `/v1-k3s/server-bootstrap` and `/db/info` in one).

The answer carries the cluster CA (certificate and key: every server issues its serving, etcd peer and client
certificates from the same CA, as K3s servers share theirs), the other shared keys (`SHARED_FILES`: the client CA
that signs every client certificate any server accepts, and the service-account signing key, so a token one
server issued is valid on all) and the etcd members' client URLs. It is served only to a caller presenting the
server token (`JoinTokens.server_may_join`; a wrong token gets 401, which the joining server reports and exits
on), and only by a server running an embedded etcd. The joining side trusts the
server's CA on first use, or pins it when the token is K3s's `K10<sha256 of the CA>::...` form, as agents do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from kwire.base import jointoken

PATH = "/v1-kwire/server-bootstrap"
# Files under <data-dir>/tls/ every server of a cluster has the same copy of (besides the cluster CA).
SHARED_FILES = ("client-ca.crt", "client-ca.key", "service.key")


class JoinError(RuntimeError):
    pass


@dataclass(frozen=True)
class Bootstrap:
    ca_cert: bytes
    ca_key: bytes
    etcd_client_urls: list[str]
    shared: dict[str, bytes] = field(default_factory=dict)  # SHARED_FILES name -> content

    def to_json(self) -> dict[str, Any]:
        return {
            "caCert": self.ca_cert.decode(),
            "caKey": self.ca_key.decode(),
            "etcdClientURLs": list(self.etcd_client_urls),
            "shared": {k: v.decode() for k, v in self.shared.items()},
        }


def _shared(doc: dict[str, Any]) -> dict[str, bytes]:
    raw = doc.get("shared") or {}
    return {k: str(v).encode() for k, v in raw.items() if k in SHARED_FILES}


def fetch_bootstrap(server: str, token: str, *, timeout: float = 15.0) -> Bootstrap:
    """Blocking: the first server's CA (pinned by a K10 token, else trusted on first use) and bootstrap data."""
    base = server.rstrip("/")
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(base + "/cacerts", context=insecure, timeout=timeout) as r:  # noqa: S310
            ca = bytes(r.read())
    except OSError as exc:
        raise JoinError(f"cannot reach the server {base}: {exc}") from None
    want = jointoken.ca_hash(token)
    if want is not None:
        if hashlib.sha256(ca).hexdigest() != want:
            raise JoinError(f"the server {base}'s CA does not match the token's hash {want}")
    ctx = ssl.create_default_context(cadata=ca.decode())
    ctx.check_hostname = False  # the URL may name any of the server's addresses; the CA is what is checked
    req = urllib.request.Request(base + PATH, headers={"Authorization": f"Bearer {jointoken.plain(token)}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:  # noqa: S310
            body = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise JoinError(f"the server {base} refused the token (401 Unauthorized)") from None
        detail = exc.read()[:300].decode(errors="replace")
        raise JoinError(f"the server {base} answered {exc.code}: {detail}") from None
    except OSError as exc:
        raise JoinError(f"cannot fetch bootstrap data from {base}: {exc}") from None
    return Bootstrap(
        body["caCert"].encode(), body["caKey"].encode(), list(body.get("etcdClientURLs") or []), _shared(body)
    )


# -- the CA in an external datastore ----------------------------------------------------------------------------
# Servers sharing an external datastore (--datastore-endpoint) share the cluster CA through it, as K3s keeps its
# bootstrap data in the datastore: sealed with a key derived from the cluster token (PBKDF2-HMAC-SHA256, AES-GCM),
# so only servers started with the same token can read it, and one started with another token is refused.
DATASTORE_KEY = "/registry/kwire-bootstrap/ca"
PBKDF2_ROUNDS = 200_000


def _aead(token: str, salt: bytes) -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=PBKDF2_ROUNDS)
    return AESGCM(kdf.derive(jointoken.plain(token).encode()))


def seal_json(token: str, payload: dict[str, Any]) -> bytes:
    """`payload` as stored in the datastore, sealed with the token: JSON, since everything under /registry/ is."""
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = _aead(token, salt).encrypt(nonce, json.dumps(payload).encode(), None)
    return json.dumps({"salt": salt.hex(), "nonce": nonce.hex(), "sealed": base64.b64encode(sealed).decode()}).encode()


def unseal_json(token: str, value: bytes) -> dict[str, Any]:
    """What `seal_json` stored; JoinError when the token is not the one that sealed it."""
    from cryptography.exceptions import InvalidTag

    doc = json.loads(value)
    try:
        plain = _aead(token, bytes.fromhex(doc["salt"])).decrypt(
            bytes.fromhex(doc["nonce"]), base64.b64decode(doc["sealed"]), None
        )
    except InvalidTag:
        raise JoinError("the datastore's bootstrap data was sealed with a different token") from None
    data = json.loads(plain)
    assert isinstance(data, dict)
    return data


def seal(token: str, *, ca_cert: bytes, ca_key: bytes, shared: dict[str, bytes] | None = None) -> bytes:
    """The CA and the shared keys as stored in the datastore."""
    return seal_json(
        token,
        {
            "caCert": ca_cert.decode(),
            "caKey": ca_key.decode(),
            "shared": {k: v.decode() for k, v in (shared or {}).items()},
        },
    )


def unseal(token: str, value: bytes) -> Bootstrap:
    """The CA and shared keys from the datastore; JoinError when the token is not the one that sealed it."""
    data = unseal_json(token, value)
    return Bootstrap(data["caCert"].encode(), data["caKey"].encode(), [], _shared(data))
