"""Who may ask the metrics-server, as upstream metrics-server decides it with k8s.io/apiserver's delegated
authentication and authorization (the `--requestheader-*` and `--authorization-*` defaults of an aggregated server).

Authentication reads `kube-system/extension-apiserver-authentication` (the API server keeps it; see
kwire/api/frontproxy.py): a request whose TLS client certificate verifies against `requestheader-client-ca-file` and
whose CN is in `requestheader-allowed-names` is the API server proxying, and its `X-Remote-User`/`X-Remote-Group`/
`X-Remote-Extra-*` headers name the caller; a certificate from `client-ca-file` is its own CN/O user. Anything else
is anonymous and gets 401 (health paths excepted, as upstream's `--authorization-always-allow-paths`). The
ConfigMap is read again every minute, so CAs of servers that join later are trusted too; a read that fails is
retried after a `Backoff` of 1 s doubling to that minute, reset by the next good read.

Authorization asks the API server with a SubjectAccessReview (metrics.k8s.io nodes/pods, the request's verb, name
and namespace), each answer cached 10 s (upstream caches allowed answers 10 s, denied 10 s by default). While the
API server does not serve SubjectAccessReview (404), only `system:masters` is allowed.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from kwire.base.backoff import Backoff
from kwire.base.peercert import cn_and_orgs
from kwire.client import ApiClient
from kwire.client.client import CONFIGMAPS, ApiStatusError, NotFound

log = logging.getLogger("kwire.metricsserver")

CONFIGMAP = "extension-apiserver-authentication"
SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
CACHE_SECONDS = 10.0
CACHE_SIZE = 4096
REFRESH_SECONDS = 60.0


@dataclass(frozen=True)
class Caller:
    name: str
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


def _pems(bundle: str) -> list[str]:
    marker = "-----END CERTIFICATE-----"
    return [part.strip() + "\n" + marker + "\n" for part in bundle.split(marker) if "BEGIN CERTIFICATE" in part]


def _ca_cns(bundle: str) -> set[str]:
    """The subject CNs of the CAs in a PEM bundle (without the cryptography package: through ssl's decoder)."""
    out: set[str] = set()
    for pem in _pems(bundle):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=pem)
        for cert in ctx.get_ca_certs():
            cn, _ = cn_and_orgs(cert)
            out.add(cn)
    return out


