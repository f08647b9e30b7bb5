"""Validation of rbac.authorization.k8s.io/v1 Role, ClusterRole, RoleBinding, ClusterRoleBinding.

Mirrors `pkg/apis/rbac/validation/validation.go`: policy rules (verbs; resource rules need apiGroups and
resources; non-resource URLs only on cluster roles and never mixed with resources), aggregation rules, role
references (apiGroup, kind per binding kind, immutable), and subjects by kind.
"""

from __future__ import annotations

from typing import Any

from kwire.api.errors import FieldError, RawValue, invalid, not_supported, required
from kwire.api.validation import dns1123_subdomain, path_segment, validate_label_selector
from kwire.base.fields import as_list

Obj = dict[str, Any]
Errs = list[FieldError]

GROUP = "rbac.authorization.k8s.io"


def go_strings(values: list[Any]) -> RawValue:
    """A string slice as Go's %#v prints it in field errors: []string{"a", "b"}."""
    return RawValue("[]string{" + ", ".join(f'"{v}"' for v in values) + "}")


def policy_rule(rule: Any, path: str, *, namespaced: bool) -> Errs:
    if not isinstance(rule, dict):
        return [invalid(path, str(rule), "must be an object")]
    errs: Errs = []
    if not as_list(rule.get("verbs")):
        errs.append(required(f"{path}.verbs", "verbs must contain at least one value"))
    urls = as_list(rule.get("nonResourceURLs"))
    if urls:
        if namespaced:
            errs.append(
                invalid(
                    f"{path}.nonResourceURLs", go_strings(urls), "namespaced rules cannot apply to non-resource URLs"
                )
            )
        if as_list(rule.get("apiGroups")) or as_list(rule.get("resources")) or as_list(rule.get("resourceNames")):
            errs.append(
                invalid(
                    f"{path}.nonResourceURLs",
                    go_strings(urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                )
            )
        return errs
    if not as_list(rule.get("apiGroups")):
        errs.append(required(f"{path}.apiGroups", "resource rules must supply at least one api group"))
    if not as_list(rule.get("resources")):
        errs.append(required(f"{path}.resources", "resource rules must supply at least one resource"))
    return errs


def _role(obj: Obj, old: Obj | None, *, namespaced: bool) -> Errs:
    errs: Errs = []
    for i, rule in enumerate(as_list(obj.get("rules"))):
        errs += policy_rule(rule, f"rules[{i}]", namespaced=namespaced)
    agg = obj.get("aggregationRule")
    if not namespaced and agg is not None:
        selectors = as_list((agg or {}).get("clusterRoleSelectors"))
        if not selectors:
            errs.append(
                required(
                    "aggregationRule.clusterRoleSelectors",
                    "at least one clusterRoleSelector required if aggregationRule is non-nil",
                )
            )
        for i, sel in enumerate(selectors):
            errs += validate_label_selector(sel, f"aggregationRule.clusterRoleSelectors[{i}]")
    return errs


def role(obj: Obj, old: Obj | None) -> Errs:
    return _role(obj, old, namespaced=True)


def cluster_role(obj: Obj, old: Obj | None) -> Errs:
    return _role(obj, old, namespaced=False)


def _subject(s: Any, path: str, *, namespaced: bool) -> Errs:
    if not isinstance(s, dict):
        return [invalid(path, str(s), "must be an object")]
    errs: Errs = []
    name = str(s.get("name") or "")
    if not name:
        errs.append(required(f"{path}.name"))
    kind = s.get("kind")
    group = s.get("apiGroup") or ""
    if kind == "ServiceAccount":
        if name:
            errs += [invalid(f"{path}.name", name, m) for m in dns1123_subdomain(name)]
        if group:
            errs.append(not_supported(f"{path}.apiGroup", group, ("",)))
        if not namespaced and not s.get("namespace"):
            errs.append(required(f"{path}.namespace"))
    elif kind in ("User", "Group"):
        if group != GROUP:
            errs.append(not_supported(f"{path}.apiGroup", group, (GROUP,)))
    else:
        errs.append(not_supported(f"{path}.kind", kind or "", ("ServiceAccount", "User", "Group")))
    return errs


def _binding(obj: Obj, old: Obj | None, *, namespaced: bool) -> Errs:
    errs: Errs = []
    ref = obj.get("roleRef") if isinstance(obj.get("roleRef"), dict) else {}
    assert isinstance(ref, dict)
    if ref.get("apiGroup") != GROUP:
        errs.append(not_supported("roleRef.apiGroup", ref.get("apiGroup") or "", (GROUP,)))
    kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
    if ref.get("kind") not in kinds:
        errs.append(not_supported("roleRef.kind", ref.get("kind") or "", kinds))
    name = str(ref.get("name") or "")
    if not name:
        errs.append(required("roleRef.name"))
    else:
        errs += [invalid("roleRef.name", name, m) for m in path_segment(name)]
    for i, s in enumerate(as_list(obj.get("subjects"))):
        errs += _subject(s, f"subjects[{i}]", namespaced=namespaced)
    if old is not None and old.get("roleRef") != obj.get("roleRef"):
        errs.append(invalid("roleRef", RawValue(_go_role_ref(obj.get("roleRef"))), "cannot change roleRef"))
    return errs


def role_binding(obj: Obj, old: Obj | None) -> Errs:
    return _binding(obj, old, namespaced=True)


def cluster_role_binding(obj: Obj, old: Obj | None) -> Errs:
    return _binding(obj, old, namespaced=False)


def _go_role_ref(ref: Any) -> str:
    r = ref if isinstance(ref, dict) else {}
    return f'rbac.RoleRef{{APIGroup:"{r.get("apiGroup", "")}", Kind:"{r.get("kind", "")}", Name:"{r.get("name", "")}"}}'
