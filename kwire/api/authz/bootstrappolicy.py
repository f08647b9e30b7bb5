"""The bootstrap ClusterRoles and ClusterRoleBindings, reconciled at every server start.

Mirrors kubernetes plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go (names, rules, the
`rbac.authorization.kubernetes.io/autoupdate: "true"` annotation, `kubernetes.io/bootstrapping: rbac-defaults`
label, aggregation of admin/edit/view from the `aggregate-to-*` roles) and pkg/registry/rbac/rest (reconciliation
at start: a missing object is created; one still annotated autoupdate=true gets the permissions and subjects it
lacks added, as `kubectl auth reconcile` would; one a user set to autoupdate=false is left alone). K3s's own:
`system:k3s-controller` (rancher/rke2 clusterrole_templates.go / k3s rolebindings.yaml: what flannel, the
network-policy controller and the tunnel read on agents). `system:coredns` comes with the coredns add-on, as in
K3s's coredns manifest (kwire.controllers.addons).

As in K3s, an agent's parts use their own identities (kwire.agent.agent): the kubelet `system:node:<name>`
(the Node authorizer), kube-proxy `system:kube-proxy` (`system:node-proxier`), flannel and the policy controller
`system:k3s-controller`. kwire's controllers run as one identity, `system:kube-controller-manager`, that also applies the packaged add-on manifests (K3s's
deploy controller runs with the supervisor's admin credentials), so it is bound to `cluster-admin` by
`system:kwire-controllers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kwire.api.authz.rules import Rule, rule

Obj = dict[str, Any]

AUTOUPDATE = "rbac.authorization.kubernetes.io/autoupdate"
BOOTSTRAPPING = "kubernetes.io/bootstrapping"
AGGREGATE_TO = "rbac.authorization.k8s.io/aggregate-to-"

READ = ("get", "list", "watch")
WRITE = ("create", "delete", "deletecollection", "patch", "update")
READ_WRITE = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
CORE, APPS, BATCH, AUTOSCALING, POLICY = "", "apps", "batch", "autoscaling", "policy"
NETWORKING, DISCOVERY, COORDINATION = "networking.k8s.io", "discovery.k8s.io", "coordination.k8s.io"
RBAC, AUTHORIZATION, AUTHENTICATION = "rbac.authorization.k8s.io", "authorization.k8s.io", "authentication.k8s.io"
EVENTS, STORAGE, CERTIFICATES = "events.k8s.io", "storage.k8s.io", "certificates.k8s.io"


def _events() -> Rule:
    return rule(("create", "update", "patch"), (CORE, EVENTS), ("events",))


# The system:node role: what a kubelet may do (kube's NodeRules), used by the Node authorizer for requests that are
# not about objects reached through the node's pods.
NODE_RULES: tuple[Rule, ...] = (
    rule(("create", "get", "list", "watch"), (CORE,), ("nodes",)),
    rule(("update", "patch"), (CORE,), ("nodes/status",)),
    rule(("update", "patch"), (CORE,), ("nodes",)),
    _events(),
    rule(READ, (CORE,), ("pods",)),
    rule(("create", "delete"), (CORE,), ("pods",)),
    rule(("update", "patch"), (CORE,), ("pods/status",)),
    rule(("create",), (CORE,), ("pods/eviction",)),
    rule(READ, (CORE,), ("services",)),
    rule(READ, (CORE,), ("endpoints",)),
    rule(READ, (DISCOVERY,), ("endpointslices",)),
    rule(("get",), (CORE,), ("secrets", "configmaps", "persistentvolumeclaims", "persistentvolumes")),
    rule(("get", "update", "patch"), (CORE,), ("persistentvolumeclaims/status",)),
    rule(("create", "get", "list", "watch"), (CERTIFICATES,), ("certificatesigningrequests",)),
    rule(("get", "create", "update", "patch", "delete"), (COORDINATION,), ("leases",)),
    rule(READ, (STORAGE,), ("csidrivers", "csinodes", "storageclasses")),
    rule(("create",), (AUTHENTICATION,), ("tokenreviews",)),
    rule(("create",), (AUTHORIZATION,), ("subjectaccessreviews", "localsubjectaccessreviews")),
    rule(("get",), (CORE,), ("serviceaccounts",)),
    rule(("create",), (CORE,), ("serviceaccounts/token",)),
)


def _view() -> list[Rule]:
    return [
        rule(
            READ,
            (CORE,),
            (
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ),
        ),
        rule(
            READ,
            (CORE,),
            (
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ),
        ),
        rule(READ, (CORE,), ("namespaces",)),
        rule(READ, (DISCOVERY,), ("endpointslices",)),
        rule(
            READ,
            (APPS,),
            (
                "controllerrevisions",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
            ),
        ),
        rule(READ, (AUTOSCALING,), ("horizontalpodautoscalers", "horizontalpodautoscalers/status")),
        rule(READ, (BATCH,), ("jobs", "jobs/status", "cronjobs", "cronjobs/status")),
        rule(READ, (POLICY,), ("poddisruptionbudgets", "poddisruptionbudgets/status")),
        rule(READ, (NETWORKING,), ("networkpolicies", "ingresses", "ingresses/status")),
    ]


def _edit() -> list[Rule]:
    return [
        rule(
            READ, (CORE,), ("pods/attach", "pods/proxy", "pods/exec", "pods/portforward", "secrets", "services/proxy")
        ),
        rule(("impersonate",), (CORE,), ("serviceaccounts",)),
        rule(WRITE, (CORE,), ("pods", "pods/attach", "pods/proxy", "pods/exec", "pods/portforward")),
        rule(("create",), (CORE,), ("pods/eviction",)),
        rule(
            WRITE,
            (CORE,),
            (
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ),
        ),
        rule(("create",), (CORE,), ("serviceaccounts/token",)),
        rule(
            WRITE,
            (APPS,),
            (
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ),
        ),
        rule(WRITE, (AUTOSCALING,), ("horizontalpodautoscalers",)),
        rule(WRITE, (BATCH,), ("jobs", "cronjobs")),
        rule(WRITE, (POLICY,), ("poddisruptionbudgets",)),
        rule(WRITE, (NETWORKING,), ("networkpolicies", "ingresses")),
    ]


def _admin() -> list[Rule]:
    return [
        rule(READ_WRITE, (RBAC,), ("roles", "rolebindings")),
        rule(("create",), (AUTHORIZATION,), ("localsubjectaccessreviews",)),
    ]


def _role(
    name: str,
    rules: Sequence[Rule],
    *,
    labels: dict[str, str] | None = None,
    aggregate_from: str = "",
) -> Obj:
    obj: Obj = {
        "apiVersion": f"{RBAC}/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": {BOOTSTRAPPING: "rbac-defaults", **(labels or {})},
            "annotations": {AUTOUPDATE: "true"},
        },
        "rules": [r.as_dict() for r in rules],
    }
    if aggregate_from:
        obj["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": {AGGREGATE_TO + aggregate_from: "true"}}]}
    return obj


def _binding(
    name: str,
    role: str,
    *,
    users: Sequence[str] = (),
    groups: Sequence[str] = (),
    service_accounts: Sequence[tuple[str, str]] = (),
) -> Obj:
    subjects = (
        [{"apiGroup": RBAC, "kind": "User", "name": u} for u in users]
        + [{"apiGroup": RBAC, "kind": "Group", "name": g} for g in groups]
        + [{"kind": "ServiceAccount", "namespace": ns, "name": n} for ns, n in service_accounts]
    )
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": {BOOTSTRAPPING: "rbac-defaults"},
            "annotations": {AUTOUPDATE: "true"},
        },
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    }


def cluster_roles() -> list[Obj]:
    discovery_urls = (
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    )
    return [
        _role("cluster-admin", [rule(("*",), ("*",), ("*",)), rule(("*",), urls=("*",))]),
        _role("system:discovery", [rule(("get",), urls=discovery_urls)]),
        _role(
            "system:public-info-viewer",
            [rule(("get",), urls=("/healthz", "/livez", "/readyz", "/version", "/version/"))],
        ),
        _role(
            "system:monitoring",
            [
                rule(
                    ("get",),
                    urls=(
                        "/metrics",
                        "/metrics/slis",
                        "/livez",
                        "/readyz",
                        "/healthz",
                        "/livez/*",
                        "/readyz/*",
                        "/healthz/*",
                    ),
                )
            ],
        ),
        _role(
            "system:basic-user",
            [
                rule(("create",), (AUTHORIZATION,), ("selfsubjectaccessreviews", "selfsubjectrulesreviews")),
                rule(("create",), (AUTHENTICATION,), ("selfsubjectreviews",)),
            ],
        ),
        _role("admin", [], aggregate_from="admin"),
        _role("edit", [], labels={AGGREGATE_TO + "admin": "true"}, aggregate_from="edit"),
        _role(
            "view",
            [],
            labels={AGGREGATE_TO + "edit": "true"},
            aggregate_from="view",
        ),
        _role("system:aggregate-to-admin", _admin(), labels={AGGREGATE_TO + "admin": "true"}),
        _role("system:aggregate-to-edit", _edit(), labels={AGGREGATE_TO + "edit": "true"}),
        _role("system:aggregate-to-view", _view(), labels={AGGREGATE_TO + "view": "true"}),
        _role(
            "system:heapster",
            [rule(READ, (CORE,), ("events", "pods", "nodes", "namespaces")), rule(READ, (APPS,), ("deployments",))],
        ),
        _role("system:node", NODE_RULES),
        _role(
            "system:node-proxier",
            [
                rule(("list", "watch"), (CORE,), ("services", "endpoints")),
                rule(("get", "list", "watch"), (CORE,), ("nodes",)),
                _events(),
                rule(("list", "watch"), (DISCOVERY,), ("endpointslices",)),
            ],
        ),
        _role(
            "system:kube-controller-manager",
            [
                _events(),
                rule(("create",), (COORDINATION,), ("leases",)),
                rule(("get", "update"), (COORDINATION,), ("leases",), names=("kube-controller-manager",)),
                rule(("create",), (CORE,), ("secrets", "serviceaccounts")),
                rule(("delete",), (CORE,), ("secrets",)),
                rule(("get",), (CORE,), ("configmaps", "namespaces", "secrets", "serviceaccounts")),
                rule(("update",), (CORE,), ("secrets", "serviceaccounts")),
                rule(("create",), (AUTHENTICATION,), ("tokenreviews",)),
                rule(("create",), (AUTHORIZATION,), ("subjectaccessreviews",)),
                rule(("list", "watch"), ("*",), ("*",)),
                rule(("create",), (CORE,), ("serviceaccounts/token",)),
            ],
        ),
        _role(
            "system:kube-scheduler",
            [
                _events(),
                rule(("create",), (COORDINATION,), ("leases",)),
                rule(("get", "update"), (COORDINATION,), ("leases",), names=("kube-scheduler",)),
                rule(READ, (CORE,), ("nodes",)),
                rule(("get", "list", "watch", "delete"), (CORE,), ("pods",)),
                rule(("create",), (CORE,), ("pods/binding", "bindings")),
                rule(("patch", "update"), (CORE,), ("pods/status",)),
                rule(READ, (CORE,), ("replicationcontrollers", "services")),
                rule(READ, (APPS,), ("replicasets", "statefulsets")),
                rule(READ, (POLICY,), ("poddisruptionbudgets",)),
                rule(READ, (CORE,), ("persistentvolumeclaims", "persistentvolumes")),
                rule(("create",), (AUTHENTICATION,), ("tokenreviews",)),
                rule(("create",), (AUTHORIZATION,), ("subjectaccessreviews",)),
                rule(READ, (STORAGE,), ("csinodes", "csidrivers", "storageclasses")),
                rule(READ, (CORE,), ("namespaces",)),
            ],
        ),
        _role(
            "system:kube-dns",
            [rule(("list", "watch"), (CORE,), ("endpoints", "services"))],
        ),
        _role(
            "system:auth-delegator",
            [
                rule(("create",), (AUTHENTICATION,), ("tokenreviews",)),
                rule(("create",), (AUTHORIZATION,), ("subjectaccessreviews",)),
            ],
        ),
        _role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            [rule(("create",), (CERTIFICATES,), ("certificatesigningrequests/nodeclient",))],
        ),
        _role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            [rule(("create",), (CERTIFICATES,), ("certificatesigningrequests/selfnodeclient",))],
        ),
        _role(
            "system:kubelet-api-admin",
            [
                rule(("get", "list", "watch"), (CORE,), ("nodes",)),
                rule(("proxy",), (CORE,), ("nodes",)),
                rule(("*",), (CORE,), ("nodes/proxy", "nodes/metrics", "nodes/log", "nodes/stats")),
            ],
        ),
        # K3s's
        _role(
            "system:k3s-controller",
            [
                rule(("get", "list", "watch"), (CORE,), ("nodes",)),
                rule(("list", "get", "watch"), (CORE,), ("namespaces", "pods", "endpoints", "services")),
                rule(("list", "get", "watch"), (NETWORKING,), ("networkpolicies",)),
                rule(("list", "get", "watch"), (DISCOVERY,), ("endpointslices",)),
                _events(),  # kwire's policy controller reports a failed sync as a Node event
            ],
        ),
    ]


def namespaced_roles() -> list[Obj]:
    """kube's bootstrap Roles in kube-system: `extension-apiserver-authentication-reader` lets aggregated API
    servers (metrics-server) read whom the API server's front proxy is."""
    reader = _role(
        "extension-apiserver-authentication-reader",
        [
            Rule(
                verbs=("get", "list", "watch"),
                api_groups=(CORE,),
                resources=("configmaps",),
                resource_names=("extension-apiserver-authentication",),
            )
        ],
    )
    reader["kind"] = "Role"
    reader["metadata"]["namespace"] = "kube-system"
    return [reader]


