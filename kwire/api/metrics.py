"""The API server's own `/metrics` under kube-apiserver's names, in a prometheus-client registry of its own.

- `apiserver_request_total{verb,dry_run,group,version,resource,subresource,scope,component,code}`
- `apiserver_request_duration_seconds{verb,dry_run,group,version,resource,subresource,scope,component}`, with
  kube-apiserver's buckets
- `apiserver_current_inflight_requests{request_kind}` (readOnly / mutating; long-running requests — watches,
  logs, exec, attach, proxy — are not counted, as in kube's max-in-flight filter)
- `apiserver_request_terminations_total{verb,group,version,resource,subresource,scope,component,code}`: requests
  the server refused before serving them (429 past the max-in-flight limit, maxinflight.py)
- `apiserver_storage_objects{resource}`: stored objects per resource (`pods`, `deployments.apps`), counted when
  scraped.

Verbs are kube's metric verbs: GET, LIST, WATCH, POST, PUT, PATCH, DELETE, DELETECOLLECTION (`CONNECT` for the
proxy, exec, attach and portforward subresources).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kwire.api.registry import KINDS

# kube-apiserver's apiserver_request_duration_seconds buckets (k8s.io/apiserver/pkg/endpoints/metrics)
DURATION_BUCKETS = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    1.25,
    1.5,
    2.0,
    3.0,
    4.0,
    5.0,
    6.0,
    8.0,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
)
_LABELS = ("verb", "dry_run", "group", "version", "resource", "subresource", "scope", "component")
CONNECT_SUBRESOURCES = frozenset({"proxy", "exec", "attach", "portforward"})
LONG_RUNNING_SUBRESOURCES = CONNECT_SUBRESOURCES | {"log"}  # kube's BasicLongRunningRequestCheck


@dataclass(slots=True)  # not frozen: built on every request, and a frozen dataclass's __init__ is slower
class RequestInfo:
    """kube's RequestInfo: the metric labels (`verb` is the metric verb, e.g. LIST) and what authorization reads
    (`api_*`: the lowercase verb kube authorizes — get, list, watch, create, update, patch, delete,
    deletecollection, or for a non-resource request the lowercase HTTP method — and the group, resource and
    subresource as the path names them, served or not; the metric labels stay blank for resources not served)."""

    verb: str
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    scope: str = ""
    dry_run: str = ""
    api_verb: str = ""
    api_group: str = ""
    api_resource: str = ""
    api_subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    resource_request: bool = False

    @property
    def long_running(self) -> bool:
        return self.verb == "WATCH" or self.subresource in LONG_RUNNING_SUBRESOURCES

    @property
    def mutating(self) -> bool:
        return self.verb in ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION")


def metric_verb(method: str, *, named: bool, watch: bool, subresource: str) -> str:
    if subresource in CONNECT_SUBRESOURCES:
        return "CONNECT"
    if method == "GET":
        if watch:
            return "WATCH"
        return "GET" if named else "LIST"
    if method == "DELETE" and not named:
        return "DELETECOLLECTION"
    return method


class ApiMetrics:
    def __init__(self, *, count_objects: Callable[[str], Awaitable[int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._count_objects = count_objects
        self.requests = Counter(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, "
            "scope, component, and HTTP response code.",
            (*_LABELS, "code"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, dry run value, group, version, resource, "
            "subresource, scope and component.",
            _LABELS,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "apiserver_current_inflight_requests",
            "Maximal number of currently used inflight request limit of this apiserver per request kind in last "
            "second.",
            ("request_kind",),
            registry=self.registry,
        )
        self.terminations = Counter(
            "apiserver_request_terminations",
            "Number of requests which apiserver terminated in self-defense.",
            ("verb", "group", "version", "resource", "subresource", "scope", "component", "code"),
            registry=self.registry,
        )
        self.storage_objects = Gauge(
            "apiserver_storage_objects",
            "Number of stored objects at the time of last check split by kind.",
            ("resource",),
            registry=self.registry,
        )
        for kind in ("readOnly", "mutating"):
            self.inflight.labels(request_kind=kind).set(0)

    def observe(self, info: RequestInfo, *, code: int, seconds: float) -> None:
        labels = (
            info.verb,
            info.dry_run,
            info.group,
            info.version,
            info.resource,
            info.subresource,
            info.scope,
            "apiserver",
        )
        self.requests.labels(*labels, str(code)).inc()
        self.duration.labels(*labels).observe(seconds)

    def terminated(self, info: RequestInfo, *, code: int) -> None:
        labels = (info.verb, info.group, info.version, info.resource, info.subresource, info.scope, "apiserver")
        self.terminations.labels(*labels, str(code)).inc()

    async def exposition(self) -> bytes:
        for kind in KINDS:
            if kind.stored_as is not None or (kind.verbs and "list" not in kind.verbs):
                continue  # stored as another kind, or never stored (the authorization reviews)
            resource = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
            self.storage_objects.labels(resource=resource).set(await self._count_objects(kind.prefix()))
        return generate_latest(self.registry)
