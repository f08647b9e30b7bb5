"""authorization.k8s.io/v1 reviews: SubjectAccessReview, SelfSubjectAccessReview, LocalSubjectAccessReview and
SelfSubjectRulesReview — what `kubectl auth can-i [--list]` asks.

Mirrors kubernetes pkg/registry/authorization/* and pkg/apis/authorization/validation: a review is created (POST)
and answered at once, never stored; the answer is the request with `status` filled (`allowed`, `reason`,
`denied` never set by Node,RBAC; rules reviews list `resourceRules`/`nonResourceRules` and `incomplete`).
Validation errors are 422 in kube's words (`spec.resourceAttributes: Required value: exactly one of
nonResourceAttributes or resourceAttributes must be specified`, `spec.user: Invalid value: "": at least one of
user or group must be specified`); a LocalSubjectAccessReview's namespace must be the path's (400).
"""

from __future__ import annotations

from typing import Any

from kwire.api.authz.attributes import Attributes
from kwire.api.authz.chain import Authorization
from kwire.api.authz.rules import Rule
from kwire.api.errors import FieldError, bad_request, invalid, invalid_object, required
from kwire.api.user import UserInfo
from kwire.base.fields import as_dict

Obj = dict[str, Any]
GROUP = "authorization.k8s.io"
SUBJECT, SELF, LOCAL, RULES = (
    "SubjectAccessReview",
    "SelfSubjectAccessReview",
    "LocalSubjectAccessReview",
    "SelfSubjectRulesReview",
)
KINDS = (SUBJECT, SELF, LOCAL, RULES)


def _str(d: Obj, key: str) -> str:
    value = d.get(key)
    return value if isinstance(value, str) else ""


def _attributes(user: UserInfo, spec: Obj) -> Attributes:
    res = spec.get("resourceAttributes")
    if isinstance(res, dict):
        return Attributes(
            user=user,
            verb=_str(res, "verb"),
            resource_request=True,
            api_group=_str(res, "group"),
            api_version=_str(res, "version"),
            resource=_str(res, "resource"),
            subresource=_str(res, "subresource"),
            namespace=_str(res, "namespace"),
            name=_str(res, "name"),
        )
    non = as_dict(spec.get("nonResourceAttributes"))
    return Attributes(user=user, verb=_str(non, "verb"), resource_request=False, path=_str(non, "path"))


def _check_attributes(spec: Obj) -> list[FieldError]:
    has_res = isinstance(spec.get("resourceAttributes"), dict)
    has_non = isinstance(spec.get("nonResourceAttributes"), dict)
    if not has_res and not has_non:
        return [
            required(
                "spec.resourceAttributes",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )
        ]
    if has_res and has_non:
        return [
            invalid(
                "spec.nonResourceAttributes",
                "",
                "cannot be specified in combination with resourceAttributes",
            )
        ]
    return []


def _user_of_spec(spec: Obj) -> UserInfo:
    extra_raw = as_dict(spec.get("extra"))
    extra = {str(k): tuple(str(x) for x in v) for k, v in extra_raw.items() if isinstance(v, list)}
    groups = tuple(g for g in spec.get("groups") or [] if isinstance(g, str))
    return UserInfo(name=_str(spec, "user"), groups=groups, uid=_str(spec, "uid"), extra=extra)


def _answer(body: Obj, kind: str, status: Obj) -> Obj:
    meta = as_dict(body.get("metadata"))
    return {
        "kind": kind,
        "apiVersion": f"{GROUP}/v1",
        "metadata": {**meta, "creationTimestamp": None},
        "spec": body.get("spec") or {},
        "status": status,
    }


def _access_status(authz: Authorization, a: Attributes) -> Obj:
    decision = authz.authorize(a)
    status: Obj = {"allowed": decision.allowed}
    if decision.reason:
        status["reason"] = decision.reason
    return status


def review(kind: str, namespace: str | None, body: Obj, *, user: UserInfo, authz: Authorization) -> Obj:
    """Answer one review created by `user` (the request's user, after impersonation)."""
    spec = as_dict(body.get("spec"))
    name = _str(as_dict(body.get("metadata")), "name")
    if kind == RULES:
        return _answer(body, kind, rules_status(authz, user, _str(spec, "namespace")))
    errors = _check_attributes(spec)
    if kind in (SUBJECT, LOCAL) and not _str(spec, "user") and not spec.get("groups"):
        errors.append(invalid("spec.user", "", "at least one of user or group must be specified"))
    if kind == LOCAL:
        if isinstance(spec.get("nonResourceAttributes"), dict):
            errors.append(invalid("spec.nonResourceAttributes", "", "disallowed on this kind of request"))
    if errors:
        raise invalid_object(GROUP, kind, name, errors)
    if kind == LOCAL:
        ns = _str(as_dict(spec.get("resourceAttributes")), "namespace")
        if ns != (namespace or ""):
            raise bad_request(f"spec.resourceAttributes.namespace must match namespace: {namespace or ''}")
    subject = user if kind == SELF else _user_of_spec(spec)
    return _answer(body, kind, _access_status(authz, _attributes(subject, spec)))


def _resource_rule(r: Rule) -> Obj:
    out: Obj = {"verbs": list(r.verbs), "apiGroups": list(r.api_groups), "resources": list(r.resources)}
    if r.resource_names:
        out["resourceNames"] = list(r.resource_names)
    return out


def rules_status(authz: Authorization, user: UserInfo, namespace: str) -> Obj:
    """A SubjectRulesReviewStatus: what RBAC lets `user` do in `namespace`."""
    rules, errors = authz.rules_for(user, namespace)
    status: Obj = {
        "resourceRules": [_resource_rule(r) for r in rules if r.resources or r.api_groups],
        "nonResourceRules": [
            {"verbs": list(r.verbs), "nonResourceURLs": list(r.non_resource_urls)} for r in rules if r.non_resource_urls
        ],
        "incomplete": False,
    }
    if user.node_name is not None:
        # kube's Node authorizer cannot list a node's rules (they depend on the objects asked about)
        status["incomplete"] = True
        errors = [*errors, "node authorizer does not support user rule resolution"]
    if errors:
        status["evaluationError"] = "[" + ", ".join(errors) + "]" if len(errors) > 1 else errors[0]
    return status
