"""The server-side controllers (kwire/controllers/) against a real in-process server, no privileges.

Nodes are simulated: a Node object with a Ready=True condition and a Lease in kube-node-lease, created through
the client. `FakeKubelet` stands in for the node agent where a test needs one: it marks pods on its nodes
Ready (status subresource) and confirms the deletion of terminating pods, as the agent does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kwire.client import ApiClient, Conflict, Informer, NotFound, load_kubeconfig
from kwire.client.client import DAEMONSETS, DEPLOYMENTS, EVENTS, LEASES, NODES, PODS, REPLICASETS
from kwire.config import ServerConfig
from kwire.server import Server, start
from tests.integration.apiserver import KUBECTL, free_port, server_config
from tests.polling import until

Obj = dict[str, Any]
POD_NAME = r"[bcdfghjklmnpqrstvwxz2456789]{5}"
REVISION = "deployment.kubernetes.io/revision"
HAVE_KUBECTL = Path(KUBECTL).exists()


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Cluster:
    """A running server, a client, and helpers to simulate nodes."""

    def __init__(self, server: Server, client: ApiClient) -> None:
        self.server = server
        self.c = client

    async def add_node(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        taints: list[Obj] | None = None,
        unschedulable: bool = False,
    ) -> Obj:
        node_spec: Obj = {}
        if taints:
            node_spec["taints"] = taints
        if unschedulable:
            node_spec["unschedulable"] = True
        await self.c.create(
            NODES,
            {
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
                "spec": node_spec,
            },
        )
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now(),
            "lastTransitionTime": now(),
        }
        out = await self.c.patch(NODES, name, {"status": {"conditions": [ready]}}, subresource="status")
        await self.c.create(
            LEASES,
            {
                "metadata": {"name": name},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()},
            },
            "kube-node-lease",
        )
        return out

    async def heartbeat(self, name: str) -> None:
        """What the agent does every few seconds: a new lastHeartbeatTime on the Ready condition."""
        node = await self.c.get(NODES, name)
        conds = node["status"]["conditions"]
        for c in conds:
            if c["type"] == "Ready":
                c["lastHeartbeatTime"] = micro_now()
        await self.c.patch(NODES, name, {"status": {"conditions": conds}}, subresource="status")

    async def kubectl(self, *args: str) -> tuple[int, str]:
        """The real kubectl against this server: (exit code, output)."""
        home = Path(self.server.cfg.data_dir)
        proc = await asyncio.create_subprocess_exec(
            KUBECTL,
            "--cache-dir",
            str(home / "kubecache"),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(self.server.kubeconfig), "HOME": str(home)},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return int(proc.returncode or 0), out.decode()

    async def renew(self, name: str) -> None:
        await self.c.patch(LEASES, name, {"spec": {"renewTime": micro_now()}}, namespace="kube-node-lease")

    async def pods(self, ns: str = "default", *, selector: str | None = None, live: bool = True) -> list[Obj]:
        items = (await self.c.list(PODS, ns, label_selector=selector))["items"]
        if live:
            items = [p for p in items if not p["metadata"].get("deletionTimestamp")]
        return items

    async def events(self, ns: str = "default", *, reason: str, name: str | None = None) -> list[Obj]:
        items = (await self.c.list(EVENTS, ns))["items"]
        return [e for e in items if e["reason"] == reason and (name is None or e["involvedObject"].get("name") == name)]

    async def mark_ready(self, pod: Obj) -> None:
        conds = [c for c in pod.get("status", {}).get("conditions") or [] if c["type"] != "Ready"]
        conds.append({"type": "Ready", "status": "True", "lastProbeTime": None, "lastTransitionTime": now()})
        await self.c.patch(
            PODS,
            pod["metadata"]["name"],
            {"status": {"phase": "Running", "conditions": conds}},
            namespace=pod["metadata"]["namespace"],
            subresource="status",
        )


class FakeKubelet:
    """The node agents' part in pod lifecycles, for the nodes that exist: pods bound to them get Ready=True (unless
    they have finished);
    terminating pods are confirmed deleted (grace period 0) after `delete_delay` seconds. Pods on a node that
    is gone are left alone, as no agent is there to act on them."""

    def __init__(self, cluster: Cluster, *, ready: bool = True, delete_delay: float = 0.0) -> None:
        self.cluster = cluster
        self.ready = ready
        self.delete_delay = delete_delay
        self.nodes = Informer(cluster.c, NODES)
        self.informer = Informer(cluster.c, PODS)
        self.informer.on_add(self._seen)
        self.informer.on_update(lambda old, new: self._seen(new))
        self._tasks: set[asyncio.Task[None]] = set()
        self._deleting: set[str] = set()
        self.stopped: set[str] = set()  # nodes whose agent is down: their pods are left alone

    def _seen(self, pod: Obj) -> None:
        node = pod["spec"].get("nodeName")
        if not node or self.nodes.get(None, node) is None or node in self.stopped:
            return
        task = asyncio.create_task(self._handle(pod))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            if meta.get("deletionTimestamp"):
                if meta["uid"] in self._deleting:
                    return
                self._deleting.add(meta["uid"])
                await asyncio.sleep(self.delete_delay)
                await self.cluster.c.delete(PODS, meta["name"], meta["namespace"], grace_period=0)
            elif (
                self.ready
                and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")
                and not any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in pod.get("status", {}).get("conditions") or []
                )
            ):
                await self.cluster.mark_ready(pod)
        except (NotFound, Conflict):
            pass

    async def __aenter__(self) -> FakeKubelet:
        self.nodes.start()
        await self.nodes.wait_synced(5)
        self.informer.start()
        await self.informer.wait_synced(5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.informer.stop()
        await self.nodes.stop()
        for t in list(self._tasks):
            t.cancel()


def _config(tmp_path: Path, port: int, **overrides: Any) -> ServerConfig:
    return server_config(tmp_path, token="controllers-test", port=port, **overrides)


@pytest.fixture
async def cluster_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    made: list[Cluster] = []

    async def make(**overrides: Any) -> Cluster:
        srv = await start(_config(tmp_path, free_port(), **overrides))
        assert srv.controllers is not None
        await srv.controllers.wait_started(10)
        cl = Cluster(srv, ApiClient(load_kubeconfig(srv.kubeconfig)))
        made.append(cl)
        return cl

    yield make
    for cl in made:
        await cl.c.close()
        await cl.server.close()


@pytest.fixture
async def cluster(cluster_factory: Callable[..., Awaitable[Cluster]]) -> Cluster:
    return await cluster_factory()


def deployment(name: str, replicas: int, **pod_spec: Any) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}], **pod_spec},
            },
        },
    }


def pod(name: str, **pod_spec: Any) -> Obj:
    containers = pod_spec.pop("containers", [{"name": "c", "image": "nginx:1.25"}])
    return {"metadata": {"name": name, "labels": {"test": "sched"}}, "spec": {"containers": containers, **pod_spec}}


def cond(obj: Obj, ctype: str) -> Obj | None:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == ctype), None)


# -- node IPAM --------------------------------------------------------------------------------------------------
async def _cidr(c: ApiClient, name: str) -> str:
    async def get() -> str:
        return str((await c.get(NODES, name))["spec"].get("podCIDR") or "")

    return str(await until(get, what=f"podCIDR of {name}"))


async def test_ipam_assigns_in_order_and_rebuilds_after_restart(tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, port)
    srv = await start(cfg)
    try:
        async with ApiClient(load_kubeconfig(srv.kubeconfig)) as c:
            cl = Cluster(srv, c)
            for name in ("n1", "n2", "n3"):
                # The node's own status writes race with the allocation: the controller must neither hand a
                # node two subnets nor skip one when its cache shows the node without one for a moment.
                await cl.add_node(name)
                for _ in range(3):
                    await cl.heartbeat(name)
            for name in ("n1", "n2", "n3"):
                await _cidr(c, name)
            nodes = {n["metadata"]["name"]: n["spec"] for n in (await c.list(NODES))["items"]}
            assert nodes == {
                f"n{i + 1}": {"podCIDR": f"10.42.{i}.0/24", "podCIDRs": [f"10.42.{i}.0/24"]} for i in range(3)
            }
    finally:
        await srv.close()
    # A new server process on the same data: the used subnets are rebuilt from the Nodes, nothing is reused.
    srv = await start(cfg)
    try:
        async with ApiClient(load_kubeconfig(srv.kubeconfig)) as c:
            await c.create(NODES, {"metadata": {"name": "n4"}})
            assert await _cidr(c, "n4") == "10.42.3.0/24"
            for i in range(3):
                assert (await c.get(NODES, f"n{i + 1}"))["spec"]["podCIDR"] == f"10.42.{i}.0/24"
    finally:
        await srv.close()


async def test_ipam_frees_on_delete_and_reports_exhaustion(cluster_factory: Callable[..., Awaitable[Cluster]]) -> None:
    cl = await cluster_factory(cluster_cidr="10.42.0.0/23")  # room for two /24s
    c = cl.c
    for name in ("a", "b"):
        await c.create(NODES, {"metadata": {"name": name}})
        await _cidr(c, name)
    await c.create(NODES, {"metadata": {"name": "c"}})

    async def exhausted() -> Obj | None:
        node = await c.get(NODES, "c")
        unavailable = cond(node, "NetworkUnavailable")
        return node if unavailable and unavailable["status"] == "True" else None

    node_c = await until(exhausted, what="NetworkUnavailable on node c")
    assert not node_c["spec"].get("podCIDR")
    assert cond(node_c, "NetworkUnavailable")["reason"] == "NoCIDRAvailable"  # type: ignore[index]
    events = await until(lambda: cl.events(reason="CIDRNotAvailable", name="c"), what="CIDRNotAvailable event")
    assert events[0]["type"] == "Warning"
    assert events[0]["message"] == "Node c status is now: CIDRNotAvailable"
    assert events[0]["involvedObject"]["kind"] == "Node"

    # Deleting a node frees its subnet; the waiting node gets it and the condition clears.
    a_cidr = (await c.get(NODES, "a"))["spec"]["podCIDR"]
    await c.delete(NODES, "a")
    assert await _cidr(c, "c") == a_cidr == "10.42.0.0/24"

    async def cleared() -> bool:
        unavailable = cond(await c.get(NODES, "c"), "NetworkUnavailable")
        return bool(unavailable and unavailable["status"] == "False")

    await until(cleared, what="NetworkUnavailable=False on node c")
    assert (await c.get(NODES, "b"))["spec"]["podCIDR"] == "10.42.1.0/24"


# -- scheduler --------------------------------------------------------------------------------------------------
async def test_deployment_pods_spread_over_nodes(cluster: Cluster) -> None:
    c = cluster.c
    for name in ("n1", "n2", "n3"):
        await cluster.add_node(name)
    await c.create(DEPLOYMENTS, deployment("web", 3), "default")

    async def bound() -> list[Obj] | None:
        pods = await cluster.pods(selector="app=web")
        return pods if len(pods) == 3 and all(p["spec"].get("nodeName") for p in pods) else None

    pods = await until(bound, what="3 bound pods")
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["n1", "n2", "n3"]
    for p in pods:
        assert cond(p, "PodScheduled")["status"] == "True"  # type: ignore[index]
    name = pods[0]["metadata"]["name"]
    events = await until(lambda: cluster.events(reason="Scheduled", name=name), what="Scheduled event")
    assert events[0]["message"] == f"Successfully assigned default/{name} to {pods[0]['spec']['nodeName']}"
    assert events[0]["source"]["component"] == "default-scheduler"


async def test_scheduler_filters_and_failed_scheduling(cluster: Cluster) -> None:
    c = cluster.c
    await cluster.add_node("n1", labels={"disk": "ssd"})
    await cluster.add_node("n2", taints=[{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}])
    await cluster.add_node("n3", unschedulable=True)

    async def node_of(name: str) -> str:
        async def get() -> str:
            return str((await c.get(PODS, name, "default"))["spec"].get("nodeName") or "")

        return str(await until(get, what=f"pod {name} bound"))

    # nodeSelector
    await c.create(PODS, pod("ssd", nodeSelector={"disk": "ssd"}), "default")
    assert await node_of("ssd") == "n1"
    # Equal toleration; Exists with an empty key tolerates every taint.
    await c.create(
        PODS,
        pod(
            "infra",
            nodeSelector={"kubernetes.io/hostname": "n2"},
            tolerations=[{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
        ),
        "default",
    )
    await c.create(
        PODS,
        pod("anything", nodeSelector={"kubernetes.io/hostname": "n2"}, tolerations=[{"operator": "Exists"}]),
        "default",
    )
    assert await node_of("infra") == "n2"
    assert await node_of("anything") == "n2"

    # hostPort: the same port+protocol on the same node conflicts; another protocol does not.
    def with_port(protocol: str) -> list[Obj]:
        return [
            {
                "name": "c",
                "image": "nginx:1.25",
                "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": protocol}],
            }
        ]

    await c.create(PODS, pod("hp-tcp", nodeSelector={"disk": "ssd"}, containers=with_port("TCP")), "default")
    assert await node_of("hp-tcp") == "n1"
    await c.create(PODS, pod("hp-udp", nodeSelector={"disk": "ssd"}, containers=with_port("UDP")), "default")
    assert await node_of("hp-udp") == "n1"
    await c.create(PODS, pod("hp-clash", nodeSelector={"disk": "ssd"}, containers=with_port("TCP")), "default")

    # Fits nowhere: one reason per node, counted and sorted as kube-scheduler words it.
    await c.create(PODS, pod("picky", nodeSelector={"disk": "hdd"}), "default")
    picky = await until(
        lambda: cluster.events(reason="FailedScheduling", name="picky"), what="FailedScheduling for picky"
    )
    assert picky[0]["type"] == "Warning"
    assert picky[0]["message"] == (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {dedicated: infra}, 1 node(s) were unschedulable."
    )
    clash = await until(
        lambda: cluster.events(reason="FailedScheduling", name="hp-clash"), what="FailedScheduling for hp-clash"
    )
    assert clash[0]["message"] == (
        "0/3 nodes are available: 1 node(s) didn't have free ports for the requested pod ports, "
        "1 node(s) had untolerated taint {dedicated: infra}, 1 node(s) were unschedulable."
    )
    p = await c.get(PODS, "picky", "default")
    assert not p["spec"].get("nodeName")
    scheduled = cond(p, "PodScheduled")
    assert scheduled is not None and scheduled["status"] == "False" and scheduled["reason"] == "Unschedulable"
    assert scheduled["message"] == picky[0]["message"]

    # A node that changes is tried again: n3 becomes schedulable with the wanted label.
    await c.patch(NODES, "n3", {"metadata": {"labels": {"disk": "hdd"}}, "spec": {"unschedulable": None}})
    assert await node_of("picky") == "n3"
    # The port comes free when the pod holding it goes.
    await c.delete(PODS, "hp-tcp", "default", grace_period=0)
    assert await node_of("hp-clash") == "n1"

    # max-pods: a node full by its allocatable pod count takes no more (kube-scheduler's "Too many pods").
    await c.patch(NODES, "n2", {"status": {"allocatable": {"pods": "2"}}}, subresource="status")
    full = pod("one-too-many", nodeSelector={"kubernetes.io/hostname": "n2"}, tolerations=[{"operator": "Exists"}])
    await c.create(PODS, full, "default")
    too_many = await until(
        lambda: cluster.events(reason="FailedScheduling", name="one-too-many"), what="FailedScheduling for max-pods"
    )
    assert "1 Too many pods" in too_many[0]["message"]

    # pods/binding, which the scheduler binds through, refuses a pod that is already assigned.
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "ssd"}, "target": {"name": "n2"}}
    with pytest.raises(Conflict) as err:
        await c.request("POST", PODS.path("default", "ssd", "binding"), body=binding)
    assert (
        err.value.message
        == 'Operation cannot be fulfilled on pods/binding "ssd": pod ssd is already assigned to node "n1"'
    )


# -- workloads --------------------------------------------------------------------------------------------------
async def _rs_of(c: ApiClient, name: str) -> list[Obj]:
    items = (await c.list(REPLICASETS, "default"))["items"]
    return [rs for rs in items if any(r["name"] == name for r in rs["metadata"].get("ownerReferences") or [])]


async def test_deployment_scale_rollout_and_delete(cluster: Cluster) -> None:
    c = cluster.c
    for name in ("n1", "n2", "n3"):
        await cluster.add_node(name)
    async with FakeKubelet(cluster):
        await c.create(DEPLOYMENTS, deployment("web", 3), "default")
        # What users wait on: `kubectl rollout status` must see the rollout finish.
        rollout = (
            asyncio.create_task(cluster.kubectl("rollout", "status", "deployment/web", "--timeout=20s"))
            if HAVE_KUBECTL
            else None
        )

        async def rolled_out(replicas: int, generation: int | None = None) -> Obj | None:
            dep = await c.get(DEPLOYMENTS, "web", "default")
            st = dep.get("status", {})
            gen = generation or dep["metadata"]["generation"]
            done = (
                st.get("observedGeneration", 0) >= gen
                and st.get("replicas", 0) == replicas
                and st.get("updatedReplicas", 0) == replicas
                and st.get("readyReplicas", 0) == replicas
                and st.get("availableReplicas", 0) == replicas
            )
            return dep if done else None

        dep = await until(lambda: rolled_out(3), what="deployment 3/3")
        if rollout is not None:
            code, out = await rollout
            assert code == 0 and 'deployment "web" successfully rolled out' in out, out
            code, out = await cluster.kubectl("get", "deployment", "web", "--no-headers")
            assert code == 0 and out.split()[:4] == ["web", "3/3", "3", "3"], out
        available, progressing = cond(dep, "Available"), cond(dep, "Progressing")
        assert available and available["status"] == "True" and available["reason"] == "MinimumReplicasAvailable"
        assert progressing and progressing["reason"] == "NewReplicaSetAvailable"
        assert dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
        [rs] = await _rs_of(c, "web")
        pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
        assert re.fullmatch(r"[bcdfghjklmnpqrstvwxz2456789]{1,10}", pod_hash)
        assert rs["metadata"]["name"] == f"web-{pod_hash}"
        assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": pod_hash}
        assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
        ref = rs["metadata"]["ownerReferences"][0]
        assert ref["kind"] == "Deployment" and ref["controller"] is True and ref["blockOwnerDeletion"] is True
        assert rs["status"]["readyReplicas"] == 3 and rs["status"]["availableReplicas"] == 3
        assert (
            rs["status"]["fullyLabeledReplicas"] == 3
            and rs["status"]["observedGeneration"] == rs["metadata"]["generation"]
        )
        pods = await cluster.pods(selector="app=web")
        assert len(pods) == 3
        for p in pods:
            assert re.fullmatch(f"web-{pod_hash}-{POD_NAME}", p["metadata"]["name"])
            assert p["metadata"]["labels"]["pod-template-hash"] == pod_hash
            [pref] = p["metadata"]["ownerReferences"]
            assert pref["kind"] == "ReplicaSet" and pref["name"] == rs["metadata"]["name"]
            assert pref["controller"] is True and pref["blockOwnerDeletion"] is True

        # Scale 3 -> 1 -> 3.
        await c.patch(DEPLOYMENTS, "web", {"spec": {"replicas": 1}}, namespace="default")
        await until(lambda: rolled_out(1), what="deployment 1/1")

        async def pod_count(n: int, selector: str = "app=web") -> bool:
            return len(await cluster.pods(selector=selector)) == n

        await until(lambda: pod_count(1), what="1 pod")
        await c.patch(DEPLOYMENTS, "web", {"spec": {"replicas": 3}}, namespace="default")
        await until(lambda: rolled_out(3), what="deployment 3/3 again")
        await until(lambda: pod_count(3), what="3 pods")

        # A template change rolls out a new ReplicaSet; the old one ends at 0 and its pods go.
        await c.patch(
            DEPLOYMENTS,
            "web",
            {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}},
            namespace="default",
        )
        dep = await until(lambda: rolled_out(3), timeout=15, what="rollout to the new template")
        assert dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
        rss = {r["metadata"]["name"]: r for r in await _rs_of(c, "web")}
        assert len(rss) == 2
        old = rss.pop(rs["metadata"]["name"])
        [new] = rss.values()
        assert old["spec"]["replicas"] == 0
        assert new["spec"]["replicas"] == 3
        assert new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
        assert new["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"

        async def only_new_pods() -> bool:
            pods = await cluster.pods(selector="app=web", live=False)
            return len(pods) == 3 and all(
                p["metadata"]["ownerReferences"][0]["name"] == new["metadata"]["name"] for p in pods
            )

        await until(only_new_pods, what="old pods gone")
        scaling = await cluster.events(reason="ScalingReplicaSet", name="web")
        messages = {e["message"] for e in scaling}
        assert f"Scaled up replica set {old['metadata']['name']} from 0 to 3" in messages
        assert f"Scaled down replica set {old['metadata']['name']} from 1 to 0" in messages

        # revisionHistoryLimit: with 1, a third template leaves the current and one old ReplicaSet.
        await c.patch(
            DEPLOYMENTS,
            "web",
            {
                "spec": {
                    "revisionHistoryLimit": 1,
                    "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}},
                }
            },
            namespace="default",
        )
        dep = await until(lambda: rolled_out(3), timeout=15, what="rollout to the third template")
        assert dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"

        async def history() -> dict[str, str] | None:
            revs = {r["metadata"]["name"]: r["metadata"]["annotations"][REVISION] for r in await _rs_of(c, "web")}
            return revs if len(revs) == 2 else None

        revs = await until(history, what="oldest ReplicaSet deleted")
        assert sorted(revs.values()) == ["2", "3"] and new["metadata"]["name"] in revs

        # Deleting the Deployment garbage-collects its ReplicaSets and their pods.
        await c.delete(DEPLOYMENTS, "web", "default")

        async def all_gone() -> bool:
            return not await _rs_of(c, "web") and not await cluster.pods(selector="app=web", live=False)

        await until(all_gone, what="ReplicaSets and pods deleted")


async def test_recreate_strategy_replaces_all_pods(cluster: Cluster) -> None:
    c = cluster.c
    for name in ("n1", "n2"):
        await cluster.add_node(name)
    async with FakeKubelet(cluster, delete_delay=0.5):  # pods take a moment to stop, as real ones do
        body = deployment("rec", 2)
        body["spec"]["strategy"] = {"type": "Recreate"}
        await c.create(DEPLOYMENTS, body, "default")

        async def ready(n: int) -> Obj | None:
            dep = await c.get(DEPLOYMENTS, "rec", "default")
            st = dep.get("status", {})
            ok = st.get("observedGeneration") == dep["metadata"]["generation"] and st.get("availableReplicas") == n
            return dep if ok and st.get("updatedReplicas") == n and st.get("replicas") == n else None

        await until(lambda: ready(2), what="2 available")
        [first] = await _rs_of(c, "rec")
        # Watch the pods: no pod of the new template may exist while an old one still does.
        seen_overlap: list[str] = []
        inf = Informer(c, PODS, label_selector="app=rec")

        def check(*_: Obj) -> None:
            owners = {p["metadata"]["ownerReferences"][0]["name"] for p in inf.items()}
            if len(owners) > 1:
                seen_overlap.append(",".join(sorted(owners)))

        inf.on_add(check)
        inf.start()
        await inf.wait_synced(5)
        await c.patch(
            DEPLOYMENTS, "rec", {"spec": {"template": {"metadata": {"labels": {"v": "2"}}}}}, namespace="default"
        )
        await until(lambda: ready(2), timeout=15, what="recreated")
        await inf.stop()
        rss = await _rs_of(c, "rec")
        assert len(rss) == 2
        assert {r["metadata"]["name"]: r["spec"]["replicas"] for r in rss}[first["metadata"]["name"]] == 0
        assert seen_overlap == []


async def _bound(c: ApiClient, name: str) -> bool:
    return bool((await c.get(PODS, name, "default"))["spec"].get("nodeName"))


async def test_replicaset_adopts_orphans_and_removes_extras(cluster: Cluster) -> None:
    c = cluster.c
    await cluster.add_node("n1")
    await c.create(PODS, {"metadata": {"name": "orphan", "labels": {"app": "rs"}}, "spec": pod("x")["spec"]}, "default")
    rs_body = {
        "metadata": {"name": "rs"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "rs"}},
            "template": {"metadata": {"labels": {"app": "rs"}}, "spec": pod("x")["spec"]},
        },
    }
    await c.create(REPLICASETS, rs_body, "default")

    async def two() -> list[Obj] | None:
        pods = await cluster.pods(selector="app=rs")
        owned = [p for p in pods if (p["metadata"].get("ownerReferences") or [{}])[0].get("name") == "rs"]
        return pods if len(pods) == 2 and len(owned) == 2 else None

    pods = await until(two, what="orphan adopted + one created")
    assert "orphan" in {p["metadata"]["name"] for p in pods}
    # Both run; only the newer one is Ready. Scaling to 1 removes the not-ready pod first, although it is the
    # older one (newest-first applies only between pods that are equally ready).
    [other] = [p for p in pods if p["metadata"]["name"] != "orphan"]
    await until(lambda: _bound(c, "orphan"), what="orphan bound")
    await until(lambda: _bound(c, other["metadata"]["name"]), what="new pod bound")
    await cluster.mark_ready(await c.get(PODS, other["metadata"]["name"], "default"))
    await c.patch(PODS, "orphan", {"status": {"phase": "Running"}}, namespace="default", subresource="status")

    async def status_ready() -> bool:
        st = (await c.get(REPLICASETS, "rs", "default")).get("status", {})
        return st.get("readyReplicas") == 1 and st.get("replicas") == 2

    await until(status_ready, what="RS readyReplicas 1")
    await c.patch(REPLICASETS, "rs", {"spec": {"replicas": 1}}, namespace="default")

    async def one_left() -> list[Obj] | None:
        pods = await cluster.pods(selector="app=rs")
        return pods if len(pods) == 1 else None

    [left] = await until(one_left, what="scaled to 1")
    assert left["metadata"]["name"] == other["metadata"]["name"]
    deleted = await cluster.events(reason="SuccessfulDelete", name="rs")
    assert [e["message"] for e in deleted] == ["Deleted pod: orphan"]


async def test_daemonset_one_pod_per_eligible_node(cluster: Cluster) -> None:
    c = cluster.c
    await cluster.add_node("w1", labels={"role": "worker"})
    await cluster.add_node("w2", labels={"role": "worker"})
    await cluster.add_node(
        "gpu", labels={"role": "worker"}, taints=[{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]
    )
    await cluster.add_node("ctl", labels={"role": "control"})
    async with FakeKubelet(cluster):
        ds = {
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {"nodeSelector": {"role": "worker"}, "containers": [{"name": "a", "image": "busybox:1"}]},
                },
            },
        }
        await c.create(DAEMONSETS, ds, "default")

        async def placed(nodes: list[str]) -> list[Obj] | None:
            pods = await cluster.pods(selector="app=agent", live=False)
            st = (await c.get(DAEMONSETS, "agent", "default")).get("status", {})
            ok = (
                sorted(p["spec"].get("nodeName", "") for p in pods) == sorted(nodes)
                and st.get("desiredNumberScheduled") == len(nodes)
                and st.get("currentNumberScheduled") == len(nodes)
                and st.get("numberReady") == len(nodes)
                and st.get("numberAvailable") == len(nodes)
                and st.get("updatedNumberScheduled") == len(nodes)
                and st.get("numberMisscheduled") == 0
            )
            return pods if ok else None

        pods = await until(lambda: placed(["w1", "w2"]), what="pods on w1 and w2 only")
        for p in pods:
            assert re.fullmatch(f"agent-{POD_NAME}", p["metadata"]["name"])
            ref = p["metadata"]["ownerReferences"][0]
            assert ref["kind"] == "DaemonSet" and ref["controller"] is True
            tolerated = {(t["key"], t["effect"]) for t in p["spec"]["tolerations"]}
            assert {
                ("node.kubernetes.io/not-ready", "NoExecute"),
                ("node.kubernetes.io/unreachable", "NoExecute"),
                ("node.kubernetes.io/unschedulable", "NoSchedule"),
            } <= tolerated
        # A new eligible node gets a pod.
        await cluster.add_node("w3", labels={"role": "worker"})
        await until(lambda: placed(["w1", "w2", "w3"]), what="pod on the new node")
        # Tolerating the taint brings the tainted node in (the template change replaces the pods too).
        await c.patch(
            DAEMONSETS,
            "agent",
            {"spec": {"template": {"spec": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}}}},
            namespace="default",
        )
        await until(lambda: placed(["gpu", "w1", "w2", "w3"]), timeout=15, what="pod on the tolerated node")
        # A node that stops matching loses its pod; a node that goes away too.
        await c.patch(NODES, "w1", {"metadata": {"labels": {"role": "control"}}})
        await c.delete(NODES, "w2")
        await until(lambda: placed(["gpu", "w3"]), what="pods removed from w1 and w2")


# -- node lifecycle ---------------------------------------------------------------------------------------------
async def test_node_lifecycle_marks_silent_nodes(cluster_factory: Callable[..., Awaitable[Cluster]]) -> None:
    cl = await cluster_factory(node_monitor_grace_period=2)
    c = cl.c
    await cl.add_node("quiet")
    await cl.add_node("chatty")
    await c.create(PODS, pod("on-quiet", nodeName="quiet"), "default")
    await c.create(PODS, pod("on-chatty", nodeName="chatty"), "default")
    for name in ("on-quiet", "on-chatty"):
        await cl.mark_ready(await c.get(PODS, name, "default"))

    stop = asyncio.Event()

    async def heartbeat(node: str) -> None:
        while not stop.is_set():
            await cl.renew(node)
            await asyncio.sleep(0.5)

    chatty = asyncio.create_task(heartbeat("chatty"))
    quiet = asyncio.create_task(heartbeat("quiet"))
    try:
        # While leases are renewed, nothing happens, well past the grace period.
        await asyncio.sleep(3)
        for name in ("quiet", "chatty"):
            node = await c.get(NODES, name)
            assert cond(node, "Ready")["status"] == "True"  # type: ignore[index]
            assert not node["spec"].get("taints")
        quiet.cancel()

        async def unknown() -> Obj | None:
            node = await c.get(NODES, "quiet")
            ready = cond(node, "Ready")
            return node if ready and ready["status"] == "Unknown" and node["spec"].get("taints") else None

        node = await until(unknown, timeout=8, what="quiet node Unknown")
        ready = cond(node, "Ready")
        assert ready is not None
        assert ready["reason"] == "NodeStatusUnknown"
        assert ready["message"] == "Kubelet stopped posting node status."
        taints = node["spec"]["taints"]
        assert [(t["key"], t["effect"]) for t in taints] == [
            ("node.kubernetes.io/unreachable", "NoSchedule"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
        ]
        assert "timeAdded" in taints[1]

        async def pod_not_ready() -> bool:
            ready = cond(await c.get(PODS, "on-quiet", "default"), "Ready")
            return bool(ready and ready["status"] == "False")

        await until(pod_not_ready, what="pod on the quiet node not ready")
        assert cond(await c.get(PODS, "on-chatty", "default"), "Ready")["status"] == "True"  # type: ignore[index]
        assert cond(await c.get(NODES, "chatty"), "Ready")["status"] == "True"  # type: ignore[index]

        # The lease is renewed again: the taint goes (Ready=True is the agent's to set).
        await cl.renew("quiet")

        async def untainted() -> bool:
            return not (await c.get(NODES, "quiet"))["spec"].get("taints")

        await until(untainted, timeout=5, what="unreachable taint removed")
    finally:
        stop.set()
        quiet.cancel()
        await chatty
