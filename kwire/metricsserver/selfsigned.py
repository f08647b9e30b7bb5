"""`python -m kwire.metricsserver.selfsigned DIR`: metrics-server's self-signed serving certificate (upstream makes
one in `--cert-dir` when no `--tls-cert-file` is given), written as DIR/apiserver.crt and DIR/apiserver.key (0600).
Run as a child process so the metrics-server itself never loads the cryptography package.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kwire.base.files import atomic_write
from kwire.metricsserver import CERT_FILE, KEY_FILE


def self_signed(cert_dir: Path) -> tuple[Path, Path]:
    """A serving certificate for `metrics-server.kube-system.svc`, written 0600 in `cert_dir`."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metrics-server@" + str(int(now.timestamp())))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("metrics-server.kube-system.svc"), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    crt, pem = cert_dir / CERT_FILE, cert_dir / KEY_FILE
    atomic_write(crt, cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(pem, key_pem, mode=0o600)
    return crt, pem


if __name__ == "__main__":
    self_signed(Path(sys.argv[1]))