class DelegatedAuth:
    def __init__(self, client: ApiClient, ctx: ssl.SSLContext) -> None:
        self.client = client
        self.ctx = ctx  # the serving context: CAs are added to it as the ConfigMap names them
        self.proxy_ca_cns: set[str] = set()
        self.client_ca_cns: set[str] = set()
        self.allowed_names: list[str] = []
        self.user_headers = ["X-Remote-User"]
        self.group_headers = ["X-Remote-Group"]
        self.extra_prefixes = ["X-Remote-Extra-"]
        self._loaded: set[str] = set()
        self._decisions: OrderedDict[tuple[Any, ...], tuple[float, bool, str]] = OrderedDict()
        self._sar_missing = False
        self.backoff = Backoff(1.0, REFRESH_SECONDS)  # after a failed read of the ConfigMap

    # -- the ConfigMap ------------------------------------------------------------------------------------------
    def apply(self, data: dict[str, str]) -> None:
        """Trust what the ConfigMap says (CAs are only ever added to the live TLS context)."""
        proxy_bundle = str(data.get("requestheader-client-ca-file") or "")
        client_bundle = str(data.get("client-ca-file") or "")
        for pem in _pems(proxy_bundle) + _pems(client_bundle):
            if pem not in self._loaded:
                self.ctx.load_verify_locations(cadata=pem)
                self._loaded.add(pem)
        self.proxy_ca_cns = _ca_cns(proxy_bundle)
        self.client_ca_cns = _ca_cns(client_bundle)
        self.allowed_names = list(json.loads(data.get("requestheader-allowed-names") or "[]"))
        self.user_headers = list(json.loads(data.get("requestheader-username-headers") or '["X-Remote-User"]'))
        self.group_headers = list(json.loads(data.get("requestheader-group-headers") or '["X-Remote-Group"]'))
        self.extra_prefixes = list(json.loads(data.get("requestheader-extra-headers-prefix") or '["X-Remote-Extra-"]'))
        self.ctx.verify_mode = ssl.CERT_OPTIONAL

    async def load(self) -> None:
        obj = await self.client.get(CONFIGMAPS, CONFIGMAP, namespace="kube-system")
        self.apply(dict(obj.get("data") or {}))

    async def follow(self) -> None:
        """Read the ConfigMap now (retrying with back-off until it can) and then every minute."""
        while True:
            try:
                await self.load()
            except Exception as exc:  # noqa: BLE001 - retried, never the end of the loop (unexpected ones traced)
                expected = isinstance(exc, (ApiStatusError, aiohttp.ClientError, OSError, TimeoutError, ValueError))
                log.warning(
                    "cannot read kube-system/%s (retrying with back-off): %s", CONFIGMAP, exc, exc_info=not expected
                )
                await self.backoff.sleep()
                continue
            self.backoff.reset()
            await self.backoff.pause(REFRESH_SECONDS)

    # -- authentication -------------------------------------------------------------------------------------------
    def authenticate(self, request: web.Request) -> Caller | None:
        transport = request.transport
        peer = transport.get_extra_info("peercert") if transport is not None else None
        if not peer:  # no certificate, or one that did not verify against the CAs above
            return None
        issuer, _ = cn_and_orgs(peer, field="issuer")
        cn, orgs = cn_and_orgs(peer)
        if issuer in self.proxy_ca_cns and (not self.allowed_names or cn in self.allowed_names):
            name = next((request.headers[h] for h in self.user_headers if request.headers.get(h)), "")
            if not name:
                return None
            groups = tuple(g for h in self.group_headers for g in request.headers.getall(h, []))
            extra: dict[str, list[str]] = {}
            for key, value in request.headers.items():
                for prefix in self.extra_prefixes:
                    if key.lower().startswith(prefix.lower()):
                        extra.setdefault(key[len(prefix) :].lower(), []).append(value)
            return Caller(name, groups, extra)
        if issuer in self.client_ca_cns and cn:
            return Caller(cn, (*orgs, "system:authenticated"))
        return None

    # -- authorization --------------------------------------------------------------------------------------------
    async def authorize(
        self, caller: Caller, *, verb: str, resource: str, namespace: str, name: str
    ) -> tuple[bool, str]:
        key = (caller.name, caller.groups, verb, resource, namespace, name)
        now = time.monotonic()
        hit = self._decisions.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        allowed, reason = await self._review(caller, verb=verb, resource=resource, namespace=namespace, name=name)
        self._decisions[key] = (now + CACHE_SECONDS, allowed, reason)
        self._decisions.move_to_end(key)
        while len(self._decisions) > CACHE_SIZE:
            self._decisions.popitem(last=False)
        return allowed, reason

    async def _review(self, caller: Caller, *, verb: str, resource: str, namespace: str, name: str) -> tuple[bool, str]:
        if self._sar_missing:
            return "system:masters" in caller.groups, ""
        attrs: dict[str, Any] = {"group": "metrics.k8s.io", "version": "v1beta1", "resource": resource, "verb": verb}
        if namespace:
            attrs["namespace"] = namespace
        if name:
            attrs["name"] = name
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": caller.name,
                "groups": list(caller.groups),
                "extra": caller.extra,
                "resourceAttributes": attrs,
            },
        }
        try:
            answer = await self.client.request("POST", SAR_PATH, body=body)
        except NotFound:
            log.warning("the API server serves no SubjectAccessReview: only system:masters may read metrics")
            self._sar_missing = True
            return "system:masters" in caller.groups, ""
        status = answer.get("status") or {}
        return bool(status.get("allowed")) and not status.get("denied"), str(status.get("reason") or "")


def forbidden_message(caller: Caller, *, verb: str, resource: str, namespace: str) -> str:
    """kube's words for a refused request."""
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return (
        f'{resource}.metrics.k8s.io is forbidden: User "{caller.name}" cannot {verb} resource "{resource}" '
        f'in API group "metrics.k8s.io" {where}'
    )
