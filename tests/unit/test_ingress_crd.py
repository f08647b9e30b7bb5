"""IngressRoutes and Middlewares -> compiled routes and middlewares (kwire.ingress.crd), without a cluster: entry
points and TLS, priorities and their order, service references, middleware compilation and what is reported
instead of served."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kwire.ingress import crd, router
from kwire.ingress.model import Backend


def obj(kind: str, name: str, spec: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec}


def ir(name: str, *routes: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return obj("IngressRoute", name, {"routes": list(routes), **spec})


def rt(match: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "Rule", "match": match, "services": kw.pop("services", [{"name": "s", "port": 80}]), **kw}


def test_entrypoints_tls_priority_order_and_services() -> None:
    c, _ = crd.build(
        [
            ir("a", rt("Host(`a.com`)"), rt("Host(`a.com`) && PathPrefix(`/x`)"), rt("Path(`/p`)", priority=99)),
            ir("t", rt("Host(`t.com`)", services=[{"name": "s", "port": "http", "weight": 3}, {"name": "u", "port": 8}]),
               tls={"secretName": "t-tls", "domains": [{"main": "extra.com", "sans": ["alt.com"]}]}),
        ],
        [],
        {},
    )  # fmt: skip
    assert [r.id for r in c.routes] == ["default/a#2", "default/a#1", "default/a#0", "default/t#0"]
    assert [r.priority for r in c.routes] == [99, 33, 13, 13]
    assert c.routes[0].entrypoints == ("web", "websecure")
    t = c.routes[3]
    assert t.entrypoints == ("websecure",)  # a TLS router
    assert [(s.backend, s.weight) for s in t.services] == [
        (Backend("default", "s", "http"), 3),
        (Backend("default", "u", "8"), 1),
    ]
    assert c.tls == {h: ("default", "t-tls", "IngressRoute:default/t") for h in ("t.com", "extra.com", "alt.com")}
    assert c.backends() == {
        Backend("default", "s", "80"),
        Backend("default", "s", "http"),
        Backend("default", "u", "8"),
    }
    assert not c.problems


def test_what_is_reported_instead_of_served() -> None:
    c, _ = crd.build(
        [
            ir("x",
               rt("Host(`a.com`) &&"),
               rt("Host(`b.com`)", services=[{"name": "s", "port": 80, "namespace": "other"}]),
               rt("Host(`c.com`)", services=[{"name": "ts", "kind": "TraefikService"}]),
               rt("Host(`d.com`)", middlewares=[{"name": "m", "namespace": "other"}]),
               rt("Host(`e.com`)", syntax="v2"),
               rt("Host(`ok.com`)"),
               entryPoints=["web", "traefik"]),
        ],
        [],
        {},
    )  # fmt: skip
    assert [r.rule for r in c.routes] == ["Host(`ok.com`)"]
    p = c.problems["IngressRoute:default/x"]
    assert "unknown entryPoints ['traefik']" in p[0]
    assert "spec.routes[0].match 'Host(`a.com`) &&': expected a matcher, found end of rule at position 17" in p[1]
    assert any("Service other/s is in another namespace" in x for x in p)
    assert any("kind TraefikService: only Kubernetes Services" in x for x in p)
    assert any("allowCrossNamespace is false" in x for x in p)
    assert any("only Traefik v3's rule syntax" in x for x in p)
    assert all(x.endswith("this route is not served") for x in p[1:])


def secret(users: str) -> dict[str, Any]:
    return {"data": {"users": base64.b64encode(users.encode()).decode()}}


@pytest.mark.parametrize(
    ("spec", "lua"),
    [
        ({"redirectScheme": {"scheme": "https", "port": "8443"}},
         '{["t"] = "redirect", ["scheme"] = "https", ["port"] = "8443", ["permanent"] = false}'),
        ({"stripPrefix": {"prefixes": ["/a", "/b"]}}, '{t = "strip", prefixes = {"/a", "/b"}}'),
        ({"addPrefix": {"prefix": "v1"}}, '{["t"] = "addprefix", ["prefix"] = "/v1"}'),
        ({"headers": {"customRequestHeaders": {"X-A": "1", "X-B": ""}, "customResponseHeaders": {"X-C": "c"}}},
         '{t = "headers", req = {{"X-A", "1"}, {"X-B", ""}}, resp = {{"X-C", "c"}}}'),
        ({"ipAllowList": {"sourceRange": ["10.0.0.0/8", "192.168.1.5"], "ipStrategy": {"depth": 2}}},
         '{t = "allow", ranges = {{10, 8}, {3232235781, 32}}, depth = 2, status = 403}'),
        ({"rateLimit": {"average": 30, "period": "1m", "burst": 5}},
         '{["t"] = "ratelimit", ["rate"] = 0.5, ["burst"] = 5, ["key"] = "ip", ["header"] = "", ["depth"] = 0}'),
        ({"basicAuth": {"secret": "users", "realm": "r"}},
         '{t = "basicauth", users = {["ann"] = "\\036apr1\\036x\\036y"}, realm = "r", remove = false, field = ""}'),
    ],
)  # fmt: skip
def test_middleware_compilation(spec: dict[str, Any], lua: str) -> None:
    got, refs, problems = crd.compile_middleware(
        obj("Middleware", "m", spec), {"default/users": secret("ann:$apr1$x$y\n")}
    )
    assert (got, refs, problems) == (lua, [], [])


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"compress": {}}, "middleware type compress is not supported by this data plane"),
        ({"headers": {"stsSeconds": 10}}, "headers.stsSeconds is not supported by this data plane"),
        ({"ipAllowList": {"sourceRange": ["fd00::/8"]}}, "IPv6 is not supported"),
        ({"ipAllowList": {"sourceRange": ["x"]}}, "'x' is not an IP or CIDR"),
        ({"rateLimit": {"average": 1, "period": "soon"}}, "invalid duration 'soon'"),
        ({"basicAuth": {"secret": "missing"}}, "basicAuth secret default/missing: secret not found"),
        ({"basicAuth": {"secret": "users"}}, "hash format not supported"),
        ({"redirectScheme": {"scheme": "ftp"}}, "only http and https"),
        ({"headers": {"customResponseHeaders": {"X-A": "1\r\nSet-Cookie: x=1"}}}, "not a valid header name and value"),
        ({"headers": {"customRequestHeaders": {"X A": "1"}}}, "not a valid header name and value"),
        ({"basicAuth": {"secret": "users", "realm": 'a" b'}}, "basicAuth.realm: only printable characters"),
        ({"stripPrefix": {"prefixes": ["/a"]}, "addPrefix": {"prefix": "/b"}}, "exactly one type"),
    ],
)
def test_middlewares_the_data_plane_cannot_express_are_reported(spec: dict[str, Any], problem: str) -> None:
    got, _, problems = crd.compile_middleware(obj("Middleware", "m", spec), {"default/users": secret("ann:plain\n")})
    assert got is None
    assert any(problem in p for p in problems), problems


def test_chains_annotations_and_cycles() -> None:
    mws = [
        obj("Middleware", "a", {"stripPrefix": {"prefixes": ["/a"]}}),
        obj("Middleware", "b", {"addPrefix": {"prefix": "/b"}}),
        obj("Middleware", "ab", {"chain": {"middlewares": [{"name": "a"}, {"name": "b@kubernetescrd"}]}}),
        obj("Middleware", "outer", {"chain": {"middlewares": [{"name": "ab"}, {"name": "a"}]}}),
        obj("Middleware", "x1", {"chain": {"middlewares": [{"name": "x2"}]}}),
        obj("Middleware", "x2", {"chain": {"middlewares": [{"name": "x1"}]}}),
    ]
    c, m = crd.build([ir("r", rt("Path(`/`)", middlewares=[{"name": "outer"}]))], mws, {})
    assert c.routes[0].middlewares == ("default/a", "default/b", "default/a")
    with pytest.raises(ValueError, match="cycle: default/x1 -> default/x2 -> default/x1"):
        m.expand("default/x1")
    assert crd.annotation_ids(("default-ab@kubernetescrd",), mws) == ["default/ab"]
    assert crd.annotation_ids(("default-zz@kubernetescrd",), mws) == "middleware default-zz@kubernetescrd not found"
    assert "only the kubernetescrd provider" in str(crd.annotation_ids(("auth@file",), mws))


def test_lua_config_leaves_out_routes_whose_service_is_missing() -> None:
    c, _ = crd.build(
        [ir("r", rt("Host(`a.com`)"), rt("Host(`b.com`)", services=[{"name": "gone", "port": 80}]))], [], {}
    )
    lua = router.lua_config(router.crd_routers(c, {"default/s:80"}), c.middlewares)
    assert 'id = "default/r\\0350"' in lua and "default/r\\0351" not in lua  # ids quoted: "#" is \035
    assert crd.duration_seconds("1m") == 60 and crd.duration_seconds(5) == 5 and crd.duration_seconds("250ms") == 0.25
    assert crd.cookie_name("my cookie!", "x") == "my_cookie_" and len(crd.cookie_name("", "default-s-80")) == 6
