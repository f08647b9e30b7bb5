"""The RBAC authorizer over an in-memory index of Roles, ClusterRoles and their bindings.

Mirrors kubernetes plugin/pkg/auth/authorizer/rbac (RBACAuthorizer.Authorize, VisitRulesFor) and
pkg/registry/rbac/validation (the default rule resolver): a ClusterRoleBinding grants its ClusterRole's rules
everywhere; a RoleBinding grants its Role's or ClusterRole's rules in its own namespace; subjects are a User
(by name), a Group (any of the user's groups) or a ServiceAccount (user `system:serviceaccount:<ns>:<name>`).
RBAC only allows (it never denies); a binding to a role that does not exist is reported in the reason as kube
reports it (`RBAC: clusterrole.rbac.authorization.k8s.io "x" not found`).

The index is fed by `apply` with every write of the four kinds (kwire.api.follow keeps it current from the
store's watch), and answers from dicts keyed by subject, so a decision costs a few dict lookups plus the rules of
the roles bound to that user.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kwire.api.authz.attributes import NO_OPINION, Attributes, Decision, Verdict
from kwire.api.authz.rules import Rule, allows, parse_rules
from kwire.api.user import SERVICE_ACCOUNT_PREFIX, UserInfo
from kwire.base.fields import as_dict

GROUP = "rbac.authorization.k8s.io"
PREFIX = f"/registry/{GROUP}/"
ROLES, CLUSTER_ROLES = "roles", "clusterroles"
ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS = "rolebindings", "clusterrolebindings"
KINDS = (ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS)


@dataclass(frozen=True, slots=True)
class Binding:
    namespace: str  # "" for a ClusterRoleBinding
    name: str
    role_kind: str  # Role | ClusterRole
    role_name: str
    subjects: tuple[str, ...]  # subject keys: "u:<user name>" (ServiceAccounts as their user name), "g:<group>"


def subject_keys(raw: Any, binding_namespace: str) -> tuple[str, ...]:
    """The index keys of a binding's subjects (kube's appliesToUser, precomputed)."""
    out: list[str] = []
    for s in raw if isinstance(raw, list) else []:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            continue
        kind, name = s.get("kind"), s["name"]
        if kind == "User":
            out.append("u:" + name)
        elif kind == "Group":
            out.append("g:" + name)
        elif kind == "ServiceAccount":
            ns = s.get("namespace") or binding_namespace
            out.append(f"u:{SERVICE_ACCOUNT_PREFIX}{ns}:{name}")
    return tuple(out)


def user_keys(user: UserInfo) -> list[str]:
    return ["u:" + user.name, *("g:" + g for g in user.groups)]


def _split_key(key: str) -> tuple[str, str, str] | None:
    """A store key under /registry/rbac.authorization.k8s.io/ as (plural, namespace, name)."""
    parts = key[len(PREFIX) :].split("/")
    if len(parts) == 2 and parts[0] in (CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS):
        return parts[0], "", parts[1]
    if len(parts) == 3 and parts[0] in (ROLES, ROLE_BINDINGS):
        return parts[0], parts[1], parts[2]
    return None


class RbacIndex:
    """Roles' rules and bindings by subject, kept current from the store."""

    def __init__(self) -> None:
        self.cluster_roles: dict[str, tuple[Rule, ...]] = {}
        self.roles: dict[tuple[str, str], tuple[Rule, ...]] = {}
        self.bindings: dict[tuple[str, str, str], Binding] = {}  # (plural, namespace, name) -> binding
        # subject key -> ClusterRoleBindings; (namespace, subject key) -> RoleBindings
        self._cluster_by_subject: dict[str, dict[str, Binding]] = {}
        self._ns_by_subject: dict[tuple[str, str], dict[str, Binding]] = {}
        self.generation = 0  # bumped on every change: what the authorizer cached is stale

    def reset(self) -> None:
        """Forget everything (before a relist)."""
        self.generation += 1
        self.cluster_roles.clear()
        self.roles.clear()
        self.bindings.clear()
        self._cluster_by_subject.clear()
        self._ns_by_subject.clear()

    def apply(self, key: str, obj: dict[str, Any] | None) -> None:
        """One stored object written (obj) or deleted (None)."""
        where = _split_key(key)
        if where is None:
            return
        self.generation += 1
        plural, ns, name = where
        if plural == CLUSTER_ROLES:
            if obj is None:
                self.cluster_roles.pop(name, None)
            else:
                self.cluster_roles[name] = parse_rules(obj.get("rules"))
            return
        if plural == ROLES:
            if obj is None:
                self.roles.pop((ns, name), None)
            else:
                self.roles[(ns, name)] = parse_rules(obj.get("rules"))
            return
        old = self.bindings.pop(where, None)
        if old is not None:
            self._unindex(old)
        if obj is None:
            return
        ref = as_dict(obj.get("roleRef"))
        binding = Binding(
            namespace=ns,
            name=name,
            role_kind=str(ref.get("kind") or ""),
            role_name=str(ref.get("name") or ""),
            subjects=subject_keys(obj.get("subjects"), ns),
        )
        self.bindings[where] = binding
        for s in binding.subjects:
            if ns:
                self._ns_by_subject.setdefault((ns, s), {})[name] = binding
            else:
                self._cluster_by_subject.setdefault(s, {})[name] = binding

    def _unindex(self, b: Binding) -> None:
        for s in b.subjects:
            table = self._ns_by_subject.get((b.namespace, s)) if b.namespace else self._cluster_by_subject.get(s)
            if table is not None:
                table.pop(b.name, None)
                if not table:
                    if b.namespace:
                        del self._ns_by_subject[(b.namespace, s)]
                    else:
                        del self._cluster_by_subject[s]

    # -- rule resolution (kube's VisitRulesFor) -----------------------------------------------------------------
    def bindings_for(self, user: UserInfo, namespace: str) -> Iterator[Binding]:
        """The ClusterRoleBindings, then (with a namespace) the RoleBindings there, that apply to `user`."""
        keys = user_keys(user)
        seen: set[int] = set()
        for k in keys:
            for b in self._cluster_by_subject.get(k, {}).values():
                if id(b) not in seen:
                    seen.add(id(b))
                    yield b
        if namespace:
            for k in keys:
                for b in self._ns_by_subject.get((namespace, k), {}).values():
                    if id(b) not in seen:
                        seen.add(id(b))
                        yield b

    def role_rules(self, b: Binding) -> tuple[tuple[Rule, ...], str]:
        """The rules a binding grants, or an error in kube's words when its role does not exist."""
        if b.role_kind == "ClusterRole":
            rules = self.cluster_roles.get(b.role_name)
            if rules is None:
                return (), f'clusterrole.{GROUP} "{b.role_name}" not found'
            return rules, ""
        if b.role_kind == "Role" and b.namespace:
            rules = self.roles.get((b.namespace, b.role_name))
            if rules is None:
                return (), f'role.{GROUP} "{b.role_name}" not found'
            return rules, ""
        return (), f"unsupported role reference kind: {b.role_kind!r}"

    def rules_for(self, user: UserInfo, namespace: str) -> tuple[list[Rule], list[str]]:
        """Every rule `user` holds in `namespace` ("" = cluster-wide only), with resolution errors."""
        rules: list[Rule] = []
        errors: list[str] = []
        for b in self.bindings_for(user, namespace):
            granted, err = self.role_rules(b)
            rules.extend(granted)
            if err:
                errors.append(err)
        return rules, errors

    def role_exists(self, kind: str, namespace: str, name: str) -> bool:
        if kind == "ClusterRole":
            return name in self.cluster_roles
        return (namespace, name) in self.roles


