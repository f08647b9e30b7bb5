"""Calling a webhook the way kube-apiserver does (k8s.io/apiserver/pkg/util/webhook): resolving `clientConfig`,
TLS against `caBundle`, the timeout, and kube's error texts.

`clientConfig.url` is dialled as given. `clientConfig.service` (namespace, name, port default 443, path) is
verified as `<name>.<namespace>.svc` and dialled at a ready endpoint of the Service (its Endpoints object, as
kube-apiserver does with `--enable-aggregator-routing`; never the ClusterIP, which only routes inside a node's
namespace and not from wherever the server runs); a Service without an Endpoints object or ready endpoints fails
at once with kube's `endpoints "x" not found` / `no endpoints available for service "x"` — so a webhook whose
backend is down never holds up the writes behind it for longer than a lookup or a refused connection.
The server certificate must verify against `caBundle` (the system roots when empty); no client certificate is
sent. Used by admission (AdmissionReview) and CRD conversion (ConversionReview).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

Obj = dict[str, Any]

DEFAULT_TIMEOUT = 10
MAX_TIMEOUT = 30
MAX_RESPONSE = 3 * 1024 * 1024  # kube-apiserver reads at most 3 MiB of a webhook's answer


class Lookup(Protocol):
    """What resolving a service reference needs from storage: the live Service and Endpoints."""

    def service(self, namespace: str, name: str) -> Obj | None: ...

    def endpoints(self, namespace: str, name: str) -> Obj | None: ...


class WebhookCallError(Exception):
    """The call itself failed (connection, TLS, timeout, HTTP status, undecodable answer)."""


@dataclass(frozen=True)
class Target:
    url: str  # what the error messages name (kube's `Post "<url>?timeout=10s"`)
    dial_url: str  # where the connection goes
    server_hostname: str
    ca_bundle: bytes


def _ssl_context(ca_bundle: bytes) -> ssl.SSLContext:
    if ca_bundle:
        try:
            return ssl.create_default_context(cadata=ca_bundle.decode())
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
            raise WebhookCallError(f"unable to load root certificates: {exc}") from None
    return ssl.create_default_context()


def resolve(client_config: Obj, lookup: Lookup) -> Target:
    ca = client_config.get("caBundle") or ""
    try:
        ca_bundle = base64.b64decode(ca) if ca else b""
    except ValueError:
        raise WebhookCallError("caBundle is not valid base64") from None
    if client_config.get("url"):
        url = str(client_config["url"])
        return Target(url, url, urlsplit(url).hostname or "", ca_bundle)
    svc_ref = client_config.get("service") or {}
    namespace, name = str(svc_ref.get("namespace", "")), str(svc_ref.get("name", ""))
    port = int(svc_ref.get("port") or 443)
    path = str(svc_ref.get("path") or "")
    host = f"{name}.{namespace}.svc"
    url = f"https://{host}:{port}{path}"
    svc = lookup.service(namespace, name)
    if svc is None:
        raise WebhookCallError(f'service "{name}" not found')
    spec = svc.get("spec") or {}
    ports = spec.get("ports") or []
    svc_port = next((p for p in ports if int(p.get("port") or 0) == port), None)
    if svc_port is None:
        raise WebhookCallError(f"no service port {port} found for service {name!r}")
    eps = lookup.endpoints(namespace, name)
    if eps is None:
        raise WebhookCallError(f'endpoints "{name}" not found')
    for subset in eps.get("subsets") or []:
        addresses = subset.get("addresses") or []
        sub_ports = subset.get("ports") or []
        match = [p for p in sub_ports if p.get("name", "") == svc_port.get("name", "")] or (
            sub_ports if len(sub_ports) == 1 else []
        )
        if addresses and match:
            ip = addresses[0]["ip"]
            return Target(url, f"https://{ip}:{int(match[0]['port'])}{path}", host, ca_bundle)
    raise WebhookCallError(f'no endpoints available for service "{name}"')


def timeout_of(webhook: Obj) -> int:
    return min(max(int(webhook.get("timeoutSeconds") or DEFAULT_TIMEOUT), 1), MAX_TIMEOUT)


async def post(
    client_config: Obj, body: Obj, *, lookup: Lookup, timeout: int, session: aiohttp.ClientSession
) -> tuple[str, Obj]:
    """POST `body` to the webhook; returns (the URL as kube names it, the decoded answer) or raises
    WebhookCallError with kube's `Post "<url>?timeout=Ns": <reason>` text."""
    try:
        target = resolve(client_config, lookup)
    except WebhookCallError as exc:
        svc = client_config.get("service") or {}
        url = client_config.get("url") or (
            f"https://{svc.get('name')}.{svc.get('namespace')}.svc:{svc.get('port') or 443}{svc.get('path') or ''}"
        )
        raise WebhookCallError(f'Post "{url}?timeout={timeout}s": {exc}') from None
    named = f"{target.url}?timeout={timeout}s"
    dial = f"{target.dial_url}?timeout={timeout}s"
    try:
        ctx = _ssl_context(target.ca_bundle)
        async with asyncio.timeout(timeout):
            async with session.post(
                dial,
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                ssl=ctx,
                server_hostname=target.server_hostname or None,
            ) as resp:
                raw = await resp.content.read(MAX_RESPONSE + 1)
                if len(raw) > MAX_RESPONSE:
                    raise WebhookCallError("the response is too large")
                if resp.status != 200:
                    raise WebhookCallError(f"the server responded with the status code {resp.status}")
    except TimeoutError:
        raise WebhookCallError(f'Post "{named}": context deadline exceeded') from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise WebhookCallError(f'Post "{named}": tls: failed to verify certificate: {exc.certificate_error}') from None
    except aiohttp.ClientConnectorError as exc:
        raise WebhookCallError(f'Post "{named}": dial tcp {exc.host}:{exc.port}: {exc.os_error}') from None
    except (aiohttp.ClientError, OSError, WebhookCallError) as exc:
        raise WebhookCallError(f'Post "{named}": {exc}') from None
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WebhookCallError(f"failed to decode the response: {exc}") from None
    if not isinstance(answer, dict):
        raise WebhookCallError("the response is not an object")
    return named, answer
