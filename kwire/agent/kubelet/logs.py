"""The kubelet's API on the node's port 10250: `GET /containerLogs/{namespace}/{pod}/{container}`,
`/exec/{namespace}/{pod}/{container}` and `/attach/...` (WebSockets, see execstream.py).

The API server's `pods/log`, `pods/exec` and `pods/attach` subresources (what `kubectl logs`, `kubectl exec` and
`kubectl attach`/`run -it` call) proxy here,
as kube-apiserver proxies to the kubelet. Containers' output is in the pod runtime's log files; `tailLines`,
`limitBytes` and `follow` are honoured.
Requests carry the cluster token (HTTP on the node's address; kube's kubelet serves HTTPS with its own certificate,
which kwire's agents do not have yet).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from kwire.agent.kubelet.execstream import AttachTarget, ExecTarget, serve_attach, serve_exec

log = logging.getLogger(__name__)

KUBELET_PORT = 10250
FOLLOW_POLL = 0.2


def _tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:]) if lines else b""


class LogServer:
    def __init__(
        self,
        *,
        logs_dir: Path,
        token: str,
        host: str,
        port: int = KUBELET_PORT,
        exec_target: Callable[[str, str, str], ExecTarget | None] | None = None,
        attach_target: Callable[[str, str, str], AttachTarget | None] | None = None,
    ) -> None:
        # attach_target(namespace, pod, container) -> what attach needs of that container, None if not here
        self.attach_target = attach_target
        # exec_target(namespace, pod, container) -> where exec runs, None if the pod is not on this node
        self.exec_target = exec_target
        self.logs_dir = logs_dir
        self.token = token
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def _path(self, namespace: str, pod: str, container: str) -> Path:
        for part in (namespace, pod, container):
            if not part or "/" in part or part.startswith("."):
                raise web.HTTPBadRequest(text="invalid name")
        return self.logs_dir / f"{namespace}_{pod}_{container}.log"

    def _check_auth(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode())):
            raise web.HTTPUnauthorized(text="Unauthorized")

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        self._check_auth(request)
        m = request.match_info
        target = self.exec_target(m["namespace"], m["pod"], m["container"]) if self.exec_target else None
        if target is None:
            raise web.HTTPNotFound(text=f"pod {m['namespace']}/{m['pod']} is not running on this node")
        return await serve_exec(request, target=target, pod=m["pod"])

    async def _attach(self, request: web.Request) -> web.StreamResponse:
        self._check_auth(request)
        m = request.match_info
        path = self._path(m["namespace"], m["pod"], m["container"])
        target = self.attach_target(m["namespace"], m["pod"], m["container"]) if self.attach_target else None
        if target is None:
            raise web.HTTPNotFound(text=f"pod {m['namespace']}/{m['pod']} is not running on this node")
        return await serve_attach(request, log_path=path, target=target)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._check_auth(request)
        m = request.match_info
        path = self._path(m["namespace"], m["pod"], m["container"])
        try:
            tail = int(request.query.get("tailLines", "-1"))
            limit = int(request.query.get("limitBytes", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="tailLines and limitBytes must be integers") from None
        follow = request.query.get("follow") in ("true", "1")
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            data = b""  # a responder container writes no output
        offset = len(data)
        data = _tail(data, tail)
        if limit > 0:
            data = data[:limit]
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(data)
        while follow:
            await asyncio.sleep(FOLLOW_POLL)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                offset = size
                await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._handle)
        app.router.add_route("*", "/exec/{namespace}/{pod}/{container}", self._exec)
        app.router.add_route("*", "/attach/{namespace}/{pod}/{container}", self._attach)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host=self.host, port=self.port, reuse_address=True).start()
        except OSError as exc:
            log.warning("kubelet: cannot serve logs on %s:%d: %s", self.host, self.port, exc)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
