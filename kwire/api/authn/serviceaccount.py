"""Service-account tokens: signed JWTs as kube-apiserver issues and validates them (pkg/serviceaccount).

`TokenIssuer` signs tokens with the key K3s keeps at `<data-dir>/tls/service.key` (RSA, RS256, `kid` = the
SHA-256 of the public key as kube computes it): bound tokens for the TokenRequest API (issuer
`https://kubernetes.default.svc.<cluster-domain>`, claims `iss, sub, aud, exp, iat, nbf, jti` and `kubernetes.io`
with the namespace, the ServiceAccount and the Pod/Secret/Node it is bound to) and legacy tokens for
`kubernetes.io/service-account-token` Secrets (issuer `kubernetes/serviceaccount`, kube-controller-manager's
TokensController claims). `TokenValidator` checks the signature, expiry and audiences, then, as kube's
validator does, that the ServiceAccount still exists with the same uid, that a bound Pod/Secret/Node still exists
with its uid (a pod-bound token dies with its pod), and that a legacy token is still its Secret's token. PyJWT does
the JWT encoding and signature work.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kwire.api.user import SERVICE_ACCOUNT_PREFIX, SERVICE_ACCOUNTS, UserInfo, authenticated
from kwire.base.files import atomic_write

log = logging.getLogger(__name__)

Obj = dict[str, Any]
# (plural, namespace, name) -> the stored object or None: how the validator looks objects up (the server's
# in-memory live state; kube's validator uses its informers' listers the same way).
Lookup = Callable[[str, str | None, str], Obj | None]

LEGACY_ISSUER = "kubernetes/serviceaccount"
ALGORITHM = "RS256"
MIN_EXPIRATION = 600  # kube's MinTokenAgeSec: TokenRequests for less are refused
MAX_EXPIRATION = 1 << 32
DEFAULT_EXPIRATION = 3600
CACHE_SIZE = 4096  # verified signatures kept (kube caches token authentication too)

EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_NODE_UID = "authentication.kubernetes.io/node-uid"
EXTRA_CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


def issuer_for(cluster_domain: str) -> str:
    """kube-apiserver's --service-account-issuer as K3s sets it."""
    return f"https://kubernetes.default.svc.{cluster_domain}"


def ensure_signing_key(data_dir: Path) -> bytes:
    """`<data-dir>/tls/service.key` (PEM, 0600): created on first start and kept, as K3s does."""
    path = Path(data_dir) / "tls" / "service.key"
    if path.exists():
        return path.read_bytes()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    atomic_write(path, pem, mode=0o600)
    log.info("generated the service-account signing key %s", path)
    return pem


def _key_id(public_pem: bytes) -> str:
    """kube's keyIDFromPublicKey: base64url(sha256(DER of the public key)) without padding."""
    der = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class BoundObject:
    """What a token is bound to (TokenRequest's boundObjectRef, resolved): kind Pod, Secret or Node."""

    kind: str
    name: str
    uid: str


@dataclass(frozen=True)
class Issued:
    token: str
    expires: int  # unix seconds


class TokenIssuer:
    def __init__(self, key_pem: bytes, *, issuer: str, audiences: tuple[str, ...]) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self._key = key
        self.public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = _key_id(self.public_pem)
        self.issuer = issuer
        self.audiences = audiences  # kube-apiserver's --api-audiences (default: the issuer)

    def _sign(self, claims: Obj) -> str:
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def issue(
        self,
        *,
        namespace: str,
        service_account: tuple[str, str],
        audiences: tuple[str, ...] = (),
        expiration_seconds: int = DEFAULT_EXPIRATION,
        bound: BoundObject | None = None,
        node: BoundObject | None = None,
        now: float | None = None,
    ) -> Issued:
        """A bound token for ServiceAccount (name, uid) in `namespace`, as the TokenRequest API issues it."""
        iat = int(now if now is not None else time.time())
        sa_name, sa_uid = service_account
        private: Obj = {"namespace": namespace, "serviceaccount": {"name": sa_name, "uid": sa_uid}}
        if bound is not None:
            private[bound.kind.lower()] = {"name": bound.name, "uid": bound.uid}
        if node is not None and (bound is None or bound.kind != "Node"):
            private["node"] = {"name": node.name, "uid": node.uid}
        exp = iat + int(expiration_seconds)
        claims = {
            "aud": list(audiences or self.audiences),
            "exp": exp,
            "iat": iat,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": private,
            "nbf": iat,
            "sub": f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{sa_name}",
        }
        return Issued(self._sign(claims), exp)

    def issue_legacy(self, *, namespace: str, service_account: tuple[str, str], secret: str) -> str:
        """A never-expiring token for a `kubernetes.io/service-account-token` Secret (the TokensController's)."""
        sa_name, sa_uid = service_account
        return self._sign(
            {
                "iss": LEGACY_ISSUER,
                "kubernetes.io/serviceaccount/namespace": namespace,
                "kubernetes.io/serviceaccount/secret.name": secret,
                "kubernetes.io/serviceaccount/service-account.name": sa_name,
                "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
                "sub": f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{sa_name}",
            }
        )


class InvalidToken(Exception):
    """A token that is not (or no longer) valid; the message is kube's reason."""


@dataclass(frozen=True)
class Authenticated:
    user: UserInfo
    audiences: tuple[str, ...]


def _meta(obj: Obj | None) -> Obj:
    return (obj or {}).get("metadata") or {}


