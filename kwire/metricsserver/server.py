"""The metrics-server process: a scrape loop and the HTTPS API the aggregation layer proxies to.

Nodes and Pods are followed by informers (list + watch, relisting with back-off, as upstream's informers); every
`--metric-resolution` (K3s: 15 s) it fetches each node's kubelet `/metrics/resource` through the API server's `nodes/{name}/proxy` (the kubelet credentials stay with the API
server; upstream metrics-server dials each kubelet itself with its own client certificate), all nodes at once with
a per-node timeout; a node that fails is logged and skipped for that round. A failed round (API unreachable) is
retried after a `Backoff` of 1 s doubling to the resolution, reset by the next good round.

It serves, on `--secure-port` over TLS with a self-signed certificate (upstream's default when no `--tls-cert-file`
is given; K3s's APIService sets `insecureSkipTLSVerify`): `/apis/metrics.k8s.io/v1beta1` (discovery),
`.../nodes[/NAME]`, `.../pods` (all namespaces), `.../namespaces/NS/pods[/NAME]` with `labelSelector` and
`metadata.name`/`metadata.namespace` field selectors, as a metav1 Table when asked (`kubectl get nodemetrics`:
NAME CPU MEMORY WINDOW), and `/healthz`, `/livez`, `/readyz` (ready once one round
of scrapes has been stored). Errors are metav1.Status objects as the API server sends them. Callers are
authenticated and authorized as upstream's delegated auth does (`delegated.py`): only the API server's front proxy
(or a client certificate of the cluster) gets in, and each read is a SubjectAccessReview.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from kwire.base import labels as labelsel
from kwire.base.backoff import Backoff
from kwire.client import ApiClient, Informer, Informers
from kwire.client.client import NODES, PODS, ApiStatusError
from kwire.metricsserver import CERT_FILE, KEY_FILE, model
from kwire.metricsserver.delegated import Caller, DelegatedAuth, forbidden_message

log = logging.getLogger("kwire.metricsserver")

Obj = dict[str, Any]
PREFIX = "/apis/metrics.k8s.io/v1beta1"
SCRAPE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Settings:
    secure_port: int = 10250
    resolution: float = 15.0
    cert_dir: str = ""


def _status(code: int, reason: str, message: str) -> web.Response:
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    body |= {"message": message, "reason": reason, "code": code}
    return web.Response(body=orjson.dumps(body), status=code, content_type="application/json")


def _json(obj: Obj) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _answer(request: web.Request, obj: Obj) -> web.Response:
    """The object, or the Table kubectl asks for (`Accept: application/json;as=Table;...;g=meta.k8s.io`)."""
    if "as=Table" not in request.headers.get("Accept", ""):
        return _json(obj)
    items = obj["items"] if obj["kind"].endswith("List") else [obj]
    return _json(model.table(items, include_object=request.query.get("includeObject", "Metadata")))


class MetricsServer:
    def __init__(self, client: ApiClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.storage = model.Storage()
        self.informers = Informers(client)
        self.nodes: Informer = self.informers.get(NODES)
        self.pods: Informer = self.informers.get(PODS)
        self.node_labels: dict[str, dict[str, str]] = {}
        self.pod_labels: dict[tuple[str, str], dict[str, str]] = {}
        self.ready = False
        self.auth: DelegatedAuth | None = None
        self.backoff = Backoff(1.0, settings.resolution)  # after a failed scrape round

    # -- scraping ---------------------------------------------------------------------------------------------
    async def _scrape_node(self, name: str) -> model.NodeScrape | None:
        try:
            text = await self.client.get_text(f"/api/v1/nodes/{name}/proxy/metrics/resource", timeout=SCRAPE_TIMEOUT)
        except (ApiStatusError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning('Failed to scrape node "%s": %s', name, exc)
            return None
        return model.parse_scrape(text, now=time.time())

    async def scrape_once(self) -> None:
        nodes, pods = self.nodes.items(), self.pods.items()
        self.node_labels = {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in nodes}
        self.pod_labels = {
            (p["metadata"]["namespace"], p["metadata"]["name"]): dict(p["metadata"].get("labels") or {}) for p in pods
        }
        names = list(self.node_labels)
        results = await asyncio.gather(*(self._scrape_node(n) for n in names))
        self.storage.store({n: r for n, r in zip(names, results, strict=True) if r is not None})
        self.ready = True

    async def scrape_loop(self) -> None:
        self.informers.start()
        while True:  # the informers relist with back-off themselves; this only waits for their first list
            try:
                await self.informers.wait_synced(timeout=30.0)
                break
            except TimeoutError:
                log.warning("still waiting for the first list of nodes and pods")
        await self._scrape_rounds()

    async def _scrape_rounds(self) -> None:
        """A round every resolution; a failed one is retried with back-off, and nothing but cancellation ends it."""
        while True:
            started = time.monotonic()
            try:
                await self.scrape_once()
            except Exception as exc:  # noqa: BLE001 - retried, never the end of the loop (unexpected ones traced)
                expected = isinstance(exc, (ApiStatusError, aiohttp.ClientError, OSError, TimeoutError))
                log.warning("scrape round failed, retrying with back-off: %s", exc, exc_info=not expected)
                await self.backoff.sleep()
                continue
            self.backoff.reset()
            await self.backoff.pause(max(0.0, self.settings.resolution - (time.monotonic() - started)))

    # -- serving ----------------------------------------------------------------------------------------------
    def _node_items(self, request: web.Request) -> list[Obj]:
        sel = labelsel.parse(request.query.get("labelSelector"))
        now, out = time.time(), []
        for name in sorted(self.node_labels):
            u = self.storage.node_usage(name)
            if u is not None and sel.matches(self.node_labels[name]):
                out.append(model.node_metrics(name, u, labels=self.node_labels[name], now=now))
        return out

    def _pod_items(self, request: web.Request, namespace: str | None) -> list[Obj]:
        sel = labelsel.parse(request.query.get("labelSelector"))
        fields = _field_selector(request.query.get("fieldSelector", ""))
        now, out = time.time(), []
        for ns, name in self.storage.pods():
            lab = self.pod_labels.get((ns, name))
            if lab is None or (namespace and ns != namespace) or not sel.matches(lab):
                continue
            if fields.get("metadata.name", name) != name or fields.get("metadata.namespace", ns) != ns:
                continue
            u = self.storage.pod_usage(ns, name)
            if u is not None:
                out.append(model.pod_metrics(ns, name, u, labels=lab, now=now))
        return out

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if path in ("/healthz", "/livez"):
            return web.Response(text="ok")
        if path == "/readyz":
            return web.Response(text="ok") if self.ready else web.Response(status=500, text="not ready")
        caller = self.auth.authenticate(request) if self.auth is not None else None
        if self.auth is not None and caller is None:
            return _status(401, "Unauthorized", "Unauthorized")
        if request.method != "GET":
            return _status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if not path.startswith(PREFIX):
            return _status(404, "NotFound", "the server could not find the requested resource")
        parts = [p for p in path[len(PREFIX) :].split("/") if p]
        if caller is not None and parts:
            denied = await self._authorize(request, caller, parts)
            if denied is not None:
                return denied
        try:
            return self._route(request, parts)
        except labelsel.SelectorError as exc:
            return _status(400, "BadRequest", f"unable to parse requirement: {exc}")

    async def _authorize(self, request: web.Request, caller: Caller, parts: list[str]) -> web.Response | None:
        """403 unless the API server's SubjectAccessReview allows the caller this read."""
        assert self.auth is not None
        namespace = parts[1] if len(parts) >= 3 and parts[0] == "namespaces" else ""
        rest = parts[2:] if namespace else parts
        resource = rest[0] if rest else ""
        name = rest[1] if len(rest) > 1 else ""
        if resource not in ("nodes", "pods"):
            return None  # answered 404 by the router
        verb = "get" if name else ("watch" if request.query.get("watch") in ("1", "true") else "list")
        allowed, _ = await self.auth.authorize(caller, verb=verb, resource=resource, namespace=namespace, name=name)
        if allowed:
            return None
        return _status(403, "Forbidden", forbidden_message(caller, verb=verb, resource=resource, namespace=namespace))

    def _route(self, request: web.Request, parts: list[str]) -> web.Response:
        if not parts:
            return _json(model.resource_list())
        if parts == ["nodes"]:
            return _answer(request, model.metrics_list("NodeMetrics", self._node_items(request)))
        if len(parts) == 2 and parts[0] == "nodes":
            u = self.storage.node_usage(parts[1])
            if u is None or parts[1] not in self.node_labels:
                return _status(404, "NotFound", f'nodemetrics.metrics.k8s.io "{parts[1]}" not found')
            return _answer(request, model.node_metrics(parts[1], u, labels=self.node_labels[parts[1]], now=time.time()))
        if parts == ["pods"]:
            return _answer(request, model.metrics_list("PodMetrics", self._pod_items(request, None)))
        if len(parts) == 3 and parts[0] == "namespaces" and parts[2] == "pods":
            return _answer(request, model.metrics_list("PodMetrics", self._pod_items(request, parts[1])))
        if len(parts) == 4 and parts[0] == "namespaces" and parts[2] == "pods":
            ns, name = parts[1], parts[3]
            containers = self.storage.pod_usage(ns, name)
            lab = self.pod_labels.get((ns, name))
            if containers is None or lab is None:
                return _status(404, "NotFound", f'podmetrics.metrics.k8s.io "{ns}/{name}" not found')
            return _answer(request, model.pod_metrics(ns, name, containers, labels=lab, now=time.time()))
        return _status(404, "NotFound", "the server could not find the requested resource")


