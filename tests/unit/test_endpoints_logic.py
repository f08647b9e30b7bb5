"""Unit tests of the Endpoints and EndpointSlice controllers' pure parts: target port resolution, the slice
reconciler's plans (fill rules, placeholder, reuse, port groups), Endpoints repacking and truncation, the
tracker of the controllers' own writes, and kubectl's columns for both kinds."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from typing import Any

from kwire.api.registry import by_path
from kwire.api.tables import row
from kwire.controllers.endpoints import desired_subsets, repack, truncate
from kwire.controllers.endpointslices import SlicePlan, plan_slices
from kwire.controllers.endpointsutil import WriteTracker, find_port

Obj = dict[str, Any]
_rv = itertools.count(100)

SVC: Obj = {
    "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"tier": "front"}},
    "spec": {
        "selector": {"app": "web"},
        "clusterIP": "10.43.0.10",
        "ipFamilies": ["IPv4"],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
    },
}


def pod(i: int, *, port: int = 8080, ready: bool = True, node: str = "n1", deleting: bool = False) -> Obj:
    meta: Obj = {"name": f"p{i:03d}", "namespace": "default", "uid": f"uid-{i}", "labels": {"app": "web"}}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
        "status": {
            "phase": "Running",
            "podIP": f"10.42.{i // 250}.{i % 250 + 1}",
            "podIPs": [{"ip": f"10.42.{i // 250}.{i % 250 + 1}"}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def plan(pods: list[Obj], existing: list[Obj], svc: Obj = SVC) -> SlicePlan:
    return plan_slices(svc, pods, existing, node_known=lambda n: n in ("n1", "n2"))


def apply(p: SlicePlan, existing: list[Obj]) -> list[Obj]:
    """What the API would hold after the plan: names for created slices, new resourceVersions."""
    by_name = {s["metadata"]["name"]: s for s in existing}
    for s in p.delete:
        del by_name[s["metadata"]["name"]]
    for s in p.update:
        assert s["metadata"]["name"] in by_name
        by_name[s["metadata"]["name"]] = {
            **copy.deepcopy(s),
            "metadata": {**s["metadata"], "resourceVersion": str(next(_rv))},
        }
    for i, s in enumerate(p.create):
        name = f"{s['metadata']['generateName']}{next(_rv)}x{i}"
        by_name[name] = {**copy.deepcopy(s), "metadata": {**s["metadata"], "name": name, "resourceVersion": "1"}}
    return list(by_name.values())


def sizes(slices: list[Obj]) -> list[int]:
    return sorted(len(s["endpoints"]) for s in slices)


def idle(p: SlicePlan) -> bool:
    return not (p.create or p.update or p.delete)


def test_find_port_by_number_name_protocol_and_sidecar() -> None:
    p = {
        "spec": {
            "containers": [{"name": "a", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}],
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "ports": [{"name": "metrics", "containerPort": 9100}]},
                {"name": "init", "ports": [{"name": "setup", "containerPort": 7000}]},
            ],
        }
    }
    assert find_port(p, {"port": 80, "targetPort": 8080}) == 8080
    assert find_port(p, {"port": 80}) == 80
    assert find_port(p, {"port": 53, "protocol": "UDP", "targetPort": "dns"}) == 53
    assert find_port(p, {"port": 53, "protocol": "TCP", "targetPort": "dns"}) is None
    assert find_port(p, {"port": 9100, "targetPort": "metrics"}) == 9100
    assert find_port(p, {"port": 7000, "targetPort": "setup"}) is None  # a plain init container serves nothing


def test_placeholder_when_nothing_is_selected_and_kept() -> None:
    p = plan([], [])
    assert [(s["endpoints"], s["ports"]) for s in p.create] == [([], [])]
    assert p.create[0]["metadata"]["generateName"] == "web-"
    existing = apply(p, [])
    assert idle(plan([], existing))
    # The first endpoints fill the placeholder instead of replacing it.
    p = plan([pod(1)], existing)
    assert not p.create and not p.delete and len(p.update) == 1
    assert p.update[0]["metadata"]["name"] == existing[0]["metadata"]["name"]
    assert p.update[0]["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]
    # And when they all go, the last slice becomes the placeholder again.
    existing = apply(p, existing)
    p = plan([], existing)
    assert [(s["endpoints"], s["ports"]) for s in p.update] == [([], [])] and not p.create and not p.delete


def test_slices_of_at_most_100_and_no_churn() -> None:
    pods = [pod(i) for i in range(250)]
    p = plan(pods, [])
    assert sizes(p.create) == [50, 100, 100] and not p.update and not p.delete
    existing = apply(p, [])
    assert idle(plan(pods, existing))

    # 30 more: they fit the slice with 50 (the one closest to full that takes them all).
    more = pods + [pod(i) for i in range(250, 280)]
    p = plan(more, existing)
    assert not p.create and not p.delete and [len(s["endpoints"]) for s in p.update] == [80]

    # One pod not ready: only its slice is written, with only that endpoint changed.
    changed = [pod(7, ready=False) if i == 7 else x for i, x in enumerate(pods)]
    p = plan(changed, existing)
    assert len(p.update) == 1 and not p.create and not p.delete
    old = next(s for s in existing if s["metadata"]["name"] == p.update[0]["metadata"]["name"])
    diff = [(a, b) for a, b in zip(old["endpoints"], p.update[0]["endpoints"], strict=True) if a != b]
    assert diff == [
        (diff[0][0], {**diff[0][0], "conditions": {"ready": False, "serving": False, "terminating": False}})
    ]

    # A removed pod leaves a gap that a new pod fills in the same write.
    swapped = [x for x in pods if x["metadata"]["name"] != "p003"] + [pod(300)]
    p = plan(swapped, existing)
    assert len(p.update) == 1 and not p.create and not p.delete
    assert len(p.update[0]["endpoints"]) == 100


def test_conditions_terminating_publish_and_unknown_nodes() -> None:
    pods = [pod(1, deleting=True), pod(2, ready=False, deleting=True), pod(3, node="gone"), pod(4, ready=False)]
    p = plan(pods, [])
    assert p.skipped == ["default/p003"]
    eps = {e["targetRef"]["name"]: e for s in p.create for e in s["endpoints"]}
    assert eps["p001"]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert eps["p002"]["conditions"] == {"ready": False, "serving": False, "terminating": True}
    assert eps["p004"]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert eps["p001"]["nodeName"] == "n1" and eps["p001"]["targetRef"] == {
        "kind": "Pod",
        "namespace": "default",
        "name": "p001",
        "uid": "uid-1",
    }
    publish = copy.deepcopy(SVC)
    publish["spec"]["publishNotReadyAddresses"] = True
    p = plan(pods, [], publish)
    assert not p.skipped  # published addresses do not wait for their node
    assert {e["targetRef"]["name"]: e["conditions"]["ready"] for s in p.create for e in s["endpoints"]} == {
        "p001": True,
        "p002": True,
        "p003": True,
        "p004": True,
    }


def test_port_groups_foreign_slices_and_address_types() -> None:
    p = plan([pod(1, port=8080), pod(2, port=9090), pod(3, port=8080)], [])
    assert sorted((s["ports"][0]["port"], len(s["endpoints"])) for s in p.create) == [(8080, 2), (9090, 1)]
    existing = apply(p, [])
    # A slice left by an earlier Service of the same name (another uid) is replaced; one of an address type the
    # Service does not have is deleted.
    foreign = copy.deepcopy(existing[0])
    foreign["metadata"]["name"] = "web-old"
    foreign["metadata"]["ownerReferences"][0]["uid"] = "old-uid"
    v6 = copy.deepcopy(existing[0])
    v6["metadata"]["name"] = "web-v6"
    v6["addressType"] = "IPv6"
    p = plan([pod(1, port=8080), pod(2, port=9090), pod(3, port=8080)], [*existing, foreign, v6])
    assert sorted(s["metadata"]["name"] for s in p.delete) == ["web-old", "web-v6"] and idle(
        SlicePlan(p.create, p.update, [])
    )
    # Labels follow the Service's.
    relabelled = copy.deepcopy(SVC)
    relabelled["metadata"]["labels"] = {"tier": "back"}
    p = plan([pod(1, port=8080), pod(2, port=9090), pod(3, port=8080)], existing, relabelled)
    assert len(p.update) == 2 and all(s["metadata"]["labels"]["tier"] == "back" for s in p.update)


def test_endpoints_repack_and_truncate() -> None:
    svc = copy.deepcopy(SVC)
    svc["spec"]["ports"].append({"name": "admin", "port": 81, "protocol": "TCP", "targetPort": 9000})
    pods = [pod(2), pod(1, ready=False), pod(3, deleting=True)]
    pods[0]["spec"]["containers"][0]["ports"] = []  # p002 has no "http": only the admin port
    subsets = desired_subsets(svc, pods)
    assert [
        (
            [a["ip"] for a in ss.get("addresses", [])],
            [a["ip"] for a in ss.get("notReadyAddresses", [])],
            [p["name"] for p in ss["ports"]],
        )
        for ss in subsets
    ] == [(["10.42.0.3"], ["10.42.0.2"], ["admin"]), ([], ["10.42.0.2"], ["http"])]
    # The same address listed ready and not ready for a port is not ready there; other ports keep their own.
    a: Obj = {"ip": "10.0.0.1", "targetRef": {"uid": "u"}}
    port_a, port_b = {"name": "a", "port": 1, "protocol": "TCP"}, {"name": "b", "port": 2, "protocol": "TCP"}
    assert repack([(a, True, port_a), (a, False, port_a), (a, True, port_b)]) == [
        {"notReadyAddresses": [a], "ports": [port_a]},
        {"addresses": [a], "ports": [port_b]},
    ]

    big: list[Obj] = [
        {"addresses": [{"ip": f"10.0.{i // 250}.{i % 250}"} for i in range(900)], "ports": [port_a]},
        {"addresses": [{"ip": "10.1.0.1"}], "notReadyAddresses": [{"ip": f"10.2.0.{i}"} for i in range(200)]},
    ]
    assert truncate(big)
    assert sum(len(ss.get("addresses", [])) for ss in big) == 901
    assert sum(len(ss.get("notReadyAddresses", [])) for ss in big) == 99
    assert not truncate([{"addresses": [{"ip": "10.0.0.1"}]}])


def test_write_tracker_waits_for_the_cache() -> None:
    t = WriteTracker()
    t.wrote("ns/web", {"metadata": {"name": "web-a", "resourceVersion": "10"}})
    t.deleted("ns/web", "web-b")
    old_b = {"metadata": {"name": "web-b", "resourceVersion": "5"}}
    assert t.stale("ns/web", {"web-b": old_b})
    assert t.observed("ns/web", {"metadata": {"name": "web-a", "resourceVersion": "9"}}, deleted=False)  # older
    assert t.observed("ns/web", {"metadata": {"name": "web-a", "resourceVersion": "10"}}, deleted=False)  # echo
    assert t.stale("ns/web", {"web-a": {"metadata": {"name": "web-a", "resourceVersion": "10"}}, "web-b": old_b})
    assert t.observed("ns/web", old_b, deleted=True)
    assert not t.stale("ns/web", {"web-a": {"metadata": {"name": "web-a", "resourceVersion": "10"}}})
    # Someone else's change is not an echo.
    t.wrote("ns/web", {"metadata": {"name": "web-a", "resourceVersion": "12"}})
    assert not t.observed("ns/web", {"metadata": {"name": "web-a", "resourceVersion": "13"}}, deleted=False)
    assert not t.stale("ns/web", {})  # nothing expected any more


def test_kubectl_columns() -> None:
    now = dt.datetime(2024, 1, 1, 0, 1, tzinfo=dt.UTC)
    meta = {"name": "web", "creationTimestamp": "2024-01-01T00:00:00Z"}
    ep_kind = by_path("", "v1", "endpoints")
    es_kind = by_path("discovery.k8s.io", "v1", "endpointslices")
    assert ep_kind is not None and es_kind is not None
    addrs = [{"ip": f"10.42.{i}.5"} for i in range(3)]
    two_ports = {"metadata": meta, "subsets": [{"addresses": addrs, "ports": [{"port": 80}, {"port": 443}]}]}
    assert row(ep_kind, two_ports, now=now)["cells"] == [
        "web",
        "10.42.0.5:80,10.42.1.5:80,10.42.2.5:80 + 3 more...",
        "60s",
    ]
    assert row(ep_kind, {"metadata": meta}, now=now)["cells"][1] == "<none>"
    assert row(ep_kind, {"metadata": meta, "subsets": [{"notReadyAddresses": addrs}]}, now=now)["cells"][1] == ""
    v6 = {"metadata": meta, "subsets": [{"addresses": [{"ip": "fd00::5"}], "ports": [{"port": 80}]}]}
    assert row(ep_kind, v6, now=now)["cells"][1] == "[fd00::5]:80"

    sl = {
        "metadata": meta,
        "addressType": "IPv4",
        "ports": [{"port": 80}, {"name": "named"}, {}, {"port": 1}],
        "endpoints": [{"addresses": [a["ip"]]} for a in addrs] + [{"addresses": ["10.42.3.5"]}],
    }
    assert row(es_kind, sl, now=now)["cells"] == [
        "web",
        "IPv4",
        "80,named,* + 1 more...",
        "10.42.0.5,10.42.1.5,10.42.2.5 + 1 more...",
        "60s",
    ]
    placeholder = {"metadata": meta, "addressType": "IPv4", "ports": None, "endpoints": None}
    assert row(es_kind, placeholder, now=now)["cells"][2:4] == ["<unset>", "<unset>"]
