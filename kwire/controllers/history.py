"""ControllerRevisions: the template history of StatefulSets and DaemonSets (kube's controller/history package).

Owns the shape of a revision (`<owner>-<hash>`, labels = the template's labels + `controller.kubernetes.io/hash`,
the owner's annotations so `kubectl rollout history` shows a change-cause, a controller ownerReference, `data`
= the strategic merge patch `{"spec": {"template": {..., "$patch": "replace"}}}` that `kubectl rollout undo`
applies, and `revision` = a number that grows), and the reconcile step both controllers run: find the revision
equal to the current template (reusing the newest, renumbering an older one as kube does on a rollback, or
creating a new one, with a collision count when a name is taken by different data) and truncating the history to
`revisionHistoryLimit` while keeping every revision a live pod still runs.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import orjson

from kwire.client import ApiClient, Conflict, NotFound
from kwire.client.client import CONTROLLERREVISIONS
from kwire.controllers.common import (
    Obj,
    controller_ref,
    created_at,
    d,
    int_field,
    meta,
    name_of,
    namespace_of,
    owner_reference,
    safe_encode,
    spec,
    uid_of,
    update_with_retry,
)

log = logging.getLogger(__name__)


HASH_LABEL = "controller.kubernetes.io/hash"


def revision_data(owner: Obj) -> Obj:
    """What a revision stores: the owner's pod template as a strategic merge patch that replaces it whole."""
    tmpl = copy.deepcopy(d(spec(owner).get("template")))
    tmpl["$patch"] = "replace"
    return {"spec": {"template": tmpl}}


def template_of(revision: Obj) -> Obj:
    """The pod template a revision stores (without the patch directive)."""
    tmpl = copy.deepcopy(d(d(d(revision.get("data")).get("spec")).get("template")))
    tmpl.pop("$patch", None)
    return tmpl


def hash_revision(data: Obj, collision_count: int = 0) -> str:
    """HashControllerRevision: fnv32 of the data (plus the collision count), safe-encoded."""
    raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    if collision_count:
        raw += str(collision_count).encode()
    h = 0x811C9DC5
    for b in raw:
        h = (h * 0x01000193) & 0xFFFFFFFF
        h ^= b
    return safe_encode(str(h))


def sort_key(revision: Obj) -> tuple[int, float, str]:
    """SortControllerRevisions: by revision number, then creation time, then name."""
    return (
        int_field(revision.get("revision")),
        created_at(revision),
        name_of(revision),
    )


def new_revision(
    owner: Obj, *, api_version: str, kind: str, number: int, collision_count: int, name_hash: str | None = None
) -> Obj:
    data = revision_data(owner)
    h = name_hash or hash_revision(data, collision_count)
    labels = {str(k): str(v) for k, v in d(d(d(spec(owner).get("template")).get("metadata")).get("labels")).items()}
    labels[HASH_LABEL] = h
    m: Obj = {
        "name": f"{name_of(owner)}-{h}",
        "namespace": namespace_of(owner),
        "labels": labels,
        "ownerReferences": [owner_reference(owner, api_version=api_version, kind=kind)],
    }
    if d(meta(owner).get("annotations")):
        m["annotations"] = dict(meta(owner)["annotations"])
    return {"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": m, "data": data, "revision": number}


@dataclass
class Revisions:
    current: Obj
    update: Obj
    all: list[Obj]
    collision_count: int


async def reconcile_revisions(
    client: ApiClient,
    owner: Obj,
    owned: list[Obj],
    *,
    api_version: str,
    kind: str,
    current_name: str,
    collision_count: int,
    name_hash: str | None = None,
) -> Revisions:
    """kube's getStatefulSetRevisions / constructHistory: the current and update revisions of `owner` from the
    revisions it controls (`owned`), creating or renumbering the update revision as needed. A new revision is
    named `<owner>-<hash of its data>`, or `<owner>-<name_hash>` when given (DaemonSets name it by the hash
    their pods are labelled with)."""
    revisions = sorted(owned, key=sort_key)
    number = (int_field(revisions[-1].get("revision")) if revisions else 0) + 1
    want = revision_data(owner)
    equal = [r for r in revisions if r.get("data") == want]
    update: Obj
    if equal and equal[-1] is revisions[-1]:
        update = revisions[-1]
    elif equal:
        old = equal[-1]

        def renumber(o: Obj) -> bool:
            if int_field(o.get("revision")) == number:
                return False
            o["revision"] = number
            return True

        update = await update_with_retry(client, CONTROLLERREVISIONS, old, renumber) or {**old, "revision": number}
        revisions = sorted([r for r in revisions if r is not old] + [update], key=sort_key)
    else:
        while True:
            rev = new_revision(
                owner, api_version=api_version, kind=kind, number=number, collision_count=collision_count
            )
            try:
                update = await client.create(CONTROLLERREVISIONS, rev, namespace_of(owner))
                break
            except Conflict:
                try:
                    existing = await client.get(CONTROLLERREVISIONS, name_of(rev), namespace_of(owner))
                except NotFound:
                    continue
                ref = controller_ref(existing)
                if existing.get("data") == want and ref is not None and ref.get("uid") == uid_of(owner):
                    update = existing
                    break
                if name_hash is not None:
                    raise RuntimeError(f"controller revision {name_of(rev)} exists with other data") from None
                collision_count += 1  # the name is taken by other data: kube's collisionCount
        revisions.append(update)
    current = next((r for r in revisions if name_of(r) == current_name), update)
    return Revisions(current=current, update=update, all=revisions, collision_count=collision_count)


async def truncate_history(client: ApiClient, owner: Obj, revisions: Revisions, live: set[str]) -> None:
    """Delete the oldest revisions beyond spec.revisionHistoryLimit that are neither current, update, nor run by
    a live pod (`live`: revision names or hashes the pods carry)."""
    limit = max(0, int_field(spec(owner).get("revisionHistoryLimit"), 10))
    keep = {name_of(revisions.current), name_of(revisions.update)}
    history = [
        r
        for r in sorted(revisions.all, key=sort_key)
        if name_of(r) not in keep
        and name_of(r) not in live
        and str(d(meta(r).get("labels")).get(HASH_LABEL) or "") not in live
    ]
    for r in history[: max(0, len(history) - limit)]:
        try:
            await client.delete(CONTROLLERREVISIONS, name_of(r), namespace_of(r))
        except NotFound:
            pass
