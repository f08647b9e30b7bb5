"""Traefik v3's router rule language: a tokenizer and a recursive-descent parser, and the compilation of a parsed
rule to a Lua expression the data plane (nginx's Lua router, see `lua.py`) evaluates per request.

Mirrors Traefik v3's HTTP rule syntax (`pkg/muxer/http`): matchers `Host`, `HostRegexp`, `Path`, `PathPrefix`,
`PathRegexp`, `Header`, `HeaderRegexp`, `Method`, `Query`, `QueryRegexp`, `ClientIP`, combined with `&&`, `||`,
`!` and parentheses (precedence `!` > `&&` > `||`, as in Go, whose expression parser Traefik's rule parser uses);
arguments are backquoted raw strings or double-quoted strings with Go's escapes. A router's default priority is the
length of its rule. Semantics: Host is exact and case-insensitive (port ignored); Path is exact; PathPrefix is a
plain string prefix; the regexp matchers are unanchored searches; Header/Query match when any value is equal;
`Query(key)` alone matches when the key is present; ClientIP is the peer address (not X-Forwarded-For) against an
IP or CIDR.

Why a hand-written parser: the grammar is six productions; the Python parser libraries (lark, pyparsing) would add
a dependency and would not report errors in Traefik's terms. Errors carry the 1-based character position.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

# name -> the argument counts Traefik v3 accepts
MATCHERS: dict[str, tuple[int, ...]] = {
    "Host": (1,),
    "HostRegexp": (1,),
    "Path": (1,),
    "PathPrefix": (1,),
    "PathRegexp": (1,),
    "Header": (2,),
    "HeaderRegexp": (2,),
    "Method": (1,),
    "Query": (1, 2),
    "QueryRegexp": (2,),
    "ClientIP": (1,),
}
GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


class RuleError(ValueError):
    """An invalid rule; `pos` is the 1-based character position the error was found at."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(f"{message} at position {pos}")
        self.pos = pos


@dataclass(frozen=True)
class Matcher:
    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Not:
    expr: Expr


@dataclass(frozen=True)
class And:
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Or:
    left: Expr
    right: Expr


Expr = Matcher | Not | And | Or


@dataclass(frozen=True)
class Token:
    kind: str  # "ident", "string", "&&", "||", "!", "(", ")", ",", "end"
    value: str
    pos: int  # 1-based


