"""Field selectors (`fieldSelector=metadata.name=x,spec.nodeName!=`), evaluated on the JSON object.

kube-apiserver supports a per-kind list of fields; we accept any dotted path into the object, which is a
superset, and compare as strings (missing fields compare as "").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kwire.api.errors import bad_request


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    path: tuple[str, ...]
    value: str
    negate: bool


def _lookup(obj: Any, path: tuple[str, ...]) -> str:
    cur = obj
    for part in path:
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, obj: dict[str, Any]) -> bool:
        for r in self.requirements:
            if (_lookup(obj, r.path) == r.value) == r.negate:
                return False
        return True

    def value_of(self, path: str) -> str | None:
        """The required value of a field when the selector pins it (`metadata.name=x`)."""
        want = tuple(path.split("."))
        for r in self.requirements:
            if r.path == want and not r.negate:
                return r.value
        return None


def parse_fields(text: str | None) -> FieldSelector:
    if not text:
        return FieldSelector()
    reqs: list[FieldRequirement] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part:
            k, v = part.split("!=", 1)
            neg = True
        elif "==" in part:
            k, v = part.split("==", 1)
            neg = False
        elif "=" in part:
            k, v = part.split("=", 1)
            neg = False
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        k = k.strip()
        if not k:
            raise bad_request(f"invalid selector: '{text}'")
        reqs.append(FieldRequirement(tuple(k.split(".")), v.strip(), neg))
    return FieldSelector(tuple(reqs))
