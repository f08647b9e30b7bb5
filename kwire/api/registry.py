"""The registry of kinds the API serves.

Adding a kind is one `Kind(...)` entry in `KINDS`; routing, discovery, OpenAPI v3 stubs, storage keys and
watch all derive from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def store_group(self) -> str:
        return self.group or "core"

    def prefix(self, namespace: str | None = None) -> str:
        """The store key prefix of this kind's objects (all namespaces when namespace is None)."""
        base = f"/registry/{self.store_group}/{self.plural}/"
        if self.namespaced and namespace:
            return f"{base}{namespace}/"
        return base

    def key(self, namespace: str | None, name: str) -> str:
        if self.namespaced:
            return f"/registry/{self.store_group}/{self.plural}/{namespace}/{name}"
        return f"/registry/{self.store_group}/{self.plural}/{name}"

    @property
    def list_kind_name(self) -> str:
        return self.list_kind or f"{self.kind}List"


def _k(
    group: str,
    version: str,
    kind: str,
    plural: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
    status: bool = False,
    scale: bool = False,
    binding: bool = False,
    eviction: bool = False,
    extra: tuple[str, ...] = (),
) -> Kind:
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
        + (("eviction",) if eviction else ())
        + extra,
    )


KINDS: tuple[Kind, ...] = (
    _k("", "v1", "Namespace", "namespaces", namespaced=False, short=("ns",), status=True),
    _k("", "v1", "Node", "nodes", namespaced=False, short=("no",), status=True),
    _k(
        "",
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
    _k("", "v1", "Service", "services", short=("svc",), categories=("all",), status=True),
    _k("", "v1", "Endpoints", "endpoints", short=("ep",)),
    _k("", "v1", "ConfigMap", "configmaps", short=("cm",)),
    _k("", "v1", "Secret", "secrets"),
    _k("", "v1", "Event", "events", short=("ev",)),
    _k("", "v1", "ServiceAccount", "serviceaccounts", short=("sa",)),
    _k("apps", "v1", "Deployment", "deployments", short=("deploy",), categories=("all",), status=True, scale=True),
    _k("apps", "v1", "ReplicaSet", "replicasets", short=("rs",), categories=("all",), status=True, scale=True),
    _k("apps", "v1", "DaemonSet", "daemonsets", short=("ds",), categories=("all",), status=True),
    _k("apps", "v1", "StatefulSet", "statefulsets", short=("sts",), categories=("all",), status=True, scale=True),
    _k("apps", "v1", "ControllerRevision", "controllerrevisions"),
    _k("batch", "v1", "Job", "jobs", categories=("all",), status=True),
    _k("batch", "v1", "CronJob", "cronjobs", short=("cj",), categories=("all",), status=True),
    _k("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", short=("pdb",), status=True),
    _k("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    _k("networking.k8s.io", "v1", "Ingress", "ingresses", short=("ing",), status=True),
    _k("networking.k8s.io", "v1", "IngressClass", "ingressclasses", namespaced=False),
    _k("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", short=("netpol",)),
    _k("coordination.k8s.io", "v1", "Lease", "leases"),
    _k("metallb.io", "v1beta1", "IPAddressPool", "ipaddresspools", status=True),
    _k("metallb.io", "v1beta1", "L2Advertisement", "l2advertisements", status=True),
)

_BY_PATH: dict[tuple[str, str, str], Kind] = {(k.group, k.version, k.plural): k for k in KINDS}
_BY_KIND: dict[tuple[str, str], Kind] = {(k.api_version, k.kind): k for k in KINDS}


def by_path(group: str, version: str, plural: str) -> Kind | None:
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> Kind | None:
    return _BY_KIND.get((api_version, kind))


def groups() -> dict[str, list[str]]:
    """Group name -> versions served (core group under "")."""
    out: dict[str, list[str]] = {}
    for k in KINDS:
        versions = out.setdefault(k.group, [])
        if k.version not in versions:
            versions.append(k.version)
    return out


def kinds_in(group: str, version: str) -> list[Kind]:
    return [k for k in KINDS if k.group == group and k.version == version]
