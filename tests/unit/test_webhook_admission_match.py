"""Which webhooks a request is sent to (kwire/api/webhookadmission.py), as kube-apiserver's rules.Matcher and
namespace/object selectors decide, and the denial texts of webhookerrors.ToStatusErr."""

from __future__ import annotations

from typing import Any

from kwire.api import webhookadmission as admission
from kwire.api.registry import by_path
from kwire.api.webhookadmission import Attributes

PODS = by_path("", "v1", "pods")
NAMESPACES = by_path("", "v1", "namespaces")
DEPLOYMENTS = by_path("apps", "v1", "deployments")
assert PODS and NAMESPACES and DEPLOYMENTS


def rule(**kw: Any) -> dict[str, Any]:
    base = {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
    return {**base, **kw}


def attrs(kind: Any = PODS, op: str = "CREATE", sub: str = "", labels: dict[str, str] | None = None) -> Attributes:
    obj = {"metadata": {"name": "x", "labels": labels or {}}}
    return Attributes(kind, op, "ns1" if kind.namespaced else "", "x", sub, object=obj)


def test_rule_resources_subresources_and_wildcards() -> None:
    assert admission.rule_matches(rule(), attrs())
    assert not admission.rule_matches(rule(), attrs(sub="status"))
    assert admission.rule_matches(rule(resources=["pods/status"]), attrs(sub="status"))
    assert not admission.rule_matches(rule(resources=["pods/status"]), attrs())
    assert admission.rule_matches(rule(resources=["pods/*"]), attrs(sub="exec"))
    assert admission.rule_matches(rule(resources=["*/status"]), attrs(sub="status"))
    assert admission.rule_matches(rule(resources=["*"]), attrs())
    assert not admission.rule_matches(rule(resources=["*"]), attrs(sub="status"))
    assert admission.rule_matches(rule(resources=["*/*"]), attrs(sub="status"))
    assert not admission.rule_matches(rule(), attrs(op="UPDATE"))
    assert admission.rule_matches(rule(operations=["*"]), attrs(op="DELETE"))
    assert not admission.rule_matches(rule(), attrs(DEPLOYMENTS))
    assert admission.rule_matches(
        rule(apiGroups=["*"], apiVersions=["*"], resources=["deployments"]), attrs(DEPLOYMENTS)
    )


def test_rule_scope() -> None:
    every = rule(resources=["*"])
    assert admission.rule_matches({**every, "scope": "Namespaced"}, attrs())
    assert not admission.rule_matches({**every, "scope": "Cluster"}, attrs())
    assert admission.rule_matches({**every, "scope": "Cluster", "resources": ["namespaces"]}, attrs(NAMESPACES))
    assert not admission.rule_matches({**every, "scope": "Namespaced", "resources": ["namespaces"]}, attrs(NAMESPACES))


def test_namespace_and_object_selectors() -> None:
    labels = {"ns1": {"team": "a"}}
    hook = {"rules": [rule()], "namespaceSelector": {"matchLabels": {"team": "a"}}}
    assert admission.webhook_matches(hook, attrs(), labels.get)
    assert not admission.webhook_matches(hook, attrs(), {"ns1": {"team": "b"}}.get)
    expr = {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]}
    hook = {"rules": [rule()], "objectSelector": expr}
    assert admission.webhook_matches(hook, attrs(), labels.get)
    assert not admission.webhook_matches(hook, attrs(labels={"skip": "1"}), labels.get)
    # A Namespace is selected by its own labels.
    ns_hook = {"rules": [rule(resources=["namespaces"])], "namespaceSelector": {"matchLabels": {"team": "a"}}}
    assert admission.webhook_matches(ns_hook, attrs(NAMESPACES, labels={"team": "a"}), lambda _: None)
    assert not admission.webhook_matches(ns_hook, attrs(NAMESPACES), lambda _: None)


def test_denial_and_failure_texts() -> None:
    err = admission.denied("x.example.com", {"code": 403, "message": "no"})
    assert (err.code, err.message) == (403, 'admission webhook "x.example.com" denied the request: no')
    err = admission.denied("x.example.com", {"code": 200})
    assert (err.code, err.message) == (400, 'admission webhook "x.example.com" denied the request without explanation')
    err = admission.call_failed("x", "failed to call webhook: boom")
    assert (
        err.code == 500
        and err.message == 'Internal error occurred: failed calling webhook "x": failed to call webhook: boom'
    )


def test_review_is_admission_review_v1() -> None:
    review = admission.review(attrs(sub="status", op="UPDATE"), {"metadata": {"name": "x"}})
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    req = review["request"]
    assert req["subResource"] == "status" and req["namespace"] == "ns1" and req["operation"] == "UPDATE"
    assert req["options"] == {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}
    assert req["requestKind"] == req["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
