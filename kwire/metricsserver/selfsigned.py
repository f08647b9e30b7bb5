"""`python -m kwire.metricsserver.selfsigned DIR`: metrics-server's self-signed serving certificate (upstream makes
one in `--cert-dir` when no `--tls-cert-file` is given), written as DIR/apiserver.crt and DIR/apiserver.key (0600).
Run as a child process so the metrics-server itself never loads the cryptography package.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kwire.base import pki
from kwire.base.files import atomic_write
from kwire.metricsserver import CERT_FILE, KEY_FILE


def self_signed(cert_dir: Path) -> tuple[Path, Path]:
    """A serving certificate for `metrics-server.kube-system.svc`, written 0600 in `cert_dir`."""
    cert, key = pki.self_signed(
        f"metrics-server@{int(time.time())}",
        days=365,
        ca=None,
        sans_dns=["metrics-server.kube-system.svc", "localhost"],
    )
    crt, pem = cert_dir / CERT_FILE, cert_dir / KEY_FILE
    atomic_write(crt, pki.cert_pem(cert))
    atomic_write(pem, pki.key_pem(key), mode=0o600)
    return crt, pem


if __name__ == "__main__":
    self_signed(Path(sys.argv[1]))
