"""Node credentials without a server: the node-password hash K3s stores, the certificate subjects the server
decides, the CSR signing, and when an agent's certificate is due for renewal."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kwire.agent.credentials import needs_renewal
from kwire.api import certs, nodecerts


def test_the_node_password_is_stored_as_a_salted_scrypt_hash() -> None:
    stored = nodecerts.hash_password("s3cret")
    assert stored.startswith("$scrypt$16384$8$1$") and "s3cret" not in stored
    assert nodecerts.verify_password(stored, "s3cret")
    assert not nodecerts.verify_password(stored, "s3cret2")
    assert nodecerts.hash_password("s3cret") != stored  # a new salt each time
    assert not nodecerts.verify_password("garbage", "s3cret")
    assert not nodecerts.verify_password("$scrypt$x$8$1$AA==$AA==", "s3cret")


def test_secret_names_and_subjects_as_k3s_has_them() -> None:
    assert nodecerts.password_secret_name("Node-1") == "node-1.node-password.k3s"
    assert nodecerts.subject_for("client-kubelet.crt", "node1") == ("system:node:node1", ("system:nodes",))
    assert nodecerts.subject_for("client-kube-proxy.crt", "node1") == ("system:kube-proxy", ())
    assert nodecerts.subject_for("client-k3s-controller.crt", "node1") == ("system:k3s-controller", ())
    assert nodecerts.subject_for("serving-kubelet.crt", "node1") == ("node1", ())


def _csr(cn: str = "anything") -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    req = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    return key, req.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_the_signer_sets_the_subject_whatever_the_request_asks(tmp_path: Path) -> None:
    ca = certs.ensure_client_ca(tmp_path).load()
    key, csr = _csr("system:admin")  # a node asking to be the admin gets its own name anyway
    pem = certs.sign_csr(ca, csr, common_name="system:node:n1", organizations=("system:nodes",))
    assert certs.subject_of(pem) == ("system:node:n1", ("system:nodes",))
    assert x509.load_pem_x509_certificate(pem).public_key() == key.public_key()
    with pytest.raises(ValueError, match="not a PEM certificate request"):
        certs.sign_csr(ca, b"junk", common_name="x")


def test_renewal_is_due_with_a_third_of_the_validity_left_or_another_ca(tmp_path: Path) -> None:
    ca = certs.ensure_client_ca(tmp_path / "a").load()
    ca_pem = (tmp_path / "a" / "tls" / "client-ca.crt").read_bytes()
    _, csr = _csr()
    pem = certs.sign_csr(ca, csr, common_name="x", days=30)
    now = dt.datetime.now(dt.UTC)
    assert not needs_renewal(pem, ca_pem=ca_pem, now=now)
    assert not needs_renewal(pem, ca_pem=ca_pem, now=now + dt.timedelta(days=19))
    assert needs_renewal(pem, ca_pem=ca_pem, now=now + dt.timedelta(days=21))
    other = certs.ensure_client_ca(tmp_path / "b")
    assert needs_renewal(pem, ca_pem=other.pem, now=now)
    assert needs_renewal(b"not a certificate", ca_pem=ca_pem)
