"""Issuing X.509 certificates (cryptography): one builder for every certificate kwire makes.

The API server's CAs and serving, client and etcd certificates (`kwire.api.certs`), MetalLB's webhook CA and
serving certificate (`kwire.metallb.webhook`, as MetalLB's cert rotator makes them) and metrics-server's
self-signed serving certificate (`kwire.metricsserver.selfsigned`, as upstream makes one in `--cert-dir`) differ
only in subject, issuer, lifetime and extensions; `issue` takes those as data. Keys are ECDSA P-256, signatures
SHA-256, and every certificate is valid from five minutes ago (clocks of a new node may lag).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

Key = ec.EllipticCurvePrivateKey


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Key) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (what kube's and K3s's tools write)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def issue(
    *,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Name,
    signer: Key,
    days: int,
    ca: bool | None = False,
    key_usage: x509.KeyUsage | None = None,
    usages: Iterable[x509.ObjectIdentifier] = (),
    sans_dns: Iterable[str] = (),
    sans_ip: Iterable[str] = (),
) -> x509.Certificate:
    """A certificate for `public_key`, signed by `signer` in the name of `issuer` (a self-signed one when
    `issuer` is `subject` and `signer` its key).

    `ca`: the critical basicConstraints CA flag (None: no basicConstraints at all); `key_usage` (critical) and
    extended key `usages` when given; SANs, sorted, when there are any."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    eku = list(usages)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    alt: list[x509.GeneralName] = [x509.DNSName(d) for d in sorted(set(sans_dns))]
    alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in sorted(set(sans_ip))]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(signer, hashes.SHA256())


def self_signed(
    subject: x509.Name | str,
    *,
    days: int,
    ca: bool | None = False,
    key_usage: x509.KeyUsage | None = None,
    sans_dns: Iterable[str] = (),
) -> tuple[x509.Certificate, Key]:
    """A new key and a certificate it signs for itself (issuer = subject; a string is a subject of that common
    name): a CA's root, or a serving certificate nobody else vouches for (`issue` for the rest)."""
    name = subject if isinstance(subject, x509.Name) else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    key = new_key()
    cert = issue(
        subject=name,
        public_key=key.public_key(),
        issuer=name,
        signer=key,
        days=days,
        ca=ca,
        key_usage=key_usage,
        sans_dns=sans_dns,
    )
    return cert, key
