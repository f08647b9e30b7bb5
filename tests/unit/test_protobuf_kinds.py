"""Protobuf bodies captured from kubectl 1.32 (`kubectl create role|clusterrole|rolebinding|clusterrolebinding|
priorityclass|quota|secret|pdb|job|cronjob`, and `kubectl drain --disable-eviction`'s DeleteOptions) decode to
the JSON kubectl would have sent."""

from __future__ import annotations

from pathlib import Path

from kwire.api.protobuf import decode

DATA = Path(__file__).parent / "data"


def _load(name: str) -> dict:
    return decode((DATA / name).read_bytes())


def test_role_rules() -> None:
    obj = _load("role.pb")
    assert (obj["apiVersion"], obj["kind"], obj["metadata"]) == (
        "rbac.authorization.k8s.io/v1",
        "Role",
        {"name": "pod-reader"},
    )
    assert obj["rules"] == [
        {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["x"]},
        {"verbs": ["get", "list", "watch"], "apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["x"]},
    ]


def test_clusterroles_aggregation_and_non_resource_urls() -> None:
    agg = _load("clusterrole-aggregation.pb")
    assert agg["kind"] == "ClusterRole"
    assert agg["aggregationRule"] == {
        "clusterRoleSelectors": [{"matchLabels": {"rbac.example.com/aggregate-to-monitoring": "true"}}]
    }
    assert "rules" not in agg
    assert _load("clusterrole-nonresource.pb")["rules"] == [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]


def test_bindings_subjects_and_role_ref() -> None:
    rb = _load("rolebinding.pb")
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"}
    assert rb["subjects"] == [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"},
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "devs"},
        {"kind": "ServiceAccount", "name": "sa1", "namespace": "default"},
    ]
    crb = _load("clusterrolebinding.pb")
    assert crb["kind"] == "ClusterRoleBinding" and crb["metadata"] == {"name": "crb"}
    assert crb["roleRef"]["kind"] == "ClusterRole"
    assert crb["subjects"][1] == {"kind": "ServiceAccount", "name": "x", "namespace": "kube-system"}


def test_priorityclass_quota_and_pdb() -> None:
    pc = _load("priorityclass.pb")
    assert {k: pc[k] for k in ("value", "description", "preemptionPolicy")} == {
        "value": 1000,
        "description": "high prio",
        "preemptionPolicy": "Never",
    }
    q = _load("resourcequota.pb")
    assert q["spec"] == {"hard": {"cpu": "1", "memory": "1Gi", "pods": "10"}, "scopes": ["BestEffort"]}
    pdb = _load("pdb.pb")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": {"app": "x"}}}


def test_job_and_cronjob_templates() -> None:
    job = _load("job.pb")
    assert job["spec"] == {
        "template": {
            "spec": {"containers": [{"name": "job1", "image": "busybox", "command": ["echo", "hi"]}], "restartPolicy": "Never"}
        }
    }
    cj = _load("cronjob.pb")
    assert cj["spec"]["schedule"] == "*/5 * * * *"
    assert cj["spec"]["jobTemplate"]["metadata"] == {"name": "cj1"}
    assert cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"


def test_secret_types_and_delete_options() -> None:
    basic = _load("secret-basic-auth.pb")
    assert basic["type"] == "kubernetes.io/basic-auth" and basic["data"] == {"a": "Yg=="}
    reg = _load("secret-docker-registry.pb")
    assert reg["type"] == "kubernetes.io/dockerconfigjson" and list(reg["data"]) == [".dockerconfigjson"]
    assert _load("deleteoptions.pb") == {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 5}
