"""Three servers on embedded etcd, as K3s HA runs (`--cluster-init` on the first, `--server URL --token T` on the
others): joining with a wrong token is refused; kill -9 of the etcd leader's server, then of the controller
leader's, leaves kubectl working on the others with every acknowledged write there and controllers acting; a
killed server comes back and rejoins with the writes it missed."""

from __future__ import annotations

import json
import signal
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kwire.lab.start import FAST_LEADER_ELECTION
from tests.integration.apiserver import ServerProcess, free_port

TIMING = list(FAST_LEADER_ELECTION)
# etcd's own default timing (K3s's 500 ms / 5 s suits slow disks; on tmpfs-like test dirs fail-over is faster).
ETCD_TIMING = ["--etcd-arg", "heartbeat-interval=100", "--etcd-arg", "election-timeout=1000"]
BASE = ["--disable", "coredns,servicelb,traefik,metrics-server", *TIMING, *ETCD_TIMING]


class Member:
    def __init__(self, root: Path, name: str, join: str | None, *, address: str) -> None:
        self.client, self.peer = free_port(), free_port()
        self.address = address  # each server its own loopback address, as each would have its own node IP
        args = [*BASE, "--etcd-client-port", str(self.client), "--etcd-peer-port", str(self.peer)]
        args += ["--advertise-address", address]
        args += ["--server", join] if join else ["--cluster-init"]
        (root / name).mkdir()
        self.server = ServerProcess(data_dir=root / name, port=free_port(), extra_args=args)

    def etcd_status(self) -> dict[str, str]:
        tls = self.server.data_dir / "tls"
        ctx = ssl.create_default_context(cafile=str(tls / "server-ca.crt"))
        ctx.load_cert_chain(tls / "etcd" / "client.crt", tls / "etcd" / "client.key")
        req = urllib.request.Request(f"https://127.0.0.1:{self.client}/v3/maintenance/status", data=b"{}")
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            out: dict[str, str] = json.loads(r.read())
            return out

    def is_etcd_leader(self) -> bool:
        st = self.etcd_status()
        return st["leader"] == st["header"]["member_id"]  # type: ignore[index]

    def identity(self) -> str:
        return (self.server.data_dir / "cred" / "leader-identity").read_text().strip()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Member]]:
    root = tmp_path_factory.mktemp("kwire-ha")
    first = Member(root, "s1", None, address="127.0.0.11")
    members = [first]
    try:
        first.server.start(timeout=90)
        for i, name in ((12, "s2"), (13, "s3")):
            m = Member(root, name, first.server.url, address=f"127.0.0.{i}")
            members.append(m)
            m.server.start(timeout=120)
        yield members
    finally:
        for m in members:
            m.server.stop()


def _lease_holder(s: ServerProcess) -> str:
    return s.kubectl(
        "get", "lease", "-n", "kube-system", "kube-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"
    ).stdout


def _eventually(what: str, check: object, timeout: float) -> float:
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            if check():  # type: ignore[operator]
                return time.monotonic() - start
        except AssertionError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout}s: {last}")


def _endpoints(s: ServerProcess) -> list[str]:
    out = s.kubectl("get", "endpoints", "kubernetes", "-o", "jsonpath={.subsets[0].addresses[*].ip}").stdout
    return sorted(out.split())


def _has_replicaset(s: ServerProcess, app: str) -> bool:
    return bool(s.kubectl("get", "replicasets", "-l", f"app={app}", "-o", "name").stdout.split())


def test_joining_with_a_wrong_token_is_refused(cluster: list[Member], tmp_path: Path) -> None:
    intruder = ServerProcess(
        data_dir=tmp_path,
        port=free_port(),
        token="not-the-cluster-token",
        extra_args=[*BASE, "--server", cluster[0].server.url, "--etcd-client-port", str(free_port())],
    )
    with pytest.raises(RuntimeError, match="refused the token"):
        intruder.start(timeout=60)
    assert not (tmp_path / "db" / "etcd" / "member").exists()


