"""Authorization without a server: RBAC rule matching and covering, the RBAC index as bindings come and go, the
node graph, kube's 403 texts, escalation checks, impersonation and the reviews' answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from kwire.api.allocator import ServiceAllocator
from kwire.api.authz import impersonation, reviews
from kwire.api.authz.attributes import Attributes, from_request
from kwire.api.authz.bootstrappolicy import cluster_role_bindings, cluster_roles
from kwire.api.authz.chain import Authorization, forbidden
from kwire.api.authz.escalation import EscalationCheck
from kwire.api.authz.node import pod_refs
from kwire.api.authz.noderestriction import NodeRestriction
from kwire.api.authz.reconcile import reconcile
from kwire.api.authz.rules import Rule, allows, compact, compact_string, missing, rule
from kwire.api.errors import ApiError
from kwire.api.registry import by_path
from kwire.api.resources import Resources
from kwire.api.server import request_info
from kwire.api.user import ADMIN, authenticated, reset_current_user, set_current_user
from kwire.api.webhookadmission import Attributes as AdmissionAttributes
from kwire.store.sqlite import SQLiteStore

RBAC = "/registry/rbac.authorization.k8s.io"
JANE = authenticated("jane", ("devs",))
BOT = authenticated("system:serviceaccount:prod:bot", ("system:serviceaccounts", "system:serviceaccounts:prod"))
NODE1 = authenticated("system:node:n1", ("system:nodes",))


def res(
    user: Any, verb: str, resource: str, *, ns: str = "", name: str = "", group: str = "", sub: str = ""
) -> Attributes:
    return Attributes(
        user=user,
        verb=verb,
        resource_request=True,
        api_group=group,
        resource=resource,
        subresource=sub,
        namespace=ns,
        name=name,
    )


def path(user: Any, verb: str, p: str) -> Attributes:
    return Attributes(user=user, verb=verb, resource_request=False, path=p)


def test_rule_matching_wildcards_subresources_names_and_urls() -> None:
    r = rule(("get", "list"), ("",), ("pods", "*/status"), names=("a",))
    assert allows(r, res(JANE, "get", "pods", name="a"))
    assert not allows(r, res(JANE, "get", "pods", name="b"))
    assert not allows(r, res(JANE, "delete", "pods", name="a"))
    assert not allows(r, res(JANE, "get", "pods", name="a", group="apps"))
    assert allows(r, res(JANE, "get", "deployments", sub="status", name="a"))
    assert not allows(r, res(JANE, "get", "pods", sub="log", name="a"))
    star = rule(("*",), ("*",), ("*",))
    assert allows(star, res(JANE, "escalate", "clusterroles", group="rbac.authorization.k8s.io"))
    urls = rule(("get",), urls=("/healthz", "/apis/*"))
    assert allows(urls, path(JANE, "get", "/apis/apps/v1"))
    assert allows(urls, path(JANE, "get", "/healthz"))
    assert not allows(urls, path(JANE, "get", "/healthz/etcd"))
    assert not allows(urls, path(JANE, "post", "/healthz"))
    assert not allows(urls, res(JANE, "get", "pods"))


def test_covering_and_kube_compact_strings() -> None:
    owner = [rule(("get", "list"), ("",), ("pods",)), rule(("*",), ("apps",), ("*",))]
    assert (
        missing(owner, [rule(("get",), ("",), ("pods",)), rule(("delete",), ("apps",), ("deployments/scale",))]) == []
    )
    lacking = missing(owner, [rule(("get", "delete", "watch"), ("",), ("pods", "secrets"))])
    lines = sorted(compact_string(r) for r in compact(lacking))
    assert lines == [
        '{APIGroups:[""], Resources:["pods"], Verbs:["delete" "watch"]}',
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get" "delete" "watch"]}',
    ]
    # a rule limited to names does not cover the whole resource
    assert missing([rule(("get",), ("",), ("pods",), names=("a",))], [rule(("get",), ("",), ("pods",))])
    assert (
        compact_string(Rule(("get",), non_resource_urls=("/metrics",)))
        == '{NonResourceURLs:["/metrics"], Verbs:["get"]}'
    )


async def test_index_follows_the_store_and_guards_run_in_the_write_path(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    resources = Resources(
        store, allocator=ServiceAllocator(service_cidr="10.43.0.0/16", node_port_range=(30000, 32767))
    )
    await resources.load()
    await reconcile(resources)
    a = Authorization(store)
    await a.start()
    resources.guards.extend([NodeRestriction(), EscalationCheck(a)])
    try:
        assert a.authorize(res(JANE, "create", "selfsubjectrulesreviews", group="authorization.k8s.io")).allowed
        roles, bindings = (
            by_path("rbac.authorization.k8s.io", "v1", "roles"),
            by_path("rbac.authorization.k8s.io", "v1", "rolebindings"),
        )
        namespaces = by_path("", "v1", "namespaces")
        assert roles and bindings and namespaces
        await resources.create(namespaces, None, {"metadata": {"name": "prod"}})
        await resources.create(
            roles,
            "prod",
            {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
        )
        await resources.create(
            bindings,
            "prod",
            {
                "metadata": {"name": "b"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
                "subjects": [{"kind": "User", "name": "jane"}],
            },
        )
        for _ in range(100):
            if a.authorize(res(JANE, "list", "pods", ns="prod")).allowed:
                break
            await asyncio.sleep(0.02)
        assert a.authorize(res(JANE, "list", "pods", ns="prod")).allowed
        # jane writes a role with more than she holds: refused by the write path's escalation check
        token = set_current_user(JANE)
        try:
            with pytest.raises(ApiError) as err:
                await resources.create(
                    roles,
                    "prod",
                    {
                        "metadata": {"name": "r2"},
                        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}],
                    },
                )
            assert err.value.code == 403
            await resources.create(
                roles,
                "prod",
                {"metadata": {"name": "r3"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
            )
        finally:
            reset_current_user(token)
        await resources.delete(bindings, "prod", "b")
        for _ in range(100):
            if not a.authorize(res(JANE, "list", "pods", ns="prod")).allowed:
                break
            await asyncio.sleep(0.02)
        assert not a.authorize(res(JANE, "list", "pods", ns="prod")).allowed
        # a second reconcile changes nothing; a role an administrator set to autoupdate=false is kept
        croles = by_path("rbac.authorization.k8s.io", "v1", "clusterroles")
        assert croles
        view = resources.get_or_none(croles, None, "system:basic-user")
        assert view is not None
        view["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] = "false"
        view["rules"] = []
        await resources.update(croles, None, "system:basic-user", view)
        await reconcile(resources)
        kept = resources.get_or_none(croles, None, "system:basic-user")
        assert kept is not None and kept["rules"] == []
    finally:
        await a.stop()
        await store.close()


def _apply_bootstrap(a: Authorization) -> None:
    for obj in cluster_roles():
        a.index.apply(f"{RBAC}/clusterroles/{obj['metadata']['name']}", obj)
    for obj in cluster_role_bindings():
        a.index.apply(f"{RBAC}/clusterrolebindings/{obj['metadata']['name']}", obj)


def test_rbac_bindings_in_namespace_cluster_wide_and_removed() -> None:
    a = Authorization.__new__(Authorization)
    Authorization.__init__(a, store=None)  # type: ignore[arg-type]  # the followers are never started here
    _apply_bootstrap(a)
    role = {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}
    a.index.apply(f"{RBAC}/roles/prod/reader", role)
    binding = {
        "roleRef": {"kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "bot"}],  # namespace defaults to the binding's
    }
    assert not a.authorize(res(BOT, "list", "pods", ns="prod")).allowed
    a.index.apply(f"{RBAC}/rolebindings/prod/rb", binding)
    assert a.authorize(res(BOT, "list", "pods", ns="prod")).allowed
    assert not a.authorize(res(BOT, "list", "pods", ns="default")).allowed
    assert not a.authorize(res(BOT, "list", "pods")).allowed  # all namespaces: cluster-wide rules only
    assert not a.authorize(res(BOT, "delete", "pods", ns="prod", name="x")).allowed
    # a group subject, and a ClusterRole through a RoleBinding
    a.index.apply(
        f"{RBAC}/rolebindings/prod/devs",
        {"roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "Group", "name": "devs"}]},
    )
    a.index.apply(
        f"{RBAC}/clusterroles/view", {"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}
    )
    assert a.authorize(res(JANE, "get", "configmaps", ns="prod", name="c")).allowed
    a.index.apply(f"{RBAC}/rolebindings/prod/rb", None)
    assert not a.authorize(res(BOT, "list", "pods", ns="prod")).allowed
    # a binding to a missing role: kube's reason
    a.index.apply(
        f"{RBAC}/clusterrolebindings/ghost",
        {"roleRef": {"kind": "ClusterRole", "name": "nope"}, "subjects": [{"kind": "User", "name": "jane"}]},
    )
    d = a.authorize(res(JANE, "get", "nodes", name="n"))
    assert not d.allowed and d.reason == 'RBAC: clusterrole.rbac.authorization.k8s.io "nope" not found'
    # masters are always allowed; everyone authenticated may ask about itself and read discovery
    assert a.authorize(res(ADMIN, "escalate", "clusterroles", group="rbac.authorization.k8s.io")).allowed
    assert a.authorize(res(JANE, "create", "selfsubjectaccessreviews", group="authorization.k8s.io")).allowed
    assert a.authorize(path(JANE, "get", "/apis/apps/v1")).allowed
    assert not a.authorize(path(JANE, "get", "/metrics")).allowed


def test_forbidden_texts_are_kubes() -> None:
    e = forbidden(res(JANE, "list", "pods", ns="prod"), "")
    assert e.code == 403 and e.reason == "Forbidden"
    assert (
        e.message
        == 'pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "prod"'
    )
    e = forbidden(res(JANE, "get", "deployments", group="apps", sub="scale", name="web", ns="a"), "")
    assert e.message == (
        'deployments.apps "web" is forbidden: User "jane" cannot get resource "deployments/scale" in API group "apps" '
        'in the namespace "a"'
    )
    assert e.details == {"name": "web", "group": "apps", "kind": "deployments"}
    e = forbidden(res(JANE, "list", "nodes"), "why")
    assert (
        e.message
        == 'nodes is forbidden: User "jane" cannot list resource "nodes" in API group "" at the cluster scope: why'
    )
    assert forbidden(path(JANE, "get", "/metrics"), "").message == 'forbidden: User "jane" cannot get path "/metrics"'


POD: dict[str, Any] = {
    "metadata": {"namespace": "prod", "name": "web"},
    "spec": {
        "nodeName": "n1",
        "serviceAccountName": "bot",
        "imagePullSecrets": [{"name": "pull"}],
        "volumes": [
            {"name": "s", "secret": {"secretName": "vol-secret"}},
            {"name": "c", "configMap": {"name": "vol-cm"}},
            {"name": "p", "projected": {"sources": [{"secret": {"name": "proj"}}, {"configMap": {"name": "proj-cm"}}]}},
            {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
        ],
        "containers": [
            {
                "name": "c",
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "env-cm"}}],
            }
        ],
    },
}


def test_node_graph_and_authorizer() -> None:
    node, refs = pod_refs(POD)
    assert node == "n1"
    assert {r[2] for r in refs if r[0] == "secrets"} == {"pull", "vol-secret", "proj", "env-secret"}
    assert {r[2] for r in refs if r[0] == "configmaps"} == {"vol-cm", "proj-cm", "env-cm"}
    assert ("serviceaccounts", "prod", "bot") in refs and ("persistentvolumeclaims", "prod", "data") in refs
    a = Authorization.__new__(Authorization)
    Authorization.__init__(a, store=None)  # type: ignore[arg-type]
    _apply_bootstrap(a)
    a.graph.apply("/registry/core/pods/prod/web", POD)
    a.graph.apply("/registry/core/pods/prod/web2", {**POD, "metadata": {"namespace": "prod", "name": "web2"}})
    assert a.authorize(res(NODE1, "get", "secrets", ns="prod", name="env-secret")).allowed
    d = a.authorize(res(NODE1, "get", "secrets", ns="prod", name="other"))
    assert not d.allowed and "no relationship found between node 'n1' and this object" in d.reason
    n2 = authenticated("system:node:n2", ("system:nodes",))
    assert not a.authorize(res(n2, "get", "secrets", ns="prod", name="env-secret")).allowed
    assert not a.authorize(res(NODE1, "list", "secrets", ns="prod")).allowed
    assert a.authorize(res(NODE1, "create", "serviceaccounts", sub="token", ns="prod", name="bot")).allowed
    assert not a.authorize(res(NODE1, "create", "serviceaccounts", sub="token", ns="prod", name="default")).allowed
    # the system:node rules for the rest; NetworkPolicies are the agent controllers' (system:k3s-controller)
    assert a.authorize(res(NODE1, "watch", "services")).allowed
    assert not a.authorize(res(NODE1, "list", "networkpolicies", group="networking.k8s.io")).allowed
    k3s = authenticated("system:k3s-controller")
    assert a.authorize(res(k3s, "watch", "networkpolicies", group="networking.k8s.io")).allowed
    assert not a.authorize(res(k3s, "get", "secrets", ns="prod", name="env-secret")).allowed
    proxy = authenticated("system:kube-proxy")
    assert a.authorize(res(proxy, "watch", "endpointslices", group="discovery.k8s.io")).allowed
    assert not a.authorize(res(proxy, "list", "pods")).allowed
    assert a.authorize(res(NODE1, "patch", "nodes", sub="status", name="n1")).allowed
    assert not a.authorize(res(NODE1, "create", "deployments", group="apps", ns="prod")).allowed
    # one pod goes: the other still references the secret; both gone: nothing is readable
    a.graph.apply("/registry/core/pods/prod/web", None)
    assert a.authorize(res(NODE1, "get", "secrets", ns="prod", name="env-secret")).allowed
    a.graph.apply("/registry/core/pods/prod/web2", None)
    assert not a.authorize(res(NODE1, "get", "secrets", ns="prod", name="env-secret")).allowed


def _admission(
    plural: str, op: str, *, ns: str = "", name: str, obj: Any = None, old: Any = None, sub: str = ""
) -> AdmissionAttributes:
    group = "rbac.authorization.k8s.io" if "role" in plural else ("coordination.k8s.io" if plural == "leases" else "")
    kind = by_path(group, "v1", plural)
    assert kind is not None
    return AdmissionAttributes(kind, op, ns, name, sub, object=obj, old_object=old)


async def _as(user: Any, coro: Any) -> None:
    token = set_current_user(user)
    try:
        await coro
    finally:
        reset_current_user(token)


async def test_escalation_refused_in_kubes_words_unless_held_or_bind() -> None:
    a = Authorization.__new__(Authorization)
    Authorization.__init__(a, store=None)  # type: ignore[arg-type]
    _apply_bootstrap(a)
    a.index.apply(f"{RBAC}/roles/prod/pods", {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    a.index.apply(
        f"{RBAC}/rolebindings/prod/jane",
        {"roleRef": {"kind": "Role", "name": "pods"}, "subjects": [{"kind": "User", "name": "jane"}]},
    )
    check = EscalationCheck(a)
    held = {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
    await _as(JANE, check(_admission("roles", "CREATE", ns="prod", name="r", obj=held)))
    more = {
        "metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
    }
    with pytest.raises(ApiError) as err:
        await _as(JANE, check(_admission("roles", "CREATE", ns="prod", name="r", obj=more)))
    assert err.value.code == 403
    assert err.value.message == (
        'roles.rbac.authorization.k8s.io "r" is forbidden: user "jane" (groups=["devs" "system:authenticated"]) '
        "is attempting to grant RBAC permissions not currently held:\n"
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get" "list"]}'
    )
    # in another namespace jane holds nothing
    with pytest.raises(ApiError):
        await _as(JANE, check(_admission("roles", "CREATE", ns="dev", name="r", obj=held)))
    binding = {"roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}, "subjects": [{"kind": "User", "name": "x"}]}
    with pytest.raises(ApiError) as err:
        await _as(JANE, check(_admission("rolebindings", "CREATE", ns="prod", name="b", obj=binding)))
    assert "is attempting to grant RBAC permissions not currently held" in err.value.message
    # `bind` on that role lets her
    a.index.apply(
        f"{RBAC}/roles/prod/binder",
        {
            "rules": [
                {
                    "apiGroups": ["rbac.authorization.k8s.io"],
                    "resources": ["clusterroles"],
                    "verbs": ["bind"],
                    "resourceNames": ["cluster-admin"],
                }
            ]
        },
    )
    a.index.apply(
        f"{RBAC}/rolebindings/prod/binder",
        {"roleRef": {"kind": "Role", "name": "binder"}, "subjects": [{"kind": "User", "name": "jane"}]},
    )
    await _as(JANE, check(_admission("rolebindings", "CREATE", ns="prod", name="b", obj=binding)))
    await _as(
        ADMIN,
        check(
            _admission(
                "clusterroles",
                "CREATE",
                name="x",
                obj={"rules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]},
            )
        ),
    )


async def test_node_restriction() -> None:
    guard = NodeRestriction()
    own = {"metadata": {"name": "n1", "labels": {}}}
    await _as(NODE1, guard(_admission("nodes", "UPDATE", name="n1", obj=own, old=own)))
    with pytest.raises(ApiError) as err:
        await _as(NODE1, guard(_admission("nodes", "UPDATE", name="n2", obj=own, old=own)))
    assert err.value.message == 'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"'
    labelled = {"metadata": {"name": "n1", "labels": {"node-restriction.kubernetes.io/x": "y"}}}
    with pytest.raises(ApiError) as err:
        await _as(NODE1, guard(_admission("nodes", "UPDATE", name="n1", obj=labelled, old=own)))
    assert "is not allowed to modify labels: node-restriction.kubernetes.io/x" in err.value.message
    pod_elsewhere = {"spec": {"nodeName": "n2"}}
    with pytest.raises(ApiError):
        await _as(NODE1, guard(_admission("pods", "DELETE", ns="a", name="p", old=pod_elsewhere)))
    with pytest.raises(ApiError):
        await _as(
            NODE1,
            guard(_admission("pods", "UPDATE", ns="a", name="p", sub="status", obj=pod_elsewhere, old=pod_elsewhere)),
        )
    mine = {"spec": {"nodeName": "n1"}}
    await _as(NODE1, guard(_admission("pods", "UPDATE", ns="a", name="p", sub="status", obj=mine, old=mine)))
    with pytest.raises(ApiError):
        await _as(NODE1, guard(_admission("pods", "CREATE", ns="a", name="p", obj=mine)))
    await _as(NODE1, guard(_admission("leases", "UPDATE", ns="kube-node-lease", name="n1", obj={}, old={})))
    with pytest.raises(ApiError):
        await _as(NODE1, guard(_admission("leases", "UPDATE", ns="kube-node-lease", name="n2", obj={}, old={})))
    # anyone else: not this plugin's business
    await _as(JANE, guard(_admission("nodes", "UPDATE", name="n2", obj=own, old=own)))


def test_impersonation_checks_each_header() -> None:
    a = Authorization.__new__(Authorization)
    Authorization.__init__(a, store=None)  # type: ignore[arg-type]
    _apply_bootstrap(a)
    headers = CIMultiDictProxy(
        CIMultiDict([("Impersonate-User", "bob"), ("Impersonate-Group", "g1"), ("Impersonate-Group", "g2")])
    )
    assert impersonation.requested(headers)
    user = impersonation.impersonate(headers, ADMIN, a)
    assert user.name == "bob" and user.groups == ("g1", "g2", "system:authenticated")
    sa = impersonation.impersonate(
        CIMultiDictProxy(CIMultiDict([("Impersonate-User", "system:serviceaccount:ns:x")])), ADMIN, a
    )
    assert sa.groups == ("system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated")
    with pytest.raises(ApiError) as err:
        impersonation.impersonate(headers, JANE, a)
    assert (
        err.value.message
        == 'users "bob" is forbidden: User "jane" cannot impersonate resource "users" in API group "" at the cluster scope'
    )
    a.index.apply(
        f"{RBAC}/clusterroles/imp", {"rules": [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]}]}
    )
    a.index.apply(
        f"{RBAC}/clusterrolebindings/imp",
        {"roleRef": {"kind": "ClusterRole", "name": "imp"}, "subjects": [{"kind": "User", "name": "jane"}]},
    )
    with pytest.raises(ApiError) as err:  # the user may be impersonated now, the groups still not
        impersonation.impersonate(headers, JANE, a)
    assert err.value.message.startswith('groups "g1" is forbidden')
    with pytest.raises(ApiError) as err:
        impersonation.impersonate(CIMultiDictProxy(CIMultiDict([("Impersonate-Group", "g1")])), ADMIN, a)
    assert err.value.code == 400


def test_reviews() -> None:
    a = Authorization.__new__(Authorization)
    Authorization.__init__(a, store=None)  # type: ignore[arg-type]
    _apply_bootstrap(a)
    body = {"spec": {"resourceAttributes": {"namespace": "prod", "verb": "list", "resource": "pods"}}}
    out = reviews.review(reviews.SELF, None, body, user=JANE, authz=a)
    assert out["status"] == {"allowed": False} and out["kind"] == "SelfSubjectAccessReview"
    assert reviews.review(reviews.SELF, None, body, user=ADMIN, authz=a)["status"]["allowed"] is True
    sar = {"spec": {**body["spec"], "user": "system:admin", "groups": ["system:masters"]}}
    assert reviews.review(reviews.SUBJECT, None, sar, user=JANE, authz=a)["status"]["allowed"] is True
    with pytest.raises(ApiError) as err:
        reviews.review(reviews.SUBJECT, None, body, user=JANE, authz=a)
    assert (
        err.value.code == 422
        and 'spec.user: Invalid value: "": at least one of user or group must be specified' in err.value.message
    )
    with pytest.raises(ApiError) as err:
        reviews.review(reviews.SELF, None, {"spec": {}}, user=JANE, authz=a)
    assert (
        "spec.resourceAttributes: Required value: exactly one of nonResourceAttributes or resourceAttributes"
        in err.value.message
    )
    with pytest.raises(ApiError) as err:
        reviews.review(reviews.LOCAL, "other", sar, user=JANE, authz=a)
    assert err.value.code == 400
    rules = reviews.review(reviews.RULES, None, {"spec": {"namespace": "prod"}}, user=JANE, authz=a)["status"]
    assert {
        "verbs": ["create"],
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
    } in rules["resourceRules"]
    assert {"verbs": ["get"], "nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"]} in rules[
        "nonResourceRules"
    ]
    assert rules["incomplete"] is False


@pytest.mark.parametrize(
    ("method", "url", "want"),
    [
        ("GET", "/api/v1/namespaces/a/pods", ("list", "", "pods", "", "a", "")),
        ("GET", "/api/v1/namespaces/a/pods?watch=true", ("watch", "", "pods", "", "a", "")),
        ("GET", "/api/v1/pods?watch=1&fieldSelector=metadata.name%3Dp", ("watch", "", "pods", "", "", "p")),
        ("POST", "/api/v1/namespaces/a/pods/p/eviction", ("create", "", "pods", "eviction", "a", "p")),
        ("DELETE", "/apis/apps/v1/namespaces/a/deployments", ("deletecollection", "apps", "deployments", "", "a", "")),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/a/deployments/d/scale",
            ("patch", "apps", "deployments", "scale", "a", "d"),
        ),
        ("PUT", "/api/v1/namespaces/a/finalize", ("update", "", "namespaces", "finalize", "a", "a")),
        ("GET", "/api/v1/namespaces/a", ("get", "", "namespaces", "", "a", "a")),
        ("GET", "/api/v1/nodes/n1/proxy/metrics", ("get", "", "nodes", "proxy", "", "n1")),
        ("GET", "/apis/example.com/v1/widgets", ("list", "example.com", "widgets", "", "", "")),  # not served
        ("GET", "/api/v1/watch/namespaces/a/pods", ("watch", "", "pods", "", "a", "")),
    ],
)
def test_request_attributes_as_kubes_request_info(method: str, url: str, want: tuple[str, ...]) -> None:
    a = from_request(JANE, request_info(make_mocked_request(method, url)))
    assert a.resource_request
    assert (a.verb, a.api_group, a.resource, a.subresource, a.namespace, a.name) == want


def test_non_resource_attributes() -> None:
    for url in ("/metrics", "/apis", "/api/v1", "/openapi/v3/apis/apps/v1", "/readyz/etcd"):
        a = from_request(JANE, request_info(make_mocked_request("GET", url)))
        assert not a.resource_request and a.verb == "get" and a.path == url.split("?")[0]