def tokenize(rule: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    n = len(rule)
    while i < n:
        c = rule[i]
        if c in " \t\r\n":
            i += 1
        elif rule.startswith("&&", i) or rule.startswith("||", i):
            out.append(Token(rule[i : i + 2], rule[i : i + 2], i + 1))
            i += 2
        elif c in "!(),":
            out.append(Token(c, c, i + 1))
            i += 1
        elif c == "`":
            end = rule.find("`", i + 1)
            if end < 0:
                raise RuleError("raw string literal not terminated", i + 1)
            out.append(Token("string", rule[i + 1 : end], i + 1))
            i = end + 1
        elif c == '"':
            j = i + 1
            buf: list[str] = []
            while True:
                if j >= n or rule[j] == "\n":
                    raise RuleError("string literal not terminated", i + 1)
                ch = rule[j]
                if ch == '"':
                    break
                if ch == "\\":
                    if j + 1 >= n or rule[j + 1] not in GO_ESCAPES:
                        raise RuleError("unknown escape sequence", j + 1)
                    buf.append(GO_ESCAPES[rule[j + 1]])
                    j += 2
                    continue
                buf.append(ch)
                j += 1
            out.append(Token("string", "".join(buf), i + 1))
            i = j + 1
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (rule[j].isalnum() or rule[j] == "_"):
                j += 1
            out.append(Token("ident", rule[i:j], i + 1))
            i = j
        else:
            raise RuleError(f"illegal character {c!r}", i + 1)
    out.append(Token("end", "", n + 1))
    return out


class _Parser:
    """or := and ('||' and)* ; and := unary ('&&' unary)* ; unary := '!' unary | '(' or ')' | matcher ;
    matcher := ident '(' string (',' string)* ')'"""

    def __init__(self, rule: str) -> None:
        self.toks = tokenize(rule)
        self.i = 0

    def peek(self) -> Token:
        return self.toks[self.i]

    def take(self, kind: str, what: str) -> Token:
        t = self.toks[self.i]
        if t.kind != kind:
            found = "end of rule" if t.kind == "end" else repr(t.value)
            raise RuleError(f"expected {what}, found {found}", t.pos)
        self.i += 1
        return t

    def parse(self) -> Expr:
        if self.peek().kind == "end":
            raise RuleError("empty rule", 1)
        e = self.or_()
        t = self.peek()
        if t.kind != "end":
            raise RuleError(f"expected && or ||, found {t.value!r}", t.pos)
        return e

    def _chain(self, op: str, operand: Callable[[], Expr], node: type[Or] | type[And]) -> Expr:
        """operand (op operand)*, grouped to the left (Go's binary expressions)."""
        e = operand()
        while self.peek().kind == op:
            self.i += 1
            e = node(e, operand())
        return e

    def or_(self) -> Expr:
        return self._chain("||", self.and_, Or)

    def and_(self) -> Expr:
        return self._chain("&&", self.unary, And)

    def unary(self) -> Expr:
        t = self.peek()
        if t.kind == "!":
            self.i += 1
            return Not(self.unary())
        if t.kind == "(":
            self.i += 1
            e = self.or_()
            self.take(")", "')'")
            return e
        name = self.take("ident", "a matcher")
        if name.value not in MATCHERS:
            raise RuleError(f"unsupported function: {name.value}", name.pos)
        self.take("(", "'('")
        args = [self.take("string", "a string argument")]
        while self.peek().kind == ",":
            self.i += 1
            args.append(self.take("string", "a string argument"))
        self.take(")", "')' or ','")
        want = MATCHERS[name.value]
        if len(args) not in want:
            raise RuleError(
                f"unexpected number of parameters for {name.value}; got {len(args)}, expected one of {list(want)}",
                name.pos,
            )
        m = Matcher(name.value, tuple(a.value for a in args))
        _check(m, name.pos)
        return m


def _check(m: Matcher, pos: int) -> None:
    """Argument checks Traefik makes when it builds the matcher."""
    a = m.args
    if m.name in ("Path", "PathPrefix") and not a[0].startswith("/"):
        raise RuleError(f"{m.name}: path {a[0]!r} does not start with a '/'", pos)
    if m.name in ("Host", "Method") and not a[0]:
        raise RuleError(f"{m.name}: empty argument", pos)
    if m.name.endswith("Regexp"):
        try:
            re.compile(a[-1])
        except re.error as exc:
            raise RuleError(f"{m.name}: invalid regexp {a[-1]!r}: {exc}", pos) from exc
    if m.name == "ClientIP":
        try:
            net = ipaddress.ip_network(a[0], strict=False)
        except ValueError as exc:
            raise RuleError(f"ClientIP: {a[0]!r} is not an IP or CIDR", pos) from exc
        if net.version != 4:
            raise RuleError(f"ClientIP: IPv6 range {a[0]!r} is not supported (this cluster is IPv4)", pos)


@functools.lru_cache(maxsize=4096)  # a sync re-reads every rule; most are unchanged (bounded)
def parse(rule: str) -> Expr:
    """The rule's syntax tree, or RuleError."""
    return _Parser(rule).parse()


def priority(rule: str) -> int:
    """Traefik's default router priority: the rule's length."""
    return len(rule)


def pinned_hosts(e: Expr) -> frozenset[str] | None:
    """The exact host names a request must have for the rule to match, or None when any host may match (the
    router indexes routes by them: a request only tries the routes of its own host and the unpinned ones)."""
    if isinstance(e, Matcher):
        return frozenset([e.args[0].lower().rstrip(".")]) if e.name == "Host" else None
    if isinstance(e, Not):
        return None
    left, right = pinned_hosts(e.left), pinned_hosts(e.right)
    if isinstance(e, And):
        if left is None or right is None:
            return right if left is None else left
        return left & right
    return None if left is None or right is None else left | right


def hosts(e: Expr) -> list[str]:
    """Host(...) names the rule can match on (for SNI certificates)."""
    if isinstance(e, Matcher):
        return [e.args[0].lower()] if e.name == "Host" else []
    if isinstance(e, Not):
        return []
    return hosts(e.left) + hosts(e.right)


@functools.lru_cache(maxsize=16384)
def lua_str(s: str) -> str:
    """A Lua string literal: every byte that is not plainly safe as a decimal escape (no injection possible)."""
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ./_-:*@"
    return '"' + "".join(chr(b) if b in safe else f"\\{b:03d}" for b in s.encode()) + '"'


def cidr_lua(cidr: str) -> str:
    """(prefix value, bits) arguments of the Lua `K.cidr` check for an IPv4 network."""
    net = ipaddress.ip_network(cidr, strict=False)
    bits = net.prefixlen
    return f"{int(net.network_address) >> (32 - bits)}, {bits}"


@functools.lru_cache(maxsize=4096)
def to_lua(e: Expr) -> str:
    """A Lua expression over the request table `r` and helpers `K` (see lua.py's K functions)."""
    if isinstance(e, Not):
        return f"not ({to_lua(e.expr)})"
    if isinstance(e, And):
        return f"({to_lua(e.left)} and {to_lua(e.right)})"
    if isinstance(e, Or):
        return f"({to_lua(e.left)} or {to_lua(e.right)})"
    a = [lua_str(x) for x in e.args]
    match e.name:
        case "Host":
            return f"r.host == {lua_str(e.args[0].lower().rstrip('.'))}"
        case "HostRegexp":
            return f"K.re(r.host, {a[0]})"
        case "Path":
            return f"r.path == {a[0]}"
        case "PathPrefix":
            return f"K.prefix(r.path, {a[0]})"
        case "PathRegexp":
            return f"K.re(r.path, {a[0]})"
        case "Header":
            return f"K.header(r, {a[0]}, {a[1]})"
        case "HeaderRegexp":
            return f"K.header_re(r, {a[0]}, {a[1]})"
        case "Method":
            return f"K.method(r) == {lua_str(e.args[0].upper())}"
        case "Query":
            return f"K.query(r, {a[0]}, {a[1] if len(a) > 1 else 'nil'})"
        case "QueryRegexp":
            return f"K.query_re(r, {a[0]}, {a[1]})"
        case "ClientIP":
            return f"K.cidr(r, {cidr_lua(e.args[0])})"
    raise AssertionError(e.name)
