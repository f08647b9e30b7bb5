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
        {
            "verbs": ["get", "list", "watch"],
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": ["x"],
        },
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
            "spec": {
                "containers": [{"name": "job1", "image": "busybox", "command": ["echo", "hi"]}],
                "restartPolicy": "Never",
            }
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


def test_autoscale_hpa_v1() -> None:
    hpa = _load("hpa-autoscaling-v1.pb")
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v1", "HorizontalPodAutoscaler")
    assert hpa["spec"] == {
        "scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
        "minReplicas": 2,
        "maxReplicas": 5,
        "targetCPUUtilizationPercentage": 70,
    }


def test_certificate_approve_sends_the_whole_csr_with_times() -> None:
    csr = _load("csr-approve.pb")
    assert csr["metadata"]["name"] == "jane" and csr["metadata"]["resourceVersion"] == "75"
    assert csr["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client"
    assert csr["spec"]["expirationSeconds"] == 86400
    assert csr["spec"]["request"].startswith("LS0tLS1CRUdJTiBDRVJU")  # base64 of the PEM CSR
    (cond,) = csr["status"]["conditions"]
    assert cond["type"] == "Approved" and cond["status"] == "True" and cond["reason"] == "KubectlApprove"
    assert cond["lastUpdateTime"] == "2026-11-30T16:09:39Z"
    assert "lastTransitionTime" not in cond  # a zero metav1.Time is an empty message: omitted, as in JSON


def test_kubectl_debug_pods() -> None:
    node_debug = _load("pod-debug-node.pb")  # kubectl debug node/n2 --image=busybox -- true
    spec = node_debug["spec"]
    assert node_debug["metadata"] == {"name": "node-debugger-n2-qgr7x"}
    assert spec["volumes"] == [{"name": "host-root", "hostPath": {"path": "/"}}]
    assert spec["containers"] == [
        {
            "name": "debugger",
            "image": "busybox",
            "command": ["true"],
            "volumeMounts": [{"name": "host-root", "mountPath": "/host"}],
            "terminationMessagePolicy": "File",
        }
    ]
    assert (spec["nodeName"], spec["hostNetwork"], spec["hostPID"], spec["hostIPC"]) == ("n2", True, True, True)
    assert spec["tolerations"] == [{"operator": "Exists"}] and spec["restartPolicy"] == "Never"
    copy = _load("pod-debug-copy.pb")  # kubectl debug zz --copy-to=zz-copy --image=busybox -- true
    assert [c["name"] for c in copy["spec"]["containers"]] == ["zz", "debugger-bpdk8"]
    assert copy["spec"]["enableServiceLinks"] is True and copy["spec"]["terminationGracePeriodSeconds"] == 30
    assert "hostNetwork" not in copy["spec"]  # false is omitted, as JSON's omitempty


def test_debug_copy_keeps_probes_env_sources_and_volumes() -> None:
    # kubectl debug rich --copy-to=rich-copy of a pod with probes, env sources and volumes
    pod = _load("pod-debug-copy-probes-env.pb")
    c = pod["spec"]["containers"][0]
    assert c["env"] == [
        {"name": "A", "value": "x"},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw", "optional": True}}},
        {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
    ]
    assert c["envFrom"] == [
        {"prefix": "P_", "configMapRef": {"name": "cm"}},
        {"secretRef": {"name": "s", "optional": False}},
    ]
    assert c["readinessProbe"] == {
        "httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP", "httpHeaders": [{"name": "X", "value": "yes"}]},
        "timeoutSeconds": 1,
        "periodSeconds": 5,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    assert c["livenessProbe"]["tcpSocket"] == {"port": 8080} and c["livenessProbe"]["failureThreshold"] == 4
    assert c["startupProbe"]["exec"] == {"command": ["cat", "/tmp/ok"]}
    assert pod["spec"]["volumes"] == [
        {"name": "e", "emptyDir": {}},
        {"name": "c", "configMap": {"name": "cm", "defaultMode": 420}},
        {"name": "s", "secret": {"secretName": "s"}},
    ]
