"""What the workload controllers (ReplicaSet, Deployment, DaemonSet) share: expectations, finding the owner
of an object (its controllerRef, or the owners whose selector matches an orphan), claiming objects by
selector and controllerRef (adopting orphans, releasing what no longer matches), pods from a template, and
the base class of the controllers whose owners make their pods themselves (`PodOwnerController`: ReplicaSet,
DaemonSet): pod events routed to the owner that controls the pod, creating and deleting an owner's pods
(slow-start batches, expectations, Events).

Expectations are kube's ControllerExpectations: after a controller asks for N creations or deletions, it does
not act on that owner again until the informer has shown them (or a timeout passed), so a cache that lags a
write never makes it create or delete twice.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kwire.base.labels import Selector, SelectorError, from_label_selector
from kwire.client import ApiClient, Informer, Informers, NotFound, Resource
from kwire.client.client import PODS
from kwire.controllers.common import (
    BY_NAMESPACE,
    Obj,
    controller_ref,
    d,
    key_of,
    labels_of,
    lst,
    meta,
    name_of,
    namespace_of,
    owner_reference,
    pod_active,
    set_or_omit,
    spec,
    terminating,
    uid_of,
    update_with_retry,
)
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)


EXPECTATIONS_TTL = 60.0
BURST = 500  # at most this many creations or deletions per sync (kube's burstReplicas)


@dataclass
class _Expect:
    adds: int = 0
    deletes: set[str] = field(default_factory=set)
    since: float = field(default_factory=time.monotonic)


class Expectations:
    def __init__(self, *, ttl: float = EXPECTATIONS_TTL) -> None:
        self.ttl = ttl
        self._by_key: dict[str, _Expect] = {}

    def expect(self, key: str, *, adds: int = 0, deletes: set[str] | None = None) -> None:
        self._by_key[key] = _Expect(adds=adds, deletes=set(deletes or ()))

    def observe_add(self, key: str) -> None:
        e = self._by_key.get(key)
        if e is not None and e.adds > 0:
            e.adds -= 1

    def lower_adds(self, key: str, n: int) -> None:
        e = self._by_key.get(key)
        if e is not None:
            e.adds = max(0, e.adds - n)

    def observe_delete(self, key: str, pod_key: str) -> None:
        e = self._by_key.get(key)
        if e is not None:
            e.deletes.discard(pod_key)

    def satisfied(self, key: str) -> bool:
        e = self._by_key.get(key)
        if e is None:
            return True
        if (e.adds <= 0 and not e.deletes) or time.monotonic() - e.since > self.ttl:
            del self._by_key[key]
            return True
        return False

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)


class PodOwnerController(Controller):
    """A controller whose owner kind (`owner_resource`) makes and removes its pods itself, as kube's ReplicaSet
    and DaemonSet controllers do. The base wires what they share: the owners' and the pods' indexed informers,
    an owner queued on every add and update and its expectations forgotten on delete, and pod events routed to
    the owner that controls the pod (their addPod/updatePod/deletePod: the owner's expectations see the pod's
    creation and deletion and the owner is synced; an orphan wakes every owner whose selector matches it, to
    adopt it; a pod whose controllerRef changed wakes its old owner too). `create_owned_pods` and
    `delete_owned_pods` are their PodControl: slow-start batches, expectations lowered on failure, Events."""

    owner_resource: Resource

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.kind = self.owner_resource.kind
        self.expectations = Expectations()
        self.owners = self.informer(self.owner_resource, indexed=True)
        self.pods = self.informer(PODS, indexed=True)
        self.enqueue_on_change(self.owners)
        self.owners.on_delete(lambda o: self.expectations.forget(key_of(o)))
        self.pods.on_add(self._on_pod_add)
        self.pods.on_update(self._on_pod_update)
        self.pods.on_delete(self._on_pod_delete)

    # -- pod events --------------------------------------------------------------------------------------------
    def owner_of(self, obj: Obj) -> str | None:
        """The key of the owner in the cache that controls `obj` (a pod, a ControllerRevision), or None."""
        return owner_key(self.owners, obj, self.kind)

    def _orphan(self, pod: Obj) -> None:
        if controller_ref(pod) is not None:
            return
        for key in selecting_owner_keys(self.owners, pod):
            self.enqueue(key)

    def _on_pod_add(self, pod: Obj) -> None:
        owner = self.owner_of(pod)
        if owner:
            self.expectations.observe_add(owner)
            if terminating(pod):
                self.expectations.observe_delete(owner, key_of(pod))
            self.enqueue(owner)
        else:
            self._orphan(pod)

    def _on_pod_update(self, old: Obj, new: Obj) -> None:
        owner = self.owner_of(new)
        if owner:
            if terminating(new):
                self.expectations.observe_delete(owner, key_of(new))
            self.enqueue(owner)
        else:
            self._orphan(new)
        old_owner = self.owner_of(old)
        if old_owner and old_owner != owner:
            self.enqueue(old_owner)

    def _on_pod_delete(self, pod: Obj) -> None:
        owner = self.owner_of(pod)
        if owner:
            self.expectations.observe_delete(owner, key_of(pod))
            self.enqueue(owner)

    # -- pod control -------------------------------------------------------------------------------------------
    async def claim_pods(self, owner: Obj, selector: Selector) -> list[Obj]:
        """The pods of the owner's namespace that `owner` controls, after adopting matching orphans and releasing
        the pods that stopped matching (`claim`: their ClaimPods)."""
        candidates = self.pods.by_index(BY_NAMESPACE, namespace_of(owner))
        return await claim(
            self.client,
            PODS,
            owner,
            candidates,
            selector,
            owner_api_version=self.owner_resource.api_version,
            owner_kind=self.kind,
        )

    async def create_owned_pods(self, owner: Obj, count: int, make_pod: Callable[[], Obj]) -> str | None:
        """Create `count` pods of `owner`, each built by `make_pod`, in slow-start batches, with a SuccessfulCreate
        Event for each. After a failure the creations not made are taken off the owner's expected adds and a
        FailedCreate Event is recorded; returns the error's message then, else None."""

        async def create_one() -> None:
            out = await self.client.create(PODS, make_pod(), namespace_of(owner))
            await self.recorder.event(owner, "Normal", "SuccessfulCreate", f"Created pod: {name_of(out)}")

        done, err = await slow_start(count, create_one)
        if err is None:
            return None
        self.expectations.lower_adds(key_of(owner), count - done)
        msg = getattr(err, "message", None) or str(err)
        await self.recorder.event(owner, "Warning", "FailedCreate", f"Error creating: {msg}")
        return msg

    async def delete_owned_pods(self, owner: Obj, pods: list[Obj]) -> Exception | None:
        """Delete pods of `owner` (`delete_pods`), observing the owner's expected deletion of each pod that is gone
        already or failed, with a SuccessfulDelete Event for each. Returns the first error."""
        key = key_of(owner)
        err = await delete_pods(
            self.client, PODS, pods, on_gone=lambda p: self.expectations.observe_delete(key, key_of(p))
        )
        for p in pods:
            await self.recorder.event(owner, "Normal", "SuccessfulDelete", f"Deleted pod: {name_of(p)}")
        return err


