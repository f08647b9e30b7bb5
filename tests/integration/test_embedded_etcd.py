"""`kwire server --cluster-init` (K3s's flag): an embedded etcd member supervised by the server, mutual TLS from the
cluster CA, data under <data-dir>/db/etcd; a SQLite server restarted with the flag keeps its objects."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
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


def _kwire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kwire", *args], capture_output=True, text=True, timeout=120)


def test_snapshots_save_list_prune_and_restore(tmp_path: Path) -> None:
    """K3s's etcd-snapshot subcommands, scheduled snapshots with retention, and --cluster-reset-restore-path
    bringing back a deleted namespace."""
    client, peer = free_port(), free_port()
    etcd_args = ["--cluster-init", "--etcd-client-port", str(client), "--etcd-peer-port", str(peer)]
    sched = ["--etcd-snapshot-schedule-cron", "* * * * * */2", "--etcd-snapshot-retention", "2"]
    s = ServerProcess(data_dir=tmp_path, port=free_port(), extra_args=["--disable", "coredns", *etcd_args, *sched])
    common = ["--data-dir", str(tmp_path), "--etcd-client-port", str(client), "--node-name", "n1"]
    snaps = tmp_path / "db" / "snapshots"
    s.start(timeout=90)
    try:
        s.kubectl("create", "namespace", "precious")
        s.kubectl("create", "configmap", "inside", "-n", "precious", "--from-literal=k=v")
        saved = [_kwire("etcd-snapshot", "save", *common) for _ in range(3)]
        assert all(r.returncode == 0 for r in saved), saved[-1].stderr
        names = [r.stdout.split()[1] for r in saved]
        assert all(n.startswith("on-demand-n1-") for n in names)
        listing = _kwire("etcd-snapshot", "ls", *common).stdout
        assert all(n in listing for n in set(names))
        assert oct((snaps / names[-1]).stat().st_mode & 0o777) == "0o600"  # it holds every Secret

        # Scheduled snapshots every 2 s here, the newest 2 kept.
        time.sleep(7)
        scheduled = sorted(p.name for p in snaps.iterdir() if p.name.startswith("etcd-snapshot-"))
        assert len(scheduled) == 2, scheduled

        s.kubectl("delete", "namespace", "precious", "--wait=true", timeout=60)
        assert s.kubectl("get", "namespace", "precious", check=False).returncode != 0
    finally:
        s.stop()

    pruned = _kwire("etcd-snapshot", "prune", *common, "--snapshot-retention", "1")
    assert pruned.returncode == 0
    kept = [p.name for p in snaps.iterdir() if p.name.startswith("on-demand-")]
    assert len(kept) == 1
    snapshot = snaps / kept[0]

    reset = _kwire(
        "server",
        "--data-dir",
        str(tmp_path),
        "--bind-address",
        "127.0.0.1",
        "--etcd-client-port",
        str(client),
        "--etcd-peer-port",
        str(peer),
        "--cluster-reset",
        "--cluster-reset-restore-path",
        str(snapshot),
    )
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert "restart without --cluster-reset flag now" in reset.stdout
    assert list((tmp_path / "db").glob("etcd-old-*"))

    s.extra_args = ["--disable", "coredns", "--etcd-client-port", str(client), "--etcd-peer-port", str(peer)]
    s.start(timeout=90)
    try:
        assert s.kubectl("get", "configmap", "inside", "-n", "precious", "-o", "jsonpath={.data.k}").stdout == "v"
    finally:
        s.stop()
