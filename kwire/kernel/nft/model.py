"""The typed nftables model every kwire table is computed as: Table, Chain (base chains carry hook, type, priority
and policy as data), Set, Map and named limits; rules are any frozen value that renders to one nft rule.

This mirrors what kube-proxy's knftables gives Go code (`knftables.Table`, `Chain`, `Set`, `Map`, `Element`,
`Rule`): the owners (service proxy, NetworkPolicy, Flannel, ServiceLB) compute a whole desired `Table` as plain
immutable data, and one place (`diff.py`) turns (what is in the kernel, what should be) into one transaction.
Domain rules (the proxy's and NetworkPolicy's `Rule` dataclasses) stay typed so that their packet tracers can walk
the same chains the kernel is given, starting at the base chains.

Set and map elements are kept as their rendered nft text (`"10.43.0.1 . tcp . 80"`, `"goto service-..."`): the
element text is what the kernel is given and what the diff compares, and rendering it once per change (not per
sync) is what keeps a partial sync of a 10,000-service table cheap.
"""

from __future__ import annotations

import hashlib
from base64 import b32encode
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol


class Rule(Protocol):
    """One nft rule of a chain: a hashable value that renders to the rule's text (without `add rule ...`)."""

    def render(self) -> str: ...


@dataclass(frozen=True)
class Text:
    """A rule given as its nft text, for rules no tracer needs to look into (Flannel's, ServiceLB's)."""

    text: str
    comment: str = ""

    def render(self) -> str:
        return rule_text(self.text, comment=self.comment)


@dataclass(frozen=True)
class Hook:
    """What makes a chain a base chain: `type filter hook forward priority 0; policy accept;`."""

    type: str  # filter | nat | route
    hook: str  # prerouting | input | forward | output | postrouting
    priority: str  # a number or a standard name (dstnat, srcnat, filter)
    policy: str = "accept"

    def render(self) -> str:
        return f"type {self.type} hook {self.hook} priority {self.priority}; policy {self.policy};"


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Rule, ...] = ()
    hook: Hook | None = None  # None: a regular chain, entered only by jump/goto/vmap
    comment: str = ""  # the full key of the object the chain is for, when its name had to truncate it

    @property
    def is_base(self) -> bool:
        return self.hook is not None


@dataclass(frozen=True)
class Set:
    """A named set. `flags` as nft spells them (`interval`, `dynamic`, `timeout`); `timeout` in seconds."""

    name: str
    type: str  # "ipv4_addr", "ipv4_addr . inet_proto . inet_service"
    flags: tuple[str, ...] = ()
    timeout: int = 0
    elements: frozenset[str] = frozenset()

    def declaration(self) -> str:
        out = [f"type {self.type};"]
        if self.flags:
            out.append(f"flags {','.join(self.flags)};")
        if self.timeout:
            out.append(f"timeout {self.timeout}s;")
        return " ".join(out)

    def same_shape(self, other: Set) -> bool:
        return (self.type, self.flags, self.timeout) == (other.type, other.flags, other.timeout)


@dataclass(frozen=True)
class Map:
    """A named verdict (or data) map: element key text -> value text (`goto chain`, `drop`, `jump chain`)."""

    name: str
    type: str  # key type, "ipv4_addr . inet_proto . inet_service"
    value: str = "verdict"
    elements: Mapping[str, str] = field(default_factory=dict)

    def declaration(self) -> str:
        return f"type {self.type} : {self.value};"

    def same_shape(self, other: Map) -> bool:
        return (self.type, self.value) == (other.type, other.value)


@dataclass(frozen=True)
class Table:
    """One nft table as kwire wants it. Two tables compare equal exactly when the kernel would hold the same."""

    family: str
    name: str
    chains: Mapping[str, Chain] = field(default_factory=dict)
    sets: Mapping[str, Set] = field(default_factory=dict)
    maps: Mapping[str, Map] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)  # named limit -> "rate 5/second"

    @property
    def ident(self) -> tuple[str, str]:
        return (self.family, self.name)

    def base_chains(self) -> list[Chain]:
        return [c for c in self.chains.values() if c.hook is not None]


def table(
    family: str,
    name: str,
    *,
    chains: list[Chain] | tuple[Chain, ...] = (),
    sets: list[Set] | tuple[Set, ...] = (),
    maps: list[Map] | tuple[Map, ...] = (),
    limits: Mapping[str, str] | None = None,
) -> Table:
    """A Table from lists of its parts (each keyed by its name)."""
    return Table(
        family=family,
        name=name,
        chains={c.name: c for c in chains},
        sets={s.name: s for s in sets},
        maps={m.name: m for m in maps},
        limits=dict(limits or {}),
    )


def rule_text(*parts: str, comment: str = "") -> str:
    """A rule's text from its statements in order (empty ones left out) and an optional comment: what the typed
    `Rule`s of the proxy and NetworkPolicy render through."""
    text = " ".join(filter(None, parts))
    return f'{text} comment "{comment_text(comment)}"' if comment else text


def comment_text(text: str) -> str:
    """nft comments are at most 128 bytes and may not contain a double quote."""
    return text.replace('"', "'").encode()[:127].decode(errors="ignore")


_DIGEST_LEN = 8


def digest(text: str, length: int = _DIGEST_LEN) -> str:
    """A stable, name-safe hash of `text` (lowercase base32 of its SHA-256)."""
    return b32encode(hashlib.sha256(text.encode()).digest()).decode()[:length].lower()


@lru_cache(maxsize=65536)
def object_id(*parts: str, length: int = 60) -> str:
    """The one naming scheme for per-object chains and sets (kube-proxy's hashAndTruncate): a stable hash of the
    object key, then as much of the key as fits. The name is stable across restarts and readable; the full key is
    kept in the chain's comment (`Chain.comment`, see `key_comment`) when the name had to truncate it."""
    text = "/".join(parts)
    return f"{digest(text)}-{_readable(text)}"[:length]


def _readable(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text)


def key_comment(ident: str, *parts: str) -> str:
    """The comment that makes an `object_id` reversible: the full key when the id had to truncate it, else "" (an
    untruncated id spells the key: Kubernetes names and port names never contain "_", the separator). Only long
    keys pay for a comment, which keeps a 10,000-service table as cheap to load as before."""
    text = "/".join(parts)
    # The readable part spells the key one character for one: the id is whole exactly when it has its full length.
    return "" if len(ident) == _DIGEST_LEN + 1 + len(text) else text
