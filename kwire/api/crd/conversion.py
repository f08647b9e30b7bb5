"""CRD conversion webhooks (`spec.conversion.strategy: Webhook`, ConversionReview v1).

Mirrors apiextensions-apiserver's webhookConverter: objects read or written at a version other than the one
they are held in are sent, in one ConversionReview per call, to the CRD's `conversion.webhook.clientConfig`
(resolved and verified as admission webhooks are: `kwire.api.webhookclient`) with `desiredAPIVersion`; the
answer must carry the request's uid, `result.status: Success` and as many `convertedObjects`, each at the desired
apiVersion and of the same kind. As kube's `restoreObjectMeta` does, the converted objects keep the originals'
metadata except labels and annotations. Any failure is kube's `conversion webhook for <group/version>,
Kind=<Kind> failed: <reason>`, answered as a 500. The CRD is looked up in the store's live state per call, so a
changed webhook applies at once; its `spec.conversion` is decoded once per CRD revision (every custom-resource
write asks whether there is a webhook). Strategy `None` stays in `custom.py` (only apiVersion changes).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from kwire.api import webhookclient
from kwire.api.errors import ApiError
from kwire.api.registry import Kind
from kwire.api.webhookclient import Lookup, WebhookCallError
from kwire.store.base import KV

Obj = dict[str, Any]

TIMEOUT = 30  # seconds: kube-apiserver's conversion webhook client timeout
_WEBHOOKS_MAX = 4096


def _webhook_of(crd: Obj) -> Obj | None:
    """The CRD's conversion webhook when its strategy is Webhook."""
    conv = (crd.get("spec") or {}).get("conversion") or {}
    if conv.get("strategy") != "Webhook":
        return None
    webhook = conv.get("webhook") or {}
    return webhook if webhook.get("clientConfig") else None


class WebhookConverter:
    def __init__(self, *, crd: Callable[[str], KV | None], lookup: Lookup) -> None:
        """`crd` gives the stored CRD of a name (the store's live state), or None."""
        self._crd = crd
        self.lookup = lookup
        self._session: aiohttp.ClientSession | None = None
        # CRD name -> (the revision read, its webhook or None); an entry goes when it is asked for a CRD that is
        # gone, and all go past _WEBHOOKS_MAX names (CRDs created and deleted under ever new names).
        self._webhooks: dict[str, tuple[int, Obj | None]] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def webhook_for(self, kind: Kind) -> Obj | None:
        """The CRD's conversion webhook when its strategy is Webhook."""
        if kind.custom is None:
            return None
        name = kind.custom.crd_name
        kv = self._crd(name)
        if kv is None:
            self._webhooks.pop(name, None)
            return None
        held = self._webhooks.get(name)
        if held is not None and held[0] == kv.mod_revision:
            return held[1]
        webhook = _webhook_of(orjson.loads(kv.value))
        if len(self._webhooks) >= _WEBHOOKS_MAX:
            self._webhooks.clear()
        self._webhooks[name] = (kv.mod_revision, webhook)
        return webhook

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, force_close=True))
        return self._session

    async def convert(self, kind: Kind, objs: list[Obj], desired: str) -> list[Obj]:
        """`objs` (all of `kind`'s group, any version) at apiVersion `desired`; unchanged ones are not sent."""
        todo = [i for i, o in enumerate(objs) if o.get("apiVersion") != desired]
        webhook = self.webhook_for(kind)
        if not todo or webhook is None:
            return objs
        source = objs[todo[0]]
        gvk = f"{source.get('apiVersion')}, Kind={source.get('kind') or kind.kind}"
        uid = str(uuid.uuid4())
        review = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "ConversionReview",
            "request": {"uid": uid, "desiredAPIVersion": desired, "objects": [objs[i] for i in todo]},
        }
        try:
            _, answer = await webhookclient.post(
                webhook["clientConfig"], review, lookup=self.lookup, timeout=TIMEOUT, session=self._http()
            )
            converted = _converted_objects(answer, uid)
            if len(converted) != len(todo):
                raise WebhookCallError(f"returned {len(converted)} objects, expected {len(todo)}")
        except WebhookCallError as exc:
            raise _failed(gvk, str(exc)) from None
        out = list(objs)
        for i, new in zip(todo, converted, strict=True):
            out[i] = _checked(objs[i], new, desired, gvk)
        return out


def _failed(gvk: str, reason: str) -> ApiError:
    text = f"conversion webhook for {gvk} failed: {reason}"
    return ApiError(500, "InternalError", f"Internal error occurred: {text}", details={"causes": [{"message": text}]})


def _converted_objects(answer: Obj, uid: str) -> list[Obj]:
    """getConvertedObjectsFromResponse of the v1 ConversionReview."""
    if answer.get("apiVersion") != "apiextensions.k8s.io/v1" or answer.get("kind") != "ConversionReview":
        raise WebhookCallError(
            "expected webhook response of apiextensions.k8s.io/v1, Kind=ConversionReview, "
            f"got {answer.get('apiVersion')}, Kind={answer.get('kind')}"
        )
    response = answer.get("response")
    if not isinstance(response, dict):
        raise WebhookCallError("no response provided")
    if response.get("uid") != uid:
        raise WebhookCallError(f'expected response.uid="{uid}", got "{response.get("uid")}"')
    result = response.get("result") or {}
    if result.get("status") != "Success":
        if result.get("message"):
            raise WebhookCallError(str(result["message"]))
        raise WebhookCallError(f"response.result.status was '{result.get('status', '')}', not 'Success'")
    objs = response.get("convertedObjects")
    if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
        raise WebhookCallError("convertedObjects is not a list of objects")
    return objs


def _checked(original: Obj, converted: Obj, desired: str, gvk: str) -> Obj:
    if converted.get("apiVersion") != desired:
        raise _failed(
            gvk, f"invalid converted object: expected apiVersion {desired}, got {converted.get('apiVersion')}"
        )
    if converted.get("kind") != original.get("kind"):
        raise _failed(
            gvk, f"invalid converted object: expected kind {original.get('kind')}, got {converted.get('kind')}"
        )
    meta = dict(original.get("metadata") or {})
    new_meta = converted.get("metadata") or {}
    for key in ("labels", "annotations"):
        if new_meta.get(key):
            meta[key] = new_meta[key]
        else:
            meta.pop(key, None)
    return {**converted, "metadata": meta}
