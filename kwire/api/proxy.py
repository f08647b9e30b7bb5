"""The proxy subresources: `services/proxy`, `pods/proxy` and `nodes/proxy`, as kube-apiserver serves them.

`/api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy/PATH` goes to a ready endpoint of the Service
(kube's service ResourceLocation: a port number is turned into the Service port's name, then a random address of
an Endpoints subset carrying a port of that name); `pods/[SCHEME:]NAME[:PORT]/proxy/PATH` to the pod IP (the
first container port when none is given); `nodes/NAME[:PORT]/proxy/PATH` to the node's kubelet (InternalIP,
port 10250, over HTTPS with the API server's kubelet-client certificate, verifying the kubelet's serving
certificate against the cluster CA, as kube-apiserver presents its kubelet client credentials). The request
(method, query, body, headers but the hop-by-hop ones and the user's Authorization) is sent over the cluster
network, which the API server reaches from where it runs (node1's namespace in a lab), and the answer streams
back. A backend that cannot be reached or does not speak HTTP (CoreDNS's `dns` port, which `kubectl
cluster-info` prints) is kube's 503 `error trying to reach service: ...`. WebSocket upgrades are not relayed.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from kwire.api.errors import ApiError, bad_request, not_found
from kwire.api.registry import by_path
from kwire.api.resources import Resources

KUBELET_PORT = 10250
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
    }
)
Obj = dict[str, Any]


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    *,
    hop_by_hop: frozenset[str] = HOP_BY_HOP,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Stream `upstream`'s answer back to the caller as it arrives (a follow log or a watch never ends): its
    status, its end-to-end headers (or `headers` instead), then the body chunk by chunk."""
    if headers is None:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in hop_by_hop}
    resp = web.StreamResponse(status=upstream.status, headers=headers)
    await resp.prepare(request)
    async for chunk in upstream.content.iter_any():
        await resp.write(chunk)
    await resp.write_eof()
    return resp


@dataclass(frozen=True)
class ProxyTarget:
    resource: str  # services, pods, nodes
    namespace: str | None
    id: str  # [scheme:]name[:port]
    path: str  # what follows /proxy, "" or starting with "/"


def parse(raw_path: str) -> ProxyTarget | None:
    """A proxy request path, or None when `raw_path` is not one."""
    parts = raw_path.split("/")
    # ['', 'api', 'v1', 'namespaces', NS, 'services'|'pods', ID, 'proxy', ...] or ['', 'api', 'v1', 'nodes', ID, 'proxy', ...]
    if len(parts) >= 8 and parts[1:4] == ["api", "v1", "namespaces"] and parts[5] in ("services", "pods"):
        if parts[7] != "proxy" or not parts[6]:
            return None
        rest = parts[8:]
        return ProxyTarget(parts[5], parts[4], parts[6], "/" + "/".join(rest) if len(parts) > 8 else "")
    if len(parts) >= 6 and parts[1:4] == ["api", "v1", "nodes"] and parts[5] == "proxy" and parts[4]:
        rest = parts[6:]
        return ProxyTarget("nodes", None, parts[4], "/" + "/".join(rest) if len(parts) > 6 else "")
    return None


def split_scheme_name_port(value: str) -> tuple[str, str, str] | None:
    """utilnet.SplitSchemeNamePort: `name`, `name:port`, `scheme:name:port` (scheme http or https)."""
    parts = value.split(":")
    if len(parts) == 1:
        scheme, name, port = "", parts[0], ""
    elif len(parts) == 2:
        scheme, name, port = "", parts[0], parts[1]
    elif len(parts) == 3:
        scheme, name, port = parts
    else:
        return None
    if not name or scheme not in ("", "http", "https"):
        return None
    return scheme, name, port


def _kind(plural: str) -> Any:
    kind = by_path("", "v1", plural)
    assert kind is not None
    return kind


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "ServiceUnavailable", message)


