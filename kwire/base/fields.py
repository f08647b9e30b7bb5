"""Reading a field of an API object that may be malformed: a dict or list where one is expected, else empty.

API objects are plain JSON dicts; a field a client wrote with the wrong type (a string where a map belongs, null)
counts as absent, as the Go structs' decoding would have refused or zeroed it. One spelling for every reader
(controllers, authorization, validation, quota, the proxy's model) instead of a private copy in each.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]  # an API object as the JSON it is sent in


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is a dict, else an empty dict."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """`value` if it is a list, else an empty list."""
    return value if isinstance(value, list) else []


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    """The object's metadata (empty when missing or malformed)."""
    return as_dict(obj.get("metadata"))


def spec(obj: dict[str, Any]) -> dict[str, Any]:
    return as_dict(obj.get("spec"))


def status(obj: dict[str, Any]) -> dict[str, Any]:
    return as_dict(obj.get("status"))


def set_or_omit(obj: dict[str, Any], key: str, value: Any) -> None:
    """Write a field the way Go's `omitempty` serializes it: `obj[key] = value`, or no key at all when `value` is
    empty (an empty list or map, "", None, 0)."""
    if value:
        obj[key] = value
    else:
        obj.pop(key, None)
