"""Discovery of aggregated APIs (kube-aggregator's merge): an Available APIService's group version appears in
/apis, /apis/<group>, its resource list and aggregated discovery (v2) with the backend's own resources; nothing
is listed once it is unavailable again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kwire.api import discovery
from kwire.metricsserver.model import resource_list


@pytest.fixture
def metrics_api() -> Iterator[None]:
    discovery.set_aggregated({"metrics.k8s.io": {"v1beta1": resource_list()}})
    try:
        yield
    finally:
        discovery.set_aggregated({})


def test_an_available_apiservice_is_discovered(metrics_api: None) -> None:
    groups = {g["name"]: g for g in discovery.api_group_list()["groups"]}
    assert groups["metrics.k8s.io"]["preferredVersion"] == {
        "groupVersion": "metrics.k8s.io/v1beta1",
        "version": "v1beta1",
    }
    assert discovery.api_group("metrics.k8s.io") is not None
    assert [r["name"] for r in (discovery.resource_list("metrics.k8s.io", "v1beta1") or {})["resources"]] == [
        "nodes",
        "pods",
    ]
    agg = discovery.aggregated_discovery(core=False)
    item = next(i for i in agg["items"] if i["metadata"]["name"] == "metrics.k8s.io")
    pods = next(r for r in item["versions"][0]["resources"] if r["resource"] == "pods")
    assert pods["scope"] == "Namespaced" and pods["verbs"] == ["get", "list"]
    assert pods["responseKind"] == {"group": "metrics.k8s.io", "version": "v1beta1", "kind": "PodMetrics"}
    # built-in groups are untouched
    assert discovery.resource_list("apps", "v1") is not None


def test_nothing_is_listed_when_unavailable() -> None:
    discovery.set_aggregated({})
    assert "metrics.k8s.io" not in {g["name"] for g in discovery.api_group_list()["groups"]}
    assert discovery.resource_list("metrics.k8s.io", "v1beta1") is None
    assert discovery.api_group("metrics.k8s.io") is None
