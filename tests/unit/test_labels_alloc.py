"""Label selector parsing/matching and Service IP/port allocation."""

from __future__ import annotations

import pytest

from kwire.api.allocator import ServiceAllocator
from kwire.base.labels import NOTHING, SelectorError, from_label_selector, from_map, parse


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a!=b", {"a": "b"}, False),
        ("a in (x, y)", {"a": "y"}, True),
        ("a notin (x,y)", {"a": "z"}, True),
        ("a notin (x,y)", {}, True),
        ("a", {"a": ""}, True),
        ("!a", {"a": "1"}, False),
        ("!a,b=c", {"b": "c"}, True),
        ("tier notin (web),tier", {"tier": "db"}, True),
        ("tier notin (web),tier", {}, False),
        ("", {"x": "y"}, True),
    ],
)
def test_parse_and_match(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["a in x", "=b", "a=b,,", "a b"])
def test_parse_errors(text: str) -> None:
    with pytest.raises(SelectorError):
        parse(text)


def test_label_selector_object_forms() -> None:
    sel = from_label_selector(
        {"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}
    )
    assert sel.matches({"app": "x", "tier": "a"})
    assert not sel.matches({"app": "x"})
    assert from_label_selector({}).matches({"anything": "1"})
    assert from_label_selector(None) is NOTHING
    assert not from_map({}).matches({"a": "b"})
    assert from_map({"a": "b"}).matches({"a": "b", "c": "d"})


def test_cluster_ip_allocation_and_release() -> None:
    alloc = ServiceAllocator(service_cidr="10.43.0.0/16", node_port_range=(30000, 32767))
    svc = {"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}
    a, errs = alloc.allocate(svc, None)
    assert not errs
    ip = svc["spec"]["clusterIP"]
    # Dynamic addresses stay out of the static band, where 10.43.0.10 (kube-dns) lives.
    last_two = [int(x) for x in ip.split(".")[2:]]
    assert last_two[0] * 256 + last_two[1] >= 256
    dup = {"spec": {"type": "ClusterIP", "clusterIP": ip, "ports": [{"port": 80}]}}
    _, errs = alloc.allocate(dup, None)
    assert [str(e) for e in errs] == [
        f'spec.clusterIPs: Invalid value: []string{{"{ip}"}}: failed to allocate IP {ip}: provided IP is already allocated'
    ]
    outside = {"spec": {"type": "ClusterIP", "clusterIP": "10.99.0.1", "ports": [{"port": 80}]}}
    _, errs = alloc.allocate(outside, None)
    assert "The range of valid IPs is 10.43.0.0/16" in str(errs[0])
    alloc.release_for(svc)
    _, errs = alloc.allocate(dup, None)
    assert not errs


def test_node_port_allocation_update_and_conflicts() -> None:
    alloc = ServiceAllocator(service_cidr="10.43.0.0/16", node_port_range=(30000, 32767))
    svc = {"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}, {"port": 443}]}}
    _, errs = alloc.allocate(svc, None)
    assert not errs
    second = svc["spec"]["ports"][1]["nodePort"]
    assert 30000 <= second <= 32767 and second != 30080
    taken = {"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}}
    _, errs = alloc.allocate(taken, None)
    assert [str(e) for e in errs] == [
        "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
    ]
    # Failed allocations take nothing: the random port the failing request got is free again.
    assert len(alloc.ports) == 2
    # An update that drops a port releases it once committed; switching to ClusterIP drops them all.
    import copy

    old = copy.deepcopy(svc)
    new = {
        "spec": {"type": "ClusterIP", "clusterIP": svc["spec"]["clusterIP"], "ports": [{"port": 80, "nodePort": 30080}]}
    }
    a, errs = alloc.allocate(new, old)
    assert not errs and "nodePort" not in new["spec"]["ports"][0]
    alloc.commit_release(a)
    assert alloc.ports == set()
    assert new["spec"]["clusterIP"] == old["spec"]["clusterIP"]
