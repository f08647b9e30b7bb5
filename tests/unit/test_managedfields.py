"""Server-side apply's field sets and managers (kwire/api/fieldset.py, kwire/api/managedfields.py) against the
behaviour of structured-merge-diff and kube-apiserver's fieldmanager."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kwire.api import fieldset, managedfields
from kwire.api.errors import ApiError
from kwire.api.managedfields import Tracking

DEPLOY = fieldset.schema_for("Deployment")
CM = fieldset.schema_for("ConfigMap")


def deployment(replicas: int = 2, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": labels or {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1", "ports": [{"containerPort": 80}]}]},
            },
        },
    }


def apply(live: Any, config: Any, manager: str = "kubectl", *, force: bool = False, node: Any = DEPLOY) -> Any:
    return managedfields.apply(
        live, config, tracking=Tracking(node, "apps/v1", status_separate=True), manager=manager, force=force
    )


def owners(obj: Any) -> dict[str, Any]:
    return {e["manager"]: e for e in obj["metadata"].get("managedFields", [])}


def test_apply_fields_v1_is_kubes_encoding() -> None:
    obj = apply(None, deployment())
    entry = owners(obj)["kubectl"]
    assert entry["operation"] == "Apply" and entry["fieldsType"] == "FieldsV1" and entry["apiVersion"] == "apps/v1"
    assert entry["fieldsV1"] == {
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {
            "f:replicas": {},
            "f:selector": {},
            "f:template": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:containers": {
                        'k:{"name":"nginx"}': {
                            ".": {},
                            "f:image": {},
                            "f:name": {},
                            "f:ports": {'k:{"containerPort":80,"protocol":"TCP"}': {".": {}, "f:containerPort": {}}},
                        }
                    }
                },
            },
        },
    }
    assert fieldset.decode(entry["fieldsV1"]) == fieldset.decode(json.loads(json.dumps(entry["fieldsV1"])))


def test_encode_decode_round_trip_and_path_strings() -> None:
    fields = fieldset.to_field_set(deployment(), DEPLOY)
    assert fieldset.decode(fieldset.encode(fields)) == fields
    path = (("f", "spec"), ("f", "template"), ("f", "spec"), ("f", "containers"), ("k", '{"name":"nginx"}'))
    assert fieldset.path_string((*path, ("f", "image"))) == '.spec.template.spec.containers[name="nginx"].image'
    assert fieldset.path_string((("f", "metadata"), ("f", "finalizers"), ("v", '"a"'))) == '.metadata.finalizers[="a"]'


def test_update_moves_changed_fields_to_the_writer() -> None:
    obj = apply(None, deployment(replicas=2))
    new = copy.deepcopy(obj)
    new["spec"]["replicas"] = 5
    managedfields.record_update(obj, new, tracking=Tracking(DEPLOY, "apps/v1", status_separate=True), manager="hpa")
    by = owners(new)
    assert by["hpa"]["operation"] == "Update"
    assert by["hpa"]["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in by["kubectl"]["fieldsV1"]["f:spec"]
    # Apply entries sort before Update entries, as kube sorts them.
    assert [e["operation"] for e in new["metadata"]["managedFields"]] == ["Apply", "Update"]


def test_update_creating_a_map_owns_it_and_status_is_separate() -> None:
    old = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    new = {**copy.deepcopy(old), "data": {"a": "1"}, "status": {"x": 1}}
    managedfields.record_update(old, new, tracking=Tracking(CM, "v1", status_separate=True), manager="m")
    assert owners(new)["m"]["fieldsV1"] == {"f:data": {".": {}, "f:a": {}}}


def test_conflict_is_409_in_kubes_words_and_force_takes_the_field() -> None:
    obj = apply(None, deployment(replicas=2))
    scaled = copy.deepcopy(obj)
    scaled["spec"]["replicas"] = 5
    managedfields.record_update(
        obj, scaled, tracking=Tracking(DEPLOY, "apps/v1", status_separate=True), manager="kubectl-client-side-apply"
    )
    with pytest.raises(ApiError) as err:
        apply(scaled, deployment(replicas=3), manager="other")
    e = err.value
    assert e.code == 409 and e.reason == "Conflict"
    assert e.message == (
        'Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas'
    )
    assert e.details == {
        "causes": [
            {
                "reason": "FieldManagerConflict",
                "message": 'conflict with "kubectl-client-side-apply" using apps/v1',
                "field": ".spec.replicas",
            }
        ]
    }
    # The same value is no conflict: both managers then own the field.
    shared = apply(scaled, deployment(replicas=5), manager="other")
    assert "f:replicas" in owners(shared)["other"]["fieldsV1"]["f:spec"]
    assert "f:replicas" in owners(shared)["kubectl-client-side-apply"]["fieldsV1"]["f:spec"]
    forced = apply(scaled, deployment(replicas=3), manager="other", force=True)
    assert forced["spec"]["replicas"] == 3
    assert "kubectl-client-side-apply" not in owners(forced)


def test_several_conflicts_are_grouped_by_manager() -> None:
    obj = apply(None, deployment(replicas=2), manager="a")
    with pytest.raises(ApiError) as err:
        apply(obj, deployment(replicas=3, app="other"), manager="b")
    assert err.value.message == (
        'Apply failed with 2 conflicts: conflicts with "a":\n- .metadata.labels.app\n- .spec.replicas'
    )


def test_fields_no_longer_applied_are_removed_unless_someone_else_owns_them() -> None:
    obj = apply(None, deployment(app="web", tier="front"))
    pruned = apply(obj, deployment(app="web"))
    assert pruned["metadata"]["labels"] == {"app": "web"}
    # Another applier co-owning `tier` keeps it.
    shared = apply(obj, deployment(app="web", tier="front"), manager="second")
    kept = apply(shared, deployment(app="web"))
    assert kept["metadata"]["labels"] == {"app": "web", "tier": "front"}
    # A map emptied by pruning goes with its last key.
    config = deployment()
    del config["metadata"]["labels"]
    assert "labels" not in apply(obj, config)["metadata"]


def test_associative_lists_merge_by_key_and_atomic_ones_are_replaced() -> None:
    obj = apply(None, deployment())
    sidecar = deployment()
    sidecar["spec"]["template"]["spec"]["containers"] = [{"name": "log", "image": "busybox"}]
    del sidecar["spec"]["replicas"]
    merged = apply(obj, sidecar, manager="sidecar-injector")
    names = [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]]
    assert names == ["nginx", "log"]
    # Removing its container removes only that item.
    again = apply(merged, deployment(), manager="sidecar-injector")
    assert [c["name"] for c in again["spec"]["template"]["spec"]["containers"]] == ["nginx"]
    # A port with protocol given explicitly is the same item as the defaulted TCP one.
    config = deployment()
    config["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": 80, "protocol": "TCP"}]
    assert len(apply(obj, config)["spec"]["template"]["spec"]["containers"][0]["ports"]) == 1
    # selector is atomic: a new one replaces it whole.
    config = deployment()
    config["spec"]["selector"] = {"matchExpressions": []}
    assert apply(obj, config)["spec"]["selector"] == {"matchExpressions": []}


def test_set_lists_union_and_prune_their_values() -> None:
    base = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["a", "b"]}}
    obj = apply(None, base, node=CM)
    other = apply(obj, {**base, "metadata": {"name": "c", "finalizers": ["c"]}}, manager="x", node=CM)
    assert other["metadata"]["finalizers"] == ["a", "b", "c"]
    pruned = apply(other, {**base, "metadata": {"name": "c", "finalizers": ["a"]}}, node=CM)
    assert pruned["metadata"]["finalizers"] == ["a", "c"]


def test_client_side_apply_upgrade_lets_kubectl_take_its_own_fields() -> None:
    last = deployment(replicas=2)
    live = copy.deepcopy(last)
    live["metadata"]["annotations"] = {managedfields.LAST_APPLIED: json.dumps(last)}
    managedfields.record_update(
        None, live, tracking=Tracking(DEPLOY, "apps/v1", status_separate=True), manager="kubectl-client-side-apply"
    )
    new = apply(live, deployment(replicas=4))
    assert new["spec"]["replicas"] == 4
    assert json.loads(new["metadata"]["annotations"][managedfields.LAST_APPLIED])["spec"]["replicas"] == 4
    # Another manager gets no such allowance.
    with pytest.raises(ApiError):
        apply(live, deployment(replicas=4), manager="someone")
    # Nor does kubectl once the field drifted from the last-applied configuration.
    drifted = copy.deepcopy(live)
    drifted["spec"]["replicas"] = 7
    managedfields.record_update(
        live, drifted, tracking=Tracking(DEPLOY, "apps/v1", status_separate=True), manager="kubectl-client-side-apply"
    )
    with pytest.raises(ApiError):
        apply(drifted, deployment(replicas=4))


def test_manager_from_user_agent() -> None:
    assert managedfields.manager_from_user_agent("kubectl/v1.32.0 (linux/amd64) kubernetes/abc") == "kubectl"
    assert managedfields.manager_from_user_agent("OpenAPI-Generator/31.0.0/python") == "OpenAPI-Generator"


def test_custom_resource_schema_markers() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "ports": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["port", "protocol"],
                        "items": {
                            "type": "object",
                            "properties": {
                                "port": {"type": "integer"},
                                "protocol": {"type": "string", "default": "TCP"},
                            },
                        },
                    },
                    "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                    "hosts": {"type": "array", "items": {"type": "string"}},
                    "selector": {"type": "object", "x-kubernetes-map-type": "atomic"},
                },
            }
        },
    }
    node = fieldset.from_openapi(schema)
    live = {"spec": {"ports": [{"port": 80, "protocol": "TCP"}], "tags": ["a"], "hosts": ["x"], "selector": {"a": "1"}}}
    config = {"spec": {"ports": [{"port": 443}], "tags": ["b"], "hosts": ["y"], "selector": {"b": "2"}}}
    merged = fieldset.merge(live, config, node)
    assert merged["spec"] == {
        "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443}],  # merged by key (protocol defaults to TCP)
        "tags": ["a", "b"],  # a set: union
        "hosts": ["y"],  # no list type: atomic
        "selector": {"b": "2"},  # an atomic map is replaced
    }
    fields = fieldset.to_field_set(config, node)
    assert (("f", "spec"), ("f", "ports"), ("k", '{"port":443,"protocol":"TCP"}')) in fields
    assert (("f", "spec"), ("f", "hosts")) in fields
