"""The node's certificate work that needs `cryptography`, run by the agent as a short-lived child process.

Which of the node's certificates are stale (missing, from another CA, with less than a third of their validity
left, or no longer naming this node), and a new private key with its PKCS#10 request for each: what K3s's agent
does before asking the server's `/v1-k3s/` endpoints (credentials.py). `cryptography` costs an agent ~10 MB of
RSS for good (its Rust extension alone is 8 MB resident), for work done at start and once an hour, so the
agent runs this module as `python -m kwire.agent.certwork` (credentials.py `_certwork`, which must not import this
module): the request goes in on stdin and the answer, new private keys included, comes back on stdout (never on a
command line or in a file; credentials.py writes the keys 0600). Tests call `check` and `needs_renewal` directly.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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


def names_node(kind: str, pem: bytes, *, node_name: str, node_ips: tuple[str, ...]) -> bool:
    """A `node-client` certificate (the kubelet's) must be `system:node:<name>`, a `node-serving` one name the
    node and its IPs; any other kind names no node."""
    cert = x509.load_pem_x509_certificate(pem)
    if kind == "node-client":
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return bool(cns) and cns[0].value == f"system:node:{node_name}"
    if kind == "node-serving":
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        ips = {str(i) for i in sans.get_values_for_type(x509.IPAddress)}
        return node_name in sans.get_values_for_type(x509.DNSName) and set(node_ips) <= ips
    return True


def new_key(component: str) -> tuple[str, str]:
    """A new P-256 key (PKCS#8 PEM) and a PKCS#10 request proving possession of it; the server sets the subject."""
    key = ec.generate_private_key(ec.SECP256R1())
    req = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, component)])
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem.decode(), req.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def check(request: dict[str, Any]) -> dict[str, Any]:
    """`request`: tls_dir, node_name, node_ips, and components (name -> {ca: the PEM of the CA its certificate
    must come from, "" when unknown; names: what it must name, see `names_node`}). The answer: the stale
    components in order, and a new key and request for each."""
    tls = Path(request["tls_dir"])
    node_ips = tuple(request["node_ips"])
    stale = []
    for comp, want in request["components"].items():
        ca = want["ca"]
        crt, key = tls / f"{comp}.crt", tls / f"{comp}.key"
        if not (crt.exists() and key.exists()) or not ca:
            stale.append(comp)
            continue
        pem = crt.read_bytes()
        if needs_renewal(pem, ca_pem=ca.encode()) or not names_node(
            want["names"], pem, node_name=request["node_name"], node_ips=node_ips
        ):
            stale.append(comp)
    keys = {comp: dict(zip(("key", "csr"), new_key(comp), strict=True)) for comp in stale}
    return {"stale": stale, "keys": keys}


def main() -> int:
    json.dump(check(json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
