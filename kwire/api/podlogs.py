"""`GET .../pods/{name}/log` (what `kubectl logs` calls): proxied to the kubelet of the pod's node, as kube-apiserver
does, at the node's InternalIP port 10250 (`/containerLogs/{ns}/{pod}/{container}`), streaming when `follow`."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from kwire.api.errors import ApiError, bad_request
from kwire.api.registry import by_path
from kwire.api.resources import Resources

log = logging.getLogger(__name__)

KUBELET_PORT = 10250
PASSED_PARAMS = ("tailLines", "limitBytes", "follow", "timestamps", "previous", "sinceSeconds")


async def pod_log(
    request: web.Request, resources: Resources, *, namespace: str, name: str, token: str
) -> web.StreamResponse:
    pods, nodes = by_path("", "v1", "pods"), by_path("", "v1", "nodes")
    assert pods and nodes
    pod = await resources.get(pods, namespace, name)
    containers = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
    container = request.query.get("container") or ""
    if not container:
        if len(containers) != 1:
            raise bad_request(
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
            )
        container = containers[0]
    elif container not in containers:
        raise bad_request(f"container {container} is not valid for pod {name}")
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        raise bad_request(f"pod {name} does not have a host assigned")
    node = await resources.get(nodes, None, str(node_name))
    addrs = (node.get("status") or {}).get("addresses") or []
    ip = next((a.get("address") for a in addrs if a.get("type") == "InternalIP"), None)
    if not ip:
        raise ApiError(500, "InternalError", f"node {node_name} has no InternalIP")
    params = {k: request.query[k] for k in PASSED_PARAMS if k in request.query}
    url = f"http://{ip}:{KUBELET_PORT}/containerLogs/{namespace}/{name}/{container}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.get(url, params=params, headers={"Authorization": f"Bearer {token}"}) as r:
                if r.status != 200:
                    raise ApiError(502, "InternalError", f"kubelet on {node_name}: {r.status} {await r.text()}")
                resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
                await resp.prepare(request)
                async for chunk in r.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
    except aiohttp.ClientError as exc:
        raise ApiError(500, "InternalError", f'Get "{url}": {exc}') from None
