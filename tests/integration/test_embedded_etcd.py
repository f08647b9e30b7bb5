"""`kwire server --cluster-init` (K3s's flag): an embedded etcd member supervised by the server, mutual TLS from the
cluster CA, data under <data-dir>/db/etcd; a SQLite server restarted with the flag keeps its objects."""

from __future__ import annotations

import signal
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.apiserver import ServerProcess, free_port


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_sqlite_server_moves_to_embedded_etcd_and_keeps_its_objects(tmp_path: Path) -> None:
    client, peer = free_port(), free_port()
    etcd_args = ["--cluster-init", "--etcd-client-port", str(client), "--etcd-peer-port", str(peer)]
    base = ["--disable", "coredns"]
    s = ServerProcess(data_dir=tmp_path, port=free_port(), extra_args=base)
    s.start(timeout=60)
    try:
        s.kubectl("create", "namespace", "before-etcd")
        s.kubectl("create", "configmap", "kept", "-n", "before-etcd", "--from-literal=k=v")
    finally:
        s.stop()

    s.extra_args = [*base, *etcd_args]
    s.start(timeout=90)
    try:
        # What kubectl wrote to SQLite is served from etcd now (resourceVersions are etcd's).
        assert s.kubectl("get", "configmap", "kept", "-n", "before-etcd", "-o", "jsonpath={.data.k}").stdout == "v"
        assert (tmp_path / "db" / "etcd" / "member").is_dir()
        assert (tmp_path / "db" / "state.db.migrated").exists() and not (tmp_path / "db" / "state.db").exists()
        s.kubectl("create", "configmap", "after", "-n", "before-etcd", "--from-literal=k=w")

        # etcd's client port speaks TLS with the cluster CA and demands a client certificate.
        ca = ssl.create_default_context(cafile=str(tmp_path / "tls" / "server-ca.crt"))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
            urllib.request.urlopen(f"https://127.0.0.1:{client}/health", context=ca, timeout=5).read()
        ca.load_cert_chain(tmp_path / "tls" / "etcd" / "client.crt", tmp_path / "tls" / "etcd" / "client.key")
        with urllib.request.urlopen(f"https://127.0.0.1:{client}/health", context=ca, timeout=5) as r:
            assert b'"health":"true"' in r.read()

        # kill -9 of the server takes its etcd member with it (K3s's etcd lives in its process).
        s.stop(sig=signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not _refused(client) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _refused(client), "the embedded etcd outlived its server"
    finally:
        s.stop()

    # Restarted without the flag, the server keeps using the etcd in its data dir (as K3s does).
    s.extra_args = [*base, "--etcd-client-port", str(client), "--etcd-peer-port", str(peer)]
    s.start(timeout=90)
    try:
        got = s.kubectl("get", "configmaps", "-n", "before-etcd", "-o", "name").stdout.split()
        assert {"configmap/kept", "configmap/after"} <= set(got)
    finally:
        s.stop()
    assert _refused(client), "the embedded etcd outlived a server that stopped cleanly"


def test_cluster_init_with_an_external_datastore_is_refused(tmp_path: Path) -> None:
    s = ServerProcess(
        data_dir=tmp_path,
        port=free_port(),
        extra_args=["--cluster-init", "--datastore-endpoint", "http://127.0.0.1:1"],
    )
    with pytest.raises(RuntimeError, match="cluster-init"):
        s.start(timeout=30)