def selector_of(obj: Obj) -> Selector | None:
    """The object's spec.selector, or None when it is missing or malformed (nothing is selected then)."""
    sel = spec(obj).get("selector")
    if not isinstance(sel, dict) or not (sel.get("matchLabels") or sel.get("matchExpressions")):
        return None
    try:
        return from_label_selector(sel)
    except (SelectorError, AttributeError, TypeError):
        return None


def owner_key(owners: Informer, obj: Obj, kind: str) -> str | None:
    """The key of the `kind` object in `owners` that controls `obj` (its controllerRef names it and has its
    uid), or None when there is none or the cache does not show it."""
    ref = controller_ref(obj)
    if not ref or ref.get("kind") != kind or not ref.get("name"):
        return None
    owner = owners.get(namespace_of(obj), str(ref["name"]))
    if owner is None or uid_of(owner) != ref.get("uid"):
        return None
    return key_of(owner)


def selecting_owner_keys(owners: Informer, obj: Obj) -> list[str]:
    """Keys of the objects in `owners` of `obj`'s namespace whose spec.selector matches `obj`'s labels (the
    owners that may adopt it when it is an orphan)."""
    labels = labels_of(obj)
    out = []
    for owner in owners.by_index(BY_NAMESPACE, namespace_of(obj)):
        sel = selector_of(owner)
        if sel is not None and sel.matches(labels):
            out.append(key_of(owner))
    return out


