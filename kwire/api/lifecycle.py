"""Object lifecycle run inside the API server: ownerReference garbage collection and namespace deletion.

kube-controller-manager runs these as the garbage collector and the namespace controller; they only ever act
on stored objects, so kwire runs them beside the store and follows its revision log directly (no HTTP).

- Background deletion: when an owner is gone, dependents whose owners are all gone are deleted.
- Foreground (`foregroundDeletion` finalizer): dependents are deleted first, then the owner.
- Orphan (`orphan` finalizer): dependents lose the ownerReference, then the owner goes.
- A namespace with a deletionTimestamp has every object in it deleted, then itself.
- A CustomResourceDefinition with a deletionTimestamp has every object of its kind deleted, then its
  `customresourcecleanup.apiextensions.k8s.io` finalizer removed (apiextensions' finalizer controller).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import orjson

from kwire.api.crd.definition import FINALIZER
from kwire.api.errors import ApiError
from kwire.api.registry import Kind, all_kinds
from kwire.api.resources import CRDS, NAMESPACES, Resources, decode, kind_for_key
from kwire.base.backoff import Backoff
from kwire.base.tasks import cancel_and_wait
from kwire.store.base import DELETED

log = logging.getLogger(__name__)

Obj = dict[str, Any]
_NS_PREFIX = "/registry/core/namespaces/"


class Lifecycle:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self._uid_key: dict[str, str] = {}
        self._key_uid: dict[str, str] = {}
        self._dependents: dict[str, set[str]] = defaultdict(set)  # owner uid -> dependent keys
        self._owners_of: dict[str, list[str]] = {}  # dependent key -> owner uids
        self._terminating: set[str] = set()  # keys of namespaces being deleted
        self._queue: asyncio.Queue[str] = asyncio.Queue()  # keys to look at
        self._task: asyncio.Task[None] | None = None
        self.backoff = Backoff(0.1, 5.0)  # before relisting after a failure of the follow loop

    async def start(self) -> None:
        first = await self._relist()  # the first index is built before start() returns; its watch is followed
        self._task = asyncio.create_task(self._supervise(first))

    async def _relist(self) -> Any:
        """Index every stored object afresh, queue each one for a look, and return a watch from that revision."""
        store = self.resources.store
        rev = store.revision
        res = await store.range("/registry/")
        self._uid_key.clear()
        self._key_uid.clear()
        self._dependents.clear()
        self._owners_of.clear()
        self._terminating.clear()
        for kv in res.items:
            self._index(kv.key, orjson.loads(kv.value))
        # Anything dangling or terminating (from before a restart, or missed while the watch was gone) is looked at.
        for key in list(self._key_uid):
            self._queue.put_nowait(key)
        return store.watch("/registry/", from_revision=rev)

    async def _supervise(self, watch: Any = None) -> None:
        """Follow the revision log for good: a watch that ends (a burst of writes overflowed it) means a relist and a
        new watch at once; an unexpected error the same after a Backoff of 0.1 s doubling to 5 s (reset when a
        watch ran to its end), never a garbage collector that silently stops."""
        while True:
            try:
                if watch is None:
                    watch = await self._relist()
                await self._run(watch)
                log.warning("lifecycle: the store watch ended (a writer burst overflowed it); relisting")
                self.backoff.reset()
            except asyncio.CancelledError:
                if watch is not None:
                    watch.close()
                raise
            except Exception:
                log.exception("lifecycle: follow loop failed; relisting with back-off")
                await self.backoff.sleep()
            if watch is not None:
                watch.close()
            watch = None

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def _index(self, key: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        if uid:
            self._uid_key[uid] = key
            self._key_uid[key] = uid
        if key.startswith(_NS_PREFIX):
            if meta.get("deletionTimestamp"):
                self._terminating.add(key)
            else:
                self._terminating.discard(key)
        self._unindex_owners(key)
        owners = [str(r["uid"]) for r in meta.get("ownerReferences") or [] if isinstance(r, dict) and r.get("uid")]
        if owners:
            self._owners_of[key] = owners
            for o in owners:
                self._dependents[o].add(key)

    def _unindex_owners(self, key: str) -> None:
        for o in self._owners_of.pop(key, []):
            deps = self._dependents.get(o)
            if deps is not None:
                deps.discard(key)
                if not deps:
                    del self._dependents[o]

    def _forget(self, key: str) -> str | None:
        uid = self._key_uid.pop(key, None)
        if uid:
            self._uid_key.pop(uid, None)
        self._terminating.discard(key)
        self._unindex_owners(key)
        return uid

    async def _run(self, watch: Any) -> None:
        pending: set[str] = set()
        it = aiter(watch)
        while True:
            get_ev = asyncio.ensure_future(anext(it))
            while not self._queue.empty():
                pending.add(self._queue.get_nowait())
            if pending:
                await asyncio.sleep(0)
            while pending:
                key = pending.pop()
                try:
                    await self._process(key)
                except ApiError as err:
                    if err.code == 409:
                        # Looked at again when the next event arrives: the write that made this one conflict is
                        # itself an event this watch has yet to deliver, so the wait is never unbounded.
                        self._queue.put_nowait(key)
                    elif err.code != 404:
                        log.warning("lifecycle: %s: %s", key, err.message)
                except Exception:
                    log.exception("lifecycle: processing %s failed", key)
            try:
                ev = await get_ev
            except StopAsyncIteration:
                return
            if ev.type == DELETED:
                # An owner waiting in the foreground for its dependents is looked at again when one goes.
                for owner_uid in self._owners_of.get(ev.key, []):
                    owner_key = self._uid_key.get(owner_uid)
                    if owner_key:
                        pending.add(owner_key)
                uid = self._forget(ev.key)
                if uid:
                    pending.update(self._dependents.get(uid, set()))
                    obj = orjson.loads(ev.value)
                    ns_kind = kind_for_key(ev.key)
                    if ns_kind is not None and ns_kind.custom is not None:  # a terminating CRD may be done now
                        pending.add(CRDS.key(None, ns_kind.custom.crd_name))  # type: ignore[union-attr]
                    if ns_kind is not None and ns_kind.namespaced:
                        ns = (obj.get("metadata") or {}).get("namespace")
                        if ns and NAMESPACES.key(None, ns) in self._terminating:  # type: ignore[union-attr]
                            pending.add(NAMESPACES.key(None, ns))  # type: ignore[union-attr]
            else:
                obj = orjson.loads(ev.value)
                self._index(ev.key, obj)
                meta = obj.get("metadata") or {}
                if meta.get("deletionTimestamp") or meta.get("ownerReferences"):
                    pending.add(ev.key)
                ns = meta.get("namespace")
                if ns:
                    nskey = NAMESPACES.key(None, ns)  # type: ignore[union-attr]
                    if nskey in self._terminating:
                        pending.add(nskey)

    def _stored(self, key: str) -> tuple[Kind, Obj] | None:
        """The kind and the object stored at `key` now; None when it is gone (or not a served kind's)."""
        kind = kind_for_key(key)
        kv = self.resources.store.get_now(key)
        if kind is None or kv is None:
            return None
        return kind, decode(kv)

    async def _process(self, key: str) -> None:
        if (stored := self._stored(key)) is None:
            return
        kind, obj = stored
        meta = obj["metadata"]
        if kind is NAMESPACES:
            if meta.get("deletionTimestamp"):
                await self._empty_namespace(meta["name"])
            return
        if kind is CRDS and meta.get("deletionTimestamp") and FINALIZER in (meta.get("finalizers") or []):
            await self._clean_up_crd(obj)
            return
        if meta.get("deletionTimestamp"):
            finalizers = list(meta.get("finalizers") or [])
            uid = meta.get("uid", "")
            deps = sorted(self._dependents.get(uid, set()))
            if "orphan" in finalizers:
                for dep in deps:
                    await self._drop_owner_ref(dep, uid)
                await self._remove_finalizer(kind, obj, "orphan")
                return
            if "foregroundDeletion" in finalizers:
                if deps:
                    for dep in deps:
                        await self._delete_key(dep, propagation="Foreground")
                    return
                await self._remove_finalizer(kind, obj, "foregroundDeletion")
                return
        owners = self._owners_of.get(key, [])
        if owners and all(o not in self._uid_key for o in owners):
            await self._delete_key(key, propagation="Background")
        elif owners:
            # Dependents of an owner being deleted in the foreground go before it.
            for o in owners:
                okey = self._uid_key.get(o)
                okv = self.resources.store.get_now(okey) if okey else None
                if okv and b"foregroundDeletion" in okv.value:
                    await self._delete_key(key, propagation="Foreground")
                    return

    async def _delete_key(self, key: str, *, propagation: str) -> None:
        if (stored := self._stored(key)) is None:
            return
        kind, obj = stored
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return
        log.info("garbage collector: deleting %s", key)
        await self.resources.delete(kind, meta.get("namespace"), meta["name"], propagation=propagation)

    async def _drop_owner_ref(self, key: str, owner_uid: str) -> None:
        if (stored := self._stored(key)) is None:
            return
        kind, obj = stored
        refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != owner_uid]
        if refs:
            obj["metadata"]["ownerReferences"] = refs
        else:
            obj["metadata"].pop("ownerReferences", None)
        await self.resources.update(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"], obj)

    async def _remove_finalizer(self, kind: Kind, obj: Obj, finalizer: str) -> None:
        meta = obj["metadata"]
        meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != finalizer]
        if not meta["finalizers"]:
            del meta["finalizers"]
        await self.resources.update(kind, meta.get("namespace"), meta["name"], obj)

    async def _clean_up_crd(self, crd: Obj) -> None:
        """Delete every object of a terminating CRD's kind; once none is left, drop the cleanup finalizer."""
        spec = crd.get("spec") or {}
        names = (crd.get("status") or {}).get("acceptedNames") or spec.get("names") or {}
        prefix = f"/registry/{spec.get('group')}/{names.get('plural')}/"
        kind = kind_for_key(prefix)
        res = await self.resources.store.range(prefix)
        for kv in res.items:
            meta = orjson.loads(kv.value).get("metadata") or {}
            if kind is None or meta.get("deletionTimestamp"):
                continue
            try:
                await self.resources.delete(kind, meta.get("namespace"), meta["name"], propagation="Background")
            except ApiError as err:
                if err.code != 404:
                    raise
        if not (await self.resources.store.range(prefix, limit=1)).items:
            log.info("customresourcedefinition %s: all objects deleted", crd["metadata"]["name"])
            await self._remove_finalizer(CRDS, crd, FINALIZER)  # type: ignore[arg-type]

    async def _empty_namespace(self, ns: str) -> None:
        remaining = 0
        for kind in all_kinds():
            if not kind.namespaced or kind_for_key(kind.prefix()) is not kind or kind.stored_as is not None:
                continue
            res = await self.resources.store.range(kind.prefix(ns))
            for kv in res.items:
                remaining += 1
                meta = orjson.loads(kv.value).get("metadata") or {}
                if meta.get("deletionTimestamp"):
                    continue
                try:
                    await self.resources.delete(kind, ns, meta["name"], propagation="Background")
                except ApiError as err:
                    if err.code != 404:
                        raise
        if remaining == 0:
            log.info("namespace %s is empty: removing it", ns)
            await self.resources.finish_namespace(ns)
