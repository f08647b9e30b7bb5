"""From (the table in the kernel, the table wanted) to ONE nft transaction: the only place kwire writes nft text.

- `replace(desired)`: the whole table in one transaction (`add table` + `delete table` + the new contents as one
  `table { }` block, which nft parses and sends as a few large batches). Used for the first sync, after a failure
  and when the table vanished; connections already established keep their conntrack state.
- `delete(family, name)`: remove the table (a no-op when it is not there).
- `diff(current, desired)`: only what differs, ordered so that every reference is valid at each step inside the
  transaction (knftables' transaction ordering): new sets, maps and chains are declared first; changed sets get
  their elements updated; map elements that go or change are deleted; changed chains are flushed and refilled; new
  map elements are added; only then are chains, sets and maps no longer used flushed and deleted. A change nft
  cannot make in place (a base chain's hook, a set's type or flags, the named limits) becomes a `replace`.

Values are compared by identity first and by equality second, so an owner that keeps unchanged chains as the
same objects (the proxy at 10,000 services) pays almost nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import compress
from operator import is_not, ne
from typing import TypeVar

from kwire.kernel.nft.model import Chain, Map, Set, Table, comment_text

V = TypeVar("V")


@dataclass(frozen=True)
class Transaction:
    """One nft transaction (all of it or none of it), as the lines of the script nft is given."""

    family: str
    table: str
    lines: tuple[str, ...]
    kind: str  # "replace" | "update" | "delete"

    @property
    def empty(self) -> bool:
        return not self.lines

    def render(self) -> str:
        return "\n".join(self.lines) + ("\n" if self.lines else "")


def _elements(items: Iterable[str]) -> str:
    return ", ".join(items)


def _map_elements(m: Mapping[str, str]) -> str:
    return _elements(f"{k} : {v}" for k, v in sorted(m.items()))


def _set_decl(s: Set, *, indent: str = "") -> str:
    elems = f" elements = {{ {_elements(sorted(s.elements))} }}" if s.elements else ""
    return f"{indent}set {s.name} {{ {s.declaration()}{elems} }}"


def _map_decl(m: Map, *, indent: str = "") -> str:
    elems = f" elements = {{ {_map_elements(m.elements)} }}" if m.elements else ""
    return f"{indent}map {m.name} {{ {m.declaration()}{elems} }}"


def _chain_spec(c: Chain) -> str:
    """What goes inside a chain's braces when it is declared: its hook and its comment."""
    parts = [c.hook.render()] if c.hook is not None else []
    if c.comment:
        parts.append(f'comment "{comment_text(c.comment)}";')
    return " ".join(parts)


def _chain_head(c: Chain) -> str:
    spec = _chain_spec(c)
    return f"chain {c.name} {{ {spec} }}" if spec else f"chain {c.name} {{ }}"


def replace(desired: Table) -> Transaction:
    """The whole table, atomically replacing whatever is there (or creating it)."""
    fam, name = desired.ident
    out = [f"add table {fam} {name}", f"delete table {fam} {name}", f"table {fam} {name} {{"]
    out += [f"  limit {n} {{ {spec} }}" for n, spec in sorted(desired.limits.items())]
    out += [_set_decl(s, indent="  ") for _, s in sorted(desired.sets.items())]
    # Chains are declared (empty) before the maps whose verdicts name them and the rules that jump to them.
    chains = [desired.chains[n] for n in sorted(desired.chains)]
    out += [f"  {_chain_head(c)}" for c in chains]
    out += [_map_decl(m, indent="  ") for _, m in sorted(desired.maps.items())]
    for c in chains:
        if c.rules:
            out.append(f"  chain {c.name} {{")
            out += [f"    {r.render()}" for r in c.rules]
            out.append("  }")
    out.append("}")
    return Transaction(fam, name, tuple(out), "replace")


def delete(family: str, name: str) -> Transaction:
    """Remove the table; `add table` first makes the delete valid when it does not exist."""
    return Transaction(family, name, (f"add table {family} {name}", f"delete table {family} {name}"), "delete")


def _touched(current: Mapping[str, V], desired: Mapping[str, V]) -> list[str]:
    """Names in `desired` whose value is not the very object `current` holds (new or possibly changed), found with
    C-level iteration: at 10,000 chains this is what keeps a one-service sync cheap."""
    names = list(desired)
    return list(compress(names, map(is_not, map(current.get, names), desired.values())))


def _differing(current: Mapping[str, str], desired: Mapping[str, str]) -> list[str]:
    """Keys of `desired` that `current` lacks or maps to another value (C-level iteration, as `_touched`)."""
    keys = list(desired)
    return list(compress(keys, map(ne, map(current.get, keys), desired.values())))


