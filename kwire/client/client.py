"""An async Kubernetes API client (aiohttp) for any conformant API server, from a kubeconfig or in-cluster.

Resources are addressed by a small `Resource` table (group, version, plural, namespaced) so this layer does not
depend on the API server's registry. Errors come back as `ApiStatusError` subclasses named after the HTTP
status kube-apiserver uses (NotFound, Conflict, AlreadyExists, Gone, Invalid).
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDict

from kwire.base.ndjson import json_lines
from kwire.client.kubeconfig import Config, load_client_cert

log = logging.getLogger(__name__)

TOKEN_FILE_PERIOD = 60.0  # client-go's cachingTokenSource period for a token file

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
            if subresource:
                base += f"/{subresource}"
        return base


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
EVENTS = Resource("", "v1", "events", "Event")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet")
STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet")
CONTROLLERREVISIONS = Resource("apps", "v1", "controllerrevisions", "ControllerRevision")
JOBS = Resource("batch", "v1", "jobs", "Job")
CRONJOBS = Resource("batch", "v1", "cronjobs", "CronJob")
PODDISRUPTIONBUDGETS = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
PERSISTENTVOLUMECLAIMS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
INGRESSES = Resource("networking.k8s.io", "v1", "ingresses", "Ingress")
INGRESSCLASSES = Resource("networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False)
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
PERSISTENTVOLUMES = Resource("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False)
PERSISTENTVOLUMECLAIMS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
STORAGECLASSES = Resource("storage.k8s.io", "v1", "storageclasses", "StorageClass", namespaced=False)
CLUSTERROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False)
CLUSTERROLEBINDINGS = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False
)
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
APISERVICES = Resource("apiregistration.k8s.io", "v1", "apiservices", "APIService", namespaced=False)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False)
INGRESSROUTES = Resource("traefik.io", "v1alpha1", "ingressroutes", "IngressRoute")
MIDDLEWARES = Resource("traefik.io", "v1alpha1", "middlewares", "Middleware")
IPADDRESSPOOLS = Resource("metallb.io", "v1beta1", "ipaddresspools", "IPAddressPool")
L2ADVERTISEMENTS = Resource("metallb.io", "v1beta1", "l2advertisements", "L2Advertisement")


class ApiStatusError(Exception):
    def __init__(self, code: int, reason: str, message: str, status: Obj | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.status = status or {}


class NotFound(ApiStatusError):
    pass


class Conflict(ApiStatusError):
    pass


class AlreadyExists(Conflict):
    pass


class Gone(ApiStatusError):
    pass


class Invalid(ApiStatusError):
    pass


def error_from(code: int, body: bytes) -> ApiStatusError:
    try:
        status = orjson.loads(body)
        if not isinstance(status, dict):
            raise ValueError
    except ValueError:
        status = {"message": body.decode(errors="replace")[:500]}
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    if code == 404:
        return NotFound(code, reason or "NotFound", message, status)
    if code == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
        return cls(code, reason or "Conflict", message, status)
    if code == 410:
        return Gone(code, reason or "Expired", message, status)
    if code == 422:
        return Invalid(code, reason or "Invalid", message, status)
    return ApiStatusError(code, reason, message, status)


_PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}


class ApiClient:
    def __init__(self, config: Config, *, timeout: float = 30.0) -> None:
        self.config = config
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = False
        # Servers to fail over between (K3s's agent load balancer): the configured one until `set_servers`.
        self._servers: list[str] = [config.server.rstrip("/")]
        self._token = config.token or ""
        self._token_checked = 0.0

    @property
    def server(self) -> str:
        """The server requests go to now."""
        return self._servers[0]

    @property
    def servers(self) -> list[str]:
        return list(self._servers)

    def set_servers(self, urls: list[str]) -> None:
        """Fail over between these servers (and the configured one, kept as K3s keeps its default server); the
        current server stays first while it is listed."""
        want = [u.rstrip("/") for u in urls]
        first = self.server if self.server in want or not want else want[0]
        self._servers = list(dict.fromkeys([first, *want, self.config.server.rstrip("/")]))

    def _fail_over(self, failed: str) -> None:
        if self._servers[0] == failed and len(self._servers) > 1:
            self._servers = [*self._servers[1:], failed]
            log.warning("API server %s unreachable; switching to %s", failed, self._servers[0])

    async def _open(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """Send a request to the current server; one that cannot be connected to (refused, unreachable: nothing
        was sent, so any method may be retried) is rotated to the back and the next one tried."""
        token = self._current_token()
        if token:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": f"Bearer {token}"}
        for attempt in range(len(self._servers)):
            server = self.server
            try:
                return await self._sess().request(method, server + path, **kwargs)
            except aiohttp.ClientConnectorError:
                if attempt == len(self._servers) - 1:
                    raise
                self._fail_over(server)
        raise AssertionError("unreachable")

    def _current_token(self) -> str:
        """The bearer token; one from a file is read again at most every TOKEN_FILE_PERIOD seconds (the kubelet
        rewrites a pod's token well before it expires)."""
        path = self.config.token_file
        now = time.monotonic()
        if path and now - self._token_checked >= TOKEN_FILE_PERIOD:
            self._token_checked = now
            try:
                self._token = Path(path).read_text().strip() or self._token
            except OSError as exc:
                log.warning("cannot read the token file %s: %s", path, exc)
        return self._token

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = CIMultiDict({"Accept": "application/json", "User-Agent": "kwire"})
            if self.config.impersonate_user:
                headers["Impersonate-User"] = self.config.impersonate_user
                for group in self.config.impersonate_groups:
                    headers.add("Impersonate-Group", group)
            self._ssl = self.config.ssl_context()
            conn = aiohttp.TCPConnector(ssl=self._ssl, limit=64)
            self._session = aiohttp.ClientSession(base_url=None, headers=headers, connector=conn)
        return self._session

    def renew_client_cert(self, *, cert: bytes, key: bytes) -> None:
        """Use a renewed client certificate from the next TLS handshake on; open connections (watches) stay."""
        self.config = dataclasses.replace(self.config, client_cert=cert, client_key=key)
        if isinstance(self._ssl, ssl.SSLContext):
            load_client_cert(self._ssl, cert=cert, key=key)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Obj:
        data = None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
        headers = {"Content-Type": content_type} if data is not None else None
        resp = await self._open(
            method, path, params=params, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=self._timeout)
        )
        async with resp as r:
            raw = await r.read()
            if r.status >= 400:
                raise error_from(r.status, raw)
            return orjson.loads(raw) if raw else {}

    async def get_text(self, path: str, *, timeout: float | None = None) -> str:
        """A GET whose answer is not JSON (a proxied kubelet's metrics); API errors raise as in `request`."""
        resp = await self._open("GET", path, timeout=aiohttp.ClientTimeout(total=timeout or self._timeout))
        async with resp as r:
            raw = await r.read()
            if r.status >= 400:
                raise error_from(r.status, raw)
            return raw.decode("utf-8", "replace")

    @staticmethod
    def _ns(res: Resource, obj: Obj | None, namespace: str | None) -> str | None:
        if not res.namespaced:
            return None
        return namespace or ((obj or {}).get("metadata") or {}).get("namespace") or None

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        return await self.request("GET", res.path(namespace, name))

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
        resource_version: str | None = None,
    ) -> Obj:
        params = _selector_params(label_selector, field_selector)
        if limit:
            params["limit"] = str(limit)
        if continue_:
            params["continue"] = continue_
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        return await self.request("GET", res.path(namespace), params=params)

    async def list_all(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page: int = 500,
    ) -> Obj:
        """All items, following continue tokens; the result carries the last page's resourceVersion."""
        items: list[Obj] = []
        token: str | None = None
        while True:
            out = await self.list(
                res,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=page,
                continue_=token,
            )
            items.extend(out.get("items") or [])
            token = (out.get("metadata") or {}).get("continue")
            if not token:
                out["items"] = items
                return out

    async def create(self, res: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        return await self.request("POST", res.path(self._ns(res, obj, namespace)), body=obj)

    async def update(self, res: Resource, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return await self.request("PUT", res.path(self._ns(res, obj, None), meta["name"]), body=obj)

    async def update_status(self, res: Resource, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return await self.request("PUT", res.path(self._ns(res, obj, None), meta["name"], "status"), body=obj)

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Obj:
        return await self.request(
            "PATCH", res.path(namespace, name, subresource), body=patch, content_type=_PATCH_TYPES[patch_type]
        )

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        grace_period: int | None = None,
        preconditions: Obj | None = None,
    ) -> Obj:
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation_policy:
            body["propagationPolicy"] = propagation_policy
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        if preconditions:
            body["preconditions"] = preconditions
        return await self.request("DELETE", res.path(namespace, name), body=body)

    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        allow_bookmarks: bool = True,
        timeout_seconds: int | None = None,
    ) -> AsyncIterator[tuple[str, Obj]]:
        """(type, object) pairs from a watch stream; raises Gone when the resourceVersion is too old."""
        params = {"watch": "1", "resourceVersion": resource_version}
        if allow_bookmarks:
            params["allowWatchBookmarks"] = "true"
        params.update(_selector_params(label_selector, field_selector))
        if timeout_seconds:
            params["timeoutSeconds"] = str(timeout_seconds)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=(timeout_seconds or 300) + 30)
        resp = await self._open("GET", res.path(namespace), params=params, timeout=timeout)
        async with resp as r:
            if r.status >= 400:
                raise error_from(r.status, await r.read())
            async for ev in json_lines(r.content.iter_any()):
                etype, obj = ev.get("type"), ev.get("object") or {}
                if etype == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise error_from(code, orjson.dumps(obj))
                yield etype, obj


def _selector_params(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    """The labelSelector and fieldSelector query parameters of a list or watch, those that are set."""
    params: dict[str, str] = {}
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    return params
