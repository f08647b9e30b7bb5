"""Field sets of server-side apply: paths into an object, `fieldsV1` encoding, and the walks over objects.

This mirrors sigs.k8s.io/structured-merge-diff (v4, as vendored by kube-apiserver 1.32): a path is a tuple of
elements `("f", field)`, `("k", '{"name":"x"}')` (an item of an associative list, by its key fields, sorted),
`("v", '"x"')` (an item of a set list) or `("i", "0")`; a field set is a Python set of paths. `to_field_set`
is SMD's ToFieldSet (leaves, null/empty maps, atomic values, every list item), `compare` its Compare (added,
modified, removed), `merge` its Merge (maps recurse, associative lists merge by key, sets union, atomic values
are replaced). `encode`/`decode` give the `fieldsV1` form kube stores in `metadata.managedFields`
(`f:`/`k:`/`v:`/`i:` keys, `.` for a node that is itself a member).

SMD reads list types and keys from the OpenAPI schema; kwire has no typed schema, so the table `SCHEMAS` below
carries the `x-kubernetes-list-type`/`-list-map-keys`/`-map-type`/`structType` markers of the upstream Go types
for the kinds served (a list not in it is atomic, as SMD treats a list without a list type; a dict is a struct).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import orjson

from kwire.api.registry import Kind

Obj = dict[str, Any]
Element = tuple[str, str]
Path = tuple[Element, ...]
FieldSet = set[Path]


@dataclass(frozen=True)
class Node:
    """The schema of one value: `struct` (default for dicts), `map` (an associative list keyed by `keys`, each
    with its default when an item leaves it out), `set` (a list of unique scalars) or `atomic` (replaced whole)."""

    type: str = "struct"
    fields: dict[str, Node] = field(default_factory=dict)
    keys: tuple[tuple[str, Any], ...] = ()
    items: Node | None = None
    elements: Node | None = None  # the schema of every other key (a map's values: additionalProperties)

    def child(self, name: str) -> Node:
        return self.fields.get(name) or self.elements or DEFAULT


DEFAULT = Node()
ATOMIC = Node("atomic")
SET = Node("set")


def _struct(**fields: Node) -> Node:
    return Node("struct", fields)


def _listmap(*keys: str | tuple[str, Any], items: Node | None = None) -> Node:
    return Node("map", keys=tuple(k if isinstance(k, tuple) else (k, None) for k in keys), items=items or DEFAULT)


_CONDITIONS = _listmap("type")
_META = _struct(finalizers=SET, ownerReferences=_listmap("uid"))
_CONTAINER = _struct(
    ports=_listmap("containerPort", ("protocol", "TCP")),
    env=_listmap("name"),
    volumeMounts=_listmap("mountPath"),
    volumeDevices=_listmap("devicePath"),
    resizePolicy=_listmap("resourceName"),
)
_POD_SPEC = _struct(
    containers=_listmap("name", items=_CONTAINER),
    initContainers=_listmap("name", items=_CONTAINER),
    ephemeralContainers=_listmap("name", items=_CONTAINER),
    volumes=_listmap("name"),
    imagePullSecrets=_listmap("name"),
    hostAliases=_listmap("ip"),
    nodeSelector=ATOMIC,
    topologySpreadConstraints=_listmap("topologyKey", "whenUnsatisfiable"),
    resourceClaims=_listmap("name"),
    schedulingGates=_listmap("name"),
)
_TEMPLATE = _struct(metadata=_META, spec=_POD_SPEC)
_WORKLOAD = _struct(
    metadata=_META,
    spec=_struct(selector=ATOMIC, template=_TEMPLATE),
    status=_struct(conditions=_CONDITIONS),
)

SCHEMAS: dict[str, Node] = {
    "Pod": _struct(
        metadata=_META,
        spec=_POD_SPEC,
        status=_struct(conditions=_CONDITIONS, podIPs=_listmap("ip"), hostIPs=_listmap("ip")),
    ),
    "Deployment": _WORKLOAD,
    "ReplicaSet": _WORKLOAD,
    "DaemonSet": _WORKLOAD,
    "Service": _struct(
        metadata=_META,
        spec=_struct(ports=_listmap("port", ("protocol", "TCP")), selector=ATOMIC),
        status=_struct(conditions=_CONDITIONS),
    ),
    "Node": _struct(
        metadata=_META,
        spec=_struct(podCIDRs=SET),
        status=_struct(conditions=_CONDITIONS, addresses=_listmap("type")),
    ),
    "Namespace": _struct(metadata=_META, status=_struct(conditions=_CONDITIONS)),
    "NetworkPolicy": _struct(metadata=_META, spec=_struct(podSelector=ATOMIC)),
    "ValidatingWebhookConfiguration": _struct(metadata=_META, webhooks=_listmap("name")),
    "MutatingWebhookConfiguration": _struct(metadata=_META, webhooks=_listmap("name")),
}

# Free-form maps: a new one is owned as a whole by the Update that creates it (`.` in fieldsV1), as in kube.
_MAP_FIELDS = frozenset({"labels", "annotations", "data", "binaryData", "stringData", "limits", "requests"})


def schema_for(kind_name: str) -> Node:
    return SCHEMAS.get(kind_name, _struct(metadata=_META))


# id(CustomVersion) -> (that CustomVersion, held so its id cannot be reused by a newer one, its node)
_FROM_OPENAPI: dict[int, tuple[Any, Node]] = {}


def schema_for_kind(kind: Kind) -> Node:
    """The built-in table's schema, or a custom resource's from its CRD's openAPIV3Schema (cached per version)."""
    if kind.custom is None or not isinstance(kind.custom.schema, dict):
        return schema_for(kind.kind)
    key = id(kind.custom)
    held = _FROM_OPENAPI.get(key)
    if held is not None and held[0] is kind.custom:
        return held[1]
    if len(_FROM_OPENAPI) > 1024:
        _FROM_OPENAPI.clear()
    root = from_openapi(kind.custom.schema)
    if root.type == "struct":  # metadata is ObjectMeta whatever the CRD says of it
        node = Node("struct", {**root.fields, "metadata": _META}, elements=root.elements)
    else:
        node = _struct(metadata=_META)
    _FROM_OPENAPI[key] = (kind.custom, node)
    return node