class TokenValidator:
    def __init__(self, public_pem: bytes, *, issuer: str, audiences: tuple[str, ...], lookup: Lookup) -> None:
        self._key = serialization.load_pem_public_key(public_pem)
        self.issuer = issuer
        self.audiences = audiences
        self._lookup = lookup
        self._verified: OrderedDict[str, Obj] = OrderedDict()

    def _claims(self, token: str) -> Obj:
        """The token's claims once its signature is verified (cached; expiry is checked on every use)."""
        cached = self._verified.get(token)
        if cached is not None:
            self._verified.move_to_end(token)
            return cached
        try:
            claims: Obj = jwt.decode(
                token,
                self._key,  # type: ignore[arg-type]
                algorithms=[ALGORITHM],
                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid bearer token, {exc}") from None
        self._verified[token] = claims
        if len(self._verified) > CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def authenticate(self, token: str, *, audiences: tuple[str, ...] = (), now: float | None = None) -> Authenticated:
        """The ServiceAccount user `token` stands for, or InvalidToken. `audiences`: what the caller accepts
        (TokenReview's spec.audiences; the API's own audiences by default)."""
        if token.count(".") != 2:
            raise InvalidToken("invalid bearer token, token is not a JWT")
        claims = self._claims(token)
        if claims.get("iss") == LEGACY_ISSUER:
            return self._legacy(token, claims, audiences or self.audiences)
        if claims.get("iss") != self.issuer:
            raise InvalidToken("invalid bearer token, token issuer is not trusted")
        t = now if now is not None else time.time()
        if not isinstance(claims.get("exp"), int) or t >= claims["exp"]:
            raise InvalidToken("invalid bearer token, service account token has expired")
        if isinstance(claims.get("nbf"), int) and t + 60 < claims["nbf"]:  # kube's 60 s leeway
            raise InvalidToken("invalid bearer token, service account token is not valid yet")
        accept = audiences or self.audiences
        aud = claims.get("aud") or []
        aud = [aud] if isinstance(aud, str) else list(aud)
        matched = tuple(a for a in accept if a in aud)
        if not matched:
            raise InvalidToken(
                "invalid bearer token, token audiences " + str(aud) + " is invalid for the target audiences"
            )
        private = claims.get("kubernetes.io") or {}
        namespace = str(private.get("namespace", ""))
        sa = private.get("serviceaccount") or {}
        self._check_service_account(namespace, str(sa.get("name", "")), str(sa.get("uid", "")))
        extra: dict[str, tuple[str, ...]] = {}
        for kind, plural in (("secret", "secrets"), ("pod", "pods"), ("node", "nodes")):
            ref = private.get(kind)
            if not ref:
                continue
            name, uid = str(ref.get("name", "")), str(ref.get("uid", ""))
            obj = self._lookup(plural, None if kind == "node" else namespace, name)
            if obj is None:
                raise InvalidToken(f"invalid bearer token, {kind} {name!r} is not found")
            if _meta(obj).get("uid") != uid:
                raise InvalidToken(f"invalid bearer token, the UID of the {kind} {name!r} does not match the token's")
            if kind != "node" and _meta(obj).get("deletionTimestamp"):
                raise InvalidToken("invalid bearer token, Token has been invalidated")
            if kind == "pod":
                extra[EXTRA_POD_NAME], extra[EXTRA_POD_UID] = (name,), (uid,)
            elif kind == "node":
                extra[EXTRA_NODE_NAME], extra[EXTRA_NODE_UID] = (name,), (uid,)
        if claims.get("jti"):
            extra[EXTRA_CREDENTIAL_ID] = (f"JTI={claims['jti']}",)
        return Authenticated(self._user(namespace, str(sa.get("name", "")), str(sa.get("uid", "")), extra), matched)

    def _legacy(self, token: str, claims: Obj, audiences: tuple[str, ...]) -> Authenticated:
        namespace = str(claims.get("kubernetes.io/serviceaccount/namespace", ""))
        secret_name = str(claims.get("kubernetes.io/serviceaccount/secret.name", ""))
        sa_name = str(claims.get("kubernetes.io/serviceaccount/service-account.name", ""))
        sa_uid = str(claims.get("kubernetes.io/serviceaccount/service-account.uid", ""))
        secret = self._lookup("secrets", namespace, secret_name)
        if secret is None:
            raise InvalidToken(f"invalid bearer token, secret {namespace}/{secret_name} is not found")
        stored = str((secret.get("data") or {}).get("token", ""))
        try:
            current = base64.b64decode(stored).decode()
        except ValueError:
            current = ""
        if current != token:
            raise InvalidToken(f"invalid bearer token, token does not match the secret {namespace}/{secret_name}")
        if _meta(secret).get("deletionTimestamp"):
            raise InvalidToken("invalid bearer token, Token has been invalidated")
        self._check_service_account(namespace, sa_name, sa_uid)
        return Authenticated(self._user(namespace, sa_name, sa_uid, {}), audiences)

    def _check_service_account(self, namespace: str, name: str, uid: str) -> None:
        sa = self._lookup("serviceaccounts", namespace, name)
        if sa is None:
            raise InvalidToken(f"invalid bearer token, service account {namespace}/{name} is not found")
        if _meta(sa).get("uid") != uid:
            raise InvalidToken(
                f"invalid bearer token, service account UID ({uid}) does not match claim ({_meta(sa).get('uid')})"
            )
        if _meta(sa).get("deletionTimestamp"):
            raise InvalidToken(f"invalid bearer token, service account {namespace}/{name} has been deleted")

    @staticmethod
    def _user(namespace: str, name: str, uid: str, extra: dict[str, tuple[str, ...]]) -> UserInfo:
        base = authenticated(
            f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
            (SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{namespace}"),
            uid=uid,
        )
        return UserInfo(name=base.name, groups=base.groups, uid=uid, extra=extra)