def _target(resources: Resources, plural: str, namespace: str | None, ident: str) -> tuple[str, str, str, Obj]:
    """The `[scheme:]name[:port]` of a proxy path and the object it names: (scheme, name, port, object); 400 for
    a malformed one, 404 when there is no such object."""
    split = split_scheme_name_port(ident)
    if split is None:
        raise bad_request(f"invalid {plural[:-1]} request {ident!r}")
    scheme, name, port = split
    obj = resources.get_or_none(_kind(plural), namespace, name)
    if obj is None:
        raise not_found("", plural, name)
    return scheme, name, port, obj


def service_location(resources: Resources, namespace: str, ident: str) -> URL:
    scheme, name, port, svc = _target(resources, "services", namespace, ident)
    if port.isdigit():
        match = next((p for p in (svc.get("spec") or {}).get("ports") or [] if str(p.get("port")) == port), None)
        if match is None:
            raise _unavailable(f'no service port {port} found for service "{name}"')
        port = str(match.get("name") or "")
    eps = resources.get_or_none(_kind("endpoints"), namespace, name)
    subsets = list((eps or {}).get("subsets") or [])
    if not subsets:
        raise _unavailable(f'no endpoints available for service "{name}"')
    random.shuffle(subsets)
    for subset in subsets:
        addresses = subset.get("addresses") or []
        if not addresses:
            continue
        for p in subset.get("ports") or []:
            if str(p.get("name") or "") == port:
                addr = random.choice(addresses)
                return URL.build(scheme=scheme or "http", host=str(addr.get("ip")), port=int(p.get("port") or 80))
    raise _unavailable(f'no endpoints available for service "{ident}"')


def pod_location(resources: Resources, namespace: str, ident: str) -> URL:
    scheme, name, port, pod = _target(resources, "pods", namespace, ident)
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        raise bad_request(f"address not allowed: pod {name} has no IP")
    container_ports = [p for c in (pod.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []]
    if not port and container_ports:
        port = str(container_ports[0].get("containerPort"))
    elif port and not port.isdigit():
        named = next((p for p in container_ports if p.get("name") == port), None)
        if named is None:
            raise bad_request(f'invalid port "{port}" for pod {name}')
        port = str(named.get("containerPort"))
    return URL.build(scheme=scheme or "http", host=str(ip), port=int(port) if port else 80)


def node_location(resources: Resources, ident: str) -> URL:
    _scheme, _name, port, node = _target(resources, "nodes", None, ident)
    addrs = (node.get("status") or {}).get("addresses") or []
    ip = next((a.get("address") for a in addrs if a.get("type") == "InternalIP"), None)
    if not ip:
        raise _unavailable(f"no preferred addresses found; known addresses: {addrs}")
    return URL.build(scheme="https", host=str(ip), port=int(port) if port.isdigit() else KUBELET_PORT)


async def handle(
    request: web.Request, resources: Resources, target: ProxyTarget, *, kubelet_ssl: ssl.SSLContext | None
) -> web.StreamResponse:
    if target.resource == "services":
        base = service_location(resources, target.namespace or "", target.id)
    elif target.resource == "pods":
        base = pod_location(resources, target.namespace or "", target.id)
    else:
        base = node_location(resources, target.id)
    url = base.with_path(target.path or "/", encoded=True).with_query(request.rel_url.query_string)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    # A node's kubelet gets the API server's client certificate and its serving certificate is verified; pods
    # and services are reached as kube-apiserver does, without verifying their certificates.
    tls: ssl.SSLContext | bool = False
    if target.resource == "nodes":
        if kubelet_ssl is None:
            raise _unavailable("error trying to reach node: the API server has no kubelet client certificate")
        tls = kubelet_ssl
    body = await request.read() if request.can_read_body else None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    try:
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            async with session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False, ssl=tls
            ) as upstream:
                return await relay(request, upstream)
    except (TimeoutError, aiohttp.ClientError) as exc:
        what = "service" if target.resource == "services" else target.resource[:-1]
        raise _unavailable(f"error trying to reach {what}: {exc or type(exc).__name__}") from None
