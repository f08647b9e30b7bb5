"""Which CRDs are served, kept in step with the stored CRD objects: the part of apiextensions-apiserver's
naming, establishing and finalizer controllers that the generic storage (`kwire.api.resources`) calls when it
writes a CustomResourceDefinition.

- `prepare` (every CRD write): validate, compute the status (accepted names, conditions, stored versions)
  against the other stored CRDs, and keep the `customresourcecleanup.apiextensions.k8s.io` finalizer until
  deletion starts (so even a `kubectl replace` without it cannot strand a CRD's objects).
- `serve` (after the write): swap the kinds the registry serves for this CRD; remember terminating CRDs, whose
  kinds refuse creates (405, as kube).
- `renew_names` (after a CRD changed or went away): CRDs of the same group that were refused a name get another
  look, as kube's naming controller requeues the group.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from kwire.api.crd import definition
from kwire.api.errors import ApiError, FieldError
from kwire.api.registry import Kind, set_custom_kinds
from kwire.store.base import KV, KeyNotFound, RevisionMismatch, Store

Obj = dict[str, Any]


def _load(kv: KV) -> Obj:
    obj: Obj = orjson.loads(kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
    return obj


def _dump(obj: Obj) -> bytes:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return orjson.dumps({**obj, "metadata": meta})


class CrdServing:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._terminating: set[str] = set()  # CRDs being deleted: their kinds refuse creates

    async def _others(self, name: str) -> list[Obj]:
        assert definition.CRDS is not None
        res = await self.store.range(definition.CRDS.prefix())
        return [o for o in (_load(kv) for kv in res.items) if o["metadata"].get("name") != name]

    async def refresh_status(self, obj: Obj) -> None:
        definition.compute_status(obj, await self._others(str(obj["metadata"].get("name") or "")))

    async def prepare(self, obj: Obj, old: Obj | None) -> list[FieldError]:
        """Validate a CRD being written and set its status and cleanup finalizer; the field errors, if any."""
        errs = definition.validate_crd(obj, old)
        if not errs:
            await self.refresh_status(obj)
            meta = obj["metadata"]
            if not meta.get("deletionTimestamp") and definition.FINALIZER not in (meta.get("finalizers") or []):
                meta["finalizers"] = [*(meta.get("finalizers") or []), definition.FINALIZER]
        return errs

    def serve(self, obj: Obj | None, name: str) -> None:
        """Serve what the stored CRD `obj` defines (None: it is gone)."""
        set_custom_kinds(name, definition.served_kinds(obj) if obj is not None else ())
        if obj is not None and obj["metadata"].get("deletionTimestamp"):
            self._terminating.add(name)
        else:
            self._terminating.discard(name)

    def check_create(self, kind: Kind) -> None:
        assert kind.custom is not None
        if kind.custom.crd_name in self._terminating:
            raise ApiError(
                405, "MethodNotAllowed", "create not allowed while custom resource definition is terminating"
            )

    async def renew_names(self, changed: Obj) -> None:
        """CRDs of `changed`'s group that were refused names get another look (their names may be free now)."""
        assert definition.CRDS is not None
        group = (changed.get("spec") or {}).get("group")
        for kv in (await self.store.range(definition.CRDS.prefix())).items:
            crd = _load(kv)
            if (crd.get("spec") or {}).get("group") != group or definition.established(crd):
                continue
            name = str(crd["metadata"].get("name") or "")
            before = copy.deepcopy(crd.get("status"))
            await self.refresh_status(crd)
            if crd.get("status") == before:
                continue
            try:
                rev = await self.store.update(kv.key, _dump(crd), expected_revision=kv.mod_revision)
            except (RevisionMismatch, KeyNotFound):
                continue  # written meanwhile: that write computed the status itself
            crd["metadata"]["resourceVersion"] = str(rev)
            self.serve(crd, name)
