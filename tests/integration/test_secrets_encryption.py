"""`kwire server --secrets-encryption` and `kwire secrets-encrypt status|rotate-keys` (K3s's): Secrets never reach
the datastore's files in plaintext, stay readable through rotation and restarts, and the keys file is 0600."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from tests.integration.apiserver import ServerProcess, free_port

VALUE = "kwire-plaintext-canary-7f3a"


def _raw_db(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (data_dir / "db").glob("state.db*"))


def _secrets_encrypt(srv: ServerProcess, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "kwire", "secrets-encrypt", *args, "--kubeconfig", str(srv.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _password(srv: ServerProcess) -> str:
    out = srv.kubectl("get", "secret", "db", "-o", "jsonpath={.data.password}").stdout
    return base64.b64decode(out).decode()


def test_secrets_are_encrypted_at_rest_and_survive_rotation_and_restart(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, free_port(), extra_args=["--disable", "coredns"])
    canary = base64.b64encode(VALUE.encode())
    try:
        # Written before encryption is switched on: plaintext on disk ...
        srv.start(timeout=60)
        srv.kubectl("create", "secret", "generic", "db", f"--from-literal=password={VALUE}")
        assert canary in _raw_db(tmp_path)
        assert "Encryption Status: Disabled" in _secrets_encrypt(srv, "status")
        srv.stop()

        # ... and encrypted when the server starts with the flag; new Secrets too.
        srv.extra_args = ["--disable", "coredns", "--secrets-encryption"]
        srv.start(timeout=60)
        srv.kubectl("create", "secret", "generic", "other", f"--from-literal=k={VALUE}")
        keyfile = tmp_path / "cred" / "encryption-config.json"
        assert keyfile.stat().st_mode & 0o777 == 0o600
        status = _secrets_encrypt(srv, "status")
        assert "Encryption Status: Enabled" in status
        assert "Server Encryption Hashes: All hashes match" in status
        assert " *      AESCBC    aescbckey" in status
        assert _password(srv) == VALUE
        srv.stop()  # checkpoint the WAL into the file, then look at every byte the store keeps
        raw = _raw_db(tmp_path)
        assert b"k8s:enc:aescbc:v1:aescbckey:" in raw
        assert canary not in raw.split(b"k8s:enc:aescbc")[-1]  # only history rows from before the switch hold it

        # Rotation: a new key, every Secret rewritten under it, the old key gone.
        srv.start(timeout=60)
        out = _secrets_encrypt(srv, "rotate-keys")
        assert "keys rotated to aescbckey-" in out and "2 secrets re-encrypted" in out
        status = _secrets_encrypt(srv, "status")
        assert "Current Rotation Stage: reencrypt_finished" in status
        rows = [line for line in status.splitlines() if "AESCBC" in line]
        assert len(rows) == 1 and rows[0].startswith(" *") and "aescbckey-" in rows[0], status
        assert _password(srv) == VALUE
        srv.stop()

        # Restarted without the flag: the datastore holds keys, so Secrets stay readable (and encrypted).
        srv.extra_args = ["--disable", "coredns"]
        srv.start(timeout=60)
        assert _password(srv) == VALUE
        assert "Encryption Status: Enabled" in _secrets_encrypt(srv, "status")
    finally:
        srv.stop()
