"""What the Endpoints and EndpointSlice controllers share (kube's pkg/controller/util/endpointslice and
pkg/api/v1/pod in small): their base class (`ServiceEndpointsController`: the Service and pod handlers that
queue Services), which Services select a pod and which pods a Service selects, which pods belong in endpoints,
a pod's address for an IP family, a Service port's target port resolved in a pod, and the tracker of this
controller's own writes that keeps a lagging informer cache from making it act twice.

Service selectors are plain label maps (spec.selector); a Service without one, or with an empty one, or of
type ExternalName gets nothing from these controllers: its Endpoints and EndpointSlices are the user's.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from typing import Any

from kwire.client import ApiClient, Informer, Informers
from kwire.client.client import PODS, SERVICES
from kwire.controllers.common import (
    BY_NAMESPACE,
    Obj,
    d,
    key_of,
    labels_of,
    lst,
    meta,
    namespace_of,
    pod_finished,
    pod_ready,
    spec,
    status,
    terminating,
)
from kwire.controllers.queue import Controller

LABEL_HEADLESS = "service.kubernetes.io/headless"

# The Service and Endpoints objects the API server's bootstrap owns (kube-apiserver's endpoint reconciler):
# no controller here ever writes or deletes them.
PROTECTED = frozenset({"default/kubernetes"})


# -- services ----------------------------------------------------------------------------------------------------
def service_selector(svc: Obj) -> dict[str, str] | None:
    """The Service's selector, or None when the controllers leave the Service alone (no selector, an empty
    one, or type ExternalName)."""
    sp = spec(svc)
    if sp.get("type") == "ExternalName":
        return None
    sel = d(sp.get("selector"))
    if not sel:
        return None
    return {str(k): str(v) for k, v in sel.items()}


def selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def is_headless(svc: Obj) -> bool:
    """Not helper.IsServiceIPSet: no cluster IP, or "None"."""
    ip = spec(svc).get("clusterIP")
    return not ip or ip == "None"


def service_ports(svc: Obj) -> list[Obj]:
    return [p for p in lst(spec(svc).get("ports")) if isinstance(p, dict)]


def ip_family(ip: str) -> str:
    try:
        return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
    except ValueError:
        return ""


def address_families(svc: Obj) -> list[str]:
    """The address types a Service gets EndpointSlices for (getAddressTypesForService): spec.ipFamilies, else the
    cluster IP's family. A headless Service without ipFamilies gets IPv4 (kube assumes both families there; this
    API does not default ipFamilies on headless Services and clusters here are single-stack IPv4)."""
    fams = [f for f in lst(spec(svc).get("ipFamilies")) if f in ("IPv4", "IPv6")]
    if fams:
        return list(dict.fromkeys(fams))
    ip = str(spec(svc).get("clusterIP") or "")
    if ip and ip != "None" and ip_family(ip):
        return [ip_family(ip)]
    return ["IPv4"]


def services_selecting(services: Informer, pod: Obj) -> set[str]:
    """Keys of the Services in the pod's namespace whose selector matches the pod's labels."""
    labels = labels_of(pod)
    return {
        key_of(svc)
        for svc in services.by_index(BY_NAMESPACE, namespace_of(pod))
        if selects(service_selector(svc), labels)
    }


def selected_pods(pods: Informer, namespace: str | None, selector: dict[str, str] | None) -> list[Obj]:
    """The pods of the namespace whose labels the Service selector matches."""
    return [p for p in pods.by_index(BY_NAMESPACE, namespace or "") if selects(selector, labels_of(p))]


class ServiceEndpointsController(Controller):
    """The base of the Endpoints and EndpointSlice controllers: their work queues are keyed by Service
    (namespace/name; never the API server's own, `PROTECTED`), they read the shared Service and pod informers and
    track their own writes (`tracker`). A Service added, updated or deleted queues itself; a pod added or deleted
    queues the Services selecting it, a pod updated the Services `services_for_pod_change` names."""

    workers = 4

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.tracker = WriteTracker()
        self.services = self.informer(SERVICES, indexed=True)
        self.pods = self.informer(PODS, indexed=True)
        self.on_change(self.services, lambda svc: self.enqueue(key_of(svc)))
        self.pods.on_add(self._on_pod)
        self.pods.on_update(self._on_pod_update)
        self.pods.on_delete(self._on_pod)

    def enqueue(self, key: str | None) -> None:
        if key not in PROTECTED:
            super().enqueue(key)

    def _on_pod(self, pod: Obj) -> None:
        for key in services_selecting(self.services, pod):
            self.enqueue(key)

    def _on_pod_update(self, old: Obj, new: Obj) -> None:
        for key in services_for_pod_change(self.services, old, new):
            self.enqueue(key)

    def pods_of(self, svc: Obj) -> list[Obj] | None:
        """The pods the Service selects, or None when these controllers leave it alone (`service_selector`)."""
        selector = service_selector(svc)
        if selector is None:
            return None
        return selected_pods(self.pods, namespace_of(svc), selector)


def _endpoint_view(pod: Obj) -> tuple[Any, ...]:
    """What of a pod can change its endpoints, label changes aside (podEndpointsChanged, plus the phase)."""
    return (
        bool(meta(pod).get("deletionTimestamp")),
        pod_ready(pod),
        pod_finished(pod),
        tuple(pod_ips(pod)),
        spec(pod).get("nodeName"),
    )


def _names_view(pod: Obj) -> tuple[Any, ...]:
    sp = spec(pod)
    return (labels_of(pod), sp.get("hostname"), sp.get("subdomain"))


def services_for_pod_change(services: Informer, old: Obj, new: Obj) -> set[str]:
    """GetServicesToUpdateOnPodChange: nothing when no field endpoints depend on changed; the Services of the
    new pod when only such a field changed; when the labels (or hostname/subdomain) changed too, the Services
    the pod left and joined, plus the ones it stayed in if anything else changed as well."""
    if meta(old).get("resourceVersion") == meta(new).get("resourceVersion"):
        return set()
    pod_changed = _endpoint_view(old) != _endpoint_view(new)
    names_changed = _names_view(old) != _names_view(new)
    if not pod_changed and not names_changed:
        return set()
    now = services_selecting(services, new)
    if not names_changed:
        return now
    before = services_selecting(services, old)
    if pod_changed:
        return before | now
    if _names_view(old)[1:] != _names_view(new)[1:]:
        return before | now  # hostname/subdomain feed the endpoints of the Services the pod stays in
    return before ^ now


# -- pods --------------------------------------------------------------------------------------------------------
def pod_ips(pod: Obj) -> list[str]:
    st = status(pod)
    ips = [str(p.get("ip")) for p in lst(st.get("podIPs")) if isinstance(p, dict) and p.get("ip")]
    if not ips and st.get("podIP"):
        ips = [str(st["podIP"])]
    return ips


def should_be_in_endpoints(pod: Obj, *, include_terminating: bool) -> bool:
    """ShouldPodBeInEndpoints: not Succeeded/Failed, has an IP, and (unless included) not terminating."""
    if pod_finished(pod) or not pod_ips(pod):
        return False
    return include_terminating or not terminating(pod)


def should_set_hostname(pod: Obj, svc: Obj) -> bool:
    sp = spec(pod)
    return (
        bool(sp.get("hostname"))
        and sp.get("subdomain") == meta(svc).get("name")
        and namespace_of(pod) == namespace_of(svc)
    )


def _restartable_init_containers(pod: Obj) -> Iterable[Obj]:
    for c in lst(spec(pod).get("initContainers")):
        if isinstance(c, dict) and c.get("restartPolicy") == "Always":
            yield c


def find_port(pod: Obj, svc_port: Obj) -> int | None:
    """podutil.FindPort: the number a Service port's targetPort means in this pod. A number is itself; a name is
    looked up in the containers' (and sidecars') ports by name and protocol; None when the pod has no such port."""
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, bool) or target is None:
        return None
    if isinstance(target, int):
        return target if target > 0 else None
    name = str(target)
    proto = str(svc_port.get("protocol") or "TCP")
    containers = [c for c in lst(spec(pod).get("containers")) if isinstance(c, dict)]
    for c in [*containers, *_restartable_init_containers(pod)]:
        for p in lst(c.get("ports")):
            if not isinstance(p, dict):
                continue
            if p.get("name") == name and str(p.get("protocol") or "TCP") == proto:
                num = p.get("containerPort")
                if isinstance(num, int) and not isinstance(num, bool) and num > 0:
                    return num
    return None


def target_ref(pod: Obj) -> Obj:
    m = meta(pod)
    return {
        "kind": "Pod",
        "namespace": str(m.get("namespace") or ""),
        "name": str(m.get("name") or ""),
        "uid": str(m.get("uid") or ""),
    }


# -- our own writes ----------------------------------------------------------------------------------------------
def _rv(obj: Obj) -> int:
    try:
        return int(str(meta(obj).get("resourceVersion") or "0"))
    except ValueError:
        return 0


class WriteTracker:
    """What a controller last wrote, per owner key (a Service): object name -> the resourceVersion it got, or
    None for a deletion. Until the informer cache shows those writes, the owner's cache view is stale and a sync
    would act on it twice (kube's endpointSliceTracker / staleEndpointsTracker). This API's resourceVersions are
    the store's global revisions, so "at least as new" is a number comparison. An expectation the cache never
    meets (an object changed by someone else in between) is dropped after `ttl` seconds."""

    def __init__(self, *, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._by_owner: dict[str, dict[str, tuple[int | None, float]]] = {}

    def wrote(self, owner: str, obj: Obj) -> None:
        self._by_owner.setdefault(owner, {})[str(meta(obj).get("name") or "")] = (_rv(obj), time.monotonic())

    def deleted(self, owner: str, name: str) -> None:
        self._by_owner.setdefault(owner, {})[name] = (None, time.monotonic())

    def forget(self, owner: str) -> None:
        self._by_owner.pop(owner, None)

    def observed(self, owner: str, obj: Obj, *, deleted: bool) -> bool:
        """An informer event for `obj`: True when it only echoes this controller's own write (nothing to do)."""
        exp = self._by_owner.get(owner)
        name = str(meta(obj).get("name") or "")
        if not exp or name not in exp:
            return False
        rv, _ = exp[name]
        if rv is None:  # we deleted it
            if deleted:
                self._drop(owner, name)
                return True
            return True  # an older event of the object, from before our delete
        if deleted:
            self._drop(owner, name)  # someone deleted what we wrote
            return False
        have = _rv(obj)
        if have < rv:
            return True  # an older event, from before our write
        self._drop(owner, name)
        return have == rv

    def stale(self, owner: str, cached: dict[str, Obj]) -> bool:
        """Whether the cache (name -> object for this owner) does not show every write of ours yet."""
        exp = self._by_owner.get(owner)
        if not exp:
            return False
        now = time.monotonic()
        for name, (rv, since) in list(exp.items()):
            obj = cached.get(name)
            if (rv is None and obj is None) or (rv is not None and obj is not None and _rv(obj) >= rv):
                self._drop(owner, name)
            elif now - since > self.ttl:
                self._drop(owner, name)
        return bool(self._by_owner.get(owner))

    def _drop(self, owner: str, name: str) -> None:
        exp = self._by_owner.get(owner)
        if exp is not None:
            exp.pop(name, None)
            if not exp:
                del self._by_owner[owner]
