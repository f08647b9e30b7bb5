"""Dynamic admission: MutatingWebhookConfiguration and ValidatingWebhookConfiguration (admissionregistration/v1).

Mirrors kube-apiserver's MutatingAdmissionWebhook and ValidatingAdmissionWebhook plugins:
- called for CREATE, UPDATE, DELETE and CONNECT (pods/exec, pods/attach), after defaulting; mutating webhooks
  first, one after the other (configurations in name order, webhooks in their order), each seeing the previous
  one's patch (`patchType: JSONPatch`); then, after the object's own validation, the validating webhooks in
  parallel;
- a webhook is called when one of its `rules` matches (operations, apiGroups, apiVersions, resources with `*`,
  `*/*`, `pods/*`, `*/status`, scope) and its `namespaceSelector` (the namespace's labels; a Namespace's own;
  always for other cluster-scoped objects) and `objectSelector` (new or old object's labels) select the request;
  `matchPolicy` Equivalent needs nothing more here because each resource is served in one version;
- the AdmissionReview v1 request carries kind/resource/subResource (and their request* twins), name, namespace,
  operation, userInfo, object, oldObject, dryRun and options; a webhook whose `sideEffects` is not None/NoneOnDryRun
  is not called on a dry run (kube refuses the request instead);
- denial: the webhook's status code (at least 400) and `admission webhook "<name>" denied the request: <message>`;
  a failed call: with failurePolicy Fail (the default) 500 `Internal error occurred: failed calling webhook
  "<name>": failed to call webhook: ...`, with Ignore the webhook is skipped;
- requests on the webhook configuration kinds themselves are never sent to webhooks (kube's rule, so a broken
  webhook can always be removed).
The configurations come from the store's live state, followed by kwire.api.follow's Follower (a watch relisted
after a Backoff of 0.5 s doubling to 30 s when it ends or fails), as the authorizers' RBAC index is.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jsonpatch
import orjson

from kwire.api import matchconditions, webhookclient
from kwire.api.errors import ApiError
from kwire.api.follow import Follower
from kwire.api.registry import Kind
from kwire.api.user import current_user
from kwire.api.webhookclient import Lookup, WebhookCallError
from kwire.base.labels import SelectorError, from_label_selector
from kwire.store.base import Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]

GROUP = "admissionregistration.k8s.io"
MUTATING_PREFIX = f"/registry/{GROUP}/mutatingwebhookconfigurations/"
VALIDATING_PREFIX = f"/registry/{GROUP}/validatingwebhookconfigurations/"
_OPTIONS_KIND = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}


@dataclass
class Attributes:
    """One request as admission sees it (admission.Attributes)."""

    kind: Kind
    operation: str  # CREATE | UPDATE | DELETE | CONNECT
    namespace: str
    name: str
    subresource: str = ""
    object: Obj | None = None
    old_object: Obj | None = None
    dry_run: bool = False
    options: Obj | None = None
    user: Obj = field(default_factory=lambda: current_user().as_review())  # the request's user (kube's userInfo)


# -- matching ------------------------------------------------------------------------------------------------------
def _resource_matches(patterns: list[str], resource: str, subresource: str) -> bool:
    for p in patterns:
        res, _, sub = p.partition("/")
        if p == "*/*":
            return True
        if res not in ("*", resource):
            continue
        if sub == "*" or sub == subresource:
            return True
    return False


def rule_matches(rule: Obj, attrs: Attributes) -> bool:
    """RuleWithOperations against a request (kube's rules.Matcher)."""
    ops = rule.get("operations") or []
    if "*" not in ops and attrs.operation not in ops:
        return False
    kind = attrs.kind
    groups = rule.get("apiGroups") or []
    if "*" not in groups and kind.group not in groups:
        return False
    versions = rule.get("apiVersions") or []
    if "*" not in versions and kind.version not in versions:
        return False
    if not _resource_matches(rule.get("resources") or [], kind.plural, attrs.subresource):
        return False
    scope = rule.get("scope") or "*"
    if scope == "Cluster" and kind.namespaced:
        return False
    return not (scope == "Namespaced" and not kind.namespaced)


def _labels(obj: Obj | None) -> dict[str, str] | None:
    if obj is None:
        return None
    return (obj.get("metadata") or {}).get("labels") or {}


def _selects(selector: Obj | None, *label_sets: dict[str, str] | None) -> bool:
    try:
        sel = from_label_selector(selector if selector is not None else {})
    except SelectorError:
        return False
    return any(sel.matches(labels) for labels in label_sets if labels is not None)


def webhook_matches(hook: Obj, attrs: Attributes, namespace_labels: Callable[[str], dict[str, str] | None]) -> bool:
    if not any(rule_matches(r, attrs) for r in hook.get("rules") or []):
        return False
    kind = attrs.kind
    if kind.group == "" and kind.plural == "namespaces":
        if not _selects(hook.get("namespaceSelector"), _labels(attrs.object), _labels(attrs.old_object)):
            return False
    elif kind.namespaced and attrs.namespace:
        ns_labels = namespace_labels(attrs.namespace)
        if not _selects(hook.get("namespaceSelector"), ns_labels if ns_labels is not None else {}):
            return False
    objs = [_labels(attrs.object), _labels(attrs.old_object)]
    if attrs.operation == "CONNECT":
        objs = [{}]
    return _selects(hook.get("objectSelector"), *objs)


# -- the review ----------------------------------------------------------------------------------------------------
def review(attrs: Attributes, obj: Obj | None) -> Obj:
    kind = attrs.kind
    gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
    gvr = {"group": kind.group, "version": kind.version, "resource": kind.plural}
    request: Obj = {
        "uid": str(uuid.uuid4()),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": attrs.name,
        "operation": attrs.operation,
        "userInfo": attrs.user,
        "object": obj,
        "oldObject": attrs.old_object,
        "dryRun": attrs.dry_run,
        "options": attrs.options,
    }
    if attrs.subresource:
        request["subResource"] = request["requestSubResource"] = attrs.subresource
    if attrs.namespace:
        request["namespace"] = attrs.namespace
    if request["options"] is None and attrs.operation in _OPTIONS_KIND:
        request["options"] = {"kind": _OPTIONS_KIND[attrs.operation], "apiVersion": "meta.k8s.io/v1"}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def denied(name: str, result: Obj | None) -> ApiError:
    """kube's webhookerrors.ToStatusErr."""
    result = result or {}
    code = int(result.get("code") or 0)
    if code < 400:
        code = 400
    by = f'admission webhook "{name}" denied the request'
    if result.get("message"):
        message = f"{by}: {result['message']}"
    elif result.get("reason"):
        message = f"{by}: {result['reason']}"
    else:
        message = f"{by} without explanation"
    return ApiError(code, str(result.get("reason") or ""), message, details=result.get("details"))


def call_failed(name: str, reason: str) -> ApiError:
    text = f'failed calling webhook "{name}": {reason}'
    return ApiError(500, "InternalError", f"Internal error occurred: {text}", details={"causes": [{"message": text}]})


# -- the plugin ----------------------------------------------------------------------------------------------------
class WebhookAdmission:
    """The two admission plugins over the live webhook configurations."""

    def __init__(self, store: Store, lookup: Lookup, namespace_labels: Callable[[str], dict[str, str] | None]):
        self.store = store
        self.lookup = lookup
        self.namespace_labels = namespace_labels
        self._configs: dict[str, Obj] = {}  # store key -> configuration
        self._session: aiohttp.ClientSession | None = None
        self.synced = asyncio.Event()
        # One watch over the group (both configuration kinds; the group's other kinds are skipped), relisted with
        # back-off when it ends or fails: the authorizers' Follower.
        self.follower = Follower(
            store, f"/registry/{GROUP}/", apply=self._apply, reset=self._configs.clear, name="admission: webhooks"
        )

    async def start(self) -> None:
        await self.follower.start()
        self.synced.set()

    async def stop(self) -> None:
        await self.follower.stop()
        if self._session is not None:
            await self._session.close()

    def _apply(self, key: str, obj: Obj | None) -> None:
        if not key.startswith((MUTATING_PREFIX, VALIDATING_PREFIX)):
            return
        if obj is None:
            self._configs.pop(key, None)
        else:
            self._configs[key] = obj

    def _hooks(self, prefix: str, attrs: Attributes) -> list[Obj]:
        if attrs.kind.group == GROUP:
            return []
        out: list[Obj] = []
        for key in sorted(k for k in self._configs if k.startswith(prefix)):
            for hook in self._configs[key].get("webhooks") or []:
                try:
                    matches = isinstance(hook, dict) and webhook_matches(hook, attrs, self.namespace_labels)
                except (TypeError, ValueError, AttributeError) as exc:
                    log.warning("admission: %s: malformed webhook %r: %s", key, hook, exc)
                    continue
                if matches:
                    if attrs.dry_run and hook.get("sideEffects") not in ("None", "NoneOnDryRun"):
                        raise ApiError(
                            400,
                            "BadRequest",
                            f'admission webhook "{hook.get("name")}" does not support dry run',
                        )
                    out.append(hook)
        return out

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True))
        return self._session

    async def _call(self, hook: Obj, attrs: Attributes, obj: Obj | None) -> Obj | None:
        """The webhook's `response`, or None when the call failed and the failure policy is Ignore."""
        name = str(hook.get("name", ""))
        timeout = webhookclient.timeout_of(hook)
        body = review(attrs, obj)
        match = matchconditions.evaluate(hook.get("matchConditions") or [], request=body["request"])
        if match.error:
            if hook.get("failurePolicy") == "Ignore":
                log.warning('admission: webhook "%s" skipped, match conditions failed (Ignore): %s', name, match.error)
                return None
            raise call_failed(name, f"failed evaluating match conditions, failing closed: {match.error}")
        if not match.matches:
            return None
        try:
            _, answer = await webhookclient.post(
                hook.get("clientConfig") or {}, body, lookup=self.lookup, timeout=timeout, session=self._http()
            )
            response = answer.get("response")
            if not isinstance(response, dict):
                raise WebhookCallError("the webhook response contains no response")
            if response.get("uid") != body["request"]["uid"]:
                raise WebhookCallError(f"expected response.uid={body['request']['uid']!r}, got {response.get('uid')!r}")
        except WebhookCallError as exc:
            if hook.get("failurePolicy") == "Ignore":
                log.warning('admission: failed calling webhook "%s" (failurePolicy Ignore): %s', name, exc)
                return None
            reason = str(exc)
            if reason.startswith("Post "):
                reason = f"failed to call webhook: {reason}"
            raise call_failed(name, reason) from None
        return response

    async def mutate(self, attrs: Attributes) -> Obj | None:
        """Run the mutating webhooks; returns the (possibly patched) object. As kube-apiserver's reinvocation:
        when a later webhook changed the object, the webhooks with `reinvocationPolicy: IfNeeded` that ran before
        that change are called once more, in order."""
        obj = attrs.object
        hooks = self._hooks(MUTATING_PREFIX, attrs)
        seen: list[tuple[Obj, Obj | None]] = []  # each hook and the object as it left it
        for hook in hooks:
            obj = await self._mutate_once(hook, attrs, obj)
            seen.append((hook, obj))
        again = [h for h, left in seen if h.get("reinvocationPolicy") == "IfNeeded" and left != obj]
        for hook in again:
            obj = await self._mutate_once(hook, attrs, obj)
        return obj

    async def _mutate_once(self, hook: Obj, attrs: Attributes, obj: Obj | None) -> Obj | None:
        response = await self._call(hook, attrs, obj)
        if response is None:
            return obj
        if not response.get("allowed"):
            raise denied(str(hook.get("name", "")), response.get("status"))
        patch = response.get("patch")
        if patch and obj is not None and attrs.operation in ("CREATE", "UPDATE"):
            if response.get("patchType") != "JSONPatch":
                raise call_failed(str(hook.get("name", "")), f"unsupported patch type {response.get('patchType')!r}")
            try:
                ops = orjson.loads(base64.b64decode(patch))
                obj = jsonpatch.apply_patch(obj, ops, in_place=False)
            except (ValueError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise call_failed(str(hook.get("name", "")), f"JSON patch could not be applied: {exc}") from None
        return obj

    async def validate(self, attrs: Attributes) -> None:
        hooks = self._hooks(VALIDATING_PREFIX, attrs)
        if not hooks:
            return
        responses = await asyncio.gather(*(self._call(h, attrs, attrs.object) for h in hooks))
        for hook, response in zip(hooks, responses, strict=True):
            if response is not None and not response.get("allowed"):
                raise denied(str(hook.get("name", "")), response.get("status"))
