"""Ingress objects -> routing table -> routers and nginx configuration (kwire.ingress.model, router, nginxconf),
without a cluster: class selection, host/path matching semantics, priorities, entrypoints, validation, the router
order of both providers, and the (constant) configuration accepted by the real `nginx -t`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from kwire.ingress import crd, model, router
from kwire.ingress.nginx import default_certificate
from kwire.ingress.nginxconf import Paths, Render, backend_lines, render, valid_host, valid_path

TRAEFIK_CLASS = {
    "metadata": {"name": "traefik", "annotations": {model.DEFAULT_CLASS_ANNOTATION: "true"}},
    "spec": {"controller": model.CONTROLLER_NAME},
}
NGINX_CLASS = {"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}


def ing(name: str, rules: list[Any], *, ts: str = "2026-01-01T00:00:00Z", **spec: Any) -> dict[str, Any]:
    annotations = spec.pop("annotations", {})
    return {
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": ts, "annotations": annotations},
        "spec": {"rules": rules, **spec},
    }


def rule(host: str, *paths: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "host": host,
        "http": {
            "paths": [
                {"path": p, "pathType": t, "backend": {"service": {"name": svc, "port": {"number": 80}}}}
                for p, t, svc in paths
            ]
        },
    }


def route_for(table: model.Table, host: str, path: str, entrypoint: str = model.WEB) -> str | None:
    """The Service the router picks (router.py's order, the matching of lua.py in Python): the first router in
    priority order whose host and path match, on one entrypoint."""
    candidates = []
    for h, routes in table.hosts.items():
        for r in routes:
            if entrypoint in r.entrypoints and (not h or model.host_matches(h, host)) and model.path_matches(r, path):
                candidates.append((-model.priority(h, r), r.source, r))
    return min(candidates, key=lambda c: c[:2])[2].backend.service if candidates else None


def test_class_selection() -> None:
    classes = [TRAEFIK_CLASS, NGINX_CLASS]
    assert model.is_ours(ing("a", []), classes)  # no class: the default class is ours
    assert model.is_ours(ing("a", [], ingressClassName="traefik"), classes)
    assert not model.is_ours(ing("a", [], ingressClassName="nginx"), classes)
    assert not model.is_ours(ing("a", [], ingressClassName="missing"), classes)
    assert model.is_ours(ing("a", [], annotations={model.CLASS_ANNOTATION: "traefik"}), classes)
    assert not model.is_ours(ing("a", [], annotations={model.CLASS_ANNOTATION: "nginx"}), classes)
    assert not model.is_ours(ing("a", []), [NGINX_CLASS])  # no default class of ours


def test_paths_hosts_and_merging() -> None:
    t = model.build(
        [
            ing("a", [rule("foo.com", ("/foo", "Prefix", "p"), ("/foo", "Exact", "e"), ("/foo/bar/", "Prefix", "q"))]),
            ing("b", [rule("foo.com", ("/m", "ImplementationSpecific", "m")), rule("", ("/any", "Prefix", "any"))]),
            ing("c", [rule("*.w.com", ("/", "Prefix", "w"))]),
        ],
        [TRAEFIK_CLASS],
    )
    assert route_for(t, "foo.com", "/foo") == "e"
    assert route_for(t, "foo.com", "/foo/") == "p"
    assert route_for(t, "foo.com", "/foobar") is None
    assert route_for(t, "foo.com", "/foo/bar") == "q"  # trailing slash of the rule ignored
    assert route_for(t, "foo.com", "/foo/barx") == "p"
    assert route_for(t, "foo.com", "/m/1") == "m"
    assert route_for(t, "foo.com", "/any/1") == "any"  # host-less rules on every host
    assert route_for(t, "x.w.com", "/z") == "w"
    assert route_for(t, "x.y.w.com", "/any") == "any"  # not the wildcard: two labels
    assert route_for(t, "other.com", "/") is None
    text = model.rule_text
    r = t.hosts["foo.com"][0]
    assert text("foo.com", r) == "Host(`foo.com`) && PathPrefix(`/foo`)" and model.priority("foo.com", r) == 37
    w = t.hosts["*.w.com"][0]
    assert text("*.w.com", w) == "HostRegexp(`^[a-zA-Z0-9-]+\\.w\\.com$`) && PathPrefix(`/`)"  # as Traefik writes it
    e = t.hosts["foo.com"][1]
    assert text("foo.com", e) == "Host(`foo.com`) && Path(`/foo`)" and model.priority("foo.com", e) == 38  # 31 + 7


def test_conflicts_oldest_wins_and_is_reported() -> None:
    t = model.build(
        [
            ing("new", [rule("foo.com", ("/x", "Prefix", "new"))], ts="2026-02-01T00:00:00Z"),
            ing("old", [rule("foo.com", ("/x", "Prefix", "old"))], ts="2026-01-01T00:00:00Z"),
        ],
        [TRAEFIK_CLASS],
    )
    assert route_for(t, "foo.com", "/x") == "old"
    assert "already served by Ingress default/old" in t.problems["default/new"][0]


def test_annotations_entrypoints_tls_and_priority() -> None:
    ann = model.ANN
    t = model.build(
        [
            ing("web", [rule("a.com", ("/", "Prefix", "web"))], annotations={ann + "router.entrypoints": "web"}),
            ing("tls", [rule("b.com", ("/", "Prefix", "tls"))], annotations={ann + "router.tls": "true"}),
            ing("spec-tls", [rule("c.com", ("/", "Prefix", "c"))], tls=[{"hosts": ["c.com"], "secretName": "s"}]),
            ing("short", [rule("d.com", ("/api", "Prefix", "short"))], annotations={ann + "router.priority": "100"}),
            ing("long", [rule("d.com", ("/api/v1", "Prefix", "long"))]),
            ing("bad", [rule("e.com", ("/", "Prefix", "e"))], annotations={ann + "router.entrypoints": "nope"}),
        ],
        [TRAEFIK_CLASS],
    )
    assert route_for(t, "a.com", "/") == "web" and route_for(t, "a.com", "/", model.WEBSECURE) is None
    assert route_for(t, "b.com", "/") is None and route_for(t, "b.com", "/", model.WEBSECURE) == "tls"
    assert route_for(t, "c.com", "/") is None and route_for(t, "c.com", "/", model.WEBSECURE) == "c"
    assert t.tls["c.com"] == ("default", "s", "default/spec-tls")
    assert route_for(t, "d.com", "/api/v1/x") == "short"  # priority 100 beats the longer path
    assert "unknown entrypoints" in t.problems["default/bad"][0]


def test_a_middleware_that_cannot_exist_leaves_the_routes_unserved_and_says_why() -> None:
    mw = {model.ANN + "router.middlewares": "default-auth@kubernetescrd"}
    t = model.build([ing("mw", [rule("m.com", ("/", "Prefix", "m"))], annotations=mw)], [TRAEFIK_CLASS])
    assert route_for(t, "m.com", "/") is None
    assert "middleware default-auth@kubernetescrd not found" in t.problems["default/mw"][0]


def test_default_backend_serves_every_host_after_its_rules() -> None:
    t = model.build(
        [
            ing("r", [rule("foo.com", ("/r", "Prefix", "r"))]),
            ing("d", [], defaultBackend={"service": {"name": "dflt", "port": {"name": "http"}}}),
        ],
        [TRAEFIK_CLASS],
    )
    assert route_for(t, "foo.com", "/r/1") == "r"
    assert route_for(t, "foo.com", "/x") == "dflt"
    assert route_for(t, "bar.com", "/x") == "dflt"
    assert model.Backend("default", "dflt", "http") in t.backends()


def test_validation_of_what_reaches_the_configuration() -> None:
    assert valid_host("foo.example.com") and valid_host("*.example.com") and valid_host("")
    assert not valid_host("foo;bar") and not valid_host("a b") and not valid_host("*foo.com")
    assert valid_path("/a/b-c_d.e~f") and not valid_path("/a b") and not valid_path('/a"') and not valid_path("/$x")
    assert not valid_path("/a{b") and not valid_path("/a//b")


def test_rendered_configuration_passes_nginx_t(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.certs.mkdir()
    paths.default_cert.write_bytes(default_certificate())
    conf = render(Render(http_port=18080, https_port=18443, ping_port=19000), paths)
    paths.conf.write_text(conf)
    res = subprocess.run(["nginx", "-t", "-c", str(paths.conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (
        backend_lines({"default/p:80": ["10.42.0.2:80", "10.42.1.2:80"]}) == b"default/p:80 10.42.0.2:80 10.42.1.2:80\n"
    )


def test_router_chunk_orders_both_providers_and_indexes_hosts() -> None:
    t = model.build(
        [
            ing("a", [rule("foo.com", ("/foo", "Prefix", "p"), ("/gone", "Prefix", "gone")),
                      rule("*.w.com", ("/", "Prefix", "p")), rule("", ("/any", "Prefix", "p"))]),
            ing("bad", [rule("x;y", ("/", "Prefix", "p"))]),
        ],
        [TRAEFIK_CLASS],
    )  # fmt: skip
    c, _ = crd.build(
        [{"metadata": {"name": "ir", "namespace": "default"}, "spec": {"routes": [
            {"match": "Host(`foo.com`) && PathPrefix(`/f`)", "services": [{"name": "p", "port": 80}]},
            {"match": "(Host(`a.com`) || Host(`b.com`)) && Path(`/x`)", "services": [{"name": "p", "port": 80}]},
            {"match": "Path(`/y`) || Host(`c.com`)", "services": [{"name": "p", "port": 80}]}]}}],
        [], {},
    )  # fmt: skip
    routers = router.ingress_routers(t, {"default/p:80"}) + router.crd_routers(c, {"default/p:80"})
    got = [(r.id.split("|")[0] if r.id.startswith("ing:") else r.id, r.priority, r.hosts) for r in
           router.ordered(routers)]  # fmt: skip
    assert got == [
        ("ing:default/a", 56, None),  # HostRegexp(`^[a-zA-Z0-9-]+\.w\.com$`) && PathPrefix(`/`)
        ("default/ir#1", 46, ("a.com", "b.com")),
        ("ing:default/a", 38, ("foo.com",)),  # /gone
        ("ing:default/a", 37, ("foo.com",)),  # /foo
        ("default/ir#0", 35, ("foo.com",)),
        ("default/ir#2", 27, None),
        ("ing:default/a", 18, None),  # host-less PathPrefix(`/any`)
    ]
    lua = router.lua_config(routers, {})
    assert lua.count("nf = true") == 1  # /gone: its Service is not known (404)
    assert "x;y" not in lua  # invalid hosts are left out (and reported by the controller)
    assert 'K.wild(r.host, "w.com")' in lua


def test_wildcard_host_outranks_an_exact_one_by_rule_length_as_in_traefik() -> None:
    ann = {model.ANN + "router.priority": "100"}
    t = model.build(
        [
            ing("exact", [rule("a.w.com", ("/", "Prefix", "exact"))]),
            ing("wild", [rule("*.w.com", ("/", "Prefix", "wild"))]),
            ing("pinned", [rule("b.w.com", ("/", "Prefix", "pinned"))], annotations=ann),
        ],
        [TRAEFIK_CLASS],
    )
    assert route_for(t, "a.w.com", "/x") == "wild"  # HostRegexp(...) && PathPrefix(`/`) is the longer rule
    assert route_for(t, "b.w.com", "/x") == "pinned"  # router.priority decides
