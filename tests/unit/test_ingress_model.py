"""Ingress objects -> routing table -> nginx configuration (kwire.ingress.model, nginxconf), without a cluster:
class selection, host/path matching semantics, priorities, entrypoints, validation, and the rendered file
accepted by the real `nginx -t`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from kwire.ingress import model
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
    """The Service an nginx-like lookup picks: Exact first, then the longest Prefix, per host (exact host first,
    then wildcard, then the catch-all), on one entrypoint."""
    candidates = [h for h in table.hosts if h and model.host_matches(h, host)]
    candidates.sort(key=lambda h: h.startswith("*."))
    routes = table.hosts[candidates[0]] if candidates else table.hosts[""]
    routes = [r for r in routes if entrypoint in r.entrypoints]
    exact = [r for r in routes if r.kind == "Exact" and r.path == path]
    if exact:
        return exact[0].backend.service
    prefixes = [r for r in routes if r.kind == "Prefix" and model.path_matches(r, path)]
    if not prefixes:
        return None
    return max(prefixes, key=lambda r: len(r.path)).backend.service


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
    t = model.build(
        [
            ing(
                "a",
                [rule("foo.com", ("/foo", "Prefix", "p"), ("/e", "Exact", "e")), rule("*.w.com", ("/", "Prefix", "w"))],
            ),
            ing("bad", [rule("x;y", ("/", "Prefix", "p"))]),
        ],
        [TRAEFIK_CLASS],
    )
    paths = Paths(tmp_path)
    paths.certs.mkdir()
    paths.default_cert.write_bytes(default_certificate())
    conf = render(t, Render(known_backends={"default/p:80"}, http_port=18080, https_port=18443, ping_port=19000), paths)
    assert "x;y" not in conf  # invalid hosts are left out (and reported by the controller)
    paths.conf.write_text(conf)
    res = subprocess.run(["nginx", "-t", "-c", str(paths.conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (
        backend_lines({"default/p:80": ["10.42.0.2:80", "10.42.1.2:80"]}) == b"default/p:80 10.42.0.2:80 10.42.1.2:80\n"
    )
