"""The kubelet's API on the node's port 10250: `GET /containerLogs/{namespace}/{pod}/{container}`,
`/exec/{namespace}/{pod}/{container}` and `/attach/...` (WebSockets, see execstream.py), `/portForward/{namespace}/{pod}`
(portforward.py) and `/metrics/resource` (metrics-server's source, see resourcemetrics.py).

The API server's `pods/log`, `pods/exec` and `pods/attach` subresources (what `kubectl logs`, `kubectl exec` and
`kubectl attach`/`run -it` call) proxy here,
as kube-apiserver proxies to the kubelet. Containers' output is in the pod runtime's log files, in the CRI format (crilog.py);
`tailLines`, `limitBytes`, `sinceSeconds`, `sinceTime`, `timestamps`, `previous` and `follow` (which ends when
the container's run does) are honoured.
Served over HTTPS on the node's address with the node's serving certificate (serving-kubelet.crt, from the
cluster CA); every request is authenticated and authorized by `KubeletAuth` (kubeletauth.py) first, so an anonymous
caller gets 401 and one without the right to `nodes/proxy` 403, never logs or a shell.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from kwire.agent.kubelet import crilog
from kwire.agent.kubelet.execstream import AttachTarget, ExecTarget, serve_attach, serve_exec
from kwire.agent.kubelet.kubeletauth import KubeletAuth
from kwire.agent.kubelet.portforward import ForwardTarget, serve_port_forward
from kwire.agent.kubelet.resourcemetrics import ContainerRef, exposition
from kwire.base.prom import exposition_response

log = logging.getLogger(__name__)

KUBELET_PORT = 10250
FOLLOW_POLL = 0.2


def _true(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


@dataclass(eq=False, kw_only=True)
class LogServer:
    logs_dir: Path
    auth: KubeletAuth
    ssl_context: ssl.SSLContext
    host: str
    port: int = KUBELET_PORT
    # exec_target(namespace, pod, container) -> where exec runs, None if the pod is not on this node
    exec_target: Callable[[str, str, str], ExecTarget | None] | None = None
    # attach_target(namespace, pod, container) -> what attach needs of that container, None if not here
    attach_target: Callable[[str, str, str], AttachTarget | None] | None = None
    # resource_containers() -> the containers `/metrics/resource` reports (resourcemetrics.py)
    resource_containers: Callable[[], list[ContainerRef]] | None = None
    # forward_target(namespace, pod) -> the pod's network namespace for port-forward, None if not here
    forward_target: Callable[[str, str], ForwardTarget | None] | None = None
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    def _path(self, namespace: str, pod: str, container: str) -> Path:
        for part in (namespace, pod, container):
            if not part or "/" in part or part.startswith("."):
                raise web.HTTPBadRequest(text="invalid name")
        return self.logs_dir / f"{namespace}_{pod}_{container}.log"

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        target = self.exec_target(m["namespace"], m["pod"], m["container"]) if self.exec_target else None
        if target is None:
            raise web.HTTPNotFound(text=f"pod {m['namespace']}/{m['pod']} is not running on this node")
        return await serve_exec(request, target=target, pod=m["pod"])

    async def _attach(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        path = self._path(m["namespace"], m["pod"], m["container"])
        target = self.attach_target(m["namespace"], m["pod"], m["container"]) if self.attach_target else None
        if target is None:
            raise web.HTTPNotFound(text=f"pod {m['namespace']}/{m['pod']} is not running on this node")
        return await serve_attach(request, log_path=path, target=target)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """kubelet's containerLogs: the current run's output (or the previous run's with `previous`), filtered by
        sinceSeconds/sinceTime, cut to tailLines entries and limitBytes bytes, with their times (`timestamps`);
        `follow` streams new output until the container's run ends."""
        m = request.match_info
        q = request.query
        path = self._path(m["namespace"], m["pod"], m["container"])
        try:
            tail = int(q.get("tailLines", "-1"))
            limit = int(q.get("limitBytes", "0"))
            since_seconds = int(q.get("sinceSeconds", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="tailLines, limitBytes and sinceSeconds must be integers") from None
        since = time.time() - since_seconds if since_seconds > 0 else 0.0
        if q.get("sinceTime"):
            t = crilog.parse_time(q["sinceTime"])
            if t is None:
                raise web.HTTPBadRequest(text=f"sinceTime {q['sinceTime']!r} is not an RFC 3339 time")
            since = max(since, t)
        follow, stamps = _true(q.get("follow")), _true(q.get("timestamps"))
        target = self.attach_target(m["namespace"], m["pod"], m["container"]) if self.attach_target else None
        st = await target.state() if target is not None else None
        start, end = int((st or {}).get("logOffset") or 0), -1
        if _true(q.get("previous")):
            prev = int((st or {}).get("prevLogOffset", -1) if st else -1)
            if prev < 0:
                raise web.HTTPBadRequest(
                    text=f'previous terminated container "{m["container"]}" in pod "{m["pod"]}" not found'
                )
            start, end, follow = prev, start, False
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read() if end < 0 else f.read(max(0, end - start))
        except FileNotFoundError:
            data = b""  # a responder container writes no output
        offset = start + len(data)
        reader = crilog.Reader()
        entries = crilog.select(reader.feed(data), since=since, tail=tail)
        out = crilog.render(entries, timestamps=stamps)
        sent = 0

        def cut(chunk: bytes) -> bytes:
            nonlocal sent
            if limit > 0:
                chunk = chunk[: max(0, limit - sent)]
            sent += len(chunk)
            return chunk

        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(cut(out))
        while follow and not (limit > 0 and sent >= limit):
            await asyncio.sleep(FOLLOW_POLL)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = offset
            if size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                offset = size
                await resp.write(cut(crilog.render(reader.feed(chunk), timestamps=stamps)))
                continue
            # kubelet ends a follow when the container's run ends (or the pod is gone from the node)
            st = await target.state() if target is not None else None
            if st is None or (not st.get("running") and st.get("exitCode") is not None):
                break
        await resp.write_eof()
        return resp

    async def _port_forward(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        target = self.forward_target(m["namespace"], m["pod"]) if self.forward_target else None
        if target is None:
            raise web.HTTPNotFound(text=f"pod {m['namespace']}/{m['pod']} is not running on this node")
        return await serve_port_forward(request, target=target)

    async def _resource_metrics(self, request: web.Request) -> web.StreamResponse:
        refs = self.resource_containers() if self.resource_containers else []  # read on the loop: kubelet state
        body = await asyncio.to_thread(exposition, lambda: refs)  # /proc scan off the loop
        return exposition_response(body)

    @web.middleware
    async def _authorized(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every path, known or not, is authenticated and authorized first, as kubelet's filter chain does."""
        await self.auth.check(request)
        return await handler(request)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._authorized])
        app.router.add_get("/metrics/resource", self._resource_metrics)
        app.router.add_route("*", "/portForward/{namespace}/{pod}", self._port_forward)
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._handle)
        app.router.add_route("*", "/exec/{namespace}/{pod}/{container}", self._exec)
        app.router.add_route("*", "/attach/{namespace}/{pod}/{container}", self._attach)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            site = web.TCPSite(
                self._runner, host=self.host, port=self.port, ssl_context=self.ssl_context, reuse_address=True
            )
            await site.start()
        except OSError as exc:
            log.warning("kubelet: cannot serve logs on %s:%d: %s", self.host, self.port, exc)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
