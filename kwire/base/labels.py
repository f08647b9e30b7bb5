"""Label selectors: the query-string form (`a=b,c!=d,e in (x,y),!f`) and the LabelSelector object form.

Both compile to a `Selector` whose `matches(labels)` answers as apimachinery's labels.Selector does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        present = self.key in labels
        if op in ("=", "in"):
            return present and labels[self.key] in self.values
        # != and notin match objects without the key too (apimachinery semantics).
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...]
    match_nothing: bool = False

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.match_nothing:
            return False
        lab = labels or {}
        return all(r.matches(lab) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements and not self.match_nothing


EVERYTHING = Selector(())
NOTHING = Selector((), match_nothing=True)

_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[^\s=!(),]+)")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise SelectorError(f"unable to parse requirement: {text!r}")
        out.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def parse(text: str | None) -> Selector:
    """Parse the string form used in `labelSelector=` query parameters and `kubectl -l`."""
    if not text or not text.strip():
        return EVERYTHING
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def need(j: int) -> str:
        if j >= len(toks):
            raise SelectorError(f"unable to parse requirement: unexpected end of {text!r}")
        return toks[j]

    while i < len(toks):
        t = toks[i]
        if t == "!":
            key = need(i + 1)
            reqs.append(Requirement(key, "!", frozenset()))
            i += 2
        else:
            key = t
            if key in (",", "(", ")", "=", "==", "!="):
                raise SelectorError(f"unable to parse requirement: found {key!r}, expected: identifier")
            nxt = toks[i + 1] if i + 1 < len(toks) else ","
            if nxt == ",":
                reqs.append(Requirement(key, "exists", frozenset()))
                i += 1
            elif nxt in ("=", "==", "!="):
                val = toks[i + 2] if i + 2 < len(toks) and toks[i + 2] != "," else ""
                reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", frozenset([val])))
                i += 3 if val else 2
            elif nxt in ("in", "notin"):
                if need(i + 2) != "(":
                    raise SelectorError(f"unable to parse requirement: expected '(' after {nxt}")
                j = i + 3
                vals: list[str] = []
                while need(j) != ")":
                    if toks[j] != ",":
                        vals.append(toks[j])
                    j += 1
                reqs.append(Requirement(key, nxt, frozenset(vals)))
                i = j + 1
            else:
                raise SelectorError(f"unable to parse requirement: found {nxt!r}, expected: in, notin, =, ==, !=")
        if i < len(toks):
            if toks[i] != ",":
                raise SelectorError(f"unable to parse requirement: found {toks[i]!r}, expected: ','")
            i += 1
    return Selector(tuple(reqs))


_EXPR_OPS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


def from_label_selector(sel: Mapping[str, Any] | None) -> Selector:
    """A metav1.LabelSelector dict; None selects nothing and {} everything (LabelSelectorAsSelector)."""
    if sel is None:
        return NOTHING
    reqs = [Requirement(k, "=", frozenset([str(v)])) for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        op = _EXPR_OPS.get(expr.get("operator", ""))
        if op is None:
            raise SelectorError(f"{expr.get('operator')!r} is not a valid label selector operator")
        reqs.append(Requirement(expr.get("key", ""), op, frozenset(expr.get("values") or [])))
    return Selector(tuple(reqs))


def from_map(labels: Mapping[str, str] | None) -> Selector:
    """A plain map selector (Service/ReplicationController spec.selector); empty selects nothing."""
    if not labels:
        return NOTHING
    return Selector(tuple(Requirement(k, "=", frozenset([v])) for k, v in sorted(labels.items())))


def format_map(labels: Mapping[str, str] | None) -> str:
    if not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
