"""`metadata.managedFields` and server-side apply: who owns which field, conflicts, and pruning.

Mirrors k8s.io/apiserver's fieldmanager over structured-merge-diff's Updater:
- every write with a field manager records an entry (`manager`, `operation` Apply|Update, `apiVersion`, `time`,
  `fieldsType: FieldsV1`, `fieldsV1`, `subresource`); an Update takes the fields it added or changed away from
  every other manager and adds them to its own entry (Updater.Update);
- an Apply merges the applied configuration into the live object; fields another manager owns whose value the
  apply changes are conflicts (409 in kube's words, `details.causes` of type FieldManagerConflict) unless
  `force`, which moves them to the applier; fields the applier's previous Apply owned, that it no longer sends
  and nobody else owns, are removed (Updater.Apply + prune);
- the fields kube strips (apiVersion, kind, metadata name/uid/resourceVersion/...) are never tracked, and the
  status subresource's writes own only `status` (main-resource writes never own it) as kube's reset fields do;
- the client-side-apply upgrade (`lastAppliedManager`/`lastAppliedUpdater`): when manager `kubectl` applies and
  its only conflicts are fields the `kubectl.kubernetes.io/last-applied-configuration` annotation still describes
  unchanged, the apply is forced; and that annotation is kept equal to the applied configuration.
Entries are sorted as kube sorts them (operation, time, manager).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import orjson

from kwire.api import fieldset
from kwire.api.errors import ApiError
from kwire.api.fieldset import Comparison, FieldSet, Node, Path
from kwire.base.timefmt import now_rfc3339

Obj = dict[str, Any]

APPLY = "Apply"
UPDATE = "Update"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MAX_MANAGER_LENGTH = 128

# Fields managedFields never records (the fieldmanager's stripMeta): apiVersion, kind and these of metadata.
_STRIPPED_TOP = frozenset({("f", "apiVersion"), ("f", "kind")})
_STRIPPED_META = frozenset(
    ("f", name)
    for name in (
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    )
)
_METADATA = ("f", "metadata")
_STATUS: Path = (("f", "status"),)


@dataclass
class Entry:
    manager: str
    operation: str
    api_version: str
    time: str
    fields: FieldSet
    subresource: str = ""
    raw: Obj | None = None  # the stored fieldsV1, written back as is while `fields` is unchanged

    def set_fields(self, fields: FieldSet) -> None:
        if fields != self.fields:
            self.fields = fields
            self.raw = None

    def identity(self) -> tuple[str, str, str, str]:
        return (self.manager, self.operation, self.subresource, "" if self.operation == APPLY else self.api_version)

    def to_json(self) -> Obj:
        out: Obj = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.raw if self.raw is not None else fieldset.encode(self.fields),
        }
        if self.subresource:
            out["subresource"] = self.subresource
        return out

    def describe(self) -> str:
        """printManager of kube's conflict errors."""
        text = orjson.dumps(self.manager).decode()
        if self.subresource:
            text += f' with subresource "{self.subresource}"'
        if self.operation == APPLY:
            return text
        return f"{text} using {self.api_version}"


def manager_from_user_agent(user_agent: str) -> str:
    """kube's default field manager: the User-Agent up to the first `/`."""
    return user_agent.split("/", 1)[0][:MAX_MANAGER_LENGTH]


@functools.lru_cache(maxsize=4096)
def _decoded(fields_v1: bytes) -> frozenset[Path]:
    # Objects are written far more often than their managers change: most entries decode from this cache.
    return frozenset(fieldset.decode(orjson.loads(fields_v1)))


def read_entries(obj: Obj) -> list[Entry]:
    out = []
    for raw in (obj.get("metadata") or {}).get("managedFields") or []:
        if not isinstance(raw, dict):
            continue
        fields_v1 = raw.get("fieldsV1") or {}
        out.append(
            Entry(
                manager=str(raw.get("manager", "")),
                operation=str(raw.get("operation") or UPDATE),
                api_version=str(raw.get("apiVersion") or ""),
                time=str(raw.get("time") or ""),
                fields=set(_decoded(orjson.dumps(fields_v1, option=orjson.OPT_SORT_KEYS))),
                subresource=str(raw.get("subresource") or ""),
                raw=fields_v1 if isinstance(fields_v1, dict) else None,
            )
        )
    return out