async def claim(
    client: ApiClient,
    res: Resource,
    owner: Obj,
    candidates: list[Obj],
    selector: Selector,
    *,
    owner_api_version: str,
    owner_kind: str,
    can_adopt: bool = True,
) -> list[Obj]:
    """kube's ControllerRefManager: objects controlled by `owner` that match the selector, after adopting
    matching orphans (a controllerRef is added) and releasing owned objects that stopped matching."""
    uid = uid_of(owner)
    owned: list[Obj] = []
    for obj in candidates:
        ref = controller_ref(obj)
        matches = selector.matches(labels_of(obj))
        if ref is not None:
            if ref.get("uid") != uid:
                continue
            if matches:
                owned.append(obj)
            elif not terminating(owner):
                await _release(client, res, obj, uid)
            continue
        if not matches or not can_adopt or terminating(owner) or terminating(obj):
            continue
        if res.kind == "Pod" and not pod_active(obj):
            continue
        adopted = await _adopt(client, res, obj, owner_reference(owner, api_version=owner_api_version, kind=owner_kind))
        if adopted is not None:
            owned.append(adopted)
    return owned


async def _adopt(client: ApiClient, res: Resource, obj: Obj, ref: Obj) -> Obj | None:
    def add_ref(o: Obj) -> bool:
        if controller_ref(o) is not None:
            return False
        m = o.setdefault("metadata", {})
        m["ownerReferences"] = [*lst(m.get("ownerReferences")), ref]
        return True

    out = await update_with_retry(client, res, obj, add_ref)
    if out is not None:
        log.info(
            "adopted %s %s/%s by %s %s",
            res.kind,
            meta(obj).get("namespace"),
            meta(obj).get("name"),
            ref["kind"],
            ref["name"],
        )
    return out


async def _release(client: ApiClient, res: Resource, obj: Obj, uid: str) -> None:
    def drop_ref(o: Obj) -> bool:
        m = o.setdefault("metadata", {})
        refs = lst(m.get("ownerReferences"))
        kept = [r for r in refs if not (isinstance(r, dict) and r.get("uid") == uid)]
        if len(kept) == len(refs):
            return False
        set_or_omit(m, "ownerReferences", kept)
        return True

    await update_with_retry(client, res, obj, drop_ref)


def pod_from_template(
    owner: Obj,
    *,
    owner_api_version: str,
    owner_kind: str,
    extra_labels: dict[str, str] | None = None,
    node_name: str | None = None,
) -> Obj:
    """A Pod for `owner`'s spec.template, named `<owner>-<5 random>` by the API (generateName)."""
    tmpl = d(spec(owner).get("template"))
    tmeta = d(tmpl.get("metadata"))
    pod_meta: Obj = {
        "generateName": f"{meta(owner).get('name')}-",
        "namespace": meta(owner).get("namespace"),
        "labels": {**{str(k): str(v) for k, v in d(tmeta.get("labels")).items()}, **(extra_labels or {})},
        "ownerReferences": [owner_reference(owner, api_version=owner_api_version, kind=owner_kind)],
    }
    if d(tmeta.get("annotations")):
        pod_meta["annotations"] = copy.deepcopy(tmeta["annotations"])
    if lst(tmeta.get("finalizers")):
        pod_meta["finalizers"] = list(tmeta["finalizers"])
    pod_spec = copy.deepcopy(d(tmpl.get("spec")))
    if node_name:
        pod_spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": pod_spec}


async def slow_start(count: int, create: Callable[[], Awaitable[Any]]) -> tuple[int, Exception | None]:
    """Run `create` `count` times in batches of 1, 2, 4, ... (kube's slowStartBatch), stopping after a batch
    with a failure. Returns how many succeeded and the first error."""
    done = 0
    batch = 1
    while done < count:
        n = min(batch, count - done)
        results = await asyncio.gather(*(create() for _ in range(n)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        done += n - len(errors)
        if errors:
            err = errors[0]
            if isinstance(err, asyncio.CancelledError):
                raise err
            return done, err if isinstance(err, Exception) else RuntimeError(str(err))
        batch *= 2
    return done, None


async def delete_pods(
    client: ApiClient, pods_res: Resource, pods: list[Obj], *, on_gone: Callable[[Obj], None]
) -> Exception | None:
    """Delete pods concurrently; a pod already gone counts as deleted. Returns the first error."""

    async def one(pod: Obj) -> None:
        m = meta(pod)
        try:
            await client.delete(
                pods_res, str(m.get("name")), str(m.get("namespace")), preconditions={"uid": m.get("uid")}
            )
        except NotFound:
            on_gone(pod)
        except Exception:
            on_gone(pod)  # nothing will be observed for it: do not wait on it
            raise

    results = await asyncio.gather(*(one(p) for p in pods), return_exceptions=True)
    for r in results:
        if isinstance(r, asyncio.CancelledError):
            raise r
    errors = [r for r in results if isinstance(r, Exception)]
    return errors[0] if errors else None