def cluster_role_bindings() -> list[Obj]:
    authenticated, unauthenticated = "system:authenticated", "system:unauthenticated"
    return [
        _binding("cluster-admin", "cluster-admin", groups=("system:masters",)),
        _binding("system:monitoring", "system:monitoring", groups=("system:monitoring",)),
        _binding("system:discovery", "system:discovery", groups=(authenticated,)),
        _binding("system:basic-user", "system:basic-user", groups=(authenticated,)),
        _binding("system:public-info-viewer", "system:public-info-viewer", groups=(authenticated, unauthenticated)),
        _binding("system:node-proxier", "system:node-proxier", users=("system:kube-proxy",)),
        _binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            users=("system:kube-controller-manager",),
        ),
        _binding("system:kube-scheduler", "system:kube-scheduler", users=("system:kube-scheduler",)),
        _binding("system:kube-dns", "system:kube-dns", service_accounts=(("kube-system", "kube-dns"),)),
        _binding("system:node", "system:node"),  # no subjects: the Node authorizer grants nodes this (kube >= 1.8)
        _binding("kube-apiserver-kubelet-admin", "system:kubelet-api-admin", users=("kube-apiserver",)),
        _binding("system:k3s-controller", "system:k3s-controller", users=("system:k3s-controller",)),
        _binding("system:kwire-controllers", "cluster-admin", users=("system:kube-controller-manager",)),
    ]
