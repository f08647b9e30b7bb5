"""`pods/log`, `pods/exec` and `pods/attach` (what `kubectl logs`, `exec`, `attach` and `run -it` call): proxied to
the kubelet of the pod's node, as kube-apiserver does, at the node's InternalIP port 10250 (`/containerLogs/...`,
`/exec/...`, `/attach/...`), over HTTPS: the API server presents its kubelet-client certificate (K3s's
`client-kube-apiserver.crt`, `system:apiserver` in `system:masters`) and verifies the kubelet's serving certificate
against the cluster CA, as kube-apiserver's --kubelet-client-certificate and --kubelet-certificate-authority do.

Logs stream as plain HTTP (when `follow`); exec and attach are a WebSocket (Kubernetes' channel protocol, v5 or v4) relayed
message by message between the client and the kubelet, with the sub-protocol the kubelet chose. `pods/portforward`
(`kubectl port-forward`) is the same relay to the kubelet's `/portForward/{namespace}/{pod}` for kubectl's
`SPDY/3.1+portforward.k8s.io` WebSocket (and the Python client's `v4.channel.k8s.io` one, with its `ports` query):
what flows inside is the kubelet's business (kwire/agent/kubelet/portforward.py).
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiohttp
from aiohttp import web

from kwire.api.errors import ApiError, bad_request
from kwire.api.proxy import relay
from kwire.api.registry import by_path
from kwire.api.resources import Resources
from kwire.base.tasks import cancel_and_wait

log = logging.getLogger(__name__)

KUBELET_PORT = 10250
PASSED_LOG_PARAMS = ("tailLines", "limitBytes", "follow", "timestamps", "previous", "sinceSeconds", "sinceTime")
PASSED_EXEC_PARAMS = ("command", "stdin", "stdout", "stderr", "tty")
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
PORTFORWARD_PROTOCOLS = ("SPDY/3.1+portforward.k8s.io", "v4.channel.k8s.io")


async def _kubelet_of(
    request: web.Request, resources: Resources, *, namespace: str, name: str, container_needed: bool = True
) -> tuple[str, str, str]:
    """(node name, node InternalIP, container) for a request on pod `name`, with kube-apiserver's errors."""
    pods, nodes = by_path("", "v1", "pods"), by_path("", "v1", "nodes")
    assert pods and nodes
    pod = await resources.get(pods, namespace, name)
    if not container_needed:
        if ((pod.get("status") or {}).get("phase")) != "Running":
            raise bad_request(f"pod {name} is not running")  # kube's portforward REST: only running pods
        return (*(await _node_address(resources, pod, name)), "")
    spec = pod.get("spec") or {}
    containers = [str(c.get("name")) for c in spec.get("containers") or []]
    others = [str(c.get("name")) for k in ("initContainers", "ephemeralContainers") for c in spec.get(k) or []]
    container = request.query.get("container") or ""
    if not container:
        if len(containers) != 1:
            raise bad_request(
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
            )
        container = containers[0]
    elif container not in containers + others:
        raise bad_request(f"container {container} is not valid for pod {name}")
    return (*(await _node_address(resources, pod, name)), container)


async def _node_address(resources: Resources, pod: dict[str, object], name: str) -> tuple[str, str]:
    nodes = by_path("", "v1", "nodes")
    assert nodes
    spec = pod.get("spec")
    node_name = spec.get("nodeName") if isinstance(spec, dict) else None
    if not node_name:
        raise bad_request(f"pod {name} does not have a host assigned")
    node = await resources.get(nodes, None, str(node_name))
    addrs = (node.get("status") or {}).get("addresses") or []
    ip = next((a.get("address") for a in addrs if a.get("type") == "InternalIP"), None)
    if not ip:
        raise ApiError(500, "InternalError", f"node {node_name} has no InternalIP")
    return str(node_name), str(ip)


def _ssl(ctx: ssl.SSLContext | None) -> ssl.SSLContext:
    """The kubelet-client context; a server without one (no client CA yet) cannot authenticate to kubelets."""
    if ctx is None:
        raise ApiError(500, "InternalError", "the API server has no kubelet client certificate")
    return ctx


async def pod_log(
    request: web.Request, resources: Resources, *, namespace: str, name: str, kubelet_ssl: ssl.SSLContext | None
) -> web.StreamResponse:
    node_name, ip, container = await _kubelet_of(request, resources, namespace=namespace, name=name)
    params = {k: request.query[k] for k in PASSED_LOG_PARAMS if k in request.query}
    url = f"https://{ip}:{KUBELET_PORT}/containerLogs/{namespace}/{name}/{container}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.get(url, params=params, ssl=_ssl(kubelet_ssl)) as r:
                if r.status == 400:  # the kubelet's own refusal (`previous terminated container ... not found`)
                    raise bad_request(await r.text())
                if r.status != 200:
                    raise ApiError(502, "InternalError", f"kubelet on {node_name}: {r.status} {await r.text()}")
                return await relay(request, r, headers={"Content-Type": "text/plain"})
    except aiohttp.ClientError as exc:
        raise ApiError(500, "InternalError", f'Get "{url}": {exc}') from None


_WS = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _relay(src: _WS, dst: _WS) -> None:
    async for msg in src:
        if msg.type == aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type == aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)


async def pod_stream(
    request: web.Request,
    resources: Resources,
    *,
    namespace: str,
    name: str,
    kubelet_ssl: ssl.SSLContext | None,
    verb: str = "exec",
) -> web.StreamResponse:
    """pods/exec, pods/attach (verb "attach") and pods/portforward (verb "portForward"): the same relay to the
    kubelet's /exec, /attach or /portForward."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        # kube-apiserver answers a plain request the same way; kubectl always upgrades.
        raise bad_request("Upgrade request required")
    supported = PORTFORWARD_PROTOCOLS if verb == "portForward" else EXEC_PROTOCOLS
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    protocols = [p for p in offered if p in supported]
    if not protocols:
        raise bad_request(f"none of the offered stream protocols {offered} is supported; use one of {supported}")
    forward = verb == "portForward"
    node_name, ip, container = await _kubelet_of(
        request, resources, namespace=namespace, name=name, container_needed=not forward
    )
    if forward:
        params = [(k, v) for k, v in request.query.items() if k == "ports"]
        url = f"https://{ip}:{KUBELET_PORT}/portForward/{namespace}/{name}"
    else:
        params = [(k, v) for k, v in request.query.items() if k in PASSED_EXEC_PARAMS]
        url = f"https://{ip}:{KUBELET_PORT}/{verb}/{namespace}/{name}/{container}"
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
    try:
        try:
            upstream = await session.ws_connect(
                url, params=params, protocols=protocols, ssl=_ssl(kubelet_ssl), heartbeat=30
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ApiError(
                404 if exc.status == 404 else 502,
                "NotFound" if exc.status == 404 else "InternalError",
                f"kubelet on {node_name}: {exc.status} {exc.message}",
            ) from None
        except aiohttp.ClientError as exc:
            raise ApiError(500, "InternalError", f"error dialing backend: {exc}") from None
        ws = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else [], heartbeat=30)
        await ws.prepare(request)
        # Both directions until either side ends; the kubelet ends a session after its status message.
        tasks = [asyncio.create_task(_relay(ws, upstream)), asyncio.create_task(_relay(upstream, ws))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        await cancel_and_wait(*tasks)
        await upstream.close()
        await ws.close()
        return ws
    finally:
        await session.close()
