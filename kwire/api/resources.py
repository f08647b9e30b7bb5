"""Generic REST storage over the revisioned store: create/get/list/update/patch/delete for any registered kind.

This is kube-apiserver's generic registry (`genericregistry.Store`) in small: object metadata rules, defaulting,
validation, optimistic concurrency, status subresources, graceful/finalizer deletion and Service allocation.
Everything HTTP-specific lives in `kwire.api.server`; in-process controllers call this layer directly.
"""

from __future__ import annotations

import base64
import builtins
import copy
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import yaml

from kwire.api import admission_plugins, convert, defaults, fieldset, managedfields, validation
from kwire.api.admission import Admission
from kwire.api.allocator import Allocation, ServiceAllocator
from kwire.api.crd import custom, definition
from kwire.api.crd.conversion import WebhookConverter
from kwire.api.crd.serving import CrdServing
from kwire.api.errors import (
    OPTIMISTIC_LOCK,
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
from kwire.api.patch import APPLY_YAML, apply_patch, unsupported_patch_type
from kwire.api.registry import Kind, by_path, storage_kind, storage_kind_for_key
from kwire.api.reservations import ReservedAllocator
from kwire.api.user import current_user
from kwire.api.webhookadmission import Attributes, WebhookAdmission
from kwire.base.labels import Selector
from kwire.base.timefmt import now_rfc3339
from kwire.store.base import KV, KeyExists, KeyNotFound, RevisionMismatch, Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's SimpleNameGenerator alphabet
NAMESPACES = by_path("", "v1", "namespaces")
SERVICES = by_path("", "v1", "services")
PODS = by_path("", "v1", "pods")
CRDS = definition.CRDS


# etcd's default --max-request-bytes (1.5 MiB): kube-apiserver's write fails with "etcdserver: request is too
# large". K3s's kine has no such limit; kwire keeps etcd's so objects stay portable to etcd-backed clusters.
MAX_OBJECT_BYTES = 1536 * 1024


def encode(obj: Obj) -> bytes:
    """The stored form of `obj`; refuses (413) an object over etcd's request limit."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "resourceVersion" in meta:
        meta = dict(meta)
        del meta["resourceVersion"]
        obj = {**obj, "metadata": meta}
    # orjson hands back its 4 KB output buffer unshrunk: a stored value (kept live and in the watch history)
    # would cost 4 KB however small. A copy to the exact size (~1 us) made 60k writes of small ConfigMaps cost
    # the server +240 MB of RSS instead of a bounded history.
    data = bytes(memoryview(orjson.dumps(obj)))
    if len(data) > MAX_OBJECT_BYTES:
        raise ApiError(413, "RequestEntityTooLarge", "etcdserver: request is too large")
    return data


def decode(kv: KV | None = None, *, value: bytes | None = None, revision: int = 0) -> Obj:
    if kv is not None:
        value, revision = kv.value, kv.mod_revision
    assert value is not None
    obj = orjson.loads(value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
    return obj


_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def base64_error(value: Any) -> int | None:
    """Where Go's base64.StdEncoding (what decodes []byte fields in JSON) fails on `value`, or None."""
    if not isinstance(value, str):
        return 0
    data = value.replace("\r", "").replace("\n", "").encode()
    for i, ch in enumerate(data):
        if ch == ord("="):
            want = {2: b"==", 3: b"="}.get(i % 4)
            if want is None or data[i : i + len(want)] != want:
                return i
            end = i + len(want)
            return end if len(data) > end else None  # nothing may follow the padding
        if ch not in _B64:
            return i
    if len(data) % 4:
        return len(data) - len(data) % 4
    return None


def _tracking(kind: Kind) -> managedfields.Tracking:
    """What managedFields tracking needs of `kind`: its schema, version, and whether status is a subresource."""
    return managedfields.Tracking(
        fieldset.schema_for_kind(kind), kind.api_version, status_separate="status" in kind.subresources
    )


def _body_only(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Scan:
    """The objects of one list request, decoded lazily from a snapshot of the store (see `Resources.scan`).

    `continue_token` is known once iteration has stopped at the limit (kube's rule: a token whenever keys remain
    after the last returned object, even if none of them would match)."""

    def __init__(
        self,
        kvs: list[KV],
        revision: int,
        *,
        matches: Callable[[Obj], bool] | None,
        limit: int,
        present: Callable[[Obj], Obj] | None = None,
        kind: Kind | None = None,
    ) -> None:
        self._kvs = kvs
        self._present = present  # a custom resource as read through the requested version
        self.revision = revision
        self._matches = matches
        self._limit = max(limit, 0)
        self._kind = kind if kind is not None and kind.stored_as is not None else None
        self.continue_token = ""

    def __iter__(self) -> Iterator[Obj]:
        count = 0
        last = len(self._kvs) - 1
        for i, kv in enumerate(self._kvs):
            obj = decode(kv)
            if self._present is not None:
                obj = self._present(obj)
            if self._matches is not None and not self._matches(obj):
                continue
            yield obj if self._kind is None else convert.from_storage(self._kind, obj)
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
    def __init__(self, store: Store, *, allocator: ServiceAllocator, plugins: Admission | None = None) -> None:
        self.store = store
        self.allocator = allocator
        assert SERVICES is not None
        self.service_allocation = ReservedAllocator(store, allocator, services_prefix=SERVICES.prefix())
        self.plugins = plugins or Admission()  # built-in admission plugins (kwire/api/admission.py)
        self._after_write: list[Callable[[], None]] = []
        self.admission: WebhookAdmission | None = None  # set by the server once webhook configurations are loaded
        # Validating checks of the request's user (kwire.api.user.current_user) on every create, update and delete:
        # NodeRestriction and RBAC escalation prevention (kwire.api.authz), set by the server.
        self.guards: builtins.list[Callable[[Attributes], Awaitable[None]]] = []
        self.crds = CrdServing(store)
        self.conversion = WebhookConverter(crd=self._crd, lookup=self)

    async def load(self) -> None:
        assert SERVICES is not None and CRDS is not None
        res = await self.store.range(SERVICES.prefix())
        await self.service_allocation.load([decode(kv) for kv in res.items])
        for kv in (await self.store.range(CRDS.prefix())).items:
            crd = decode(kv)
            self.crds.serve(crd, crd["metadata"]["name"])

    # -- custom resources and their definitions ----------------------------------------------------------------
    def _decode(self, kind: Kind, kv: KV) -> Obj:
        obj = decode(kv)
        return custom.present(kind, obj) if kind.custom is not None else obj

    @staticmethod
    def _encode(kind: Kind, obj: Obj) -> bytes:
        return encode(custom.to_storage(kind, obj) if kind.custom is not None else obj)

    def _crd(self, name: str) -> KV | None:
        assert CRDS is not None
        return self.store.get_now(CRDS.key(None, name))

    async def present(self, kind: Kind, obj: Obj) -> Obj:
        """A stored object as read through `kind`: converted by the CRD's conversion webhook when it is held
        in another version and the strategy is Webhook, then as `custom.present` gives it."""
        if kind.custom is None:
            return obj
        if obj.get("apiVersion") != kind.api_version and self.conversion.webhook_for(kind) is not None:
            obj = (await self.conversion.convert(kind, [obj], kind.api_version))[0]
        return custom.present(kind, obj)

    async def _read(self, kind: Kind, kv: KV) -> Obj:
        return await self.present(kind, decode(kv))

    async def _storable(self, kind: Kind, obj: Obj) -> bytes:
        """The stored form of `obj`: at the CRD's storage version, through its conversion webhook if it has one."""
        if kind.custom is not None and self.conversion.webhook_for(kind) is not None:
            want = custom.storage_api_version(kind)
            if obj.get("apiVersion") != want:
                return encode((await self.conversion.convert(kind, [obj], want))[0])
        return self._encode(kind, obj)

    # -- admission ---------------------------------------------------------------------------------------------
    def service(self, namespace: str, name: str) -> Obj | None:
        assert SERVICES is not None
        return self.get_or_none(SERVICES, namespace, name)

    def endpoints(self, namespace: str, name: str) -> Obj | None:
        kind = by_path("", "v1", "endpoints")
        assert kind is not None
        return self.get_or_none(kind, namespace, name)

    def namespace_labels(self, name: str) -> dict[str, str] | None:
        assert NAMESPACES is not None
        ns = self.get_or_none(NAMESPACES, None, name)
        return None if ns is None else dict(ns["metadata"].get("labels") or {})

    async def _mutate(self, attrs: Attributes) -> Obj:
        """Mutating admission; returns the object to store (the patched one)."""
        assert attrs.object is not None
        if self.admission is None:
            return attrs.object
        patched = await self.admission.mutate(attrs)
        if patched is None or patched is attrs.object:
            return attrs.object
        self._check_type(attrs.kind, patched)
        patched["metadata"]["name"] = attrs.name or patched["metadata"].get("name")
        self._check_namespace(attrs.kind, attrs.namespace or None, patched, creating=False)
        attrs.object = patched
        return patched

    async def _guard(self, attrs: Attributes) -> None:
        for guard in self.guards:
            await guard(attrs)

    async def _validate_admission(self, attrs: Attributes) -> None:
        await self._guard(attrs)
        if self.admission is not None:
            await self.admission.validate(attrs)

    async def connect(self, kind: Kind, namespace: str, name: str, subresource: str, options: Obj) -> None:
        """Admission of a CONNECT request (pods/exec, pods/attach): the webhooks see the options object."""
        if self.admission is None:
            return
        attrs = Attributes(kind, "CONNECT", namespace, name, subresource, object=options)
        await self.admission.mutate(attrs)
        await self.admission.validate(attrs)

    # -- reads -------------------------------------------------------------------------------------------------
    def _current(self, kind: Kind, namespace: str | None, name: str) -> KV:
        kv = self.store.get_now(kind.key(namespace, name))
        if kv is None:
            raise not_found(kind.group, kind.plural, name)
        return kv

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        return convert.from_storage(kind, await self._read(kind, self._current(kind, namespace, name)))

    def get_or_none(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        kv = self.store.get_now(kind.key(namespace, name))
        return convert.from_storage(kind, self._decode(kind, kv)) if kv else None

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
        if kind.custom is not None and self.conversion.webhook_for(kind) is not None:
            # A conversion webhook is called per object before the scan (kube converts a page in memory too).
            converted: dict[tuple[str, str], Obj] = {}
            for kv in res.items:
                obj = await self._read(kind, kv)
                converted[(obj["metadata"].get("namespace") or "", obj["metadata"].get("name") or "")] = obj

            def present_converted(obj: Obj) -> Obj:
                meta = obj["metadata"]
                return converted[(meta.get("namespace") or "", meta.get("name") or "")]

            return Scan(res.items, res.revision, matches=matches, limit=limit, present=present_converted, kind=kind)
        present = (lambda obj: custom.present(kind, obj)) if kind.custom is not None else None
        return Scan(res.items, res.revision, matches=matches, limit=limit, present=present, kind=kind)

    async def list(
        self, kind: Kind, namespace: str | None, *, labels: Selector | None = None, fields: FieldSelector | None = None
    ) -> builtins.list[Obj]:
        """Every object that matches, decoded at once (for the server's own reads; a client's list is a `scan`)."""
        return list(await self.scan(kind, namespace, labels=labels, fields=fields))

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
        field = {"Secret": "data", "ConfigMap": "binaryData"}.get(kind.kind) if kind.group == "" else None
        if field and isinstance(obj.get(field), dict):
            for value in obj[field].values():
                bad = base64_error(value)
                if bad is not None:
                    raise bad_request(
                        f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                        f"illegal base64 data at input byte {bad}"
                    )

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

    async def create(
        self,
        kind: Kind,
        namespace: str | None,
        obj: Obj,
        *,
        dry_run: bool = False,
        manager: str | None = None,
        applied: bool = False,
    ) -> Obj:
        """Create `obj`, which the caller hands over (it is filled in place and returned). `manager` records an
        Update entry in managedFields; `applied` keeps the Apply entry server-side apply already put there."""
        if kind.stored_as is not None:
            self._check_type(kind, obj)
            if kind.api_version == "events.k8s.io/v1":
                errs = validation.validate_events_v1_create(obj)
                if errs:
                    raise invalid_object(kind.group, kind.kind, str(obj["metadata"].get("name") or ""), errs)
            made = await self.create(
                storage_kind(kind), namespace, convert.to_storage(kind, obj), dry_run=dry_run, manager=manager
            )
            return convert.from_storage(kind, made)
        self._check_type(kind, obj)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"]) + "".join(random.choice(_NAME_CHARS) for _ in range(5))
        self._check_namespace(kind, namespace, obj, creating=True)
        for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(k, None)
        if not applied:
            meta.pop("managedFields", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        defaults.apply_defaults(kind, obj)
        if kind.kind == "CertificateSigningRequest" and kind.group == "certificates.k8s.io":
            defaults.csr_requester(obj, current_user())
        if kind.custom is not None:
            if "status" in kind.subresources:
                obj.pop("status", None)  # the CR strategy's PrepareForCreate: status is written through /status
            custom.prepare_write(kind, obj)
        elif "status" in kind.subresources and not isinstance(obj.get("status"), dict):
            obj["status"] = {}  # kube encodes a (zero) status struct for every built-in kind that has one
        self.plugins.admit_create(kind.kind, obj)  # built-in mutating plugins run before the webhooks
        await admission_plugins.admit_create(kind, obj, list_objects=self._list_objects)
        if manager and not applied:
            self._track(kind, None, obj, manager=manager, subresource="")
        attrs = Attributes(kind, "CREATE", namespace or "", str(meta.get("name") or ""), object=obj, dry_run=dry_run)
        obj = await self._mutate(attrs)
        meta = obj["metadata"]
        errors = validation.validate_create(kind, obj)
        if kind.custom is not None:
            errors += custom.validate(kind, obj, None)
        if kind is CRDS:
            errors += await self.crds.prepare(obj, None)
        name = str(meta.get("name") or "")
        if errors:
            raise invalid_object(kind.group, kind.kind, name, errors)
        await self._validate_admission(attrs)
        key = kind.key(namespace, name)
        if self.store.get_now(key) is not None:
            raise already_exists(kind.group, kind.plural, name)
        if kind.custom is not None:
            self.crds.check_create(kind)
        alloc = await self._allocate_service(kind, obj, None, namespace=namespace, name=name, dry_run=dry_run)
        if dry_run:
            return obj
        try:
            rev = await self.store.create(key, await self._storable(kind, obj))
        except KeyExists:
            if alloc:
                await self.service_allocation.rollback(alloc)
            raise already_exists(kind.group, kind.plural, name) from None
        except Exception:
            if alloc:
                await self.service_allocation.rollback(alloc)
            raise
        meta["resourceVersion"] = str(rev)
        if kind is CRDS:
            self.crds.serve(obj, name)
        return obj

    async def _allocate_service(
        self, kind: Kind, new: Obj, old: Obj | None, *, namespace: str | None, name: str, dry_run: bool
    ) -> Allocation | None:
        """A Service's cluster IPs and node ports (None for other kinds), 422 Invalid when they cannot be had; on a
        dry run the allocation is checked and given back at once (nothing was reserved in the store), so None."""
        if kind is not SERVICES:
            return None
        alloc, errs = await self.service_allocation.allocate(new, old, owner=f"{namespace}/{name}", dry_run=dry_run)
        if errs:
            raise invalid_object(kind.group, kind.kind, name, errs)
        if dry_run:
            if alloc:
                self.allocator.rollback(alloc)
            return None
        return alloc

    async def _list_objects(self, kind: Kind, /, *, namespace: str | None = None) -> builtins.list[Obj]:
        return [decode(kv) for kv in (await self.store.range(kind.prefix(namespace))).items]

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
        manager: str | None = None,
        tracked_subresource: str = "",
    ) -> Obj:
        """Replace an object with `obj`, which the caller hands over (it may be changed in place). `manager`
        (the request's fieldManager) records the write in managedFields, under `tracked_subresource` when the
        write came through one that is stored as the main object (scale)."""
        if kind.stored_as is not None:
            self._check_type(kind, obj)
            done = await self.update(
                storage_kind(kind),
                namespace,
                name,
                convert.to_storage(kind, obj),
                subresource=subresource,
                dry_run=dry_run,
            )
            return convert.from_storage(kind, done)
        self._check_type(kind, obj)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        meta["name"] = name
        self._check_namespace(kind, namespace, obj, creating=False)
        kv = self._current(kind, namespace, name)
        want_rv = meta.get("resourceVersion")
        if want_rv and str(want_rv) != str(kv.mod_revision):
            raise conflict(kind.group, kind.plural, name, OPTIMISTIC_LOCK)
        old = await self._read(kind, kv)
        new = self._merge_update(kind, old, obj, subresource=subresource)
        if manager:
            self._track(kind, old, new, manager=manager, subresource=subresource or tracked_subresource)
        if new == old:
            return old  # a no-op update writes nothing and keeps the resourceVersion, as kube-apiserver does
        return await self._write_update(kind, namespace, name, kv, old, new, dry_run=dry_run, subresource=subresource)

    @staticmethod
    def _track(kind: Kind, old: Obj | None, new: Obj, *, manager: str, subresource: str) -> None:
        managedfields.record_update(old, new, tracking=_tracking(kind), manager=manager, subresource=subresource)

    @staticmethod
    def _managed_fields(old: Obj, obj: Obj) -> Any:
        """The managedFields a write keeps: the request's when it sends any (`[]` resets them, as in kube),
        else the stored ones."""
        sent = (obj.get("metadata") or {}).get("managedFields")
        return old["metadata"].get("managedFields") if sent is None else sent

    def _merge_update(self, kind: Kind, old: Obj, obj: Obj, *, subresource: str | None) -> Obj:
        if subresource == "ephemeralcontainers":
            # pods/ephemeralcontainers (kubectl debug): only spec.ephemeralContainers is taken from the body
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["ephemeralContainers"] = (obj.get("spec") or {}).get("ephemeralContainers") or []
            return new
        managed = self._managed_fields(old, obj)
        if subresource == "status":
            new = copy.deepcopy(old)
            new["status"] = obj.get("status", {})
            # Metadata is kept (kube's ResetObjectMetaForStatus), except for Services: kube's service status
            # strategy only resets the spec, so labels and annotations written with the status stay (MetalLB's
            # controller, allowed only services/status, records its pool annotation that way).
            if kind.group == "" and kind.plural == "services" and isinstance(obj.get("metadata"), dict):
                for field in ("labels", "annotations"):
                    if field in obj["metadata"]:
                        new["metadata"][field] = obj["metadata"][field]
                    else:
                        new["metadata"].pop(field, None)
        elif subresource == "approval":
            # certificates' approval subresource: only status.conditions change (kube's csrApprovalStrategy).
            new = copy.deepcopy(old)
            conds = []
            for c in (obj.get("status") or {}).get("conditions") or []:
                if isinstance(c, dict):
                    c = {**c}
                    c.setdefault("status", "True")
                    c.setdefault("lastUpdateTime", now_rfc3339())
                    c.setdefault("lastTransitionTime", c["lastUpdateTime"])
                conds.append(c)
            new.setdefault("status", {})["conditions"] = conds
        else:
            new = self._merge_main(kind, old, obj)
        if managed:
            new["metadata"]["managedFields"] = managed
        else:
            new["metadata"].pop("managedFields", None)
        return new

    def _merge_main(self, kind: Kind, old: Obj, obj: Obj) -> Obj:
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
        if kind.custom is not None:
            custom.prepare_write(kind, new)
        changed = _body_only(new) != _body_only(old)
        if kind.custom is not None and "status" not in kind.subresources:
            changed = changed or new.get("status") != old.get("status")
        if changed:
            meta["generation"] = int(old_meta.get("generation") or 1) + 1
        return new

    async def _write_update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        kv: KV,
        old: Obj,
        new: Obj,
        *,
        dry_run: bool,
        subresource: str | None = None,
        admit: bool = True,
    ) -> Obj:
        await admission_plugins.admit_update(kind, new, list_objects=self._list_objects)
        attrs = Attributes(
            kind, "UPDATE", namespace or "", name, subresource or "", object=new, old_object=old, dry_run=dry_run
        )
        if admit:
            new = await self._mutate(attrs)
        errors = validation.validate_update(kind, new, old)
        if kind.custom is not None:
            errors += custom.validate(kind, new, old)
        if kind is CRDS:
            errors += await self.crds.prepare(new, old)
        if errors:
            raise invalid_object(kind.group, kind.kind, name, errors)
        if admit:
            await self._validate_admission(attrs)
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
        alloc = await self._allocate_service(kind, new, old, namespace=namespace, name=name, dry_run=dry_run)
        if dry_run:
            return new
        try:
            data = await self._storable(kind, new)
        except ApiError:
            if alloc:
                self.allocator.rollback(alloc)
            raise
        try:
            rev = await self.store.update(kv.key, data, expected_revision=kv.mod_revision)
        except (RevisionMismatch, KeyNotFound):
            if alloc:
                await self.service_allocation.rollback(alloc)
            raise conflict(kind.group, kind.plural, name, OPTIMISTIC_LOCK) from None
        if alloc:
            await self.service_allocation.commit_release(alloc)
        meta["resourceVersion"] = str(rev)
        if kind is CRDS:
            self.crds.serve(new, name)
            await self.crds.renew_names(new)
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
        check: Callable[[Obj, Obj], None] | None = None,
        manager: str | None = None,
        force: bool = False,
    ) -> Obj:
        if kind.stored_as is not None:
            return await self._patch_converted(
                kind, namespace, name, body, content_type, subresource=subresource, dry_run=dry_run
            )
        """PATCH: JSON/merge/strategic patches are an Update by `manager`; `application/apply-patch+yaml` is a
        server-side apply by `manager` (required), which creates the object when it does not exist."""
        ctype = content_type.split(";")[0].strip().lower()
        applying = ctype == APPLY_YAML
        if ctype.startswith("application/apply-patch"):
            if not applying:
                raise unsupported_patch_type(kind)  # apply-patch+cbor is behind a feature gate upstream
            if not manager:
                raise ApiError(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                    details={
                        "group": "meta.k8s.io",
                        "kind": "PatchOptions",
                        "causes": [
                            {
                                "reason": "FieldValueRequired",
                                "message": "Required value: is required for apply patch",
                                "field": "fieldManager",
                            }
                        ],
                    },
                )
            config = self._applied_config(kind, name, body)
        for _ in range(20):
            kv = self.store.get_now(kind.key(namespace, name))
            if kv is None:
                if applying and not subresource:
                    if check is not None:  # fieldValidation applies to an apply that creates, as to one that updates
                        check(config, {})
                    try:
                        return await self._apply_create(kind, namespace, config, manager or "", dry_run=dry_run)
                    except ApiError as err:
                        if err.reason == "AlreadyExists":
                            continue  # created meanwhile: apply to it instead
                        raise
                raise not_found(kind.group, kind.plural, name)
            old = await self._read(kind, kv)
            if applying:
                patched = managedfields.apply(
                    old,
                    config,
                    tracking=_tracking(kind),
                    manager=manager or "",
                    force=force,
                    subresource=subresource if subresource == "status" else "",
                )
                patched["metadata"]["resourceVersion"] = (config.get("metadata") or {}).get("resourceVersion") or (
                    old["metadata"]["resourceVersion"]
                )
            else:
                patched = apply_patch(kind, old, body, content_type)
            if not isinstance(patched, dict):
                raise bad_request("the patched object is not an object")
            if check is not None:
                check(patched, old)
            self._check_type(kind, patched)
            pmeta = patched["metadata"]
            if pmeta.get("resourceVersion") and str(pmeta["resourceVersion"]) != str(kv.mod_revision):
                raise conflict(kind.group, kind.plural, name, OPTIMISTIC_LOCK)
            if pmeta.get("name", name) != name:
                raise bad_request(
                    f"the name of the object ({pmeta.get('name')}) does not match the name on the URL ({name})"
                )
            pmeta["name"] = name
            self._check_namespace(kind, namespace, patched, creating=False)
            new = self._merge_update(kind, old, patched, subresource=subresource)
            if manager and not applying:
                self._track(kind, old, new, manager=manager, subresource=subresource or "")
            if new == old:
                return old
            try:
                return await self._write_update(
                    kind, namespace, name, kv, old, new, dry_run=dry_run, subresource=subresource
                )
            except ApiError as e:
                if e.reason == "Conflict" and self.store.get_now(kv.key) is not None:
                    continue  # lost a race with another writer: re-apply the patch on the newer object
                raise
        raise conflict(kind.group, kind.plural, name, "too many concurrent updates")

    def _applied_config(self, kind: Kind, name: str, body: bytes) -> Obj:
        try:
            config = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise bad_request(f"error decoding YAML: {exc}") from None
        if not isinstance(config, dict):
            raise bad_request("the body of the request must be a JSON or YAML object")
        for field in ("apiVersion", "kind"):
            if not config.get(field):
                raise bad_request(f"{field} must be set in an applied configuration")
        self._check_type(kind, config)
        meta = config["metadata"]
        if meta.get("managedFields") is not None:
            raise bad_request("metadata.managedFields must be nil")
        if meta.get("name", name) != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        return config

    async def _apply_create(
        self, kind: Kind, namespace: str | None, config: Obj, manager: str, *, dry_run: bool
    ) -> Obj:
        created = managedfields.apply(None, config, tracking=_tracking(kind), manager=manager, force=True)
        if "status" in kind.subresources:
            created.pop("status", None)
        return await self.create(kind, namespace, created, dry_run=dry_run, applied=True)

    async def _patch_converted(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: bytes,
        content_type: str,
        *,
        subresource: str | None,
        dry_run: bool,
    ) -> Obj:
        """A patch in a converted version: applied to the object in that version, written back with its
        resourceVersion (so a concurrent writer is a conflict, retried on the newer object)."""
        for _ in range(20):
            old = await self.get(kind, namespace, name)
            rv = old["metadata"].get("resourceVersion")
            patched = apply_patch(kind, old, body, content_type)
            if not isinstance(patched, dict):
                raise bad_request("the patched object is not an object")
            pmeta = patched.setdefault("metadata", {})
            if pmeta.get("resourceVersion") and str(pmeta["resourceVersion"]) != str(rv):
                raise conflict(kind.group, kind.plural, name, OPTIMISTIC_LOCK)
            pmeta["resourceVersion"] = rv
            try:
                return await self.update(kind, namespace, name, patched, subresource=subresource, dry_run=dry_run)
            except ApiError as e:
                if e.reason == "Conflict" and self.store.get_now(kind.key(namespace, name)) is not None:
                    continue
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
        if kind.stored_as is not None:
            gone_obj = await self.delete(
                storage_kind(kind),
                namespace,
                name,
                propagation=propagation,
                grace_period=grace_period,
                preconditions=preconditions,
                dry_run=dry_run,
            )
            return convert.from_storage(kind, gone_obj)
        kv = self._current(kind, namespace, name)
        obj = await self._read(kind, kv)
        await self._guard(Attributes(kind, "DELETE", namespace or "", name, old_object=obj, dry_run=dry_run))
        if self.admission is not None:
            options: Obj = {"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}
            if propagation:
                options["propagationPolicy"] = propagation
            if grace_period is not None:
                options["gracePeriodSeconds"] = grace_period
            attrs = Attributes(kind, "DELETE", namespace or "", name, old_object=obj, dry_run=dry_run, options=options)
            await self.admission.mutate(attrs)
            await self.admission.validate(attrs)
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
        if kind is CRDS:  # a terminating CRD says so in its conditions
            await self.crds.refresh_status(obj)
        try:
            rev = await self.store.update(kv.key, await self._storable(kind, obj), expected_revision=kv.mod_revision)
        except (RevisionMismatch, KeyNotFound):
            name = obj["metadata"].get("name", "")
            raise conflict(kind.group, kind.plural, name, OPTIMISTIC_LOCK) from None
        obj["metadata"]["resourceVersion"] = str(rev)
        if kind is CRDS:
            self.crds.serve(obj, str(obj["metadata"].get("name") or ""))
        return obj

    async def _remove(self, kind: Kind, kv: KV, obj: Obj) -> None:
        try:
            await self.store.delete(kv.key, expected_revision=kv.mod_revision)
        except KeyNotFound:
            raise not_found(kind.group, kind.plural, obj["metadata"].get("name", "")) from None
        except RevisionMismatch:
            raise conflict(kind.group, kind.plural, obj["metadata"].get("name", ""), OPTIMISTIC_LOCK) from None
        if kind is SERVICES:
            await self.service_allocation.release_for(obj)
        if kind is CRDS:
            self.crds.serve(None, str(obj["metadata"].get("name") or ""))
            await self.crds.renew_names(obj)

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
        # pods/binding is a CREATE of a Binding upstream; it is not offered to webhooks here.
        await self._write_update(PODS, namespace, name, kv, old, new, dry_run=dry_run, admit=False)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    async def finish_namespace(self, name: str) -> None:
        """Remove a terminating namespace once it is empty (the namespace controller's last step)."""
        assert NAMESPACES is not None
        kv = self.store.get_now(NAMESPACES.key(None, name))
        if kv is None:
            return
        await self.store.delete(kv.key)


def kind_for_key(key: str) -> Kind | None:
    """The kind whose store prefix holds `key` (a CRD-defined kind at its storage version)."""
    return storage_kind_for_key(key)