def write_entries(obj: Obj, entries: list[Entry]) -> None:
    kept = [e for e in entries if e.fields]
    kept.sort(key=lambda e: (e.operation, e.time, e.manager, e.api_version, e.subresource))
    meta = obj.setdefault("metadata", {})
    if kept:
        meta["managedFields"] = [e.to_json() for e in kept]
    else:
        meta.pop("managedFields", None)


def _stripped(path: Path) -> bool:
    """Set lookups rather than a prefix test per stripped field: this runs for every path of every write."""
    if not path:
        return False
    return path[0] in _STRIPPED_TOP or (path[0] == _METADATA and len(path) > 1 and path[1] in _STRIPPED_META)


def _tracked(fields: FieldSet, *, subresource: str, status_separate: bool) -> FieldSet:
    out = {p for p in fields if not _stripped(p)}
    out.discard((("f", "metadata"),))
    if subresource == "status":
        return {p for p in out if fieldset.has_prefix(p, _STATUS)}
    if status_separate:
        return {p for p in out if not fieldset.has_prefix(p, _STATUS)}
    return out


def _comparison(old: Obj | None, new: Obj, node: Node, *, subresource: str, status_separate: bool) -> Comparison:
    missing = fieldset._MISSING  # noqa: SLF001
    if subresource == "status":  # only status can be owned: compare just that subtree
        before = missing if old is None else old.get("status", missing)
        raw = fieldset.compare(before, new.get("status", missing), node.child("status"), _STATUS)
    elif status_separate:
        raw = fieldset.compare(
            missing if old is None else {k: v for k, v in old.items() if k != "status"},
            {k: v for k, v in new.items() if k != "status"},
            node,
        )
    else:
        raw = fieldset.compare(missing if old is None else old, new, node)
    return Comparison(
        added=_tracked(raw.added, subresource=subresource, status_separate=status_separate),
        modified=_tracked(raw.modified, subresource=subresource, status_separate=status_separate),
        removed=_tracked(raw.removed, subresource=subresource, status_separate=status_separate),
    )


def _find(entries: list[Entry], identity: tuple[str, str, str, str]) -> Entry | None:
    return next((e for e in entries if e.identity() == identity), None)


@dataclass(frozen=True)
class Tracking:
    """What tracking one resource's fields needs (kube builds a FieldManager per resource from the same): its
    schema, the API version its entries are recorded in, and whether status is a subresource of its own (then
    main-resource writes never own it, and status writes own only it)."""

    node: Node
    api_version: str
    status_separate: bool = False


def record_update(old: Obj | None, new: Obj, *, tracking: Tracking, manager: str, subresource: str = "") -> None:
    """Set new.metadata.managedFields after an Update by `manager` (the entries start from `new`'s own)."""
    entries = read_entries(new)
    cmp = _comparison(old, new, tracking.node, subresource=subresource, status_separate=tracking.status_separate)
    if cmp.empty():
        return
    entry = Entry(manager, UPDATE, tracking.api_version, now_rfc3339(), set(), subresource)
    mine = _find(entries, entry.identity())
    if mine is None:
        entries.append(entry)
        mine = entry
    for other in entries:
        if other is not mine:
            other.set_fields(other.fields - (cmp.changed | cmp.removed))
    mine.set_fields((mine.fields - cmp.removed) | cmp.changed)
    mine.time = entry.time
    write_entries(new, entries)


@dataclass
class Conflict:
    entry: Entry
    path: Path


