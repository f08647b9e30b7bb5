"""A node joins as K3s's agents do: the agent token, presented once to a real `kwire server`'s `/v1-k3s/`
endpoints with a certificate request for a key made on the node, buys its own certificates; the node password
keeps another machine from taking the node's name; renewal needs no token."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kwire.agent.credentials import CredentialsError, NodeCredentials
from kwire.base.k3snode import COMPONENTS, CONTROLLER_CLIENT, KUBE_PROXY_CLIENT, KUBELET_CLIENT, KUBELET_SERVING
from kwire.client import ApiClient, ApiStatusError
from kwire.client.client import NODES
from tests.integration.apiserver import ServerProcess


def _creds(server: ServerProcess, data_dir: Path, node: str, ip: str = "10.0.0.5") -> NodeCredentials:
    ca = (server.data_dir / "tls" / "server-ca.crt").read_bytes()
    return NodeCredentials(data_dir=data_dir, server=server.url, node_name=node, node_ips=(ip,), server_ca=ca)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _subject(cert: x509.Certificate) -> tuple[str, list[str]]:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return str(cn), [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


async def test_the_token_buys_each_component_its_own_certificate(server: ServerProcess, tmp_path: Path) -> None:
    creds = _creds(server, tmp_path, "n1")
    assert sorted(await creds.ensure(token=server.token)) == sorted(COMPONENTS)
    tls = tmp_path / "tls"
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    for f in tls.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert server.token not in f.read_text()
    client_ca = _cert(server.data_dir / "tls" / "client-ca.crt")
    server_ca = _cert(server.data_dir / "tls" / "server-ca.crt")
    want = {
        KUBELET_CLIENT: ("system:node:n1", ["system:nodes"]),
        KUBE_PROXY_CLIENT: ("system:kube-proxy", []),
        CONTROLLER_CLIENT: ("system:k3s-controller", []),
    }
    for comp, subject in want.items():
        cert = _cert(creds.cert_path(comp))
        assert _subject(cert) == subject
        cert.verify_directly_issued_by(client_ca)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    serving = _cert(creds.cert_path(KUBELET_SERVING))
    serving.verify_directly_issued_by(server_ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "n1" in sans.get_values_for_type(x509.DNSName)
    assert "10.0.0.5" in [str(i) for i in sans.get_values_for_type(x509.IPAddress)]
    # The certificate is for the key made here: the private key never left the node.
    for comp in COMPONENTS:
        key = serialization.load_pem_private_key(creds.key_path(comp).read_bytes(), password=None)
        assert _cert(creds.cert_path(comp)).public_key() == key.public_key()
    # Nothing is due: a second start asks for nothing.
    assert await creds.ensure(token=server.token) == []


async def test_the_kubelet_certificate_is_an_api_credential(server: ServerProcess, tmp_path: Path) -> None:
    creds = _creds(server, tmp_path, "n2")
    await creds.ensure(token=server.token)
    async with ApiClient(creds.client_config(KUBELET_CLIENT)) as client:
        await client.list(NODES)  # authenticated by its certificate alone: no token anywhere
        try:  # another node's object: the request is made as system:node:n2 (what it may do is authorization's)
            await client.get(NODES, "n1")
        except ApiStatusError as exc:
            assert exc.code in (403, 404), exc


async def test_a_wrong_token_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    creds = _creds(server, tmp_path, "n3")
    with pytest.raises(CredentialsError, match="401"):
        await creds.ensure(token="not-the-token")
    assert not creds.cert_path(KUBELET_CLIENT).exists()


async def test_another_machine_cannot_take_a_nodes_name(server: ServerProcess, tmp_path: Path) -> None:
    await _creds(server, tmp_path / "first", "n4").ensure(token=server.token)
    thief = _creds(server, tmp_path / "second", "n4")  # the right token, another node password
    with pytest.raises(CredentialsError, match="403.*unable to verify password for node n4"):
        await thief.ensure(token=server.token)
    assert not thief.cert_path(KUBELET_CLIENT).exists()
    # The password is stored as K3s stores it: a hash in an immutable kube-system Secret.
    secret = json.loads(
        server.kubectl("get", "secret", "-n", "kube-system", "n4.node-password.k3s", "-o", "json").stdout
    )
    stored = base64.b64decode(secret["data"]["hash"]).decode()
    password = (tmp_path / "first" / "tls" / "node-password").read_text().strip()
    assert secret["immutable"] is True and stored.startswith("$scrypt$") and password not in stored


async def test_renewal_needs_the_nodes_own_certificate_not_the_token(server: ServerProcess, tmp_path: Path) -> None:
    creds = _creds(server, tmp_path / "n5", "n5")
    await creds.ensure(token=server.token)
    old = creds.cert_path(KUBE_PROXY_CLIENT).read_bytes()
    creds.cert_path(KUBE_PROXY_CLIENT).unlink()
    assert await creds.ensure(token=None) == [KUBE_PROXY_CLIENT]
    assert creds.cert_path(KUBE_PROXY_CLIENT).read_bytes() != old
    # Node n6's certificate does not vouch for n5 (even with n5's password copied over).
    other = _creds(server, tmp_path / "n6", "n6")
    await other.ensure(token=server.token)
    impostor = _creds(server, tmp_path / "n6", "n5")
    (tmp_path / "n6" / "tls" / "node-password").write_text((tmp_path / "n5" / "tls" / "node-password").read_text())
    impostor.cert_path(KUBE_PROXY_CLIENT).unlink()
    with pytest.raises(CredentialsError, match="401"):
        await impostor.ensure(token=None)


async def test_malformed_requests_get_400(server: ServerProcess, tmp_path: Path) -> None:
    creds = _creds(server, tmp_path, "n7")
    await creds.ensure(token=server.token)
    session, headers = creds._session(server.token)
    async with session:
        async with session.post(f"{server.url}/v1-k3s/client-kubelet.crt", headers=headers, data=b"junk") as r:
            assert r.status == 400 and "not a PEM certificate request" in await r.text()
        bad = {**headers, "K3s-Node-Name": "Not_A_Name"}
        async with session.get(f"{server.url}/v1-k3s/client-ca.crt", headers=bad) as r:
            assert r.status == 400
        async with session.get(f"{server.url}/v1-k3s/client-ca.crt") as r:  # no node name, no token
            assert r.status == 400
    async with aiohttp.ClientSession() as anon:
        async with anon.get(
            f"{server.url}/v1-k3s/client-ca.crt", ssl=False, headers={"K3s-Node-Name": "n7", "K3s-Node-Password": "x"}
        ) as r:
            assert r.status == 401


async def test_deleting_the_node_frees_its_name(server: ServerProcess, tmp_path: Path) -> None:
    """As K3s: the password Secret goes with the Node, so another machine may then register that name."""
    await _creds(server, tmp_path / "old", "n8").ensure(token=server.token)
    server.kubectl("create", "-f", "-", input='{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n8"}}')
    server.kubectl("get", "secret", "-n", "kube-system", "n8.node-password.k3s")
    server.kubectl("delete", "node", "n8")
    deadline = asyncio.get_running_loop().time() + 30
    while server.kubectl("get", "secret", "-n", "kube-system", "n8.node-password.k3s", check=False).returncode == 0:
        assert asyncio.get_running_loop().time() < deadline, "the node's password secret outlived the node"
        await asyncio.sleep(0.2)
    new = _creds(server, tmp_path / "new", "n8")
    assert KUBELET_CLIENT in await new.ensure(token=server.token)


async def test_a_new_node_ip_or_name_gets_new_certificates(server: ServerProcess, tmp_path: Path) -> None:
    await _creds(server, tmp_path, "n9", ip="10.0.0.9").ensure(token=server.token)
    moved = _creds(server, tmp_path, "n9", ip="10.0.0.10")
    assert await moved.ensure(token=None) == [KUBELET_SERVING]
    sans = _cert(moved.cert_path(KUBELET_SERVING)).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "10.0.0.10" in [str(i) for i in sans.value.get_values_for_type(x509.IPAddress)]
    renamed = _creds(server, tmp_path, "n9b", ip="10.0.0.10")
    assert await renamed.ensure(token=server.token) == [KUBELET_CLIENT, KUBELET_SERVING]
    assert _subject(_cert(renamed.cert_path(KUBELET_CLIENT))) == ("system:node:n9b", ["system:nodes"])


async def test_a_node_reads_the_cluster_settings_as_itself(server: ServerProcess, tmp_path: Path) -> None:
    """K3s's /v1-k3s/config: what an agent needs of the cluster, for the node's own certificate (no RBAC grant on
    ConfigMaps needed); the anonymous get 401."""
    creds = _creds(server, tmp_path, "n10")
    await creds.ensure(token=server.token)
    settings = await creds.cluster_settings()
    assert settings["cluster-cidr"] == "10.42.0.0/16" and settings["cluster-dns"] == "10.43.0.10"
    async with aiohttp.ClientSession() as anon:
        headers = {"K3s-Node-Name": "n10", "K3s-Node-Password": "x"}
        async with anon.get(f"{server.url}/v1-k3s/config", ssl=False, headers=headers) as r:
            assert r.status == 401
