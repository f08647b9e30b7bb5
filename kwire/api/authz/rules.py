"""RBAC policy rules: matching a request, one rule set covering another, and kube's compact text of a rule.

Mirrors kubernetes pkg/apis/rbac/v1/evaluation_helpers.go (VerbMatches, APIGroupMatches, ResourceMatches with
`*` and `*/subresource`, ResourceNameMatches, NonResourceURLMatches with a trailing `*`) and
pkg/registry/rbac/validation (Covers over rules broken down one verb/group/resource/name at a time, CompactString).
Rules are parsed once, when a role is indexed, into frozen tuples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kwire.api.authz.attributes import Attributes

ALL = "*"


@dataclass(frozen=True, slots=True)
class Rule:
    verbs: tuple[str, ...] = ()
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The rule as a PolicyRule object (the fields it has)."""
        out: dict[str, Any] = {"verbs": list(self.verbs)}
        if self.api_groups or self.resources:
            out["apiGroups"] = list(self.api_groups)
        if self.resources:
            out["resources"] = list(self.resources)
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        if self.non_resource_urls:
            out["nonResourceURLs"] = list(self.non_resource_urls)
        return out


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def parse_rule(raw: Any) -> Rule | None:
    """A PolicyRule object as a `Rule` (None when it is not an object)."""
    if not isinstance(raw, dict):
        return None
    return Rule(
        verbs=_strings(raw.get("verbs")),
        api_groups=_strings(raw.get("apiGroups")),
        resources=_strings(raw.get("resources")),
        resource_names=_strings(raw.get("resourceNames")),
        non_resource_urls=_strings(raw.get("nonResourceURLs")),
    )


def parse_rules(raw: Any) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(r for r in (parse_rule(x) for x in raw) if r is not None)


def rule(
    verbs: Sequence[str],
    groups: Sequence[str] = (),
    resources: Sequence[str] = (),
    *,
    names: Sequence[str] = (),
    urls: Sequence[str] = (),
) -> Rule:
    """A rule as kube's bootstrap policy writes them (rbacv1helpers.NewRule(...).Groups(...).Resources(...))."""
    return Rule(tuple(verbs), tuple(groups), tuple(resources), tuple(names), tuple(urls))


# -- matching a request (evaluation_helpers.go) --------------------------------------------------------------------
def _resource_matches(rule_resources: tuple[str, ...], combined: str, subresource: str) -> bool:
    for r in rule_resources:
        if r == ALL or r == combined:
            return True
        # `*/status` matches the status subresource of every resource
        if subresource and len(r) == len(subresource) + 2 and r.startswith("*/") and r.endswith(subresource):
            return True
    return False


def _url_matches(urls: tuple[str, ...], path: str) -> bool:
    for u in urls:
        if u == ALL or u == path:
            return True
        if u.endswith("*") and path.startswith(u[:-1]):
            return True
    return False


def allows(r: Rule, a: Attributes) -> bool:
    """kube's RuleAllows."""
    if a.verb not in r.verbs and ALL not in r.verbs:
        return False
    if a.resource_request:
        return (
            (ALL in r.api_groups or a.api_group in r.api_groups)
            and _resource_matches(r.resources, a.combined_resource, a.subresource)
            and (not r.resource_names or a.name in r.resource_names)
        )
    return _url_matches(r.non_resource_urls, a.path)


def any_allows(rules: Iterable[Rule], a: Attributes) -> bool:
    return any(allows(r, a) for r in rules)


# -- covering (pkg/registry/rbac/validation/policy_comparator.go) -------------------------------------------------
def breakdown(r: Rule) -> list[Rule]:
    """One rule per group x resource x verb (x name), or per URL x verb (kube's BreakdownRule)."""
    out: list[Rule] = []
    for group in r.api_groups:
        for resource in r.resources:
            for verb in r.verbs:
                if r.resource_names:
                    out.extend(Rule((verb,), (group,), (resource,), (name,)) for name in r.resource_names)
                else:
                    out.append(Rule((verb,), (group,), (resource,)))
    for url in r.non_resource_urls:
        for verb in r.verbs:
            out.append(Rule((verb,), non_resource_urls=(url,)))
    return out


def _has_all(owner: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
    return ALL in owner or all(w in owner for w in wanted)


def _covers_one(owner: Rule, sub: Rule) -> bool:
    if not _has_all(owner.verbs, sub.verbs):
        return False
    if sub.non_resource_urls:
        for url in sub.non_resource_urls:
            if not any(
                o == ALL or o == url or (o.endswith("*") and url.startswith(o[:-1])) for o in owner.non_resource_urls
            ):
                return False
        return True
    if not _has_all(owner.api_groups, sub.api_groups):
        return False
    for res in sub.resources:
        if ALL in owner.resources or res in owner.resources:
            continue
        _, slash, subres = res.partition("/")
        if slash and f"*/{subres}" in owner.resources:
            continue
        return False
    if owner.resource_names and not all(n in owner.resource_names for n in sub.resource_names):
        return False
    return not (owner.resource_names and not sub.resource_names)


def missing(owner: Sequence[Rule], wanted: Iterable[Rule]) -> list[Rule]:
    """The broken-down parts of `wanted` no rule of `owner` covers (kube's Covers)."""
    out: list[Rule] = []
    for r in wanted:
        for sub in breakdown(r):
            if not any(_covers_one(o, sub) for o in owner):
                out.append(sub)
    return out


def compact(rules: list[Rule]) -> list[Rule]:
    """kube's CompactRules: simple resource rules differing only in their verb become one rule."""
    merged: dict[tuple[str, str], list[str]] = {}
    out: list[Rule] = []
    for r in rules:
        simple = len(r.api_groups) == 1 and len(r.resources) == 1 and not r.resource_names and not r.non_resource_urls
        if not simple:
            out.append(r)
            continue
        key = (r.api_groups[0], r.resources[0])
        verbs = merged.setdefault(key, [])
        verbs.extend(v for v in r.verbs if v not in verbs)
    out.extend(Rule(tuple(v), (g,), (res,)) for (g, res), v in merged.items())
    return out


def _go_quote_list(values: tuple[str, ...]) -> str:
    """Go's %q of a []string: ["a" "b"]."""
    return "[" + " ".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "]"


def compact_string(r: Rule) -> str:
    """rbacv1helpers.CompactString: {APIGroups:[""], Resources:["pods"], Verbs:["get"]}."""
    parts: list[str] = []
    if r.api_groups:
        parts.append("APIGroups:" + _go_quote_list(r.api_groups))
    if r.resources:
        parts.append("Resources:" + _go_quote_list(r.resources))
    if r.non_resource_urls:
        parts.append("NonResourceURLs:" + _go_quote_list(r.non_resource_urls))
    if r.resource_names:
        parts.append("ResourceNames:" + _go_quote_list(r.resource_names))
    if r.verbs:
        parts.append("Verbs:" + _go_quote_list(r.verbs))
    return "{" + ", ".join(parts) + "}"


def go_quote_list(values: Iterable[str]) -> str:
    return _go_quote_list(tuple(values))