Resolved = tuple[tuple[tuple[Binding, tuple[Rule, ...]], ...], tuple[str, ...]]
CACHE_SIZE = 4096


class RbacAuthorizer:
    """Decides from the index; what a (user, groups, namespace) holds is resolved once and cached until the index
    changes (any RBAC write), so a decision is one dict lookup and a walk of that user's rules."""

    def __init__(self, index: RbacIndex) -> None:
        self.index = index
        self._cache: dict[tuple[str, tuple[str, ...], str], Resolved] = {}
        self._generation = -1

    def _resolved(self, user: UserInfo, namespace: str) -> Resolved:
        if self._generation != self.index.generation:
            self._cache.clear()
            self._generation = self.index.generation
        key = (user.name, user.groups, namespace)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        granted: list[tuple[Binding, tuple[Rule, ...]]] = []
        errors: list[str] = []
        for b in self.index.bindings_for(user, namespace):
            rules, err = self.index.role_rules(b)
            if err:
                errors.append(err)
            elif rules:
                granted.append((b, rules))
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        resolved = (tuple(granted), tuple(errors))
        self._cache[key] = resolved
        return resolved

    def authorize(self, a: Attributes) -> Decision:
        granted, errors = self._resolved(a.user, a.namespace if a.resource_request else "")
        for b, rules in granted:
            for r in rules:
                if allows(r, a):
                    return Decision(Verdict.ALLOW, _allow_reason(b))
        if errors:
            return Decision(Verdict.NO_OPINION, "RBAC: " + _aggregate(list(errors)))
        return NO_OPINION


def _allow_reason(b: Binding) -> str:
    if b.namespace:
        return f'RBAC: allowed by RoleBinding "{b.name}/{b.namespace}" of {b.role_kind} "{b.role_name}"'
    return f'RBAC: allowed by ClusterRoleBinding "{b.name}" of ClusterRole "{b.role_name}"'


def _aggregate(errors: list[str]) -> str:
    """utilerrors.NewAggregate's text."""
    if len(errors) == 1:
        return errors[0]
    return "[" + ", ".join(errors) + "]"
