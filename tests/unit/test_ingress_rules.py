"""Traefik v3's rule language (kwire.ingress.rules): tokenizing, precedence, errors with their position, the
default priority, and the Lua each matcher compiles to."""

from __future__ import annotations

import pytest

from kwire.ingress import rules
from kwire.ingress.rules import And, Matcher, Not, Or, RuleError, parse


def m(name: str, *args: str) -> Matcher:
    return Matcher(name, args)


def test_precedence_not_over_and_over_or() -> None:
    e = parse("Host(`a.com`) || Host(`b.com`) && !Path(`/x`)")
    assert e == Or(m("Host", "a.com"), And(m("Host", "b.com"), Not(m("Path", "/x"))))
    e = parse("(Host(`a.com`) || Host(`b.com`)) && PathPrefix(`/api`)")
    assert e == And(Or(m("Host", "a.com"), m("Host", "b.com")), m("PathPrefix", "/api"))
    e = parse("!(Method(`GET`) || Method(`HEAD`))")
    assert e == Not(Or(m("Method", "GET"), m("Method", "HEAD")))
    # left-associative chains
    assert parse("Path(`/a`) && Path(`/b`) && Path(`/c`)") == And(
        And(m("Path", "/a"), m("Path", "/b")), m("Path", "/c")
    )


def test_every_matcher_and_string_forms() -> None:
    rule = (
        'Host(`a.com`) && HostRegexp(`^.+\\.b\\.com$`) && Path("/p") && PathPrefix(`/q`) && PathRegexp(`^/r/[0-9]+`)'
        " && Header(`X-A`, `1`) && HeaderRegexp(`X-B`, `^v`) && Method(`POST`) && Query(`k`, `v`) && Query(`flag`)"
        " && QueryRegexp(`k`, `^v`) && ClientIP(`10.0.0.0/8`)"
    )
    e = parse(rule)
    names = []
    while isinstance(e, And):
        assert isinstance(e.right, Matcher)
        names.append(e.right.name)
        e = e.left
    assert isinstance(e, Matcher)
    names.append(e.name)
    assert sorted(names) == sorted([*rules.MATCHERS, "Query"])
    assert parse('Header("X-A", "say \\"hi\\"\\n")') == m("Header", "X-A", 'say "hi"\n')
    assert parse("Path(`/a\\b`)") == m("Path", "/a\\b")  # raw strings keep backslashes


@pytest.mark.parametrize(
    ("rule", "message", "pos"),
    [
        ("", "empty rule", 1),
        ("Host(`a.com`", "expected ')' or ','", 13),
        ("Host(`a.com`) &&", "expected a matcher, found end of rule", 17),
        ("Host(`a.com`) Path(`/`)", "expected && or ||", 15),
        ("Hots(`a.com`)", "unsupported function: Hots", 1),
        ("Host(`a.com`, `b.com`)", "got 2, expected one of [1]", 1),
        ("Header(`X`)", "got 1, expected one of [2]", 1),
        ("Path(`nope`)", "does not start with a '/'", 1),
        ("Host(`a.com) && Path(`/`)", "illegal character '/'", 23),  # the raw string ran to the next backquote
        ("Host(`a.com`) & Path(`/`)", "illegal character '&'", 15),
        ("PathRegexp(`[a-`)", "invalid regexp", 1),
        ("ClientIP(`300.1.1.1`)", "not an IP or CIDR", 1),
        ("ClientIP(`fd00::/8`)", "IPv6", 1),
        ('Host("a.com)', "string literal not terminated", 6),
        ("Host(a)", "expected a string argument, found 'a'", 6),
        ("(Host(`a.com`)", "expected ')'", 15),
    ],
)
def test_errors_carry_their_position(rule: str, message: str, pos: int) -> None:
    with pytest.raises(RuleError) as err:
        parse(rule)
    assert message in str(err.value)
    assert err.value.pos == pos, str(err.value)


def test_priority_is_the_rule_length_and_hosts_are_extracted() -> None:
    rule = "Host(`a.com`) && PathPrefix(`/api`)"
    assert rules.priority(rule) == len(rule) == 35
    assert rules.hosts(parse("(Host(`A.com`) || Host(`b.com`)) && !Host(`c.com`)")) == ["a.com", "b.com"]
    pinned = rules.pinned_hosts
    assert pinned(parse("(Host(`A.com`) || Host(`b.com`)) && !Host(`c.com`)")) == {"a.com", "b.com"}
    assert pinned(parse("Host(`a.com`) && Host(`b.com`)")) == set()  # matches nothing
    assert pinned(parse("Host(`a.com`) || Path(`/`)")) is None and pinned(parse("!Host(`a.com`)")) is None
    assert pinned(parse("Path(`/`) && Host(`a.com`)")) == {"a.com"}


def test_lua_compilation_quotes_every_argument() -> None:
    lua = rules.to_lua(parse('Host(`A.Com`) && !Header(`X"]] os.exit()`, `v`) || ClientIP(`192.168.1.7/24`)'))
    assert lua == (
        '((r.host == "a.com" and not (K.header(r, "X\\034\\093\\093 os.exit\\040\\041", "v")))'
        " or K.cidr(r, 12625921, 24))"
    )
    assert rules.to_lua(parse("Method(`get`)")) == 'K.method(r) == "GET"'
    assert rules.to_lua(parse("Query(`k`)")) == 'K.query(r, "k", nil)'
