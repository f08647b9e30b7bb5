"""The Endpoints and EndpointSlice controllers against a real in-process server, no privileges.

Nodes are simulated as in test_controllers.py (a Ready Node and its Lease). Where a pod needs an address, the
test plays the kubelet: it patches the pod's status with a podIP and a Ready condition.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kwire.client import ApiClient, NotFound, load_kubeconfig
from kwire.client.client import DEPLOYMENTS, ENDPOINTS, ENDPOINTSLICES, PODS, SERVICES
from kwire.config import ServerConfig
from kwire.server import start
from tests.integration.apiserver import server_config
from tests.integration.test_controllers import HAVE_KUBECTL, Cluster, now, until

Obj = dict[str, Any]
SLICE_MANAGED_BY = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
EP_MANAGED_BY = {"endpoints.kubernetes.io/managed-by": "endpoint-controller"}


def _config(tmp_path: Path) -> ServerConfig:
    return server_config(tmp_path, token="endpoints-test")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    srv = await start(_config(tmp_path))
    assert srv.controllers is not None
    await srv.controllers.wait_started(10)
    cl = Cluster(srv, ApiClient(load_kubeconfig(srv.kubeconfig)))
    for n in ("n1", "n2", "n3"):
        await cl.add_node(n)
    try:
        yield cl
    finally:
        await cl.c.close()
        await srv.close()


# -- helpers -----------------------------------------------------------------------------------------------------
def service(name: str, selector: dict[str, str] | None, *, ports: list[Obj] | None = None, **spec: Any) -> Obj:
    body: Obj = {"ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080}], **spec}
    if selector is not None:
        body["selector"] = selector
    return {"metadata": {"name": name}, "spec": body}


def pod(name: str, labels: dict[str, str], node: str, ports: list[Obj] | None = None) -> Obj:
    container: Obj = {"name": "web", "image": "nginx:1.25"}
    if ports:
        container["ports"] = ports
    return {"metadata": {"name": name, "labels": labels}, "spec": {"nodeName": node, "containers": [container]}}


def pod_ref(p: Obj) -> Obj:
    """The targetRef an endpoint carries for pod `p` (in EndpointSlices and Endpoints alike)."""
    return {"kind": "Pod", "namespace": "default", "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]}


async def set_status(c: ApiClient, p: Obj, *, ip: str, ready: bool = True) -> Obj:
    """What the kubelet reports: Running, the pod's IP, and its Ready condition."""
    cond = {"type": "Ready", "status": "True" if ready else "False", "lastProbeTime": None, "lastTransitionTime": now()}
    return await c.patch(
        PODS,
        p["metadata"]["name"],
        {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [cond]}},
        namespace=p["metadata"].get("namespace") or "default",
        subresource="status",
    )


async def running(c: ApiClient, p: Obj, ip: str, *, ready: bool = True) -> Obj:
    created = await c.create(PODS, p, "default")
    return await set_status(c, created, ip=ip, ready=ready)


async def slices_of(c: ApiClient, svc: str) -> list[Obj]:
    out = await c.list(ENDPOINTSLICES, "default", label_selector=f"kubernetes.io/service-name={svc}")
    return sorted(out["items"], key=lambda s: s["metadata"]["name"])


def by_ip(slices: list[Obj]) -> dict[str, Obj]:
    return {e["addresses"][0]: e for s in slices for e in s["endpoints"] or []}


def conditions(slices: list[Obj]) -> dict[str, dict[str, bool]]:
    return {ip: e["conditions"] for ip, e in by_ip(slices).items()}


async def endpoints_of(c: ApiClient, name: str) -> Obj | None:
    try:
        return await c.get(ENDPOINTS, name, "default")
    except NotFound:
        return None


def ep_ips(ep: Obj | None, field: str = "addresses") -> list[str]:
    return [a["ip"] for ss in (ep or {}).get("subsets") or [] for a in ss.get(field) or []]


async def wait_slices(c: ApiClient, svc: str, want: dict[str, dict[str, bool]], what: str = "") -> list[Obj]:
    async def check() -> list[Obj] | None:
        slices = await slices_of(c, svc)
        return slices if conditions(slices) == want else None

    return list(await until(check, what=what or f"slices of {svc} with {want}"))


