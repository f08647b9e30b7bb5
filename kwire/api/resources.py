"""Generic REST storage over the revisioned store: create/get/list/update/patch/delete for any registered kind.

This is kube-apiserver's generic registry (`genericregistry.Store`) in small: object metadata rules, defaulting,
validation, optimistic concurrency, status subresources, graceful/finalizer deletion and Service allocation.
Everything HTTP-specific lives in `kwire.api.server`; in-process controllers call this layer directly.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import logging
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from kwire.api import defaults, validation
from kwire.api.admission import Admission
from kwire.api.allocator import ServiceAllocator
from kwire.api.errors import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    invalid,
    invalid_object,
    not_found,
    required,
)
from kwire.api.fields import FieldSelector
from kwire.api.patch import apply_patch
from kwire.api.registry import KINDS, Kind, by_path
from kwire.api.reservations import ReservedAllocator
from kwire.base.labels import Selector
from kwire.store.base import KV, KeyExists, KeyNotFound, RevisionMismatch, Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's SimpleNameGenerator alphabet
NAMESPACES = by_path("", "v1", "namespaces")
SERVICES = by_path("", "v1", "services")
PODS = by_path("", "v1", "pods")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode(obj: Obj) -> bytes:
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "resourceVersion" in meta:
        meta = dict(meta)
        del meta["resourceVersion"]
        obj = {**obj, "metadata": meta}
    # orjson hands back its 4 KB output buffer unshrunk: a stored value (kept live and in the watch history)
    # would cost 4 KB however small. A copy to the exact size (~1 us) made 60k writes of small ConfigMaps cost
    # the server +240 MB of RSS instead of a bounded history.
    return bytes(memoryview(orjson.dumps(obj)))


def decode(kv: KV | None = None, *, value: bytes | None = None, revision: int = 0) -> Obj:
    if kv is not None:
        value, revision = kv.value, kv.mod_revision
    assert value is not None
    obj = orjson.loads(value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
    return obj


def _body_only(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@dataclass
class ListResult:
    items: list[Obj]
    resource_version: int
    continue_token: str
    remaining: int | None


class Scan:
    """The objects of one list request, decoded lazily from a snapshot of the store (see `Resources.scan`).

    `continue_token` is known once iteration has stopped at the limit (kube's rule: a token whenever keys remain
    after the last returned object, even if none of them would match)."""

    def __init__(self, kvs: list[KV], revision: int, *, matches: Callable[[Obj], bool] | None, limit: int) -> None:
        self._kvs = kvs
        self.revision = revision
        self._matches = matches
        self._limit = max(limit, 0)
        self.continue_token = ""

    def __iter__(self) -> Iterator[Obj]:
        count = 0
        last = len(self._kvs) - 1
        for i, kv in enumerate(self._kvs):
            obj = decode(kv)
            if self._matches is not None and not self._matches(obj):
                continue
            yield obj
            count += 1
            if self._limit and count >= self._limit:
                if i < last:
                    self.continue_token = encode_continue(self.revision, kv.key)
                return


def encode_continue(revision: int, key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": key})).decode()


def decode_continue(token: str) -> str:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
        return str(data["start"])
    except Exception as exc:  # noqa: BLE001 - any garbage token is the client's error
        raise bad_request(f"continue key is not valid: {exc}") from None


class Resources:
    def __init__(self, store: Store, *, allocator: ServiceAllocator, admission: Admission | None = None) -> None:
        self.store = store
        self.allocator = allocator
        assert SERVICES is not None
        self.service_allocation = ReservedAllocator(store, allocator, services_prefix=SERVICES.prefix())
        self.admission = admission or Admission()
        self._after_write: list[Callable[[], None]] = []

    async def load(self) -> None:
        assert SERVICES is not None
        res = await self.store.range(SERVICES.prefix())
        await self.service_allocation.load([decode(kv) for kv in res.items])

    # -- reads -------------------------------------------------------------------------------------------------
    def _current(self, kind: Kind, namespace: str | None, name: str) -> KV:
        kv = self.store.get_now(kind.key(namespace, name))
        if kv is None:
            raise not_found(kind.group, kind.plural, name)
        return kv

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        return decode(self._current(kind, namespace, name))

    def get_or_none(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        kv = self.store.get_now(kind.key(namespace, name))
        return decode(kv) if kv else None

    async def scan(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        labels: Selector | None = None,
        fields: FieldSelector | None = None,
        limit: int = 0,
        continue_token: str = "",
    ) -> Scan:
        """A list as a lazy scan over one consistent snapshot: objects are decoded one at a time as the caller
        iterates, so a huge list or a watch's initial events never hold every decoded object at once."""
        prefix = kind.prefix(namespace)
        start = decode_continue(continue_token) if continue_token else ""
        if start and not start.startswith(prefix):
            raise bad_request("continue key is not valid: not for this resource")
        res = await self.store.range(prefix, start_after=start)
        filtered = (labels is not None and not labels.empty) or (fields is not None and not fields.empty)
        matches = (lambda obj: self._matches(obj, labels, fields)) if filtered else None
        return Scan(res.items, res.revision, matches=matches, limit=limit)

    async def list(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        labels: Selector | None = None,
        fields: FieldSelector | None = None,
        limit: int = 0,
        continue_token: str = "",
    ) -> ListResult:
        scan = await self.scan(
            kind, namespace, labels=labels, fields=fields, limit=limit, continue_token=continue_token
        )
        items = list(scan)
        return ListResult(items, scan.revision, scan.continue_token, None)

    @staticmethod
    def _matches(obj: Obj, labels: Selector | None, fields: FieldSelector | None) -> bool:
        if labels is not None and not labels.matches(obj.get("metadata", {}).get("labels")):
            return False
        return fields is None or fields.matches(obj)

    # -- create ------------------------------------------------------------------------------------------------
    def _check_type(self, kind: Kind, obj: Obj) -> None:
        if not isinstance(obj, dict):
            raise bad_request("the body of the request must be an object")
        api_version = obj.get("apiVersion") or kind.api_version
        if api_version != kind.api_version:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({kind.api_version})"
            )
        if obj.get("kind") and obj["kind"] != kind.kind:
            raise bad_request(f"the kind in the data ({obj['kind']}) does not match the expected kind ({kind.kind})")
        obj["apiVersion"] = kind.api_version
        obj["kind"] = kind.kind
        if not isinstance(obj.setdefault("metadata", {}), dict):
            raise bad_request("metadata must be an object")

    def _check_namespace(self, kind: Kind, namespace: str | None, obj: Obj, *, creating: bool) -> None:
        meta = obj["metadata"]
        if not kind.namespaced:
            meta.pop("namespace", None)
            return
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        meta["namespace"] = namespace
        if creating:
            assert NAMESPACES is not None
            ns = self.get_or_none(NAMESPACES, None, namespace or "")
            if ns is None:
                raise not_found("", "namespaces", namespace or "")
            if ns["metadata"].get("deletionTimestamp"):
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{kind.plural} "{meta.get("name", "")}" is forbidden: unable to create new content in namespace '
                    f"{namespace} because it is being terminated",
                )

    async def create(self, kind: Kind, namespace: str | None, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Create `obj`, which the caller hands over (it is filled in place and returned)."""
        self._check_type(kind, obj)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"]) + "".join(random.choice(_NAME_CHARS) for _ in range(5))
        self._check_namespace(kind, namespace, obj, creating=True)
        for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        defaults.apply_defaults(kind, obj)
        if "status" in kind.subresources and not isinstance(obj.get("status"), dict):
            obj["status"] = {}  # kube encodes a (zero) status struct for every kind that has one
        self.admission.admit_create(kind.kind, obj)
        errors = validation.validate_create(kind, obj)
        name = str(meta.get("name") or "")
        if errors:
            raise invalid_object(kind.group, kind.kind, name, errors)
        key = kind.key(namespace, name)
        if self.store.get_now(key) is not None:
            raise already_exists(kind.group, kind.plural, name)
        alloc = None
        if kind is SERVICES:
            alloc, errs = await self.service_allocation.allocate(
                obj, None, owner=f"{namespace}/{name}", dry_run=dry_run
            )
            if errs:
                raise invalid_object(kind.group, kind.kind, name, errs)
        if dry_run:
            if alloc:
                self.allocator.rollback(alloc)  # nothing was reserved in the store on a dry run
            return obj
        try:
            rev = await self.store.create(key, encode(obj))
        except KeyExists:
            if alloc:
                await self.service_allocation.rollback(alloc)
            raise already_exists(kind.group, kind.plural, name) from None
        except Exception:
            if alloc:
                await self.service_allocation.rollback(alloc)
            raise
        meta["resourceVersion"] = str(rev)
        return obj

    # -- update ------------------------------------------------------------------------------------------------
    async def update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        obj: Obj,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """Replace an object with `obj`, which the caller hands over (it may be changed in place)."""
        self._check_type(kind, obj)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        meta["name"] = name
        self._check_namespace(kind, namespace, obj, creating=False)
        kv = self._current(kind, namespace, name)
        want_rv = meta.get("resourceVersion")
        if want_rv and str(want_rv) != str(kv.mod_revision):
            raise conflict(
                kind.group,
                kind.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        old = decode(kv)
        new = self._merge_update(kind, old, obj, subresource=subresource)
        if new == old:
            return old  # a no-op update writes nothing and keeps the resourceVersion, as kube-apiserver does
        return await self._write_update(kind, namespace, name, kv, old, new, dry_run=dry_run)

    def _merge_update(self, kind: Kind, old: Obj, obj: Obj, *, subresource: str | None) -> Obj:
        if subresource == "ephemeralcontainers":
            # pods/ephemeralcontainers (kubectl debug): only spec.ephemeralContainers is taken from the body
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["ephemeralContainers"] = (obj.get("spec") or {}).get("ephemeralContainers") or []
            return new
        if subresource == "status":
            new = copy.deepcopy(old)
            new["status"] = obj.get("status", {})
            # Metadata other than labels/annotations is not writable through status (kube keeps it).
            return new
        new = obj
        meta = new["metadata"]
        old_meta = old["metadata"]
        for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        if "ephemeralcontainers" in kind.subresources and isinstance(new.get("spec"), dict):
            # written only through the ephemeralcontainers subresource, as kube-apiserver's pod strategy keeps them
            if (old.get("spec") or {}).get("ephemeralContainers"):
                new["spec"]["ephemeralContainers"] = old["spec"]["ephemeralContainers"]
            else:
                new["spec"].pop("ephemeralContainers", None)
        if "status" in kind.subresources:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        defaults.apply_defaults(kind, new)
        if _body_only(new) != _body_only(old):
            meta["generation"] = int(old_meta.get("generation") or 1) + 1
        return new

    async def _write_update(
        self, kind: Kind, namespace: str | None, name: str, kv: KV, old: Obj, new: Obj, *, dry_run: bool
    ) -> Obj:
        errors = validation.validate_update(kind, new, old)
        if errors:
            raise invalid_object(kind.group, kind.kind, name, errors)
        new["metadata"].pop("resourceVersion", None)
        meta = new["metadata"]
        # An object being deleted whose last finalizer went away is deleted for real.
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and old["metadata"].get("finalizers")
            and kind is not NAMESPACES
        ):
            if dry_run:
                return new
            await self._remove(kind, kv, old)
            return new
        alloc = None
        if kind is SERVICES:
            alloc, errs = await self.service_allocation.allocate(new, old, owner=f"{namespace}/{name}", dry_run=dry_run)
            if errs:
                raise invalid_object(kind.group, kind.kind, name, errs)
        if dry_run:
            if alloc:
                self.allocator.rollback(alloc)  # nothing was reserved in the store on a dry run
            return new
        try:
            rev = await self.store.update(kv.key, encode(new), expected_revision=kv.mod_revision)
        except (RevisionMismatch, KeyNotFound):
            if alloc:
                await self.service_allocation.rollback(alloc)
            raise conflict(
                kind.group,
                kind.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ) from None
        if alloc:
            await self.service_allocation.commit_release(alloc)
        meta["resourceVersion"] = str(rev)
        return new

    async def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: bytes,
        content_type: str,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        for _ in range(20):
            kv = self._current(kind, namespace, name)
            old = decode(kv)
            patched = apply_patch(kind, old, body, content_type)
            if not isinstance(patched, dict):
                raise bad_request("the patched object is not an object")
            self._check_type(kind, patched)
            pmeta = patched["metadata"]
            if pmeta.get("resourceVersion") and str(pmeta["resourceVersion"]) != str(kv.mod_revision):
                raise conflict(
                    kind.group,
                    kind.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                )
            if pmeta.get("name", name) != name:
                raise bad_request(
                    f"the name of the object ({pmeta.get('name')}) does not match the name on the URL ({name})"
                )
            pmeta["name"] = name
            self._check_namespace(kind, namespace, patched, creating=False)
            new = self._merge_update(kind, old, patched, subresource=subresource)
            if new == old:
                return old
            try:
                return await self._write_update(kind, namespace, name, kv, old, new, dry_run=dry_run)
            except ApiError as e:
                if e.reason == "Conflict" and self.store.get_now(kv.key) is not None:
                    continue  # lost a race with another writer: re-apply the patch on the newer object
                raise
        raise conflict(kind.group, kind.plural, name, "too many concurrent updates")

    # -- delete ------------------------------------------------------------------------------------------------
    async def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        grace_period: int | None = None,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> Obj:
        kv = self._current(kind, namespace, name)
        obj = decode(kv)
        meta = obj["metadata"]
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise conflict(
                kind.group,
                kind.plural,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta.get('uid')}",
            )
        if pre.get("resourceVersion") and str(pre["resourceVersion"]) != str(kv.mod_revision):
            raise conflict(
                kind.group,
                kind.plural,
                name,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, ResourceVersion in object meta: {kv.mod_revision}",
            )
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if propagation == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        # CheckGracefulDelete: only a pod a kubelet still has to stop is deleted gracefully; an unbound or
        # finished (Succeeded/Failed) pod goes at once.
        graceful = (
            kind is PODS
            and bool((obj.get("spec") or {}).get("nodeName"))
            and (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and grace_period != 0
        )
        if kind is NAMESPACES:
            if meta.get("deletionTimestamp"):
                return obj
            meta["deletionTimestamp"] = now_rfc3339()
            obj["status"] = {**(obj.get("status") or {}), "phase": "Terminating"}
            return await self._stamp(kind, kv, obj, dry_run=dry_run)
        if finalizers or graceful:
            if meta.get("deletionTimestamp"):
                if kind is PODS and grace_period == 0 and not finalizers:
                    pass  # the kubelet (or a force delete) confirms a terminating pod's removal
                else:
                    return obj
            else:
                meta["deletionTimestamp"] = now_rfc3339()
                if graceful:
                    grace = (
                        grace_period
                        if grace_period is not None
                        else int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
                    )
                    meta["deletionGracePeriodSeconds"] = grace
                if finalizers:
                    meta["finalizers"] = finalizers
                return await self._stamp(kind, kv, obj, dry_run=dry_run)
            if finalizers:
                return obj
        if dry_run:
            return obj
        await self._remove(kind, kv, obj)
        return obj

    async def _stamp(self, kind: Kind, kv: KV, obj: Obj, *, dry_run: bool) -> Obj:
        if dry_run:
            return obj
        try:
            rev = await self.store.update(kv.key, encode(obj), expected_revision=kv.mod_revision)
        except (RevisionMismatch, KeyNotFound):
            name = obj["metadata"].get("name", "")
            raise conflict(
                kind.group,
                kind.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ) from None
        obj["metadata"]["resourceVersion"] = str(rev)
        return obj

    async def _remove(self, kind: Kind, kv: KV, obj: Obj) -> None:
        try:
            await self.store.delete(kv.key, expected_revision=kv.mod_revision)
        except KeyNotFound:
            raise not_found(kind.group, kind.plural, obj["metadata"].get("name", "")) from None
        except RevisionMismatch:
            raise conflict(
                kind.group,
                kind.plural,
                obj["metadata"].get("name", ""),
                "the object has been modified; please apply your changes to the latest version and try again",
            ) from None
        if kind is SERVICES:
            await self.service_allocation.release_for(obj)

    # -- pods/binding -----------------------------------------------------------------------------------------
    async def bind(self, namespace: str, name: str, binding: Obj, *, dry_run: bool = False) -> Obj:
        """Assign a pod to a node (kube-apiserver's BindingREST): spec.nodeName, the Binding's annotations and
        the PodScheduled=True condition are written together; a pod already assigned or being deleted is a
        409 Conflict. Returns the Status kube-apiserver answers (201 Success)."""
        assert PODS is not None
        if not isinstance(binding, dict):
            raise bad_request("the body of the request must be an object")
        bmeta = binding.get("metadata") or {}
        if bmeta.get("name") and bmeta["name"] != name:
            raise bad_request("name in URL does not match name in Binding object")
        target = binding.get("target") or {}
        errs = []
        if target.get("kind") not in (None, "", "Node"):
            errs.append(invalid("target.kind", target.get("kind"), "must be empty or 'Node'"))
        if not target.get("name"):
            errs.append(required("target.name"))
        if errs:
            raise invalid_object("", "Binding", name, errs)
        node = str(target["name"])
        kv = self._current(PODS, namespace, name)
        old = decode(kv)
        meta = old["metadata"]

        def refuse(why: str) -> ApiError:
            return conflict("", "pods/binding", name, why)

        if bmeta.get("uid") and bmeta["uid"] != meta.get("uid"):
            raise refuse(
                f"Precondition failed: UID in precondition: {bmeta['uid']}, UID in object meta: {meta.get('uid')}"
            )
        if meta.get("deletionTimestamp"):
            raise refuse(f"pod {name} is being deleted, cannot be assigned to a host")
        current = (old.get("spec") or {}).get("nodeName")
        if current:
            raise refuse(f'pod {name} is already assigned to node "{current}"')
        new = copy.deepcopy(old)
        new.setdefault("spec", {})["nodeName"] = node
        if bmeta.get("annotations"):
            new["metadata"]["annotations"] = {**(meta.get("annotations") or {}), **bmeta["annotations"]}
        status = new.setdefault("status", {})
        conds = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        conds.append(
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}
        )
        status["conditions"] = conds
        await self._write_update(PODS, namespace, name, kv, old, new, dry_run=dry_run)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    async def finish_namespace(self, name: str) -> None:
        """Remove a terminating namespace once it is empty (the namespace controller's last step)."""
        assert NAMESPACES is not None
        kv = self.store.get_now(NAMESPACES.key(None, name))
        if kv is None:
            return
        await self.store.delete(kv.key)


def kind_for_key(key: str) -> Kind | None:
    """The kind whose store prefix holds `key`."""
    for k in KINDS:
        if key.startswith(k.prefix()):
            return k
    return None
