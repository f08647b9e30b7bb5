"""The registry of kinds the API serves: the built-in `KINDS` plus kinds CustomResourceDefinitions add at run time.

Adding a built-in kind is one `Kind(...)` entry in `KINDS`; routing, discovery, OpenAPI v3 stubs, storage keys
and watch all derive from it. `set_custom_kinds` replaces the kinds one CRD serves (one `Kind` per served
version, each carrying its `CustomVersion`), as kube-apiserver's apiextensions handler swaps its serving
info when a CRD changes; every lookup here sees built-in and custom kinds alike.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class CustomVersion:
    """What a CRD says about one served version: its schema, printer columns and scale subresource paths."""

    crd_name: str
    storage_version: str
    schema: dict[str, Any] | None
    printer_columns: tuple[dict[str, Any], ...] = ()
    spec_replicas_path: str = ""
    status_replicas_path: str = ""
    label_selector_path: str = ""
    preserve_unknown: bool = False
    selectable_fields: tuple[str, ...] = ()
    singular: str = ""
    # Derived from `schema` once when the CRD is served (kwire.api.crd.custom.derive), not per request:
    body_schema: dict[str, Any] | None = None  # schema without apiVersion/kind/metadata (what CEL rules walk)
    node: Any = None  # `schema` compiled (kwire.api.crd.schema.Node): defaulting and pruning walk it
    body_node: Any = None  # `body_schema` compiled: validation walks it
    has_rules: bool = False


@dataclass(frozen=True)
class Kind:
    group: str  # "" is the core group
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    list_kind: str = ""
    # Kinds kube stores in another version's shape (events.k8s.io/v1 Event as a core Event, autoscaling/v1 HPA as
    # autoscaling/v2): the (group, plural) whose storage they share; `kwire.api.convert` converts on the way.
    stored_as: tuple[str, str] | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # The verbs discovery lists when not all of them (the authorization reviews are create-only, never stored).
    verbs: tuple[str, ...] = ()
    custom: CustomVersion | None = field(default=None, compare=False, hash=False)

    @property
    def singular(self) -> str:
        if self.custom is not None and self.custom.singular:
            return self.custom.singular
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def store_group(self) -> str:
        if self.stored_as is not None:
            return self.stored_as[0] or "core"
        return self.group or "core"

    @property
    def store_plural(self) -> str:
        return self.stored_as[1] if self.stored_as is not None else self.plural

    def prefix(self, namespace: str | None = None) -> str:
        """The store key prefix of this kind's objects (all namespaces when namespace is None)."""
        base = f"/registry/{self.store_group}/{self.store_plural}/"
        if self.namespaced and namespace:
            return f"{base}{namespace}/"
        return base

    def key(self, namespace: str | None, name: str) -> str:
        if self.namespaced:
            return f"/registry/{self.store_group}/{self.store_plural}/{namespace}/{name}"
        return f"/registry/{self.store_group}/{self.store_plural}/{name}"

    @property
    def list_kind_name(self) -> str:
        return self.list_kind or f"{self.kind}List"


def _k(
    group_version: str,
    kind: str,
    plural: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
    status: bool = False,
    scale: bool = False,
    binding: bool = False,
    approval: bool = False,
    stored_as: tuple[str, str] | None = None,
    eviction: bool = False,
    extra: tuple[str, ...] = (),
    verbs: tuple[str, ...] = (),
) -> Kind:
    group, _, version = group_version.rpartition("/")
    return Kind(
        group=group,
        version=version,
        kind=kind,
        plural=plural,
        namespaced=namespaced,
        short_names=short,
        categories=categories,
        subresources=(("status",) if status else ())
        + (("scale",) if scale else ())
        + (("binding",) if binding else ())
        + (("approval",) if approval else ())
        + (("eviction",) if eviction else ())
        + extra,
        stored_as=stored_as,
        verbs=verbs,
    )


def _review(group_version: str, kind: str, plural: str, *, namespaced: bool = True) -> Kind:
    """A review: a request object that is answered and never stored, so `create` is its only verb."""
    return _k(group_version, kind, plural, namespaced=namespaced, verbs=("create",))


