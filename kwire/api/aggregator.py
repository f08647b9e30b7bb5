"""The aggregation layer (kube-aggregator's role inside kube-apiserver): APIServices (apiregistration.k8s.io/v1)
that name a Service have their group version served by that Service's pods.

- `AvailabilityChecker` (kube-aggregator's AvailableConditionController): every `CHECK_PERIOD` seconds, for each
  APIService with `spec.service`, the Service must exist, its Endpoints must have a ready address with the port
  the Service port maps to, and `GET /apis/<group>/<version>` there must answer 200 within 5 s; the `Available`
  condition says which (reasons `Passed`, `ServiceNotFound`, `ServicePortError`, `MissingEndpoints`,
  `FailedDiscoveryCheck`, with kube's messages; `Local` for APIServices without a service). The discovery document
  fetched by the check is what `/apis` lists for that group version (kube-aggregator's discovery merging), and only
  Available group versions are listed. A round that fails as a whole (the store, the API) is retried after a
  `Backoff` from `CHECK_PERIOD` doubling to 60 s, reset by the next round that completes.
- `proxy`: any request under `/apis/<group>/<version>` of an aggregated group version is sent to a ready endpoint
  of the Service (kube's `--enable-aggregator-routing` resolution, as admission webhooks are dialled; the
  ClusterIP would only route inside a node's namespace) over TLS, verified with `caBundle` unless
  `insecureSkipTLSVerify`, and the answer streams back. The caller's identity goes along in kube's front-proxy
  headers (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-<key>`) on a connection where the API server presents
  its front-proxy client certificate (`frontproxy.py`), which is what lets the backend believe them. An unavailable backend is kube's 503 `the server is currently unable to handle the request`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web

from kwire.api import discovery
from kwire.api.errors import ApiError
from kwire.api.frontproxy import FrontProxy
from kwire.api.proxy import relay
from kwire.api.registry import Kind, by_path
from kwire.api.resources import Resources
from kwire.api.user import user_of
from kwire.base.backoff import Backoff
from kwire.base.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CHECK_PERIOD = 5.0
CHECK_TIMEOUT = 5.0
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
    | {"authorization", "x-remote-user", "x-remote-group", "proxy-authorization"}
)
# Never passed on from the caller: only the API server says who the caller is.
_IDENTITY_PREFIXES = ("x-remote-", "impersonate-")


def _kind() -> Kind:
    k = by_path("apiregistration.k8s.io", "v1", "apiservices")
    assert k is not None
    return k


@dataclass(frozen=True)
class Backend:
    url: str  # https://<endpoint ip>:<port>
    ssl: ssl.SSLContext


class Unavailable(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _ssl(spec: Obj, proxy: FrontProxy | None = None) -> ssl.SSLContext:
    return _context(bool(spec.get("insecureSkipTLSVerify")), str(spec.get("caBundle") or ""), proxy)


@functools.lru_cache(maxsize=64)  # one context per caBundle: not rebuilt (CA store, proxy key) for every request
def _context(insecure: bool, ca: str, proxy: FrontProxy | None) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx = (
                ssl.create_default_context(cadata=base64.b64decode(ca).decode()) if ca else ssl.create_default_context()
            )
        except (ValueError, ssl.SSLError, UnicodeDecodeError) as exc:
            raise Unavailable("FailedDiscoveryCheck", f"caBundle cannot be used: {exc}") from None
        ctx.check_hostname = False  # verified against the Service's DNS name by kube; dialled by endpoint IP here
    return proxy.present(ctx) if proxy is not None else ctx


def backend(resources: Resources, apiservice: Obj, proxy: FrontProxy | None = None) -> Backend:
    """Where an APIService's requests go, or Unavailable with kube's condition reason and message."""
    spec = apiservice.get("spec") or {}
    ref = spec.get("service") or {}
    ns, name, port = str(ref.get("namespace", "")), str(ref.get("name", "")), int(ref.get("port") or 443)
    svc = resources.service(ns, name)
    if svc is None:
        raise Unavailable("ServiceNotFound", f'service/{name} in "{ns}" is not present')
    svc_port = next((p for p in (svc.get("spec") or {}).get("ports") or [] if int(p.get("port") or 0) == port), None)
    if svc_port is None:
        raise Unavailable("ServicePortError", f'service/{name} in "{ns}" is not listening on port {port}')
    port_name = str(svc_port.get("name") or "")
    for subset in (resources.endpoints(ns, name) or {}).get("subsets") or []:
        ports = [p for p in subset.get("ports") or [] if str(p.get("name") or "") == port_name]
        if subset.get("addresses") and ports:
            ip = subset["addresses"][0]["ip"]
            host = f"[{ip}]" if ":" in ip else ip
            return Backend(f"https://{host}:{int(ports[0]['port'])}", _ssl(spec, proxy))
    raise Unavailable(
        "MissingEndpoints", f'endpoints for service/{name} in "{ns}" have no addresses with port name "{port_name}"'
    )


def _group_version(apiservice: Obj) -> tuple[str, str]:
    spec = apiservice.get("spec") or {}
    return str(spec.get("group") or ""), str(spec.get("version") or "")


class Aggregator:
    def __init__(self, resources: Resources, *, proxy: FrontProxy | None = None) -> None:
        self.resources = resources
        self.front_proxy = proxy
        self.available: dict[tuple[str, str], Obj] = {}  # (group, version) -> the APIService, when Available
        self._task: asyncio.Task[None] | None = None
        self.backoff = Backoff(CHECK_PERIOD, 60.0)  # after a failed round; a good one waits CHECK_PERIOD

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="aggregator")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # a failed round is retried with back-off, never ends the loop
                log.exception("aggregator: availability check failed")
                await self.backoff.sleep()
                continue
            self.backoff.reset()
            await self.backoff.pause(CHECK_PERIOD)

    async def check_all(self) -> None:
        items = await self.resources.list(_kind(), None)
        available: dict[tuple[str, str], Obj] = {}
        lists: dict[str, dict[str, Obj]] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT)) as session:
            results = await asyncio.gather(*(self._check(session, a) for a in items))
        for apiservice, (status, reason, message, rl) in zip(items, results, strict=True):
            group, version = _group_version(apiservice)
            if rl is not None:
                available[(group, version)] = apiservice
                lists.setdefault(group, {})[version] = rl
            await self._set_condition(apiservice, status, reason, message)
        self.available = available
        discovery.set_aggregated(lists)

    async def _check(self, session: aiohttp.ClientSession, apiservice: Obj) -> tuple[str, str, str, Obj | None]:
        if not (apiservice.get("spec") or {}).get("service"):
            return "True", "Local", "Local APIServices are always available", None
        group, version = _group_version(apiservice)
        try:
            be = backend(self.resources, apiservice, self.front_proxy)
        except Unavailable as exc:
            return "False", exc.reason, str(exc), None
        url = f"{be.url}/apis/{group}/{version}"
        try:
            # As kube-aggregator's availability check: through the front proxy, as system:kube-aggregator.
            hdrs = {"X-Remote-User": "system:kube-aggregator", "X-Remote-Group": "system:masters"}
            async with session.get(url, ssl=be.ssl, headers=hdrs) as r:
                body = await r.read()
                if r.status != 200:
                    raise ValueError(f"bad status from {url}: {r.status}")
                rl = orjson.loads(body)
                if not isinstance(rl, dict):
                    raise ValueError("not a discovery document")
        except (aiohttp.ClientError, TimeoutError, ValueError, orjson.JSONDecodeError) as exc:
            return "False", "FailedDiscoveryCheck", f"failing or missing response from {url}: {exc}", None
        return "True", "Passed", "all checks passed", rl

    async def _set_condition(self, apiservice: Obj, status: str, reason: str, message: str) -> None:
        conds = list((apiservice.get("status") or {}).get("conditions") or [])
        old = next((c for c in conds if c.get("type") == "Available"), None)
        if old is not None and (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
            return
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        new = {"type": "Available", "status": status, "reason": reason, "message": message}
        new["lastTransitionTime"] = old["lastTransitionTime"] if old and old.get("status") == status else now
        apiservice["status"] = {"conditions": [c for c in conds if c.get("type") != "Available"] + [new]}
        name = str(apiservice["metadata"]["name"])
        try:
            await self.resources.update(_kind(), None, name, apiservice, subresource="status", manager="kube-apiserver")
        except ApiError as exc:  # changed or deleted meanwhile: the next round sees the new object
            log.info("aggregator: status of APIService %s not written: %s", name, exc)

    # -- serving ------------------------------------------------------------------------------------------------
    def serves(self, group: str, version: str) -> bool:
        """Whether an APIService with a service names this group version (APIServices are named version.group)."""
        apiservice = self.resources.get_or_none(_kind(), None, f"{version}.{group}")
        return bool(apiservice and (apiservice.get("spec") or {}).get("service"))

    async def proxy(self, request: web.Request, group: str, version: str) -> web.StreamResponse:
        apiservice = self.available.get((group, version))
        if apiservice is None:
            raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        try:
            be = backend(self.resources, apiservice, self.front_proxy)
        except Unavailable:
            raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request") from None
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP and not k.lower().startswith(_IDENTITY_PREFIXES)
        }
        user = user_of(request)
        headers["X-Remote-User"] = user.name
        for key, values in user.extra.items():
            for value in values:
                headers.setdefault(f"X-Remote-Extra-{quote(key, safe='')}", value)
        body = await request.read() if request.can_read_body else None
        url = (
            be.url + request.rel_url.raw_path + (f"?{request.rel_url.raw_query_string}" if request.query_string else "")
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
        try:
            async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
                async with session.request(
                    request.method,
                    url,
                    headers=[*headers.items(), *(("X-Remote-Group", g) for g in user.groups)],
                    data=body,
                    ssl=be.ssl,
                    allow_redirects=False,
                ) as upstream:
                    return await relay(request, upstream, hop_by_hop=HOP_BY_HOP)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("aggregator: %s %s: %s", request.method, url, exc)
            raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request") from None