def _field_selector(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = value.lstrip("=").strip()
    return out


async def run(client: ApiClient, settings: Settings) -> None:
    server = MetricsServer(client, settings)
    cert_dir = Path(settings.cert_dir) if settings.cert_dir else Path(tempfile.mkdtemp(prefix="kwire-metrics-"))
    # In a child process: the cryptography package would stay in this long-lived process's memory (~8 MB).
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "kwire.metricsserver.selfsigned", str(cert_dir))
    if await proc.wait() != 0:
        raise OSError(f"could not write a serving certificate in {cert_dir}")
    crt, key = cert_dir / CERT_FILE, cert_dir / KEY_FILE
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    server.auth = DelegatedAuth(client, ctx)
    try:
        await server.auth.load()  # trust the API server's front proxy before serving anything
    except (ApiStatusError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        log.warning("kube-system/extension-apiserver-authentication not read yet: %s", exc)
    follow = asyncio.create_task(server.auth.follow(), name="requestheader-config")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host="0.0.0.0", port=settings.secure_port, ssl_context=ctx).start()
    log.info("serving metrics.k8s.io/v1beta1 on :%d, scraping every %.0fs", settings.secure_port, settings.resolution)
    try:
        await server.scrape_loop()
    finally:
        follow.cancel()
        await server.informers.stop()
        await runner.cleanup()
        await client.close()
