"""The validating webhook MetalLB's manifest registers, served by the controller pod on 9443 (MetalLB's
`internal/k8s/webhooks` and its cert rotation).

The serving certificate lives in the `metallb-webhook-cert` Secret (`ca.crt`, `tls.crt`, `tls.key`): the
controller makes a CA and a certificate for `metallb-webhook-service.<ns>.svc` when the Secret holds none (or one
for another name), writes them back, and patches every webhook's `clientConfig.caBundle` in the
`metallb-webhook-configuration` ValidatingWebhookConfiguration with the CA, as upstream's cert-rotator does (a
server that does not serve that kind answers 404, which is only logged). Reviews (AdmissionReview v1):
- IPAddressPool: every address must parse (`invalid CIDR`/`invalid IP range`), and no range may overlap another
  pool's (`CIDR ... overlaps with already defined CIDR ...`);
- L2Advertisement: every `ipAddressPools` entry must name an existing pool;
- the BGP kinds (bgppeers, bfdprofiles, bgpadvertisements, communities) are allowed: kwire implements layer 2 only.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kwire.base import pki
from kwire.client import ApiClient, ApiStatusError, NotFound
from kwire.client.client import SECRETS, Resource
from kwire.metallb import pools

log = logging.getLogger("kwire.metallb.webhook")
Obj = dict[str, Any]
VALIDATING = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "validatingwebhookconfigurations",
    "ValidatingWebhookConfiguration",
    namespaced=False,
)
CONFIG_NAME = "metallb-webhook-configuration"
SECRET_NAME = "metallb-webhook-cert"
SERVICE_NAME = "metallb-webhook-service"
PORT = 9443


def make_certs(namespace: str) -> dict[str, bytes]:
    """A CA and a serving certificate for the webhook Service (ten years, as MetalLB's rotator makes them)."""
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "metallb-ca"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "metallb"),
        ]
    )
    ca, ca_key = pki.self_signed(ca_name, days=3650, ca=True)
    key = pki.new_key()
    dns = f"{SERVICE_NAME}.{namespace}.svc"
    cert = pki.issue(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]),
        public_key=key.public_key(),
        issuer=ca_name,
        signer=ca_key,
        days=3650,
        ca=None,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans_dns=[dns, f"{dns}.cluster.local"],
    )
    return {
        "ca.crt": pki.cert_pem(ca),
        "ca.key": pki.key_pem(ca_key),
        "tls.crt": pki.cert_pem(cert),
        "tls.key": pki.key_pem(key),
    }


def _valid_for(data: dict[str, bytes], namespace: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(data["tls.crt"])
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except (KeyError, ValueError, x509.ExtensionNotFound):
        return False
    return f"{SERVICE_NAME}.{namespace}.svc" in names and cert.not_valid_after_utc > dt.datetime.now(dt.UTC)


async def ensure_certs(client: ApiClient, namespace: str) -> dict[str, bytes]:
    """The Secret's certificates, made (and stored) when missing or for another name; the caBundle patched."""
    try:
        secret = await client.get(SECRETS, SECRET_NAME, namespace=namespace)
    except NotFound:
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME, "namespace": namespace}}
        secret = await client.create(SECRETS, secret, namespace=namespace)
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    if not _valid_for(data, namespace):
        data = make_certs(namespace)
        secret["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}
        await client.update(SECRETS, secret)  # a 409 (someone else wrote it) fails this start: the pod restarts
    await patch_ca_bundle(client, data["ca.crt"])
    return data


async def patch_ca_bundle(client: ApiClient, ca: bytes) -> None:
    try:
        cfg = await client.get(VALIDATING, CONFIG_NAME)
    except ApiStatusError as exc:  # not installed (yet), or a server without admissionregistration
        log.debug("no %s to patch: %s", CONFIG_NAME, exc)
        return
    bundle = base64.b64encode(ca).decode()
    hooks = cfg.get("webhooks") or []
    if all((h.get("clientConfig") or {}).get("caBundle") == bundle for h in hooks):
        return
    for h in hooks:
        h.setdefault("clientConfig", {})["caBundle"] = bundle
    await client.update(VALIDATING, cfg)


# -- reviews -------------------------------------------------------------------------------------------------------
def review_pool(obj: Obj, others: list[Obj]) -> str:
    """Why an IPAddressPool is refused ("" when allowed)."""
    try:
        mine = pools.parse_pool(obj)
    except pools.PoolError as exc:
        return str(exc)
    for other in others:
        if (other.get("metadata") or {}).get("name") == mine.name:
            continue
        try:
            theirs = pools.parse_pool(other)
        except pools.PoolError:
            continue
        why = pools.overlaps(mine, theirs)
        if why:
            return why
    return ""


def review_l2(obj: Obj, pool_names: set[str]) -> str:
    for name in (obj.get("spec") or {}).get("ipAddressPools") or []:
        if name not in pool_names:
            return f"invalid pool reference {name!r} in L2Advertisement {obj.get('metadata', {}).get('name')!r}: pool does not exist"
    return ""


def admission_response(review: Obj, reason: str) -> Obj:
    uid = (review.get("request") or {}).get("uid", "")
    resp: Obj = {"uid": uid, "allowed": not reason}
    if reason:
        resp["status"] = {"code": 403, "message": reason, "reason": "Forbidden"}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}


def app(pool_objects: Callable[[], list[Obj]]) -> web.Application:
    async def ipaddresspool(req: web.Request) -> web.Response:
        review = await req.json()
        r = review.get("request") or {}
        reason = "" if r.get("operation") == "DELETE" else review_pool(r.get("object") or {}, pool_objects())
        return web.json_response(admission_response(review, reason))

    async def l2advertisement(req: web.Request) -> web.Response:
        review = await req.json()
        r = review.get("request") or {}
        names = {str((p.get("metadata") or {}).get("name")) for p in pool_objects()}
        reason = "" if r.get("operation") == "DELETE" else review_l2(r.get("object") or {}, names)
        return web.json_response(admission_response(review, reason))

    async def allow(req: web.Request) -> web.Response:
        return web.json_response(admission_response(await req.json(), ""))

    a = web.Application(client_max_size=3 * 1024 * 1024)
    a.router.add_post("/validate-metallb-io-v1beta1-ipaddresspool", ipaddresspool)
    a.router.add_post("/validate-metallb-io-v1beta1-l2advertisement", l2advertisement)
    for path in (
        "/validate-metallb-io-v1beta2-bgppeer",
        "/validate-metallb-io-v1beta1-bfdprofile",
        "/validate-metallb-io-v1beta1-bgpadvertisement",
        "/validate-metallb-io-v1beta1-community",
    ):
        a.router.add_post(path, allow)
    return a


async def serve(certs: dict[str, bytes], pool_objects: Callable[[], list[Obj]], *, port: int = PORT) -> web.AppRunner:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl loads from files only: anonymous in-memory files (the container's root filesystem is read-only, as
    # MetalLB's manifest asks, and the key never touches a disk)
    fds = [os.memfd_create(name) for name in ("tls.crt", "tls.key")]
    try:
        for fd, name in zip(fds, ("tls.crt", "tls.key"), strict=True):
            os.write(fd, certs[name])
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)
    runner = web.AppRunner(app(pool_objects), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port, ssl_context=ctx).start()
    return runner