def _needs_replace(cur: Table, new: Table, touched: list[str]) -> bool:
    """Whether nft cannot make the change in place: the table's identity or limits, a base chain added, removed or
    re-hooked, a set's or map's type or flags."""
    if cur.ident != new.ident or cur.limits != new.limits:
        return True
    for n in touched:
        o, c = cur.chains.get(n), new.chains[n]
        if o is None:
            if c.hook is not None:
                return True
        elif o.hook != c.hook or o.comment != c.comment:
            return True
    if any(cur.chains[n].hook is not None for n in cur.chains.keys() - new.chains.keys()):
        return True
    for n, s in new.sets.items():
        os_ = cur.sets.get(n)
        if os_ is not None and os_ is not s and not os_.same_shape(s):
            return True
    for n, m in new.maps.items():
        om = cur.maps.get(n)
        if om is not None and om is not m and not om.same_shape(m):
            return True
    return False


def diff(current: Table | None, desired: Table) -> Transaction:
    """The transaction taking the kernel from `current` (None: unknown or absent) to `desired`."""
    if current is None:
        return replace(desired)
    touched = _touched(current.chains, desired.chains)
    if _needs_replace(current, desired, touched):
        return replace(desired)
    fam, t = desired.ident
    pre = f"{fam} {t}"
    out: list[str] = []
    # 1. Sets: declare new ones, update changed ones (interval sets are refilled: nft merges adjacent ranges).
    for name, s in sorted(desired.sets.items()):
        os_ = current.sets.get(name)
        if os_ is s:
            continue
        if os_ is None:
            out.append(f"add set {pre} {name} {{ {s.declaration()} }}")
            if s.elements:
                out.append(f"add element {pre} {name} {{ {_elements(sorted(s.elements))} }}")
        elif os_.elements != s.elements:
            if "interval" in s.flags:
                out.append(f"flush set {pre} {name}")
                if s.elements:
                    out.append(f"add element {pre} {name} {{ {_elements(sorted(s.elements))} }}")
            else:
                removed_elems, new_elems = os_.elements - s.elements, s.elements - os_.elements
                if removed_elems:
                    out.append(f"delete element {pre} {name} {{ {_elements(sorted(removed_elems))} }}")
                if new_elems:
                    out.append(f"add element {pre} {name} {{ {_elements(sorted(new_elems))} }}")
    for name, m in sorted(desired.maps.items()):
        if name not in current.maps:
            out.append(f"add map {pre} {name} {{ {m.declaration()} }}")
    # 2. Chains: declare new ones, flush changed ones.
    changed: list[str] = []
    for name in touched:
        o, c = current.chains.get(name), desired.chains[name]
        if o is None or (o.rules is not c.rules and o.rules != c.rules):
            changed.append(name)
    changed.sort()
    for name in changed:
        if name in current.chains:
            out.append(f"flush chain {pre} {name}")
        else:
            spec = _chain_spec(desired.chains[name])
            out.append(f"add chain {pre} {name} {{ {spec} }}" if spec else f"add chain {pre} {name}")
    # 3. Map elements that go or change go first (they may name chains about to be deleted).
    added: list[tuple[str, dict[str, str]]] = []
    for name, m in sorted(desired.maps.items()):
        om = current.maps.get(name)
        old: Mapping[str, str] = om.elements if om is not None else {}
        if om is m or old is m.elements:
            continue
        stale = sorted(_differing(m.elements, old))
        if stale:
            out.append(f"delete element {pre} {name} {{ {_elements(stale)} }}")
        fresh = {k: m.elements[k] for k in _differing(old, m.elements)}
        if fresh:
            added.append((name, fresh))
    # 4. Fill the new and changed chains.
    for name in changed:
        out += [f"add rule {pre} {name} {r.render()}" for r in desired.chains[name].rules]
    # 5. New and changed map elements (their chains exist now).
    for name, fresh in added:
        out.append(f"add element {pre} {name} {{ {_map_elements(fresh)} }}")
    # 6. What nothing references any more: chains (flushed first, as they may jump to each other), maps, sets.
    removed = sorted(current.chains.keys() - desired.chains.keys())
    out += [f"flush chain {pre} {n}" for n in removed]
    out += [f"delete chain {pre} {n}" for n in removed]
    out += [f"delete map {pre} {n}" for n in sorted(current.maps) if n not in desired.maps]
    out += [f"delete set {pre} {n}" for n in sorted(current.sets) if n not in desired.sets]
    return Transaction(fam, t, tuple(out), "update")
