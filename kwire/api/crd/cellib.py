"""The Kubernetes CEL library functions that cel-python lacks, for `x-kubernetes-validations`.

Mirrors what kube-apiserver adds to CEL for CRD rules: cel-go's `ext.Strings` (charAt, indexOf, lastIndexOf,
lowerAscii, upperAscii, replace, split, substring, trim, join), the Kubernetes list library (isSorted, sum, min,
max, indexOf, lastIndexOf), regex (find, findAll) and `isURL`. Called method-style (`self.lowerAscii()`) or as
functions; cel-python passes the receiver first. Functions not here (quantity, ip, cidr, url(), format...) make a
rule that uses them unenforced (see `cel.py`).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from typing import Any

from celpy import celtypes


def _str(value: Any) -> celtypes.StringType:
    return celtypes.StringType(value)


def _int(value: int) -> celtypes.IntType:
    return celtypes.IntType(value)


def _char_at(s: Any, i: Any) -> Any:
    text = str(s)
    return _str(text[int(i)] if int(i) < len(text) else "")


def _index_of(target: Any, needle: Any, *start: Any) -> Any:
    if isinstance(target, list):
        return _int(next((i for i, v in enumerate(target) if v == needle), -1))
    return _int(str(target).find(str(needle), int(start[0]) if start else 0))


def _last_index_of(target: Any, needle: Any) -> Any:
    if isinstance(target, list):
        return _int(max((i for i, v in enumerate(target) if v == needle), default=-1))
    return _int(str(target).rfind(str(needle)))


def _replace(s: Any, old: Any, new: Any, *limit: Any) -> Any:
    count = int(limit[0]) if limit else -1
    return _str(str(s).replace(str(old), str(new), count))


def _split(s: Any, sep: Any, *limit: Any) -> Any:
    parts = str(s).split(str(sep), int(limit[0]) - 1) if limit and int(limit[0]) > 0 else str(s).split(str(sep))
    return celtypes.ListType([_str(p) for p in parts])


def _substring(s: Any, start: Any, *end: Any) -> Any:
    text = str(s)
    return _str(text[int(start) : int(end[0])] if end else text[int(start) :])


def _join(items: Any, *sep: Any) -> Any:
    return _str((str(sep[0]) if sep else "").join(str(x) for x in items))


def _is_sorted(items: Any) -> Any:
    values = list(items)
    return celtypes.BoolType(all(values[i] <= values[i + 1] for i in range(len(values) - 1)))


def _sum(items: Any) -> Any:
    values = list(items)
    total: Any = values[0] if values else _int(0)
    for v in values[1:]:
        total = total + v
    return total


def _find(s: Any, pattern: Any) -> Any:
    m = re.search(str(pattern), str(s))
    return _str(m.group(0) if m else "")


def _find_all(s: Any, pattern: Any, *limit: Any) -> Any:
    found = [m.group(0) for m in re.finditer(str(pattern), str(s))]
    if limit and int(limit[0]) >= 0:
        found = found[: int(limit[0])]
    return celtypes.ListType([_str(f) for f in found])


def _is_url(s: Any) -> Any:
    try:
        parts = urllib.parse.urlparse(str(s))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(bool(parts.scheme) and (bool(parts.netloc) or bool(parts.path)))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "charAt": _char_at,
    "indexOf": _index_of,
    "lastIndexOf": _last_index_of,
    "lowerAscii": lambda s: _str(str(s).lower()),
    "upperAscii": lambda s: _str(str(s).upper()),
    "replace": _replace,
    "split": _split,
    "substring": _substring,
    "trim": lambda s: _str(str(s).strip()),
    "join": _join,
    "isSorted": _is_sorted,
    "sum": _sum,
    "min": lambda items: min(list(items)),
    "max": lambda items: max(list(items)),
    "find": _find,
    "findAll": _find_all,
    "isURL": _is_url,
}
