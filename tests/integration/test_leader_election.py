"""Several servers on one etcd: every server serves the API, only the holder of the kube-system/
kube-controller-manager Lease runs controllers (kube-controller-manager's --leader-elect); kill -9 of the leader
hands the Lease to another server, which acts on new Deployments; a clean stop gives the Lease up at once.
ClusterIPs and NodePorts stay unique while both servers allocate from a small range at the same time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kwire.agent.servers import server_urls
from kwire.client import ApiClient, load_kubeconfig
from kwire.client.client import CONFIGMAPS, ENDPOINTSLICES, SERVICES, ApiStatusError
from kwire.lab.start import FAST_LEADER_ELECTION
from tests.integration.apiserver import ServerProcess, free_port
from tests.integration.etcdkit import etcd_server

TIMING = list(FAST_LEADER_ELECTION)


@pytest.fixture
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_server(tmp_path_factory.mktemp("kwire-etcd-le"), name="kwire-le") as url:
        yield url


def _lease(s: ServerProcess) -> dict[str, object]:
    out = s.kubectl("get", "lease", "-n", "kube-system", "kube-controller-manager", "-o", "json").stdout
    spec: dict[str, object] = json.loads(out)["spec"]
    return spec


def _identity(s: ServerProcess) -> str:
    return (s.data_dir / "cred" / "leader-identity").read_text().strip()


def _wait_holder(s: ServerProcess, identity: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if _lease(s).get("holderIdentity") == identity:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{identity} did not take the lease in {timeout}s: {_lease(s)}")


def _wait_replicaset(s: ServerProcess, deployment: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = s.kubectl("get", "replicasets", "-l", f"app={deployment}", "-o", "name").stdout.split()
        if out:
            return
        time.sleep(0.3)
    raise AssertionError(f"no controller made a ReplicaSet for deployment {deployment} in {timeout}s")


@contextlib.contextmanager
def _two_servers(tmp_path: Path, args: list[str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Servers A and B with the same `args`, started in that order (A becomes the leader); both stopped on exit."""
    a = ServerProcess(data_dir=tmp_path / "a", port=free_port(), extra_args=args)
    b = ServerProcess(data_dir=tmp_path / "b", port=free_port(), extra_args=args)
    try:
        for s in (a, b):
            s.data_dir.mkdir()
            s.start(timeout=60)
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_one_leader_runs_controllers_and_the_lease_fails_over(etcd: str, tmp_path: Path) -> None:
    args = ["--datastore-endpoint", etcd, "--disable", "coredns,servicelb,traefik,metrics-server", *TIMING]
    with _two_servers(tmp_path, args) as (a, b):
        lease = _lease(b)  # every server serves the API: B shows the Lease A holds
        assert lease["holderIdentity"] == _identity(a)
        assert lease["leaseDurationSeconds"] == 4
        time.sleep(2.5)  # B campaigns meanwhile, but A keeps renewing
        assert _lease(a)["holderIdentity"] == _identity(a)
        b.kubectl("create", "deployment", "first", "--image=registry.k8s.io/pause:3.9")
        _wait_replicaset(b, "first", 20)
        assert "controller manager: started" not in b.log_path.read_text(), "a follower ran controllers"

        # kill -9 of the leader: B takes the Lease once A's renewals stop for a lease duration, and acts.
        transitions = int(str(_lease(b).get("leaseTransitions") or 0))
        a.stop(sig=signal.SIGKILL)
        took = _wait_holder(b, _identity(b), 20)
        assert took <= 4 + 2 + 2, f"B took the lease {took:.1f}s after the kill"
        assert int(str(_lease(b)["leaseTransitions"])) == transitions + 1
        assert "became the leader" in b.log_path.read_text()
        b.kubectl("create", "deployment", "second", "--image=registry.k8s.io/pause:3.9")
        _wait_replicaset(b, "second", 20)

        # A comes back as a follower; B stops cleanly and gives the Lease up: A takes it without waiting it out.
        a.start(timeout=60)
        time.sleep(2.5)
        assert _lease(a)["holderIdentity"] == _identity(b)
        b.stop()
        took = _wait_holder(a, _identity(a), 10)
        assert took < 3, f"A took a released lease only after {took:.1f}s"
        a.kubectl("create", "deployment", "third", "--image=registry.k8s.io/pause:3.9")
        _wait_replicaset(a, "third", 20)