async def wait_endpoints(c: ApiClient, name: str, ready: list[str], not_ready: list[str] | None = None) -> Obj:
    async def check() -> Obj | None:
        ep = await endpoints_of(c, name)
        ok = ep is not None and ep_ips(ep) == ready and ep_ips(ep, "notReadyAddresses") == (not_ready or [])
        return ep if ok else None

    return dict(await until(check, what=f"endpoints {name}: ready {ready}, not ready {not_ready}"))


UP = {"ready": True, "serving": True, "terminating": False}
DOWN = {"ready": False, "serving": False, "terminating": False}


# -- tests -------------------------------------------------------------------------------------------------------
async def test_deployment_behind_a_service(cluster: Cluster) -> None:
    c = cluster.c
    svc = service(
        "web",
        {"app": "web"},
        ports=[
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        ],
    )
    svc["metadata"]["labels"] = {"tier": "front"}
    svc = await c.create(SERVICES, svc, "default")

    # No pods yet: one empty placeholder slice, as kube keeps; Endpoints without subsets.
    placeholder = (await until(lambda: slices_of(c, "web"), what="placeholder slice"))[0]
    assert placeholder["endpoints"] == [] and placeholder["ports"] == []
    assert (await until(lambda: endpoints_of(c, "web"), what="empty endpoints")).get("subsets") is None

    await c.create(
        DEPLOYMENTS,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": "nginx:1.25",
                                "ports": [{"name": "http", "containerPort": 8080}],
                            }
                        ]
                    },
                },
            },
        },
        "default",
    )

    async def bound() -> list[Obj] | None:
        pods = await cluster.pods(selector="app=web")
        return pods if len(pods) == 3 and all(p["spec"].get("nodeName") for p in pods) else None

    pods = sorted(await until(bound, what="3 bound pods"), key=lambda p: p["spec"]["nodeName"])
    ips = [f"10.42.{i}.5" for i in range(3)]
    for p, ip in zip(pods, ips, strict=True):
        await set_status(c, p, ip=ip)

    slices = await wait_slices(c, "web", dict.fromkeys(ips, UP))
    assert len(slices) == 1
    sl = slices[0]
    assert sl["metadata"]["name"] == placeholder["metadata"]["name"]  # the placeholder was filled, not replaced
    assert sl["metadata"]["name"].startswith("web-")
    assert sl["metadata"]["labels"] == {"tier": "front", "kubernetes.io/service-name": "web", **SLICE_MANAGED_BY}
    assert sl["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "name": "web",
            "uid": svc["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert sl["addressType"] == "IPv4"
    # The UDP port's targetPort is a number: every pod has it. The named one resolves to the container's 8080.
    assert sorted(sl["ports"], key=lambda p: p["name"]) == [
        {"name": "dns", "protocol": "UDP", "port": 5353},
        {"name": "http", "protocol": "TCP", "port": 8080},
    ]
    for p, ip in zip(pods, ips, strict=True):
        assert by_ip(slices)[ip] == {
            "addresses": [ip],
            "conditions": UP,
            "nodeName": p["spec"]["nodeName"],
            "targetRef": pod_ref(p),
        }

    ep = await wait_endpoints(c, "web", ips)
    assert ep["metadata"]["labels"] == {"tier": "front", **EP_MANAGED_BY}
    assert "ownerReferences" not in ep["metadata"]
    assert ep["subsets"] == [
        {
            "addresses": [
                {
                    "ip": ip,
                    "nodeName": p["spec"]["nodeName"],
                    "targetRef": pod_ref(p),
                }
                for p, ip in zip(pods, ips, strict=True)
            ],
            "ports": [
                {"name": "dns", "port": 5353, "protocol": "UDP"},
                {"name": "http", "port": 8080, "protocol": "TCP"},
            ],
        }
    ]

    if HAVE_KUBECTL:
        code, out = await cluster.kubectl("get", "endpoints", "web")
        assert code == 0, out
        lines = [line.split() for line in out.splitlines()]
        assert lines[0] == ["NAME", "ENDPOINTS", "AGE"]
        # Two ports x three addresses: the first three, then the count of the rest (kube's formatEndpoints).
        assert lines[1][:5] == ["web", "10.42.0.5:5353,10.42.1.5:5353,10.42.2.5:5353", "+", "3", "more..."]
        code, out = await cluster.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web")
        assert code == 0, out
        lines = [line.split() for line in out.splitlines()]
        assert lines[0] == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
        assert lines[1][0] == sl["metadata"]["name"] and lines[1][1] == "IPv4"
        assert sorted(lines[1][2].split(",")) == ["5353", "8080"]
        assert sorted(lines[1][3].split(",")) == ips


async def test_named_target_port_is_resolved_per_pod(cluster: Cluster) -> None:
    c = cluster.c
    await running(c, pod("a", {"app": "n"}, "n1", [{"name": "web", "containerPort": 8080}]), "10.42.0.10")
    await running(c, pod("b", {"app": "n"}, "n2", [{"name": "web", "containerPort": 9090}]), "10.42.1.10")
    # Same name, other protocol, and no port at all: neither pod has the Service's port, both are left out.
    await running(
        c, pod("c", {"app": "n"}, "n3", [{"name": "web", "containerPort": 7070, "protocol": "UDP"}]), "10.42.2.10"
    )
    await running(c, pod("d", {"app": "n"}, "n3"), "10.42.2.11")
    await c.create(
        SERVICES, service("named", {"app": "n"}, ports=[{"name": "http", "port": 80, "targetPort": "web"}]), "default"
    )

    slices = await wait_slices(c, "named", {"10.42.0.10": UP, "10.42.1.10": UP})
    assert len(slices) == 2
    ports = {s["endpoints"][0]["addresses"][0]: s["ports"] for s in slices}
    assert ports == {
        "10.42.0.10": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "10.42.1.10": [{"name": "http", "protocol": "TCP", "port": 9090}],
    }
    ep = await wait_endpoints(c, "named", ["10.42.0.10", "10.42.1.10"])
    assert [(ss["addresses"][0]["ip"], ss["ports"]) for ss in ep["subsets"]] == [
        ("10.42.0.10", [{"name": "http", "port": 8080, "protocol": "TCP"}]),
        ("10.42.1.10", [{"name": "http", "port": 9090, "protocol": "TCP"}]),
    ]


async def test_readiness_flip_and_publish_not_ready_addresses(cluster: Cluster) -> None:
    c = cluster.c
    a = await running(c, pod("a", {"app": "r"}, "n1"), "10.42.0.20")
    await running(c, pod("b", {"app": "r"}, "n2"), "10.42.1.20")
    await running(c, pod("pending", {"app": "r"}, "n3"), "10.42.2.20", ready=False)
    # Pods without an IP, or finished, are not endpoints.
    await c.create(PODS, pod("no-ip", {"app": "r"}, "n3"), "default")
    done = await running(c, pod("done", {"app": "r"}, "n3"), "10.42.2.21")
    await c.patch(PODS, "done", {"status": {"phase": "Succeeded"}}, namespace="default", subresource="status")
    assert done["status"]["podIP"] == "10.42.2.21"
    await c.create(SERVICES, service("r", {"app": "r"}), "default")

    await wait_slices(c, "r", {"10.42.0.20": UP, "10.42.1.20": UP, "10.42.2.20": DOWN})
    await wait_endpoints(c, "r", ["10.42.0.20", "10.42.1.20"], ["10.42.2.20"])

    await set_status(c, a, ip="10.42.0.20", ready=False)
    await wait_slices(c, "r", {"10.42.0.20": DOWN, "10.42.1.20": UP, "10.42.2.20": DOWN})
    ep = await wait_endpoints(c, "r", ["10.42.1.20"], ["10.42.0.20", "10.42.2.20"])
    assert ep["subsets"][0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]

    # publishNotReadyAddresses: every endpoint is ready (serving still tells the truth); Endpoints lists all.
    await c.patch(SERVICES, "r", {"spec": {"publishNotReadyAddresses": True}}, namespace="default")
    published = {"ready": True, "serving": False, "terminating": False}
    await wait_slices(c, "r", {"10.42.0.20": published, "10.42.1.20": UP, "10.42.2.20": published})
    await wait_endpoints(c, "r", ["10.42.0.20", "10.42.1.20", "10.42.2.20"])


async def test_terminating_pod_stays_as_serving_terminating(cluster: Cluster) -> None:
    c = cluster.c
    old = await running(c, pod("old", {"app": "t"}, "n1"), "10.42.0.30")
    await running(c, pod("new", {"app": "t"}, "n2"), "10.42.1.30")
    await c.create(SERVICES, service("t", {"app": "t"}), "default")
    await wait_slices(c, "t", {"10.42.0.30": UP, "10.42.1.30": UP})

    # A bound pod is deleted gracefully: with no kubelet to confirm it, it stays with a deletionTimestamp.
    await c.delete(PODS, "old", "default")
    assert (await c.get(PODS, "old", "default"))["metadata"].get("deletionTimestamp")
    leaving = {"ready": False, "serving": True, "terminating": True}
    await wait_slices(c, "t", {"10.42.0.30": leaving, "10.42.1.30": UP})
    await wait_endpoints(c, "t", ["10.42.1.30"])  # terminating pods are not in Endpoints at all

    await set_status(c, old, ip="10.42.0.30", ready=False)
    await wait_slices(c, "t", {"10.42.0.30": {"ready": False, "serving": False, "terminating": True}, "10.42.1.30": UP})

    # Confirmed gone: it leaves the slice.
    await c.delete(PODS, "old", "default", grace_period=0)
    await wait_slices(c, "t", {"10.42.1.30": UP})


async def test_many_pods_are_split_into_slices_of_at_most_100(cluster: Cluster) -> None:
    c = cluster.c
    n = 250
    sem = asyncio.Semaphore(32)
    ips = [f"10.42.{i // 200}.{i % 200 + 2}" for i in range(n)]

    async def one(i: int) -> None:
        async with sem:
            await running(c, pod(f"p{i:03d}", {"app": "many"}, f"n{i % 3 + 1}"), ips[i])

    await asyncio.gather(*(one(i) for i in range(n)))
    # The controllers' pod cache must show them all before the Service appears, so the first sync sees all of
    # them (pods arriving in batches may be spread over more slices, by kube's fill rules as well).
    assert cluster.server.controllers is not None
    cache = cluster.server.controllers.informers.get(PODS)

    async def cached() -> bool:
        return sum(1 for p in cache.items() if p.get("status", {}).get("podIP")) == n

    await until(cached, what="all pods in the controllers' cache")
    await c.create(SERVICES, service("many", {"app": "many"}), "default")

    slices = await wait_slices(c, "many", dict.fromkeys(ips, UP))
    assert sorted(len(s["endpoints"]) for s in slices) == [50, 100, 100]
    assert all(s["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}] for s in slices)
    ep = await wait_endpoints(c, "many", sorted(ips))
    assert len(ep["subsets"]) == 1 and "endpoints.kubernetes.io/over-capacity" not in ep["metadata"].get(
        "annotations", {}
    )

    # Scaling down shrinks the slices in place: no slice is added or replaced.
    names = [s["metadata"]["name"] for s in slices]
    await asyncio.gather(*(c.delete(PODS, f"p{i:03d}", "default", grace_period=0) for i in range(0, n, 5)))
    left = {ip: UP for i, ip in enumerate(ips) if i % 5}
    slices = await wait_slices(c, "many", left)
    assert [s["metadata"]["name"] for s in slices] == names

    if HAVE_KUBECTL:
        code, out = await cluster.kubectl("get", "endpoints", "many", "--no-headers")
        assert code == 0, out
        first = ",".join(f"{ip}:8080" for ip in sorted(left)[:3])  # sorted as kube sorts: by the IP's bytes
        assert out.split()[:5] == ["many", first, "+", "197", "more..."]


async def test_selector_and_label_changes_move_pods(cluster: Cluster) -> None:
    c = cluster.c
    await running(c, pod("p1", {"app": "a"}, "n1"), "10.42.0.40")
    await running(c, pod("p2", {"app": "b"}, "n2"), "10.42.1.40")
    await c.create(SERVICES, service("sel", {"app": "a"}), "default")
    first = await wait_slices(c, "sel", {"10.42.0.40": UP})
    await wait_endpoints(c, "sel", ["10.42.0.40"])

    await c.patch(SERVICES, "sel", {"spec": {"selector": {"app": "b"}}}, namespace="default")
    after = await wait_slices(c, "sel", {"10.42.1.40": UP})
    assert [s["metadata"]["name"] for s in after] == [s["metadata"]["name"] for s in first]  # updated in place
    await wait_endpoints(c, "sel", ["10.42.1.40"])

    await c.patch(PODS, "p1", {"metadata": {"labels": {"app": "b"}}}, namespace="default")
    await wait_slices(c, "sel", {"10.42.0.40": UP, "10.42.1.40": UP})
    await wait_endpoints(c, "sel", ["10.42.0.40", "10.42.1.40"])

    await c.patch(PODS, "p2", {"metadata": {"labels": {"app": "c"}}}, namespace="default")
    await wait_slices(c, "sel", {"10.42.0.40": UP})
    await wait_endpoints(c, "sel", ["10.42.0.40"])

    # Ports change: the slice is rewritten with the new port, still the same object.
    await c.patch(
        SERVICES, "sel", {"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 9000}]}}, namespace="default"
    )

    async def new_port() -> list[Obj] | None:
        slices = await slices_of(c, "sel")
        return slices if [s["ports"] for s in slices] == [[{"name": "http", "protocol": "TCP", "port": 9000}]] else None

    slices = await until(new_port, what="slice with port 9000")
    assert conditions(slices) == {"10.42.0.40": UP}
    assert [s["metadata"]["name"] for s in slices] == [s["metadata"]["name"] for s in first]


async def test_services_without_selector_are_left_alone(cluster: Cluster) -> None:
    c = cluster.c
    kube_ep = await c.get(ENDPOINTS, "kubernetes", "default")
    kube_slice = await c.get(ENDPOINTSLICES, "kubernetes", "default")
    await running(c, pod("p", {"app": "x"}, "n1"), "10.42.0.50")
    await c.create(SERVICES, service("manual", None, ports=[{"port": 80}]), "default")
    await c.create(
        SERVICES,
        {"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}},
        "default",
    )
    user_ep = await c.create(
        ENDPOINTS,
        {"metadata": {"name": "manual"}, "subsets": [{"addresses": [{"ip": "192.168.1.10"}], "ports": [{"port": 80}]}]},
        "default",
    )
    user_slice = await c.create(
        ENDPOINTSLICES,
        {
            "metadata": {"name": "manual-1", "labels": {"kubernetes.io/service-name": "manual"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.168.1.10"]}],
            "ports": [{"port": 80}],
        },
        "default",
    )
    # A Service with a selector created afterwards is handled: the controllers are running and have seen
    # everything before it.
    await c.create(SERVICES, service("probe", {"app": "x"}), "default")
    await wait_slices(c, "probe", {"10.42.0.50": UP})
    await wait_endpoints(c, "probe", ["10.42.0.50"])
    await asyncio.sleep(0.3)

    assert await c.get(ENDPOINTS, "manual", "default") == user_ep
    assert await slices_of(c, "manual") == [user_slice]
    assert await endpoints_of(c, "ext") is None and await slices_of(c, "ext") == []
    assert (await c.get(ENDPOINTS, "kubernetes", "default"))["metadata"]["resourceVersion"] == kube_ep["metadata"][
        "resourceVersion"
    ]
    assert (await c.get(ENDPOINTSLICES, "kubernetes", "default"))["metadata"]["resourceVersion"] == kube_slice[
        "metadata"
    ]["resourceVersion"]

    # Deleting the Service keeps the user's Endpoints (not the controller's); their slice has no owner to go with.
    await c.delete(SERVICES, "manual", "default")
    await asyncio.sleep(0.3)
    assert await c.get(ENDPOINTS, "manual", "default") == user_ep
    assert await slices_of(c, "manual") == [user_slice]


async def test_deleting_a_service_removes_its_slices_and_endpoints(cluster: Cluster) -> None:
    c = cluster.c
    for i in range(3):
        await running(c, pod(f"d{i}", {"app": "d"}, f"n{i + 1}"), f"10.42.{i}.60")
    await c.create(SERVICES, service("gone", {"app": "d"}), "default")
    await wait_slices(c, "gone", {f"10.42.{i}.60": UP for i in range(3)})
    await wait_endpoints(c, "gone", [f"10.42.{i}.60" for i in range(3)])

    await c.delete(SERVICES, "gone", "default")

    async def cleaned() -> bool:
        return not await slices_of(c, "gone") and await endpoints_of(c, "gone") is None

    await until(cleaned, what="slices and endpoints of the deleted service gone")
    # A new Service of the same name starts over with new objects.
    svc = await c.create(SERVICES, service("gone", {"app": "d"}), "default")
    slices = await wait_slices(c, "gone", {f"10.42.{i}.60": UP for i in range(3)})
    assert slices[0]["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]


async def test_nothing_is_written_when_nothing_changed(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    c = cluster.c
    a = await running(c, pod("a", {"app": "q"}, "n1"), "10.42.0.70")
    await running(c, pod("b", {"app": "q"}, "n2"), "10.42.1.70")
    await c.create(SERVICES, service("quiet", {"app": "q"}), "default")
    await wait_slices(c, "quiet", {"10.42.0.70": UP, "10.42.1.70": UP})
    await wait_endpoints(c, "quiet", ["10.42.0.70", "10.42.1.70"])
    await asyncio.sleep(0.3)  # let any echo of the controllers' own writes go by
    slices = await slices_of(c, "quiet")
    ep = await c.get(ENDPOINTS, "quiet", "default")

    # Every request the controllers send: a write of equal content would keep the resourceVersion (the API
    # writes nothing for a no-op update), so the requests themselves are what must not happen.
    assert cluster.server.controllers is not None
    ctl_client = cluster.server.controllers.client
    sent = ctl_client.request
    writes: list[str] = []

    async def spy(method: str, path: str, **kw: Any) -> Obj:
        # Only this test's namespace: the add-ons' Services in kube-system get their endpoints whenever their
        # pods turn ready, which is a change.
        if method != "GET" and "/endpoint" in path and "/namespaces/default/" in path:
            writes.append(f"{method} {path}")
        return await sent(method, path, **kw)

    monkeypatch.setattr(ctl_client, "request", spy)

    # An annotation, then a label the selector does not look at (the Service is synced again for that one),
    # then a change to the Service's metadata (synced again too): the endpoints are the same.
    await c.patch(PODS, "a", {"metadata": {"annotations": {"note": "x"}}}, namespace="default")
    await c.patch(PODS, "b", {"metadata": {"labels": {"extra": "1"}}}, namespace="default")
    await c.patch(SERVICES, "quiet", {"metadata": {"annotations": {"note": "y"}}}, namespace="default")
    await asyncio.sleep(0.5)
    assert writes == []
    assert await slices_of(c, "quiet") == slices
    assert await c.get(ENDPOINTS, "quiet", "default") == ep

    # The controllers are alive: a change that matters is written, once per object.
    await set_status(c, a, ip="10.42.0.70", ready=False)
    after = await wait_slices(c, "quiet", {"10.42.0.70": DOWN, "10.42.1.70": UP})
    assert after[0]["metadata"]["resourceVersion"] != slices[0]["metadata"]["resourceVersion"]
    await wait_endpoints(c, "quiet", ["10.42.1.70"], ["10.42.0.70"])
    await asyncio.sleep(0.3)
    name = slices[0]["metadata"]["name"]
    assert sorted(writes) == [
        "PUT /api/v1/namespaces/default/endpoints/quiet",
        f"PUT /apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{name}",
    ]


async def test_restart_writes_nothing_and_removes_leftover_endpoints(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    srv = await start(cfg)
    try:
        assert srv.controllers is not None
        await srv.controllers.wait_started(10)
        async with ApiClient(load_kubeconfig(srv.kubeconfig)) as c:
            await Cluster(srv, c).add_node("n1")
            await running(c, pod("a", {"app": "k"}, "n1"), "10.42.0.80")
            await running(c, pod("b", {"app": "k"}, "n1"), "10.42.0.81")
            await c.create(SERVICES, service("keep", {"app": "k"}), "default")
            await c.create(SERVICES, service("gone", {"app": "k"}), "default")
            for name in ("keep", "gone"):
                await wait_slices(c, name, {"10.42.0.80": UP, "10.42.0.81": UP})
                await wait_endpoints(c, name, ["10.42.0.80", "10.42.0.81"])
            await asyncio.sleep(0.3)
            slices = await slices_of(c, "keep")
            ep = await c.get(ENDPOINTS, "keep", "default")
            # The Service goes while no controller runs: its slices go with it (garbage collector, in the API
            # server), its Endpoints stay behind until the controller starts again.
            await srv.controllers.stop()
            await c.delete(SERVICES, "gone", "default")
            await until(lambda: _no_slices(c, "gone"), what="slices of the deleted service collected")
            assert await endpoints_of(c, "gone") is not None
    finally:
        await srv.close()

    srv = await start(cfg)
    try:
        assert srv.controllers is not None
        await srv.controllers.wait_started(10)
        async with ApiClient(load_kubeconfig(srv.kubeconfig)) as c:
            await until(lambda: _no_endpoints(c, "gone"), what="leftover endpoints deleted")
            await asyncio.sleep(0.3)
            assert await slices_of(c, "keep") == slices
            assert await c.get(ENDPOINTS, "keep", "default") == ep
    finally:
        await srv.close()


async def _no_slices(c: ApiClient, svc: str) -> bool:
    return not await slices_of(c, svc)


async def _no_endpoints(c: ApiClient, name: str) -> bool:
    return await endpoints_of(c, name) is None
