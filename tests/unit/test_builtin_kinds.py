"""Defaulting, validation (kube-apiserver's field paths and messages) and version conversion of the built-in
kinds manifests carry: RBAC, Secret types, PriorityClass, storage, quota/limits, HPA, CSR, webhooks, Events."""

from __future__ import annotations

import copy
from typing import Any

from kwire.api import convert, defaults, validation
from kwire.api.registry import by_path
from kwire.base import quantity

Obj = dict[str, Any]


def _kind(group: str, version: str, plural: str) -> Any:
    kind = by_path(group, version, plural)
    assert kind is not None
    return kind


def _errors(group: str, version: str, plural: str, obj: Obj, old: Obj | None = None) -> list[str]:
    kind = _kind(group, version, plural)
    obj = {"metadata": {"name": "x", "namespace": "default"}, **obj}
    defaults.apply_defaults(kind, obj)
    if old is None:
        return [str(e) for e in validation.validate_create(kind, obj)]
    old = {"metadata": {"name": "x", "namespace": "default"}, **old}
    defaults.apply_defaults(kind, old)
    return [str(e) for e in validation.validate_update(kind, obj, old)]


RBAC = "rbac.authorization.k8s.io"


def test_role_rules_in_kube_words() -> None:
    errs = _errors(RBAC, "v1", "roles", {"rules": [{"apiGroups": [""]}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}]})
    assert errs == [
        "rules[0].verbs: Required value: verbs must contain at least one value",
        "rules[0].resources: Required value: resource rules must supply at least one resource",
        'rules[1].nonResourceURLs: Invalid value: []string{"/x"}: namespaced rules cannot apply to non-resource URLs',
    ]
    assert _errors(RBAC, "v1", "clusterroles", {"rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]}) == []
    assert _errors(RBAC, "v1", "clusterroles", {"aggregationRule": {"clusterRoleSelectors": []}}) == [
        "aggregationRule.clusterRoleSelectors: Required value: at least one clusterRoleSelector required if "
        "aggregationRule is non-nil"
    ]
    assert _errors(RBAC, "v1", "roles", {"metadata": {"name": "a/b", "namespace": "default"}}) == [
        "metadata.name: Invalid value: \"a/b\": may not contain '/'"
    ]


def test_bindings_role_ref_and_subjects() -> None:
    ref = {"apiGroup": RBAC, "kind": "Role", "name": "r"}
    errs = _errors(
        RBAC,
        "v1",
        "clusterrolebindings",
        {"roleRef": ref, "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "Robot", "name": "r"}]},
    )
    assert errs == [
        'roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole"',
        "subjects[0].namespace: Required value",
        'subjects[1].kind: Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group"',
    ]
    rb = {"roleRef": ref, "subjects": [{"kind": "User", "name": "alice"}]}
    kind = _kind(RBAC, "v1", "rolebindings")
    defaults.apply_defaults(kind, rb)
    assert rb["subjects"][0]["apiGroup"] == RBAC  # SetDefaults_Subject
    changed = copy.deepcopy(rb)
    changed["roleRef"] = {**ref, "name": "other"}
    assert _errors(RBAC, "v1", "rolebindings", changed, rb) == [
        'roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"Role", Name:"other"}: '
        "cannot change roleRef"
    ]


def test_secret_types_string_data_and_immutable() -> None:
    assert _errors("", "v1", "secrets", {"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}) == [
        "data[tls.key]: Required value"
    ]
    assert _errors("", "v1", "secrets", {"type": "kubernetes.io/basic-auth"}) == [
        "data[username]: Required value",
        "data[password]: Required value",
    ]
    assert _errors("", "v1", "secrets", {"type": "kubernetes.io/ssh-auth"}) == ["data[ssh-privatekey]: Required value"]
    assert _errors("", "v1", "secrets", {"type": "kubernetes.io/service-account-token"}) == [
        "metadata.annotations[kubernetes.io/service-account.name]: Required value"
    ]
    bad_json = _errors(
        "", "v1", "secrets", {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e25vcGU="}}
    )
    assert bad_json and bad_json[0].startswith('data[.dockerconfigjson]: Invalid value: "<secret contents redacted>"')
    secret: Obj = {"data": {"a": "eA=="}, "stringData": {"a": "override", "b": "new"}}
    defaults.apply_defaults(_kind("", "v1", "secrets"), secret)
    assert secret == {"type": "Opaque", "data": {"a": "b3ZlcnJpZGU=", "b": "bmV3"}}
    old = {"immutable": True, "data": {"a": "eA=="}}
    assert _errors("", "v1", "secrets", {"immutable": True, "data": {"a": "eQ=="}}, old) == [
        "data: Forbidden: field is immutable when `immutable` is set"
    ]


def test_priority_class_rules() -> None:
    pcs = ("scheduling.k8s.io", "v1", "priorityclasses")
    assert _errors(*pcs, {"value": 2_000_000_000}) == [
        "value: Forbidden: maximum allowed value of a user defined priority is 1000000000"
    ]
    assert _errors(*pcs, {"metadata": {"name": "system-mine"}, "value": 1}) == [
        "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved"
    ]
    assert _errors(*pcs, {"value": 2}, {"value": 1}) == ["value: Forbidden: may not be changed in an update."]


def test_storage_class_and_claims() -> None:
    scs = ("storage.k8s.io", "v1", "storageclasses")
    assert _errors(*scs, {"volumeBindingMode": "Later"}) == [
        "provisioner: Required value",
        'volumeBindingMode: Unsupported value: "Later": supported values: "Immediate", "WaitForFirstConsumer"',
    ]
    assert _errors(*scs, {"provisioner": "b"}, {"provisioner": "a"}) == [
        "provisioner: Forbidden: updates to provisioner are forbidden."
    ]
    claim = {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    assert _errors("", "v1", "persistentvolumeclaims", claim) == []
    assert _errors("", "v1", "persistentvolumeclaims", {"spec": {}}) == [
        "spec.accessModes: Required value: at least 1 access mode is required",
        "spec.resources[storage]: Required value",
    ]
    bound = copy.deepcopy(claim)
    bound["spec"]["volumeName"] = "pv1"  # set once by the binder: allowed
    assert _errors("", "v1", "persistentvolumeclaims", bound, claim) == []
    grown = copy.deepcopy(claim)
    grown["spec"]["accessModes"] = ["ReadWriteMany"]
    assert _errors("", "v1", "persistentvolumeclaims", grown, claim) == [
        "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName "
        "for bound claims"
    ]
    assert _errors("", "v1", "persistentvolumes", {"spec": {"accessModes": ["ReadWriteOnce"]}}) == [
        "spec.capacity: Required value",
        "spec: Required value: must specify a volume type",
    ]


def test_limit_range_quota_hpa_csr_webhooks() -> None:
    lr = {"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}, "min": {"cpu": "2"}}]}}
    errs = _errors("", "v1", "limitranges", lr)
    assert 'spec.limits[0].min[cpu]: Invalid value: "2": min value 2 is greater than max value 1' in errs
    filled: Obj = {"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}}]}}
    defaults.apply_defaults(_kind("", "v1", "limitranges"), filled)
    assert filled["spec"]["limits"][0]["default"] == {"cpu": "1"}
    assert filled["spec"]["limits"][0]["defaultRequest"] == {"cpu": "1"}
    assert _errors("", "v1", "resourcequotas", {"spec": {"hard": {"pods": "-1"}}}) == [
        'spec.hard[pods]: Invalid value: "-1": must be greater than or equal to 0'
    ]
    hpa = {"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 3, "maxReplicas": 2}}
    assert _errors("autoscaling", "v2", "horizontalpodautoscalers", hpa) == [
        "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"
    ]
    csr = {
        "spec": {"request": "eA==", "signerName": "s"},
        "status": {"conditions": [{"type": "Approved"}, {"type": "Denied"}]},
    }
    assert _errors("certificates.k8s.io", "v1", "certificatesigningrequests", csr) == [
        'spec.request: Invalid value: "<redacted>": PEM block type must be CERTIFICATE REQUEST',
        'status.conditions[1].type: Invalid value: "Denied": Approved and Denied conditions are mutually exclusive',
    ]
    hook = {"webhooks": [{"name": "a.b.c", "clientConfig": {"url": "https://x"}, "admissionReviewVersions": ["v1"]}]}
    assert _errors("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", hook) == [
        "webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun"
    ]


def test_events_k8s_io_and_hpa_v1_round_trip_through_storage() -> None:
    ev_kind = _kind("events.k8s.io", "v1", "events")
    new_style = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "e"},
        "regarding": {"kind": "Pod", "name": "p"},
        "note": "hi",
        "reportingController": "me",
        "deprecatedCount": 3,
    }
    core = convert.to_storage(ev_kind, new_style)
    assert core["apiVersion"] == "v1" and core["involvedObject"] == {"kind": "Pod", "name": "p"}
    assert (core["message"], core["reportingComponent"], core["count"]) == ("hi", "me", 3)
    assert convert.from_storage(ev_kind, core) == new_style
    v1_kind = _kind("autoscaling", "v1", "horizontalpodautoscalers")
    v2 = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "h"},
        "spec": {
            "minReplicas": 1,
            "maxReplicas": 3,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                },
                {
                    "type": "Pods",
                    "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "1k"}},
                },
            ],
        },
    }
    v1 = convert.from_storage(v1_kind, v2)
    assert v1["spec"] == {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}
    assert "autoscaling.alpha.kubernetes.io/metrics" in v1["metadata"]["annotations"]
    assert convert.to_storage(v1_kind, v1) == v2  # nothing lost through v1


def test_quantities() -> None:
    assert quantity.parse("100m") == quantity.parse("0.1")
    assert quantity.parse("1Gi") == 2**30 and quantity.parse("1G") == 10**9 and quantity.parse("1e3") == 1000
    assert quantity.parse("ten") is None and quantity.parse("1Gb") is None


async def test_admission_priority_and_default_storage_class() -> None:
    from kwire.api import admission_plugins as admission
    from kwire.api.errors import ApiError

    stored: dict[str, list[Obj]] = {
        "priorityclasses": [
            {
                "metadata": {"name": "system-node-critical"},
                "value": 2000001000,
                "preemptionPolicy": "PreemptLowerPriority",
            },
            {"metadata": {"name": "low"}, "value": 10, "globalDefault": True, "preemptionPolicy": "Never"},
        ],
        "storageclasses": [
            {
                "metadata": {
                    "name": "old",
                    "creationTimestamp": "2026-01-01T00:00:00Z",
                    "annotations": {admission.DEFAULT_CLASS_ANNOTATIONS[0]: "true"},
                }
            },
            {
                "metadata": {
                    "name": "new",
                    "creationTimestamp": "2026-02-01T00:00:00Z",
                    "annotations": {admission.DEFAULT_CLASS_ANNOTATIONS[0]: "true"},
                }
            },
        ],
    }

    async def list_objects(kind: Any, /, *, namespace: str | None = None) -> list[Obj]:
        return stored.get(kind.plural, [])

    pods = _kind("", "v1", "pods")
    critical: Obj = {"metadata": {"name": "p"}, "spec": {"priorityClassName": "system-node-critical"}}
    await admission.admit_create(pods, critical, list_objects=list_objects)
    assert critical["spec"]["priority"] == 2000001000
    plain: Obj = {"metadata": {"name": "p"}, "spec": {}}
    await admission.admit_create(pods, plain, list_objects=list_objects)
    assert (plain["spec"]["priorityClassName"], plain["spec"]["priority"], plain["spec"]["preemptionPolicy"]) == (
        "low",
        10,
        "Never",
    )
    try:
        await admission.admit_create(
            pods, {"metadata": {"name": "p"}, "spec": {"priorityClassName": "nope"}}, list_objects=list_objects
        )
        raise AssertionError("an unknown PriorityClass must be refused")
    except ApiError as err:
        assert err.code == 403 and err.message == 'pods "p" is forbidden: no PriorityClass with name nope was found'
    try:
        await admission.admit_create(
            _kind("scheduling.k8s.io", "v1", "priorityclasses"),
            {"metadata": {"name": "also"}, "value": 1, "globalDefault": True},
            list_objects=list_objects,
        )
        raise AssertionError("a second global default must be refused")
    except ApiError as err:
        assert "PriorityClass low is already marked as default. Only one default can exist" in err.message
    claim: Obj = {"metadata": {"name": "c"}, "spec": {}}
    await admission.admit_create(_kind("", "v1", "persistentvolumeclaims"), claim, list_objects=list_objects)
    assert claim["spec"]["storageClassName"] == "new"
    explicit_none: Obj = {"metadata": {"name": "c"}, "spec": {"storageClassName": ""}}
    await admission.admit_create(_kind("", "v1", "persistentvolumeclaims"), explicit_none, list_objects=list_objects)
    assert explicit_none["spec"]["storageClassName"] == ""  # "" asks for no class: left alone


def test_quota_usage() -> None:
    from kwire.base.quota import usage

    def pod(cpu: str | None, mem: str | None, phase: str = "Running") -> Obj:
        requests = {k: v for k, v in (("cpu", cpu), ("memory", mem)) if v}
        res = {"requests": requests, "limits": requests} if requests else {}
        return {"spec": {"containers": [{"name": "c", "resources": res}]}, "status": {"phase": phase}}

    objects = {
        "pods": [pod("250m", "256Mi"), pod("250m", "256Mi"), pod(None, None), pod("4", "1Gi", phase="Succeeded")],
        "services": [{"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}}],
        "persistentvolumeclaims": [
            {"spec": {"storageClassName": "local-path", "resources": {"requests": {"storage": "1Gi"}}}}
        ],
        "configmaps": [{}, {}],
    }
    hard = {
        "pods": "10",
        "requests.cpu": "2",
        "limits.memory": "1Gi",
        "services.nodeports": "5",
        "requests.storage": "10Gi",
        "local-path.storageclass.storage.k8s.io/persistentvolumeclaims": "3",
        "count/configmaps": "9",
    }
    assert usage(hard, [], objects) == {
        "pods": "3",
        "requests.cpu": "500m",
        "limits.memory": "512Mi",
        "services.nodeports": "2",
        "requests.storage": "1Gi",
        "local-path.storageclass.storage.k8s.io/persistentvolumeclaims": "1",
        "count/configmaps": "2",
    }
    assert usage({"pods": "5"}, ["BestEffort"], objects) == {"pods": "1"}


async def test_quota_admission_refuses_over_hard_and_unstated_requests() -> None:
    from kwire.api import admission_plugins as admission
    from kwire.api.errors import ApiError

    quota = {"metadata": {"name": "compute", "namespace": "ns"}, "spec": {"hard": {"pods": "1", "requests.cpu": "1"}}}
    running = {
        "metadata": {"name": "a", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]},
        "status": {"phase": "Running"},
    }
    # Another namespace's pods and quotas count for nothing here (and are not even read: the listing is namespaced).
    elsewhere = {**running, "metadata": {"name": "x", "namespace": "other"}}
    tight = {"metadata": {"name": "tight", "namespace": "other"}, "spec": {"hard": {"pods": "0"}}}
    stored: dict[str, list[Obj]] = {"resourcequotas": [quota, tight], "pods": [running, elsewhere]}

    async def list_objects(kind: Any, /, *, namespace: str | None = None) -> list[Obj]:
        if not kind.namespaced:  # priority classes
            return []
        assert namespace == "ns", "quota admission reads only the object's namespace"
        objs = stored.get(kind.plural, []) if kind.group in ("", "apps") else []
        return [o for o in objs if o["metadata"]["namespace"] == namespace]

    pods = _kind("", "v1", "pods")
    new = {
        "metadata": {"name": "b", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "250m"}}}]},
    }
    try:
        await admission.admit_create(pods, new, list_objects=list_objects)
        raise AssertionError("over quota must be refused")
    except ApiError as err:
        assert err.code == 403
        assert err.message == (
            'pods "b" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=1, limited: pods=1'
        )
    stored["pods"] = []
    bare = {"metadata": {"name": "b", "namespace": "ns"}, "spec": {"containers": [{"name": "c"}]}}
    try:
        await admission.admit_create(pods, bare, list_objects=list_objects)
        raise AssertionError("a pod without the limited requests must be refused")
    except ApiError as err:
        assert err.message == 'pods "b" is forbidden: failed quota: compute: must specify requests.cpu for: c'
    await admission.admit_create(pods, new, list_objects=list_objects)  # fits: admitted
    cm = {"metadata": {"name": "x", "namespace": "ns"}}
    await admission.admit_create(_kind("", "v1", "configmaps"), cm, list_objects=list_objects)  # not limited


def test_base64_errors_as_go_reports_them() -> None:
    from kwire.api.resources import base64_error

    assert [base64_error(v) for v in ("YWJj", "YWI=", "YQ==", "YWJjZA==\n", "")] == [None] * 5
    assert [base64_error(v) for v in ("YWJjZA", "a!bc", "Y===", "YQ==YQ==", 7)] == [4, 1, 1, 4, 0]


def test_events_k8s_io_create_rules() -> None:
    good = {
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "type": "Normal",
        "reportingController": "example.com/ctl",
        "reportingInstance": "ctl-1",
        "action": "Sync",
        "reason": "Synced",
    }
    assert validation.validate_events_v1_create(good) == []
    errs = [str(e) for e in validation.validate_events_v1_create({"type": "Odd", "deprecatedCount": 2})]
    assert errs == [
        "eventTime: Required value",
        'type: Invalid value: "": has invalid value: Odd',
        'deprecatedCount: Invalid value: "": needs to be unset',
    ]
    errs = [str(e) for e in validation.validate_events_v1_create({**good, "action": ""})]
    assert errs == ["action: Required value"]