def _nodeport_service(name: str, cluster_ip: str = "") -> dict[str, object]:
    spec: dict[str, object] = {"type": "NodePort", "selector": {"app": name}, "ports": [{"port": 80}]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


async def test_two_servers_allocate_unique_cluster_ips_and_node_ports(etcd: str, tmp_path: Path) -> None:
    # 10.43.0.0/27: 15 addresses in the dynamic band (kube-apiserver's KEP-3070 split), 20 NodePorts: two servers
    # picking at random from their own views would collide almost surely without the shared reservations.
    args = [
        "--datastore-endpoint",
        etcd,
        "--disable",
        "coredns,servicelb,traefik,metrics-server",
        "--service-cidr",
        "10.43.0.0/27",
        "--service-node-port-range",
        "30000-30019",
        *TIMING,
    ]
    with _two_servers(tmp_path, args) as (a, b):
        ca, cb = ApiClient(load_kubeconfig(a.kubeconfig)), ApiClient(load_kubeconfig(b.kubeconfig))
        try:
            names = [f"svc-{i}" for i in range(16)]
            made = await asyncio.gather(
                *(
                    (ca if i % 2 else cb).create(SERVICES, _nodeport_service(name), "default")
                    for i, name in enumerate(names)
                )
            )
            ips = [m["spec"]["clusterIP"] for m in made]
            ports = [m["spec"]["ports"][0]["nodePort"] for m in made]
            assert len(set(ips)) == len(ips), f"a ClusterIP was given twice: {sorted(ips)}"
            assert len(set(ports)) == len(ports), f"a NodePort was given twice: {sorted(ports)}"
            assert "10.43.0.1" not in ips  # the kubernetes Service's

            # An IP server B handed out is refused when asked of server A, in kube-apiserver's words.
            with pytest.raises(ApiStatusError) as err:
                await ca.create(SERVICES, _nodeport_service("taken", cluster_ip=ips[0]), "default")
            assert err.value.code == 422
            assert "provided IP is already allocated" in err.value.message
            # Deleted through B, the IP is free for A (once A's store watch has delivered the release).
            await cb.delete(SERVICES, names[0], "default")
            deadline = time.monotonic() + 5
            while True:
                try:
                    again = await ca.create(SERVICES, _nodeport_service("taken", cluster_ip=ips[0]), "default")
                    break
                except ApiStatusError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            assert again["spec"]["clusterIP"] == ips[0]
        finally:
            await ca.close()
            await cb.close()


async def test_api_client_fails_over_to_a_live_server(etcd: str, tmp_path: Path) -> None:
    """What agents do with the servers the kubernetes EndpointSlice lists (K3s's agent load balancer): requests
    and watches go to the next server when theirs cannot be connected to."""
    args = ["--datastore-endpoint", etcd, "--disable", "coredns,servicelb,traefik,metrics-server", *TIMING]
    a = ServerProcess(
        data_dir=tmp_path / "a", port=free_port(), extra_args=[*args, "--advertise-address", "127.0.0.21"]
    )
    b = ServerProcess(
        data_dir=tmp_path / "b", port=free_port(), extra_args=[*args, "--advertise-address", "127.0.0.22"]
    )
    intruder = ServerProcess(data_dir=tmp_path / "c", port=free_port(), token="another-token", extra_args=args)
    for s in (a, b, intruder):
        s.data_dir.mkdir()
    client: ApiClient | None = None
    try:
        a.start(timeout=60)
        b.start(timeout=60)
        # One CA for both: B took the one A sealed into the datastore with the token (K3s's bootstrap data).
        assert (a.data_dir / "tls" / "server-ca.crt").read_bytes() == (
            b.data_dir / "tls" / "server-ca.crt"
        ).read_bytes()
        with pytest.raises(RuntimeError, match="sealed with a different token"):
            intruder.start(timeout=60)
        client = ApiClient(load_kubeconfig(a.kubeconfig))
        slice_ = await client.get(ENDPOINTSLICES, "kubernetes", "default")
        # Both servers advertise themselves; the test reaches them on 127.0.0.1 at their own ports.
        assert sorted(e["addresses"][0] for e in slice_["endpoints"]) == ["127.0.0.21", "127.0.0.22"]
        port = slice_["ports"][0]["port"]  # (real servers share one port; these two differ)
        assert server_urls(slice_) == [f"https://127.0.0.21:{port}", f"https://127.0.0.22:{port}"]
        client.set_servers([a.url, b.url])
        await client.create(CONFIGMAPS, {"metadata": {"name": "before"}, "data": {"k": "v"}}, "default")
        a.stop(sig=signal.SIGKILL)
        got = await client.get(CONFIGMAPS, "before", "default")  # through B now
        assert got["data"] == {"k": "v"}
        assert client.server == b.url
        await client.create(CONFIGMAPS, {"metadata": {"name": "after"}}, "default")
        listed = await client.list(CONFIGMAPS, "default")
        async for _etype, _obj in client.watch(
            CONFIGMAPS, "default", resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=5
        ):
            break  # the watch stream opens on B (no event needed: the loop ends with the stream)
    finally:
        if client is not None:
            await client.close()
        for s in (a, b, intruder):
            s.stop()