def from_openapi(schema: Any) -> Node:
    """A structural schema's SSA markers, as SMD reads them: `x-kubernetes-list-type` map (with
    `x-kubernetes-list-map-keys`, their `default`s) / set / atomic (a list without one is atomic), and
    `x-kubernetes-map-type: atomic`; `additionalProperties` gives a map's values."""
    if not isinstance(schema, dict):
        return DEFAULT
    if schema.get("type") == "array":
        list_type = schema.get("x-kubernetes-list-type")
        raw_items = schema.get("items")
        items: Obj = raw_items if isinstance(raw_items, dict) else {}
        if list_type == "set":
            return SET
        if list_type == "map":
            props = items.get("properties") or {}
            keys = tuple(
                (str(k), (props.get(k) or {}).get("default")) for k in schema.get("x-kubernetes-list-map-keys") or []
            )
            return Node("map", keys=keys, items=from_openapi(items))
        return ATOMIC
    if schema.get("x-kubernetes-map-type") == "atomic":
        return ATOMIC
    fields = {str(k): from_openapi(v) for k, v in (schema.get("properties") or {}).items()}
    extra = schema.get("additionalProperties")
    return Node("struct", fields, elements=from_openapi(extra) if isinstance(extra, dict) else None)


# -- path elements -------------------------------------------------------------------------------------------
def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def item_key(item: Any, node: Node) -> Element | None:
    """The path element of one list item (None for an associative-list item without its keys)."""
    if node.type == "set":
        return ("v", _json(item))
    if not isinstance(item, dict):
        return None
    key: dict[str, Any] = {}
    for name, default in node.keys:
        value = item.get(name, default)
        if value is None:
            return None
        key[name] = value
    return ("k", _json(key))


def path_string(path: Path) -> str:
    """SMD's Path.String(): `.spec.containers[name="nginx"].image`, `[=value]`, `[0]`."""
    out = []
    for kind, text in path:
        if kind == "f":
            out.append("." + text)
        elif kind == "k":
            fields = orjson.loads(text)
            out.append("[" + ",".join(f"{k}={_json(v)}" for k, v in fields.items()) + "]")
        elif kind == "v":
            out.append("[=" + text + "]")
        else:
            out.append("[" + text + "]")
    return "".join(out)


# -- fieldsV1 ----------------------------------------------------------------------------------------------------
def encode(fields: FieldSet) -> Obj:
    """The `fieldsV1` object of a field set."""
    root: Obj = {}
    for path in sorted(fields):
        node = root
        for kind, text in path:
            node = node.setdefault(f"{kind}:{text}", {})
        node["."] = {}
    return _finish(root)


def _finish(node: Obj) -> Obj:
    # "." marks a member; a member without children is written as {} alone.
    children = {k: _finish(v) for k, v in node.items() if k != "."}
    if "." in node and children:
        return {".": {}, **children}
    return children


def decode(fields_v1: Any, prefix: Path = ()) -> FieldSet:
    out: FieldSet = set()
    if not isinstance(fields_v1, dict):
        return out
    if not fields_v1 and prefix:
        out.add(prefix)
    for key, child in fields_v1.items():
        if key == ".":
            out.add(prefix)
            continue
        kind, _, text = key.partition(":")
        out |= decode(child, (*prefix, (kind, text)))
    return out


# -- walks -------------------------------------------------------------------------------------------------------
def to_field_set(value: Any, node: Node, prefix: Path = ()) -> FieldSet:
    """Every field `value` sets (SMD ToFieldSet)."""
    out: FieldSet = set()
    if node.type == "atomic" or not isinstance(value, (dict, list)):
        if prefix:
            out.add(prefix)
        return out
    if isinstance(value, dict):
        for name, child in value.items():
            path = (*prefix, ("f", name))
            if child is None or child == {}:
                out.add(path)
            out |= to_field_set(child, node.child(name), path)
        return out
    if node.type not in ("map", "set"):
        out.add(prefix)  # a list without a list type is atomic
        return out
    for item in value:
        element = item_key(item, node)
        if element is None:
            continue
        path = (*prefix, element)
        out.add(path)
        if node.type == "map":
            out |= to_field_set(item, node.items or DEFAULT, path)
    return out


