"""`additionalPrinterColumns` of custom resources as `as=Table` columns and cells.

Mirrors apiextensions-apiserver's `tableconvertor`: Name first, then the CRD's columns (or `Age` from
`.metadata.creationTimestamp` when it declares none); each cell is the first JSONPath result, printed as a
string (lists and maps as JSON) for `string` columns, as a number/boolean for typed ones, as an age for
`date`; a path with no result gives a null cell (kubectl prints `<none>`). The JSONPath subset is the one kube
accepts for printer columns: dotted fields, `['quoted key']`, `[n]`, `[*]` and `[?(@.field=="value")]` filters.
Hand-written: kube's subset is small, and a general JSONPath library would accept more than kube does.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Any

import orjson

from kwire.api.registry import Kind

Obj = dict[str, Any]

NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name automatically. Name is primarily "
    "intended for creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    "priority": 0,
}
_TOKEN = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-$/\\]+(?:\\\.[A-Za-z0-9_\-$/]+)*)"""
    r"""|\[(?P<index>-?\d+)\]"""
    r"""|\[(?P<star>\*)\]"""
    r"""|\[['"](?P<key>[^'"]+)['"]\]"""
    r"""|\[\?\(@\.(?P<ffield>[A-Za-z0-9_.\-]+)\s*(?P<op>==|!=)\s*['"]?(?P<fvalue>[^'")]*)['"]?\)\]"""
)


def parse_path(path: str) -> list[tuple[str, str]]:
    """`.status.conditions[?(@.type=="Ready")].status` -> steps; raises ValueError outside kube's subset."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    steps: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {text[pos:]!r}")
        if m.group("field") is not None:
            steps.append(("field", m.group("field").replace("\\.", ".")))
        elif m.group("index") is not None:
            steps.append(("index", m.group("index")))
        elif m.group("star") is not None:
            steps.append(("star", ""))
        elif m.group("key") is not None:
            steps.append(("field", m.group("key")))
        else:
            steps.append(("filter", orjson.dumps([m.group("ffield"), m.group("op"), m.group("fvalue")]).decode()))
        pos = m.end()
    return steps


@functools.lru_cache(maxsize=1024)  # bounded: paths come from users' CRDs; one parse per path, not per cell
def _steps(path: str) -> tuple[tuple[str, str], ...] | None:
    try:
        return tuple(parse_path(path))
    except ValueError:
        return None


def find(obj: Any, path: str) -> list[Any]:
    """Every value `path` selects in `obj` (empty when nothing matches or the path is outside the subset)."""
    steps = _steps(path)
    if steps is None:
        return []
    current = [obj]
    for op, arg in steps:
        nxt: list[Any] = []
        for value in current:
            if op == "field" and isinstance(value, dict) and arg in value:
                nxt.append(value[arg])
            elif op == "index" and isinstance(value, list):
                i = int(arg)
                if -len(value) <= i < len(value):
                    nxt.append(value[i])
            elif op == "star":
                if isinstance(value, list):
                    nxt.extend(value)
                elif isinstance(value, dict):
                    nxt.extend(value.values())
            elif op == "filter" and isinstance(value, list):
                field, cmp, want = orjson.loads(arg)
                for item in value:
                    got: Any = item
                    for part in str(field).split("."):
                        got = got.get(part) if isinstance(got, dict) else None
                    text = "true" if got is True else "false" if got is False else "" if got is None else str(got)
                    if (text == want) == (cmp == "=="):
                        nxt.append(item)
        current = nxt
    return current


def _cell(col: Obj, value: Any, *, now: dt.datetime) -> Any:
    ctype = col.get("type")
    if value is None:
        return None
    if ctype == "date":
        from kwire.api.tables import humanize_age

        return humanize_age(str(value), now=now) if isinstance(value, str) else None
    if ctype == "integer":
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if ctype == "number":
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if ctype == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def column_definitions(kind: Kind) -> list[Obj]:
    assert kind.custom is not None
    out = [NAME_COLUMN]
    for col in kind.custom.printer_columns:
        out.append(
            {
                "name": col.get("name", ""),
                "type": col.get("type", "string"),
                "format": col.get("format", ""),
                "description": col.get("description", ""),
                "priority": int(col.get("priority") or 0),
            }
        )
    return out


def cells(kind: Kind, obj: Obj, *, now: dt.datetime) -> list[Any]:
    assert kind.custom is not None
    out: list[Any] = [(obj.get("metadata") or {}).get("name", "")]
    for col in kind.custom.printer_columns:
        found = find(obj, str(col.get("jsonPath", "")))
        out.append(_cell(col, found[0] if found else None, now=now))
    return out
