"""Node credentials without a server: the node-password hash K3s stores, the certificate subjects the server
decides, the CSR signing, and when an agent's certificate is due for renewal."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kwire.agent.certwork import needs_renewal
from kwire.api import certs, nodecerts


def test_the_node_password_is_stored_as_a_salted_scrypt_hash() -> None:
    stored = nodecerts.hash_password("s3cret")
    assert stored.startswith("$scrypt$16384$8$1$") and "s3cret" not in stored
    assert nodecerts.verify_password(stored, "s3cret")
    assert not nodecerts.verify_password(stored, "s3cret2")
    assert nodecerts.hash_password("s3cret") != stored  # a new salt each time
    assert not nodecerts.verify_password("garbage", "s3cret")
    assert not nodecerts.verify_password("$scrypt$x$8$1$AA==$AA==", "s3cret")


def test_a_checked_node_password_is_remembered_only_for_its_node_hash_and_password() -> None:
    seen = nodecerts.VerifiedPasswords(limit=2)
    seen.remember("n1", "$scrypt$h1", "pw")
    assert seen.known("n1", "$scrypt$h1", "pw")
    assert not seen.known("n1", "$scrypt$h1", "other")  # another password: scrypt again
    assert not seen.known("n1", "$scrypt$h2", "pw")  # the stored hash changed (node-password secret replaced)
    assert not seen.known("n2", "$scrypt$h1", "pw")
    assert all(b"pw" not in mac for _, mac in seen._seen.values())  # only a keyed MAC is held
    seen.remember("n2", "$scrypt$h1", "pw")
    seen.remember("n3", "$scrypt$h1", "pw")  # bounded: the oldest node is forgotten
    assert not seen.known("n1", "$scrypt$h1", "pw") and seen.known("n3", "$scrypt$h1", "pw")


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


async def test_renewed_certificates_are_used_by_live_contexts_from_the_next_handshake(tmp_path: Path) -> None:
    """The kubelet's listener and an API client pick up renewed files without restarting (CertReloader,
    ApiClient.renew_client_cert): the next connection presents the new certificate."""
    import ssl

    from aiohttp import web

    from kwire.agent.credentials import CertReloader, NodeCredentials, serving_context
    from kwire.api.user import from_peercert
    from kwire.base.k3snode import KUBELET_SERVING
    from kwire.client import ApiClient, Config
    from tests.integration.apiserver import free_port

    pki = certs.ensure_pki(tmp_path / "srv", sans_dns=[], sans_ip=["127.0.0.1"])
    client_ca = certs.ensure_client_ca(tmp_path / "srv")
    server_ca = certs.load_ca(pki.ca_cert, pki.ca_key)
    creds = NodeCredentials(
        data_dir=tmp_path / "node", server="", node_name="n1", node_ips=("127.0.0.1",), server_ca=pki.ca_pem
    )
    creds.dir.mkdir(parents=True)

    def issue_serving() -> int:
        key, csr = _csr()
        pem = certs.sign_csr(server_ca, csr, common_name="n1", sans_ip=("127.0.0.1",), server=True)
        creds.key_path(KUBELET_SERVING).write_bytes(key.private_bytes(*_pkcs8()))
        creds.cert_path(KUBELET_SERVING).write_bytes(pem)
        return x509.load_pem_x509_certificate(pem).serial_number

    def client_cert(cn: str) -> tuple[bytes, bytes]:
        key, csr = _csr()
        pem = certs.sign_csr(client_ca.load(), csr, common_name=cn)
        return pem, key.private_bytes(*_pkcs8())

    first = issue_serving()
    ctx = serving_context(
        cert=creds.cert_path(KUBELET_SERVING), key=creds.key_path(KUBELET_SERVING), client_ca=client_ca.cert
    )
    reloader = CertReloader(creds)
    reloader.track(KUBELET_SERVING, ctx)

    async def who(request: web.Request) -> web.Response:
        user = from_peercert(request.transport.get_extra_info("peercert") if request.transport else None)
        return web.json_response({"user": user.name if user else ""}, headers={"Connection": "close"})

    app = web.Application()
    app.router.add_get("/who", who)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()

    def served_serial() -> int:
        raw = ssl.get_server_certificate(("127.0.0.1", port))
        return x509.load_pem_x509_certificate(raw.encode()).serial_number

    cert, key = client_cert("system:node:n1")
    client = ApiClient(Config(server=f"https://127.0.0.1:{port}", ca_data=pki.ca_pem, client_cert=cert, client_key=key))
    try:
        assert await asyncio.to_thread(served_serial) == first
        assert (await client.request("GET", "/who"))["user"] == "system:node:n1"
        second = issue_serving()
        reloader.reload([KUBELET_SERVING])
        assert await asyncio.to_thread(served_serial) == second != first
        cert2, key2 = client_cert("system:node:n1-renewed")
        client.renew_client_cert(cert=cert2, key=key2)
        assert (await client.request("GET", "/who"))["user"] == "system:node:n1-renewed"
    finally:
        await client.close()
        await runner.cleanup()


def _pkcs8() -> tuple[serialization.Encoding, serialization.PrivateFormat, serialization.NoEncryption]:
    return serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