@dataclass
class Comparison:
    added: FieldSet = field(default_factory=set)
    modified: FieldSet = field(default_factory=set)
    removed: FieldSet = field(default_factory=set)

    @property
    def changed(self) -> FieldSet:
        return self.added | self.modified

    def empty(self) -> bool:
        return not (self.added or self.modified or self.removed)


_MISSING = object()


def compare(old: Any, new: Any, node: Node, prefix: Path = (), into: Comparison | None = None) -> Comparison:
    """What changed from `old` to `new` (SMD Compare); `_MISSING` stands for an absent value."""
    out = into if into is not None else Comparison()
    if old is new or (old is not _MISSING and new is not _MISSING and type(old) is type(new) and old == new):
        return out  # an unchanged subtree (equality is checked in C, far cheaper than walking it)
    if old is _MISSING:
        out.added |= _subtree(new, node, prefix)
        return out
    if new is _MISSING:
        out.removed |= _subtree(old, node, prefix)
        return out
    if node.type == "atomic" or type(old) is not type(new) or not isinstance(new, (dict, list)):
        if old != new and prefix:
            out.modified.add(prefix)
        return out
    if isinstance(new, dict):
        for name in dict.fromkeys([*old, *new]):
            compare(old.get(name, _MISSING), new.get(name, _MISSING), node.child(name), (*prefix, ("f", name)), out)
        return out
    if node.type not in ("map", "set"):
        if old != new and prefix:
            out.modified.add(prefix)
        return out
    olds = _items(old, node)
    news = _items(new, node)
    for element in dict.fromkeys([*olds, *news]):
        o, n = olds.get(element, _MISSING), news.get(element, _MISSING)
        path = (*prefix, element)
        if node.type == "set":
            if o is _MISSING:
                out.added.add(path)
            elif n is _MISSING:
                out.removed.add(path)
        else:
            compare(o, n, node.items or DEFAULT, path, out)
    return out


def _subtree(value: Any, node: Node, prefix: Path) -> FieldSet:
    fields = to_field_set(value, node, prefix)
    if isinstance(value, dict) and prefix and (prefix[-1][0] == "k" or prefix[-1][1] in _MAP_FIELDS):
        fields.add(prefix)
    return fields


def _items(value: list[Any], node: Node) -> dict[Element, Any]:
    out: dict[Element, Any] = {}
    for item in value:
        element = item_key(item, node)
        if element is not None and element not in out:
            out[element] = item
    return out


def merge(live: Any, config: Any, node: Node) -> Any:
    """`config` applied over `live` (SMD Merge); neither is modified."""
    if config is None:
        return None
    if node.type == "atomic" or not isinstance(config, (dict, list)) or type(live) is not type(config):
        return copy.deepcopy(config)
    if isinstance(config, dict) and isinstance(live, dict):
        result: Obj = copy.deepcopy(live)
        for name, value in config.items():
            if value is None:
                result.pop(name, None)
            else:
                result[name] = merge(live.get(name), value, node.child(name))
        return result
    if node.type == "set":
        values = list(live)
        values.extend(v for v in config if v not in values)
        return copy.deepcopy(values)
    if node.type != "map":
        return copy.deepcopy(config)
    merged = [copy.deepcopy(x) for x in live]
    index = {item_key(x, node): i for i, x in reversed(list(enumerate(merged)))}
    for item in config:
        element = item_key(item, node)
        if element is not None and element in index:
            merged[index[element]] = merge(merged[index[element]], item, node.items or DEFAULT)
        else:
            merged.append(copy.deepcopy(item))
    return merged


def remove(obj: Any, path: Path, node: Node) -> None:
    """Remove the value at `path` from `obj` in place (a missing path is ignored)."""
    if not path:
        return
    element, rest = path[0], path[1:]
    if isinstance(obj, dict) and element[0] == "f":
        name = element[1]
        if name not in obj:
            return
        if not rest:
            del obj[name]
            return
        remove(obj[name], rest, node.child(name))
        return
    if isinstance(obj, list) and element[0] in ("k", "v"):
        for i, item in enumerate(obj):
            if item_key(item, node) == element:
                if not rest:
                    del obj[i]
                else:
                    remove(item, rest, node.items or DEFAULT)
                return


def value_at(obj: Any, path: Path, node: Node) -> Any:
    """The value at `path` (`_MISSING` when absent)."""
    for element in path:
        if isinstance(obj, dict) and element[0] == "f":
            obj = obj.get(element[1], _MISSING)
            node = node.child(element[1])
        elif isinstance(obj, list) and element[0] in ("k", "v"):
            obj = _items(obj, node).get(element, _MISSING)
            node = node.items or DEFAULT
        else:
            return _MISSING
        if obj is _MISSING:
            return _MISSING
    return obj


def is_missing(value: Any) -> bool:
    return value is _MISSING


def has_prefix(path: Path, prefix: Path) -> bool:
    return path[: len(prefix)] == prefix
