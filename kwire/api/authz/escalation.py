"""RBAC escalation prevention: nobody grants permissions they do not hold.

Mirrors kubernetes pkg/registry/rbac/{role,clusterrole,rolebinding,clusterrolebinding}/policybased and
pkg/registry/rbac/validation.ConfirmNoEscalation: creating or updating a Role/ClusterRole whose rules the user
does not hold (in the role's namespace, or cluster-wide) is refused unless the user may `escalate` that role;
a binding is refused unless the user may `bind` its role or holds every rule of it. `system:masters` may always.
The refusal is kube's 403: `clusterroles.rbac.authorization.k8s.io "x" is forbidden: user "jane"
(groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:` followed by one
compact rule per line. An `aggregationRule` needs `escalate` on the ClusterRole or cluster-admin's authority, * on *.* (kube's
policybased ClusterRole storage).
"""

from __future__ import annotations

from kwire.api.authz.attributes import Attributes
from kwire.api.authz.chain import Authorization, forbidden_error
from kwire.api.authz.rbac import CLUSTER_ROLES, GROUP, ROLE_BINDINGS, ROLES
from kwire.api.authz.rules import Rule, compact, compact_string, go_quote_list, missing, parse_rules
from kwire.api.errors import not_found
from kwire.api.user import MASTERS, UserInfo, current_user
from kwire.api.webhookadmission import Attributes as AdmissionAttributes
from kwire.base.fields import as_dict

FULL_AUTHORITY = (
    Rule(verbs=("*",), api_groups=("*",), resources=("*",)),
    Rule(verbs=("*",), non_resource_urls=("*",)),
)


class EscalationCheck:
    def __init__(self, authz: Authorization) -> None:
        self.authz = authz

    async def __call__(self, attrs: AdmissionAttributes) -> None:
        if attrs.kind.group != GROUP or attrs.operation not in ("CREATE", "UPDATE") or attrs.object is None:
            return
        user = current_user()
        if MASTERS in user.groups:
            return
        plural, ns, obj = attrs.kind.plural, attrs.namespace, attrs.object
        name = attrs.name or str((obj.get("metadata") or {}).get("name") or "")
        if plural in (ROLES, CLUSTER_ROLES):
            # kube's policybased storage: `escalate` on the role allows anything; otherwise the rules must be held,
            # and an aggregationRule (which can gather anything) needs * on *.* (cluster-admin's authority).
            if self._may(user, "escalate", plural, ns, name):
                return
            self._confirm(user, ns, parse_rules(obj.get("rules")), plural=plural, name=name)
            if plural == CLUSTER_ROLES and obj.get("aggregationRule"):
                owner, _ = self.authz.rules_for(user, ns)
                if missing(owner, FULL_AUTHORITY):
                    raise forbidden_error(
                        GROUP, plural, name, "must have cluster-admin privileges to use the aggregationRule"
                    )
            return
        ref = as_dict(obj.get("roleRef"))
        role_kind, role_name = str(ref.get("kind") or ""), str(ref.get("name") or "")
        role_plural = CLUSTER_ROLES if role_kind == "ClusterRole" else ROLES
        if self._may(user, "bind", role_plural, ns, role_name):  # kube asks in the binding's namespace
            return
        if role_plural == CLUSTER_ROLES:
            rules = self.authz.index.cluster_roles.get(role_name)
        else:
            rules = self.authz.index.roles.get((ns, role_name))
        if rules is None:
            raise not_found(GROUP, role_plural, role_name)
        self._confirm(user, ns if plural == ROLE_BINDINGS else "", rules, plural=plural, name=name)

    def _may(self, user: UserInfo, verb: str, plural: str, namespace: str, name: str) -> bool:
        a = Attributes(
            user=user,
            verb=verb,
            resource_request=True,
            api_group=GROUP,
            api_version="v1",
            resource=plural,
            namespace=namespace,
            name=name,
        )
        return self.authz.authorize(a).allowed

    def _confirm(self, user: UserInfo, namespace: str, wanted: tuple[Rule, ...], *, plural: str, name: str) -> None:
        owner, errors = self.authz.rules_for(user, namespace)
        lacking = missing(owner, wanted)
        if not lacking:
            return
        lines = sorted({compact_string(r) for r in compact(lacking)})
        msg = (
            f'user "{user.name}" (groups={go_quote_list(user.groups)}) is attempting to grant RBAC permissions '
            "not currently held:\n" + "\n".join(lines)
        )
        if errors:
            msg += f"; resolution errors: [{', '.join(errors)}]"
        raise forbidden_error(GROUP, plural, name, msg)