def conflict_error(conflicts: list[Conflict]) -> ApiError:
    """kube's NewConflictError: 409 Conflict with one FieldManagerConflict cause per field."""
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f"conflict with {c.entry.describe()}",
            "field": fieldset.path_string(c.path),
        }
        for c in conflicts
    ]
    if len(conflicts) == 1:
        c = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {c.entry.describe()}: {fieldset.path_string(c.path)}"
    else:
        lines: list[str] = []
        for who in sorted({c.entry.describe() for c in conflicts}):
            lines.append(f"conflicts with {who}:")
            lines.extend(f"- {fieldset.path_string(c.path)}" for c in conflicts if c.entry.describe() == who)
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, "Conflict", message, details={"causes": causes})


def apply(
    live: Obj | None, config: Obj, *, tracking: Tracking, manager: str, force: bool, subresource: str = ""
) -> Obj:
    """The object after `manager` applies `config` to `live` (None: the object does not exist yet), with its
    managedFields; raises the 409 conflict error unless `force`."""
    node, api_version, status_separate = tracking.node, tracking.api_version, tracking.status_separate
    base: Obj = live if live is not None else {}
    entries = read_entries(base)
    config_set = _tracked(fieldset.to_field_set(config, node), subresource=subresource, status_separate=status_separate)
    merged: Obj = fieldset.merge(base, config, node)
    cmp = _comparison(live, merged, node, subresource=subresource, status_separate=status_separate)
    identity = (manager, APPLY, subresource, "")
    conflicts = [Conflict(e, p) for e in entries if e.identity() != identity for p in sorted(e.fields & cmp.changed)]
    if conflicts and not force and live is not None and _client_side_upgrade(manager, live, conflicts, node):
        force = True
    if conflicts and not force:
        raise conflict_error(conflicts)
    last = _find(entries, identity)
    for e in entries:
        if e.identity() != identity:
            e.set_fields(e.fields - cmp.changed)
    others: FieldSet = set().union(*(e.fields for e in entries if e.identity() != identity))
    if last is not None:
        owned = others | config_set
        removed: list[Path] = []
        for path in sorted(last.fields - owned, key=len):  # an item before its fields (its key is in them)
            if any(fieldset.has_prefix(path, r) for r in removed):
                continue
            fieldset.remove(merged, path, node)
            removed.append(path)
            _drop_empty_parents(merged, path, node, owned)
        last.set_fields(config_set)
        last.time = now_rfc3339()
        last.api_version = api_version
    else:
        entries.append(Entry(manager, APPLY, api_version, now_rfc3339(), config_set, subresource))
    if manager == "kubectl":
        annotations = (merged.get("metadata") or {}).get("annotations") or {}
        if LAST_APPLIED in annotations:
            annotations[LAST_APPLIED] = _last_applied(config)
    write_entries(merged, entries)
    return merged


def _drop_empty_parents(obj: Obj, path: Path, node: Node, owned: FieldSet) -> None:
    """A map left empty by pruning goes too unless someone owns it (Go's omitempty has the same effect)."""
    for end in range(len(path) - 1, 1, -1):
        parent = path[:end]
        if parent in owned or fieldset.value_at(obj, parent, node) != {}:
            return
        fieldset.remove(obj, parent, node)


def _last_applied(config: Obj) -> str:
    """buildLastApplied: the applied configuration without the annotation itself, as JSON."""
    meta = dict(config.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return orjson.dumps({**config, "metadata": meta}).decode() + "\n"


def _client_side_upgrade(manager: str, live: Obj, conflicts: list[Conflict], node: Node) -> bool:
    """lastAppliedManager: kubectl's conflicts are allowed when every conflicting field is in the last-applied
    configuration with the value it still has."""
    if manager != "kubectl":
        return False
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not text:
        return False
    try:
        last = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(last, dict):
        return False
    allowed = fieldset.to_field_set(last, node)
    for c in conflicts:
        if c.path not in allowed:
            return False
        if fieldset.value_at(last, c.path, node) != fieldset.value_at(live, c.path, node):
            return False
    return True