def test_three_servers_serve_one_cluster(cluster: list[Member]) -> None:
    leaders = [m.etcd_status()["leader"] for m in cluster]
    assert len(set(leaders)) == 1, "the three etcd members do not agree on a leader"
    cluster[0].server.kubectl("create", "configmap", "from-s1", "--from-literal=k=1")
    for m in cluster[1:]:
        _eventually(
            "s1's write on the other servers",
            lambda m=m: m.server.kubectl("get", "configmap", "from-s1", check=False).returncode == 0,
            10,
        )
    holder = _lease_holder(cluster[2].server)
    assert holder in {m.identity() for m in cluster}
    # The kubernetes Endpoints list every server (kube-apiserver's lease reconciler), as agents learn them.
    assert _endpoints(cluster[1].server) == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]


def test_kill_the_etcd_leader_then_the_controller_leader(cluster: list[Member]) -> None:
    # kill -9 the server whose etcd member leads.
    victim = next(m for m in cluster if m.is_etcd_leader())
    survivors = [m for m in cluster if m is not victim]
    acked = []
    for i in range(10):
        survivors[i % 2].server.kubectl("create", "configmap", f"acked-{i}", "--from-literal=k=v")
        acked.append(f"acked-{i}")
    victim.server.stop(sig=signal.SIGKILL)
    killed_at = time.monotonic()
    took = _eventually(
        "a write after the etcd leader's kill",
        # A write caught in flight by the kill waits out etcd's request timeout (5 s + 2 election timeouts);
        # a client retrying with a short timeout, as controllers do, gets through once a new leader is elected.
        lambda: (
            survivors[0]
            .server.kubectl("--request-timeout=2s", "create", "configmap", "after-kill", check=False, timeout=10)
            .returncode
            == 0
            or survivors[0].server.kubectl("get", "configmap", "after-kill", check=False).returncode == 0
        ),
        30,
    )
    print(f"first write {took:.1f}s after killing the etcd leader's server")
    for s in survivors:
        names = s.server.kubectl("get", "configmaps", "-o", "name").stdout.split()
        assert {f"configmap/{n}" for n in acked} <= set(names), "an acknowledged write is missing"
    # The killed server leaves the kubernetes Endpoints once its lease is stale (15 s, kube-apiserver's TTL).
    _eventually(
        "the killed server out of the kubernetes Endpoints",
        lambda: _endpoints(survivors[0].server) == sorted(m.address for m in survivors),
        30,
    )
    survivors[1].server.kubectl("create", "deployment", "after-etcd-kill", "--image=registry.k8s.io/pause:3.9")
    _eventually(
        "a ReplicaSet made by the controllers", lambda: _has_replicaset(survivors[0].server, "after-etcd-kill"), 30
    )
    assert time.monotonic() - killed_at < 60

    # The killed server comes back (its member dir is there: it rejoins) and serves what it missed.
    victim.server.start(timeout=120)
    _eventually(
        "the rejoined server serving a write it missed",
        lambda: victim.server.kubectl("get", "configmap", "after-kill", check=False).returncode == 0,
        20,
    )

    # kill -9 the controller leader: another server takes the Lease and acts.
    holder = _lease_holder(victim.server)
    leader = next(m for m in cluster if m.identity() == holder)
    rest = [m for m in cluster if m is not leader]
    leader.server.stop(sig=signal.SIGKILL)
    took = _eventually(
        "another server holding the controller lease",
        lambda: _lease_holder(rest[0].server) in {m.identity() for m in rest},
        30,
    )
    print(f"controller lease moved {took:.1f}s after killing its holder")
    rest[1].server.kubectl("create", "deployment", "after-ctl-kill", "--image=registry.k8s.io/pause:3.9")
    _eventually(
        "a ReplicaSet after the controller leader's kill", lambda: _has_replicaset(rest[0].server, "after-ctl-kill"), 30
    )
    leader.server.start(timeout=120)
