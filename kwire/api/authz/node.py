"""The Node authorizer: what a kubelet (`system:node:<name>` in `system:nodes`) may do.

Mirrors kubernetes plugin/pkg/auth/authorizer/node (NodeAuthorizer + its graph): Secrets, ConfigMaps,
PersistentVolumeClaims (and the PersistentVolumes they are bound to) and ServiceAccounts (and tokens for them)
may be read only when a pod bound to that node references them; everything else a node asks is checked against
the static `system:node` rules (bootstrappolicy.NODE_RULES). Another identity gets no opinion (RBAC decides).
Denials carry kube's reason: `no relationship found between node 'n1' and this object`.

The graph is kept from pods' specs (fed by a store watch on pods, kwire.api.follow): per pod, the node it is
bound to and the objects it references (volumes, projected sources, env and envFrom, imagePullSecrets, its service
account); per node, a count of references to each object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from kwire.api.authz.attributes import NO_OPINION, Attributes, Decision, Verdict
from kwire.api.authz.bootstrappolicy import NODE_RULES
from kwire.api.authz.rules import any_allows
from kwire.base.fields import as_dict

PODS_PREFIX = "/registry/core/pods/"
Ref = tuple[str, str, str]  # (resource, namespace, name)
GRAPHED = frozenset({"secrets", "configmaps", "persistentvolumeclaims", "persistentvolumes", "serviceaccounts"})


def _names(items: Any, field: str) -> Iterator[str]:
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get(field), str) and item[field]:
            yield item[field]


# (resource, key, field): an object's `key` is a reference to that resource, named by its `field`.
RefTable = tuple[tuple[str, str, str], ...]
_VOLUME_SOURCES: RefTable = (
    ("secrets", "secret", "secretName"),
    ("configmaps", "configMap", "name"),
    ("persistentvolumeclaims", "persistentVolumeClaim", "claimName"),
)
_PROJECTED_SOURCES: RefTable = (("secrets", "secret", "name"), ("configmaps", "configMap", "name"))
_PLUGIN_SECRETS: RefTable = (("secrets", "nodePublishSecretRef", "name"), ("secrets", "secretRef", "name"))
_ENV_VALUE_FROM: RefTable = (("secrets", "secretKeyRef", "name"), ("configmaps", "configMapKeyRef", "name"))
_ENV_FROM: RefTable = (("secrets", "secretRef", "name"), ("configmaps", "configMapRef", "name"))


def _refs(obj: Any, table: RefTable) -> Iterator[tuple[str, str]]:
    """The references `obj` makes through the keys of `table` (those that are objects with a name set)."""
    if not isinstance(obj, dict):
        return
    for resource, key, field in table:
        ref = obj.get(key)
        if isinstance(ref, dict) and ref.get(field):
            yield resource, ref[field]


def _volume_refs(pod_name: str, volumes: Any) -> Iterator[tuple[str, str]]:
    for v in volumes if isinstance(volumes, list) else []:
        if not isinstance(v, dict):
            continue
        yield from _refs(v, _VOLUME_SOURCES)
        if isinstance(v.get("ephemeral"), dict) and v.get("name"):
            yield "persistentvolumeclaims", f"{pod_name}-{v['name']}"
        projected = v.get("projected")
        if isinstance(projected, dict):
            for src in projected.get("sources") or []:
                yield from _refs(src, _PROJECTED_SOURCES)
        for plugin in ("csi", "cephfs", "rbd", "iscsi", "flexVolume", "azureFile", "scaleIO", "storageos"):
            spec = v.get(plugin)
            if isinstance(spec, dict):
                yield from _refs(spec, _PLUGIN_SECRETS)
                if plugin == "azureFile" and spec.get("secretName"):
                    yield "secrets", spec["secretName"]


def _container_refs(containers: Any) -> Iterator[tuple[str, str]]:
    for c in containers if isinstance(containers, list) else []:
        if not isinstance(c, dict):
            continue
        for env in c.get("env") or []:
            yield from _refs(env.get("valueFrom") if isinstance(env, dict) else None, _ENV_VALUE_FROM)
        for env_from in c.get("envFrom") or []:
            yield from _refs(env_from, _ENV_FROM)


def pod_refs(pod: dict[str, Any]) -> tuple[str, frozenset[Ref]]:
    """The node a pod is bound to ("" when unscheduled) and every object it references."""
    meta = as_dict(pod.get("metadata"))
    spec = as_dict(pod.get("spec"))
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    node = str(spec.get("nodeName") or "")
    found: set[tuple[str, str]] = {("serviceaccounts", str(spec.get("serviceAccountName") or "default"))}
    found.update(("secrets", n) for n in _names(spec.get("imagePullSecrets"), "name"))
    found.update(_volume_refs(name, spec.get("volumes")))
    for field in ("containers", "initContainers", "ephemeralContainers"):
        found.update(_container_refs(spec.get(field)))
    return node, frozenset((res, ns, n) for res, n in found)


class NodeGraph:
    """Per node, the objects its pods reference (with counts, so a reference shared by two pods survives one)."""

    def __init__(self) -> None:
        self._pods: dict[str, tuple[str, frozenset[Ref]]] = {}  # store key -> (node, refs)
        self._by_node: dict[str, dict[Ref, int]] = {}

    def reset(self) -> None:
        self._pods.clear()
        self._by_node.clear()

    def apply(self, key: str, pod: dict[str, Any] | None) -> None:
        old = self._pods.pop(key, None)
        if old is not None:
            refs = self._by_node.get(old[0], {})
            for r in old[1]:
                left = refs.get(r, 0) - 1
                if left > 0:
                    refs[r] = left
                else:
                    refs.pop(r, None)
            if not refs:
                self._by_node.pop(old[0], None)
        if pod is None:
            return
        node, refs_now = pod_refs(pod)
        if not node:
            return
        self._pods[key] = (node, refs_now)
        counts = self._by_node.setdefault(node, {})
        for r in refs_now:
            counts[r] = counts.get(r, 0) + 1

    def has(self, node: str, ref: Ref) -> bool:
        return ref in self._by_node.get(node, {})

    def refs(self, node: str, resource: str) -> list[Ref]:
        return [r for r in self._by_node.get(node, {}) if r[0] == resource]


class NodeAuthorizer:
    def __init__(self, graph: NodeGraph, *, pvc_volume: Callable[[str, str], str | None]) -> None:
        """`pvc_volume(namespace, name)`: the PersistentVolume a claim is bound to, if any."""
        self.graph = graph
        self.pvc_volume = pvc_volume

    def authorize(self, a: Attributes) -> Decision:
        node = a.user.node_name
        if node is None:
            return NO_OPINION
        if a.resource_request and a.api_group == "" and a.resource in GRAPHED:
            return self._graphed(node, a)
        if any_allows(NODE_RULES, a):
            return Decision(Verdict.ALLOW)
        return NO_OPINION

    def _related(self, node: str, a: Attributes) -> bool:
        if a.resource == "persistentvolumes":
            return any(self.pvc_volume(ns, n) == a.name for _, ns, n in self.graph.refs(node, "persistentvolumeclaims"))
        return self.graph.has(node, (a.resource, a.namespace, a.name))

    def _graphed(self, node: str, a: Attributes) -> Decision:
        if a.resource == "serviceaccounts":
            wanted = a.verb == "create" and a.subresource == "token" or a.verb == "get" and not a.subresource
        elif a.resource == "persistentvolumeclaims" and a.subresource == "status":
            wanted = a.verb in ("get", "update", "patch")
        else:
            # get (and a list or watch of one name, kube's AuthorizeNodeWithSelectors) of a referenced object
            wanted = a.verb in ("get", "list", "watch") and not a.subresource
        if not wanted:
            return Decision(Verdict.NO_OPINION, f"can only read {a.resource} a pod on node '{node}' references")
        if not a.name:
            return Decision(Verdict.NO_OPINION, "No Object name found")
        if self._related(node, a):
            return Decision(Verdict.ALLOW)
        return Decision(Verdict.NO_OPINION, f"no relationship found between node '{node}' and this object")