_HPA = _k(
    "autoscaling/v2",
    "HorizontalPodAutoscaler",
    "horizontalpodautoscalers",
    short=("hpa",),
    categories=("all",),
    status=True,
)
KINDS: tuple[Kind, ...] = (
    _k("v1", "Namespace", "namespaces", namespaced=False, short=("ns",), status=True),
    _k("v1", "Node", "nodes", namespaced=False, short=("no",), status=True),
    _k(
        "v1",
        "Pod",
        "pods",
        short=("po",),
        categories=("all",),
        status=True,
        binding=True,
        eviction=True,
        extra=("ephemeralcontainers",),
    ),
    _k("v1", "Service", "services", short=("svc",), categories=("all",), status=True),
    _k("v1", "Endpoints", "endpoints", short=("ep",)),
    _k("v1", "ConfigMap", "configmaps", short=("cm",)),
    _k("v1", "Secret", "secrets"),
    _k("v1", "Event", "events", short=("ev",)),
    _k("v1", "ServiceAccount", "serviceaccounts", short=("sa",)),
    _k("apps/v1", "Deployment", "deployments", short=("deploy",), categories=("all",), status=True, scale=True),
    _k("apps/v1", "ReplicaSet", "replicasets", short=("rs",), categories=("all",), status=True, scale=True),
    _k("apps/v1", "DaemonSet", "daemonsets", short=("ds",), categories=("all",), status=True),
    _k("apps/v1", "StatefulSet", "statefulsets", short=("sts",), categories=("all",), status=True, scale=True),
    _k("apps/v1", "ControllerRevision", "controllerrevisions"),
    _k("batch/v1", "Job", "jobs", categories=("all",), status=True),
    _k("batch/v1", "CronJob", "cronjobs", short=("cj",), categories=("all",), status=True),
    _k("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", short=("pdb",), status=True),
    _k("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
    _k("networking.k8s.io/v1", "Ingress", "ingresses", short=("ing",), status=True),
    _k("networking.k8s.io/v1", "IngressClass", "ingressclasses", namespaced=False),
    _k("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", short=("netpol",)),
    _k("coordination.k8s.io/v1", "Lease", "leases"),
    _k("v1", "LimitRange", "limitranges", short=("limits",)),
    _k("v1", "ResourceQuota", "resourcequotas", short=("quota",), status=True),
    _k("v1", "PersistentVolume", "persistentvolumes", namespaced=False, short=("pv",), status=True),
    _k("v1", "PersistentVolumeClaim", "persistentvolumeclaims", short=("pvc",), status=True),
    _k("rbac.authorization.k8s.io/v1", "Role", "roles"),
    _k("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", namespaced=False),
    _k("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    _k("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False),
    _review("authorization.k8s.io/v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", namespaced=False),
    _review("authorization.k8s.io/v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", namespaced=False),
    _review("authorization.k8s.io/v1", "SubjectAccessReview", "subjectaccessreviews", namespaced=False),
    _review("authorization.k8s.io/v1", "LocalSubjectAccessReview", "localsubjectaccessreviews"),
    # authentication.k8s.io: create-only, answered by kwire/api/authn/reviews.py
    _review("authentication.k8s.io/v1", "TokenReview", "tokenreviews", namespaced=False),
    _review("authentication.k8s.io/v1", "SelfSubjectReview", "selfsubjectreviews", namespaced=False),
    _k("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", namespaced=False, short=("pc",)),
    _k("storage.k8s.io/v1", "StorageClass", "storageclasses", namespaced=False, short=("sc",)),
    _k(
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        namespaced=False,
        categories=("api-extensions",),
    ),
    _k(
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        namespaced=False,
        categories=("api-extensions",),
    ),
    _k(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        namespaced=False,
        short=("crd", "crds"),
        categories=("api-extensions",),
        status=True,
    ),
    _k(
        "apiregistration.k8s.io/v1",
        "APIService",
        "apiservices",
        namespaced=False,
        categories=("api-extensions",),
        status=True,
    ),
    _k("events.k8s.io/v1", "Event", "events", short=("ev",), stored_as=("", "events")),
    _HPA,
    replace(_HPA, version="v1", stored_as=("autoscaling", "horizontalpodautoscalers")),  # v2's objects, as v1
    _k(
        "certificates.k8s.io/v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        namespaced=False,
        short=("csr",),
        status=True,
        approval=True,
    ),
)

_lock = threading.Lock()
_CUSTOM: dict[str, tuple[Kind, ...]] = {}  # CRD name -> the kinds it serves (one per served version)
_ALL: tuple[Kind, ...] = KINDS
_BY_PATH: dict[tuple[str, str, str], Kind] = {}
_BY_KIND: dict[tuple[str, str], Kind] = {}
_BY_PREFIX: dict[str, Kind] = {}  # store prefix -> the kind at its storage version
_BY_GROUP_VERSION: dict[tuple[str, str], tuple[Kind, ...]] = {}  # every /apis request asks (aggregation)


def _rebuild() -> None:
    global _ALL, _BY_PATH, _BY_KIND, _BY_PREFIX, _BY_GROUP_VERSION
    kinds = KINDS + tuple(k for ks in _CUSTOM.values() for k in ks)
    by_path = {(k.group, k.version, k.plural): k for k in kinds}
    by_kind = {(k.api_version, k.kind): k for k in kinds}
    by_prefix: dict[str, Kind] = {}
    for k in kinds:
        if k.stored_as is not None:
            continue  # stored in another kind's shape: that kind owns the prefix
        if k.custom is None or k.custom.storage_version == k.version or k.prefix() not in by_prefix:
            by_prefix[k.prefix()] = k
    by_gv: dict[tuple[str, str], tuple[Kind, ...]] = {}
    for k in kinds:
        by_gv[(k.group, k.version)] = (*by_gv.get((k.group, k.version), ()), k)
    # Readers see either the old or the new maps, never a half-built one.
    _ALL, _BY_PATH, _BY_KIND, _BY_PREFIX, _BY_GROUP_VERSION = kinds, by_path, by_kind, by_prefix, by_gv


_rebuild()


def set_custom_kinds(crd_name: str, kinds: tuple[Kind, ...]) -> None:
    """Serve `kinds` for the CRD `crd_name` (an empty tuple stops serving it)."""
    with _lock:
        if kinds:
            _CUSTOM[crd_name] = kinds
        else:
            _CUSTOM.pop(crd_name, None)
        _rebuild()


def custom_kinds(crd_name: str) -> tuple[Kind, ...]:
    return _CUSTOM.get(crd_name, ())


def all_kinds() -> tuple[Kind, ...]:
    """Every kind served right now: built-in first, then CRD-defined ones."""
    return _ALL


def by_path(group: str, version: str, plural: str) -> Kind | None:
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> Kind | None:
    return _BY_KIND.get((api_version, kind))


def storage_kind_for_key(key: str) -> Kind | None:
    """The kind (at its storage version) whose store prefix holds `key` (`/registry/<group>/<plural>/...`)."""
    parts = key.split("/", 4)
    if len(parts) < 4:
        return None
    return _BY_PREFIX.get(f"/registry/{parts[2]}/{parts[3]}/")


def groups() -> dict[str, list[str]]:
    """Group name -> versions served (core group under ""), the preferred version first."""
    out: dict[str, list[str]] = {}
    for k in _ALL:
        versions = out.setdefault(k.group, [])
        if k.version not in versions:
            versions.append(k.version)
    for g, versions in out.items():
        if any(k.custom for k in _ALL if k.group == g):
            versions.sort(key=version_priority)
    return out


def storage_kind(kind: Kind) -> Kind:
    """The kind whose shape is stored for `kind` (itself unless it is a converted version)."""
    if kind.stored_as is None:
        return kind
    group, plural = kind.stored_as
    for k in KINDS:
        if k.group == group and k.plural == plural and k.stored_as is None:
            return k
    raise KeyError(kind.api_version)


def kinds_in(group: str, version: str) -> list[Kind]:
    """The kinds served at group/version, in `all_kinds` order."""
    return list(_BY_GROUP_VERSION.get((group, version), ()))


def version_priority(version: str) -> tuple[int, int, int, str]:
    """kube's version ordering (GA before beta before alpha, higher numbers first, then others by name)."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    major = int(m.group(1))
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (stage, -major, -minor, "")
