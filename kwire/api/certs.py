"""The server's PKI: a CA and a serving certificate generated on first start and reused (cryptography).

Files live under `<data-dir>/tls/` with K3s's names (server-ca.crt/.key, serving-kube-apiserver.crt/.key).
When the serving certificate lacks a SAN the server now needs (a new node IP, say) it is re-issued from the
same CA, so clients that trust the CA keep working. Also the cluster token, kept in `<data-dir>/token`, and the
embedded etcd's server, peer and client certificates under `tls/etcd/` (K3s's names), issued by the same CA.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kwire.base import pki
from kwire.base.files import atomic_write
from kwire.store.embedded import EtcdTls

log = logging.getLogger(__name__)

ALWAYS_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
ALWAYS_IP = ("127.0.0.1",)


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()

    def server_ssl_context(self, *, client_ca: Path | None = None) -> ssl.SSLContext:
        """The API's TLS: its serving certificate; with `client_ca`, an optional client certificate is requested
        and verified against it (kube-apiserver's --client-ca-file; a client without one may still use a token)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.serving_cert, self.serving_key)
        if client_ca is not None:
            ctx.load_verify_locations(cafile=str(client_ca))
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(ext.get_values_for_type(x509.DNSName)), {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}


def _new_ca(
    cert_path: Path, key_path: Path, *, common_name: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA (ten years), written 0600 (key) / 0644 (certificate)."""
    ca_cert, ca_key = pki.self_signed(
        common_name,
        days=3650,
        ca=True,
        key_usage=x509.KeyUsage(True, False, False, False, False, True, True, False, False),
    )
    atomic_write(key_path, pki.key_pem(ca_key), mode=0o600)
    atomic_write(cert_path, pki.cert_pem(ca_cert), mode=0o644)
    log.info("generated CA %s", cert_path)
    return ca_cert, ca_key


def ensure_pki(data_dir: Path, *, sans_dns: list[str], sans_ip: list[str]) -> Pki:
    tls = Path(data_dir) / "tls"
    paths = Pki(
        tls / "server-ca.crt",
        tls / "server-ca.key",
        tls / "serving-kube-apiserver.crt",
        tls / "serving-kube-apiserver.key",
    )
    now = dt.datetime.now(dt.UTC)
    if paths.ca_cert.exists() and paths.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
    else:
        ca_cert, ca_key = _new_ca(paths.ca_cert, paths.ca_key, common_name=f"kwire-server-ca@{int(now.timestamp())}")

    want_dns = set(ALWAYS_DNS) | {d for d in sans_dns if d}
    want_ip = set(ALWAYS_IP) | {i for i in sans_ip if i}
    if paths.serving_cert.exists() and paths.serving_key.exists():
        cur = x509.load_pem_x509_certificate(paths.serving_cert.read_bytes())
        have_dns, have_ip = _sans(cur)
        fresh = cur.not_valid_after_utc > now + dt.timedelta(days=30)
        if fresh and want_dns <= have_dns and want_ip <= have_ip and cur.issuer == ca_cert.subject:
            return paths
        want_dns |= have_dns
        want_ip |= have_ip
    key = pki.new_key()
    cert = pki.issue(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        public_key=key.public_key(),
        issuer=ca_cert.subject,
        signer=ca_key,
        days=365,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans_dns=want_dns,
        sans_ip=want_ip,
    )
    atomic_write(paths.serving_key, pki.key_pem(key), mode=0o600)
    atomic_write(paths.serving_cert, pki.cert_pem(cert), mode=0o644)
    log.info("issued serving certificate for %s", ", ".join(sorted(want_dns | want_ip)))
    return paths


def ensure_token(data_dir: Path, token: str | None) -> str:
    """The cluster token: the given one (stored), else the stored one, else a new random one."""
    path = Path(data_dir) / "token"
    if token:
        if not path.exists() or path.read_text().strip() != token:
            atomic_write(path, token.encode() + b"\n", mode=0o600)
        return token
    if path.exists():
        stored = path.read_text().strip()
        if stored:
            return stored
    new = secrets.token_hex(24)
    atomic_write(path, new.encode() + b"\n", mode=0o600)
    return new


def _load_ca(data_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    tls = Path(data_dir) / "tls"
    ca_cert = x509.load_pem_x509_certificate((tls / "server-ca.crt").read_bytes())
    loaded = serialization.load_pem_private_key((tls / "server-ca.key").read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return ca_cert, loaded


def _ensure_leaf(
    cert_path: Path,
    key_path: Path,
    *,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    sans_dns: set[str],
    sans_ip: set[str],
    usages: list[x509.ObjectIdentifier],
    organizations: tuple[str, ...] = (),
) -> None:
    """A certificate from the CA with these SANs and usages: kept when it still covers them, else re-issued."""
    ca_cert, ca_key = ca
    now = dt.datetime.now(dt.UTC)
    subject = _subject(common_name, organizations)
    if cert_path.exists() and key_path.exists():
        cur = x509.load_pem_x509_certificate(cert_path.read_bytes())
        have_dns, have_ip = _sans(cur)
        fresh = cur.not_valid_after_utc > now + dt.timedelta(days=30)
        same_subject = cur.subject == subject
        if fresh and same_subject and sans_dns <= have_dns and sans_ip <= have_ip and cur.issuer == ca_cert.subject:
            return
    key = pki.new_key()
    cert = pki.issue(
        subject=subject,
        public_key=key.public_key(),
        issuer=ca_cert.subject,
        signer=ca_key,
        days=365,
        usages=usages,
        sans_dns=sans_dns,
        sans_ip=sans_ip,
    )
    atomic_write(key_path, pki.key_pem(key), mode=0o600)
    atomic_write(cert_path, pki.cert_pem(cert), mode=0o644)
    log.info("issued %s for %s", cert_path.name, ", ".join(sorted(sans_dns | sans_ip)) or common_name)


def _subject(common_name: str, organizations: tuple[str, ...]) -> x509.Name:
    """CN and O as kube reads them from a client certificate: user name and groups."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class ClientCa:
    """The client CA (K3s's `client-ca.crt`/`.key`): it signs every client certificate the API server accepts
    (admin, controllers, nodes, the API server's own kubelet-client certificate); the cluster (server) CA signs
    serving certificates."""

    cert: Path
    key: Path

    @property
    def pem(self) -> bytes:
        return self.cert.read_bytes()

    def load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        loaded = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        return cert, loaded


def _ensure_ca(data_dir: Path, stem: str) -> ClientCa:
    """`<data-dir>/tls/<stem>.crt`/`.key`, created on first use (CN `kwire-<stem>@<unix time>`) and kept."""
    tls = Path(data_dir) / "tls"
    ca = ClientCa(tls / f"{stem}.crt", tls / f"{stem}.key")
    if not (ca.cert.exists() and ca.key.exists()):
        now = dt.datetime.now(dt.UTC)
        _new_ca(ca.cert, ca.key, common_name=f"kwire-{stem}@{int(now.timestamp())}")
    return ca


def ensure_client_ca(data_dir: Path) -> ClientCa:
    """The client CA under `<data-dir>/tls/`, created on first use and kept."""
    return _ensure_ca(data_dir, "client-ca")


def ensure_request_header_ca(data_dir: Path) -> ClientCa:
    """The front-proxy CA (K3s's `request-header-ca.crt`/`.key`): it signs only the certificate the API server
    presents to aggregated API servers, which trust the X-Remote-User headers of requests carrying it."""
    return _ensure_ca(data_dir, "request-header-ca")


def ensure_client_cert(
    ca: ClientCa, *, cert_path: Path, key_path: Path, common_name: str, organizations: tuple[str, ...] = ()
) -> None:
    """A client certificate from the client CA for user `common_name` in groups `organizations` (CN/O, as
    kube-apiserver's x509 authenticator reads them); kept while it still matches and is not near expiry."""
    _ensure_leaf(
        cert_path,
        key_path,
        ca=ca.load(),
        common_name=common_name,
        organizations=organizations,
        sans_dns=set(),
        sans_ip=set(),
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )


def etcd_tls_files(data_dir: Path) -> EtcdTls:
    """Where `ensure_etcd_tls` keeps the embedded etcd's TLS files (for clients such as `kwire etcd-snapshot`)."""
    tls = Path(data_dir) / "tls"
    etcd = tls / "etcd"
    return EtcdTls(
        tls / "server-ca.crt",
        etcd / "server-client.crt",
        etcd / "server-client.key",
        etcd / "peer-server-client.crt",
        etcd / "peer-server-client.key",
        etcd / "client.crt",
        etcd / "client.key",
    )


def ensure_etcd_tls(data_dir: Path, *, sans_ip: list[str]) -> EtcdTls:
    """Issue (or keep) the embedded etcd's server, peer and client certificates from the cluster CA, which
    `ensure_pki` must have created. Every etcd listener demands a client certificate from the same CA."""
    out = etcd_tls_files(data_dir)
    ca = _load_ca(data_dir)
    ips = set(ALWAYS_IP) | {i for i in sans_ip if i}
    dns = {"localhost"}
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    _ensure_leaf(
        out.server_cert, out.server_key, ca=ca, common_name="etcd-server", sans_dns=dns, sans_ip=ips, usages=both
    )
    _ensure_leaf(out.peer_cert, out.peer_key, ca=ca, common_name="etcd-peer", sans_dns=dns, sans_ip=ips, usages=both)
    _ensure_leaf(
        out.client_cert,
        out.client_key,
        ca=ca,
        common_name="etcd-client",
        sans_dns=set(),
        sans_ip=set(),
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    return out


# -- certificates for a node, from its own key ----------------------------------------------------------------
CERT_DAYS = 365


def sign_csr(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    csr_pem: bytes,
    *,
    common_name: str,
    organizations: tuple[str, ...] = (),
    sans_dns: tuple[str, ...] = (),
    sans_ip: tuple[str, ...] = (),
    server: bool = False,
    days: int = CERT_DAYS,
) -> bytes:
    """A certificate (PEM) for the public key of a PKCS#10 request, with the subject and SANs the signer decides
    (a node's request names only its key: the server sets CN/O from the node name, as K3s's node-cert handlers
    do). Client authentication, or server authentication with `server`. ValueError when the request is not a
    valid, self-signed CSR."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise ValueError("the certificate request's signature is not valid")
    ca_cert, ca_key = ca
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = pki.issue(
        subject=_subject(common_name, organizations),
        public_key=csr.public_key(),  # type: ignore[arg-type]
        issuer=ca_cert.subject,
        signer=ca_key,
        days=days,
        usages=[usage],
        sans_dns=sans_dns,
        sans_ip=sans_ip,
    )
    return pki.cert_pem(cert)


def load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA's certificate and key from their files."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return cert, loaded


def subject_of(cert_pem: bytes) -> tuple[str, tuple[str, ...]]:
    """(CN, Os) of a PEM certificate: the user and groups kube reads from a client certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    cn = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    return (cn[0] if cn else ""), orgs
