"""The NodeRestriction admission plugin: a node changes only what is its own.

Mirrors kubernetes plugin/pkg/admission/noderestriction for the kinds kwire serves, for a user
`system:node:<name>` in `system:nodes`:
- Node: only its own (`node "n1" is not allowed to modify node "n2"`), and never labels under
  `node-restriction.kubernetes.io/` (`is not allowed to modify labels: ...`);
- Pod: no creates (kube lets a node create mirror pods of its static pods; kwire runs no static pods), status
  updates and deletes only of pods bound to it;
- Lease: only its own, in kube-node-lease.
Errors are 403 Forbidden as kube's admission.NewForbidden words them.
"""

from __future__ import annotations

from typing import Any

from kwire.api.authz.chain import forbidden_error
from kwire.api.user import current_user
from kwire.api.webhookadmission import Attributes as AdmissionAttributes

RESTRICTED_LABEL_PREFIX = "node-restriction.kubernetes.io/"
NODE_LEASE_NAMESPACE = "kube-node-lease"


def _node_of(pod: dict[str, Any] | None) -> str:
    return str(((pod or {}).get("spec") or {}).get("nodeName") or "")


def _labels(obj: dict[str, Any] | None) -> dict[str, Any]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


def _restricted_changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    before, after = _labels(old), _labels(new)
    keys = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    return sorted(k for k in keys if k.partition("/")[0].endswith(RESTRICTED_LABEL_PREFIX.rstrip("/")) and "/" in k)


class NodeRestriction:
    async def __call__(self, attrs: AdmissionAttributes) -> None:
        node = current_user().node_name
        if node is None:
            return
        kind, op = attrs.kind, attrs.operation
        group, plural = kind.group, kind.plural

        def deny(detail: str) -> None:
            raise forbidden_error(group, plural, attrs.name, f'node "{node}" {detail}')

        if group == "" and plural == "nodes":
            if attrs.name != node:
                deny(f'is not allowed to modify node "{attrs.name}"')
            if op in ("CREATE", "UPDATE"):
                changed = _restricted_changes(attrs.old_object, attrs.object)
                if changed:
                    deny("is not allowed to modify labels: " + ", ".join(changed))
        elif group == "" and plural == "pods":
            if op == "CREATE":
                annotations = ((attrs.object or {}).get("metadata") or {}).get("annotations") or {}
                if "kubernetes.io/config.mirror" not in annotations:
                    deny("can only create mirror pods")
                deny("can not create mirror pods: kwire runs no static pods")
            elif op == "UPDATE" and attrs.subresource == "status":
                if _node_of(attrs.old_object) != node:
                    deny("can only update pod status for pods with spec.nodeName set to itself")
            elif op == "UPDATE":
                deny("can only update pod status")
            elif op == "DELETE" and _node_of(attrs.old_object) != node:
                deny("can only delete pods with spec.nodeName set to itself")
        elif group == "coordination.k8s.io" and plural == "leases":
            if attrs.namespace != NODE_LEASE_NAMESPACE or attrs.name != node:
                deny("can only access node lease with the same name as the requesting node")
