"""Field selectors (`fieldSelector=metadata.name=x,spec.nodeName!=`), evaluated on the JSON object.

kube-apiserver supports a per-kind list of field labels (each registry's `GetAttrs`/field label conversion);
`supported_for` is that list and `check` answers anything else with kube's 400 (`field label not supported`).
Values compare as strings (missing fields compare as "").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kwire.api.errors import bad_request


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    path: tuple[str, ...]
    value: str
    negate: bool


def _lookup(obj: Any, path: tuple[str, ...]) -> str:
    cur = obj
    for part in path:
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, obj: dict[str, Any]) -> bool:
        for r in self.requirements:
            if (_lookup(obj, r.path) == r.value) == r.negate:
                return False
        return True

    def value_of(self, path: str) -> str | None:
        """The required value of a field when the selector pins it (`metadata.name=x`)."""
        want = tuple(path.split("."))
        for r in self.requirements:
            if r.path == want and not r.negate:
                return r.value
        return None


# Per kind, the field labels beyond metadata.name (and metadata.namespace for namespaced kinds) kube accepts, and
# where each reads from when that is not the label itself.
_KIND_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "Pod": {
        "spec.nodeName": (),
        "spec.restartPolicy": (),
        "spec.schedulerName": (),
        "spec.serviceAccountName": (),
        "spec.hostNetwork": (),
        "status.phase": (),
        "status.podIP": (),
        "status.nominatedNodeName": (),
    },
    "Event": {
        "involvedObject.kind": (),
        "involvedObject.namespace": (),
        "involvedObject.name": (),
        "involvedObject.uid": (),
        "involvedObject.apiVersion": (),
        "involvedObject.resourceVersion": (),
        "involvedObject.fieldPath": (),
        "reason": (),
        "reportingComponent": (),
        "source": ("source", "component"),
        "type": (),
    },
    "Secret": {"type": ()},
    "Namespace": {"status.phase": ()},
    "Node": {"spec.unschedulable": ()},
    "ReplicaSet": {"status.replicas": ()},
    "Service": {"spec.clusterIP": (), "spec.type": ()},
    "Job": {"status.successful": ()},
    "CertificateSigningRequest": {"spec.signerName": ()},
}


def supported_for(kind: str, *, namespaced: bool) -> dict[str, tuple[str, ...]]:
    """Field label -> path it reads for `kind`."""
    out: dict[str, tuple[str, ...]] = {"metadata.name": ()}
    if namespaced:
        out["metadata.namespace"] = ()
    out.update(_KIND_FIELDS.get(kind, {}))
    return out


def check(selector: FieldSelector, *, kind: str, namespaced: bool) -> FieldSelector:
    """`selector` with each label resolved to the path it reads; an unsupported label is kube's 400 (kubectl
    prefixes it with `Unable to find "<resource>" that match label selector ..., field selector ...:`)."""
    supported = supported_for(kind, namespaced=namespaced)
    reqs = []
    for r in selector.requirements:
        label = ".".join(r.path)
        if label not in supported:
            raise bad_request(f"field label not supported: {label}")
        path = supported[label] or r.path
        reqs.append(FieldRequirement(path, r.value, r.negate))
    return FieldSelector(tuple(reqs))


def parse_fields(text: str | None) -> FieldSelector:
    if not text:
        return FieldSelector()
    reqs: list[FieldRequirement] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part:
            k, v = part.split("!=", 1)
            neg = True
        elif "==" in part:
            k, v = part.split("==", 1)
            neg = False
        elif "=" in part:
            k, v = part.split("=", 1)
            neg = False
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        k = k.strip()
        if not k:
            raise bad_request(f"invalid selector: '{text}'")
        reqs.append(FieldRequirement(tuple(k.split(".")), v.strip(), neg))
    return FieldSelector(tuple(reqs))
