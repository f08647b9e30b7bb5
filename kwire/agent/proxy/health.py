"""healthCheckNodePort servers for externalTrafficPolicy: Local services, answering as kube-proxy does.

`GET /healthz` (any path) on the node's healthCheckNodePort answers 200 when this node has local endpoints for
the service and 503 when it has none, with kube-proxy's JSON body, so an external load balancer sends traffic only
to nodes that can serve it without another hop (and without losing the client's source IP).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from kwire.agent.proxy.model import ServicePort

log = logging.getLogger(__name__)


class HealthChecks:
    def __init__(self, *, node_ip: str) -> None:
        self.node_ip = node_ip
        self.local: dict[int, tuple[str, str, int]] = {}  # port -> (namespace, name, local endpoint count)
        self._runners: dict[int, web.AppRunner] = {}

    def _app(self, port: int) -> web.Application:
        async def handle(_request: web.Request) -> web.Response:
            ns, name, count = self.local.get(port, ("", "", 0))
            body: dict[str, Any] = {
                "service": {"namespace": ns, "name": name},
                "localEndpoints": count,
                "serviceProxyHealthy": True,
            }
            return web.json_response(body, status=200 if count > 0 else 503)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handle)
        return app

    async def sync(self, all_ports: Iterable[list[ServicePort]], *, node: str) -> None:
        want: dict[int, tuple[str, str, int]] = {}
        for ports in all_ports:
            for sp in ports:
                if sp.service.external_local and sp.service.health_check_node_port:
                    count = len({e.ip for e in sp.usable(local_node=node)})
                    prev = want.get(sp.service.health_check_node_port)
                    want[sp.service.health_check_node_port] = (
                        sp.service.namespace,
                        sp.service.name,
                        max(count, prev[2] if prev else 0),
                    )
        self.local = want
        for port in set(self._runners) - set(want):
            await self._runners.pop(port).cleanup()
        for port in set(want) - set(self._runners):
            runner = web.AppRunner(self._app(port), access_log=None, handle_signals=False)
            await runner.setup()
            try:
                await web.TCPSite(runner, host="0.0.0.0", port=port, reuse_address=True).start()
            except OSError as exc:
                log.warning("proxy: cannot serve healthCheckNodePort %d: %s", port, exc)
                await runner.cleanup()
                continue
            self._runners[port] = runner

    async def close(self) -> None:
        for runner in self._runners.values():
            await runner.cleanup()
        self._runners.clear()
