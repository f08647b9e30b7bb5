"""The Lua router of the ingress data plane on a real nginx, without a cluster: IngressRoutes and Middlewares compiled
(kwire.ingress.crd) and pushed through the control socket as the controller does, requests made with curl inside a
network namespace of our own (`kwire-irt<id>`, loopback only) against two echo backends there.

Checks what a client observes: Traefik rules (Host && PathPrefix, Header, Method, `!`, HostRegexp, Query,
ClientIP, priority), weighted services, sticky cookies, every middleware (redirectScheme, stripPrefix, addPrefix,
replacePath, headers, basicAuth with apr1/bcrypt/SHA1, ipAllowList, rateLimit, chain), the Ingress
`router.middlewares` annotation, an invalid rule reported while the rest serve, and a route change without reload.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from kwire.ingress import crd, model, router
from kwire.ingress.nginx import Nginx
from kwire.ingress.nginxconf import Paths, Render, backend_lines, render

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]  # lab: needs root (a network namespace)

IP = shutil.which("ip") or "/usr/sbin/ip"
NS = f"kwire-irt{os.environ.get('KWIRE_TEST_ID', '')}{os.getpid() % 10000}"
HTTP, HTTPS, PING, NOEP = 18180, 18443, 18900, 18901
PORT_A, PORT_B, PORT_C = 18201, 18202, 18203
ECHO = """
import hashlib, json, sys
from aiohttp import web
async def handle(request):
    data = await request.read()
    body = {"port": int(sys.argv[1]), "path": request.path_qs, "method": request.method,
            "headers": dict(request.headers), "body": len(data), "md5": hashlib.md5(data).hexdigest()}
    return web.json_response(body, headers={"X-Backend": sys.argv[1], "X-Drop": "me"})
app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""
ENDPOINTS = {
    "default/svc-a:80": [f"127.0.0.1:{PORT_A}"],
    "default/svc-b:http": [f"127.0.0.1:{PORT_B}"],
    "default/svc-ac:80": [f"127.0.0.1:{PORT_A}", f"127.0.0.1:{PORT_C}"],
}
TRAEFIK_CLASS = {
    "metadata": {"name": "traefik", "annotations": {model.DEFAULT_CLASS_ANNOTATION: "true"}},
    "spec": {"controller": model.CONTROLLER_NAME},
}


def crypt(password: str, setting: str) -> str:
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    out = lib.crypt(password.encode(), setting.encode())
    assert out is not None
    return str(out.decode())


def apr1(password: str) -> str:
    return subprocess.run(
        ["openssl", "passwd", "-apr1", password], capture_output=True, text=True, check=True
    ).stdout.strip()


USERS = "\n".join(
    [
        f"ann:{apr1('apple')}",
        f"bob:{crypt('banana', '$2b$05$abcdefghijklmnopqrstuu')}",
        "cat:{SHA}" + base64.b64encode(hashlib.sha1(b"cherry").digest()).decode(),
    ]
)
SECRETS = {"default/users": {"metadata": {"name": "users", "namespace": "default"},
                             "data": {"users": base64.b64encode(USERS.encode()).decode()}}}  # fmt: skip


def obj(kind: str, name: str, spec: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def svc(name: str, port: int | str = 80, **kw: Any) -> dict[str, Any]:
    return {"name": name, "port": port, **kw}


def route(match: str, *services: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"kind": "Rule", "match": match, "services": list(services) or [svc("svc-a")], **kw}


MIDDLEWARES = [
    obj("Middleware", "strip", {"stripPrefix": {"prefixes": ["/strip"]}}),
    obj("Middleware", "add", {"addPrefix": {"prefix": "/added"}}),
    obj("Middleware", "replace", {"replacePath": {"path": "/replaced"}}),
    obj(
        "Middleware",
        "hdr",
        {
            "headers": {
                "customRequestHeaders": {"X-Added": "yes", "User-Agent": ""},
                "customResponseHeaders": {"X-Resp": "r", "X-Drop": ""},
            }
        },
    ),  # fmt: skip
    obj("Middleware", "auth", {"basicAuth": {"secret": "users", "removeHeader": True, "headerField": "X-User"}}),
    obj("Middleware", "allow-lo", {"ipAllowList": {"sourceRange": ["127.0.0.0/8"]}}),
    obj("Middleware", "allow-ten", {"ipAllowList": {"sourceRange": ["10.0.0.0/8"]}}),
    obj("Middleware", "allow-xff", {"ipAllowList": {"sourceRange": ["192.0.2.0/24"], "ipStrategy": {"depth": 1}}}),
    obj("Middleware", "limit", {"rateLimit": {"average": 1, "period": "1m", "burst": 2}}),
    obj("Middleware", "https", {"redirectScheme": {"scheme": "https", "permanent": True}}),
    obj("Middleware", "strip-chain", {"stripPrefix": {"prefixes": ["/chain"]}}),
    obj("Middleware", "chain", {"chain": {"middlewares": [{"name": "strip-chain"}, {"name": "hdr@kubernetescrd"}]}}),
    obj("Middleware", "cannot", {"compress": {}}),
    obj("Middleware", "loop1", {"chain": {"middlewares": [{"name": "loop2"}]}}),
    obj("Middleware", "loop2", {"chain": {"middlewares": [{"name": "loop1"}]}}),
]


def mw_route(name: str, *mws: str) -> dict[str, Any]:
    return route(f"Host(`mw.test`) && PathPrefix(`/{name}`)", middlewares=[{"name": m} for m in mws])


ROUTES = [
    obj(
        "IngressRoute",
        "rules",
        {
            "entryPoints": ["web"],
            "routes": [
                route("Host(`a.test`) && PathPrefix(`/api`)", svc("svc-a")),
                route("Host(`a.test`) && Header(`X-Canary`, `1`)", svc("svc-b", "http"), priority=1000),
                route("Host(`a.test`) && Method(`POST`)", svc("svc-b", "http")),
                route("Host(`neg.test`) && !PathPrefix(`/private`)", svc("svc-a")),
                route("HostRegexp(`^[a-z]+\\.re\\.test$`) && (Path(`/x`) || Query(`q`, `1`))", svc("svc-b", "http")),
                route("Host(`ip.test`) && ClientIP(`127.0.0.0/8`)", svc("svc-a")),
                route("Host(`ip.test`) && ClientIP(`10.0.0.0/8`)", svc("svc-b", "http")),
                route("Host(`p.test`) && PathPrefix(`/`)", svc("svc-a")),  # longer rule: wins by default ...
                route(
                    "Host(`p.test`) && Path(`/low`)", svc("svc-b", "http"), priority=1
                ),  # ... and over an explicit low one
                route("Host(`w.test`)", svc("svc-a", weight=3), svc("svc-b", "http", weight=1)),
                route("Host(`s.test`)", svc("svc-ac", sticky={"cookie": {"name": "kw_sticky", "httpOnly": True}})),
                route("Host(`bad.test`) && Paht(`/`)", svc("svc-a")),  # invalid: reported, the rest serve
            ],
        },
    ),  # fmt: skip
    obj(
        "IngressRoute",
        "mws",
        {
            "entryPoints": ["web"],
            "routes": [
                mw_route("strip", "strip"),
                mw_route("add", "add"),
                mw_route("replace", "replace"),
                mw_route("hdr", "hdr"),
                mw_route("auth", "auth"),
                mw_route("allow-lo", "allow-lo"),
                mw_route("allow-ten", "allow-ten"),
                mw_route("allow-xff", "allow-xff"),
                mw_route("limit", "limit"),
                mw_route("https", "https"),
                mw_route("chain", "chain"),
                mw_route("cannot", "cannot"),
                mw_route("loop", "loop1"),
                mw_route("missing", "nope"),
            ],
        },
    ),  # fmt: skip
]
INGRESS = {
    "metadata": {"name": "ing", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z",
                 "annotations": {model.ANN + "router.middlewares": "default-strip@kubernetescrd,default-hdr@kubernetescrd"}},
    "spec": {"rules": [{"host": "ing.test", "http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "svc-a", "port": {"number": 80}}}}]}}]},
}  # fmt: skip


@dataclass
class Plane:
    nginx: Nginx
    paths: Paths
    compiled: crd.Compiled

    async def apply(
        self, routes: list[dict[str, Any]], ingresses: list[dict[str, Any]], certs: dict[str, bytes] | None = None
    ) -> bool:
        """What the controller's sync does with these objects; True when nginx was reloaded."""
        compiled, mws = crd.build(routes, MIDDLEWARES, SECRETS)

        def resolve(refs: tuple[str, ...]) -> list[str] | str:
            ids = crd.annotation_ids(refs, MIDDLEWARES)
            if isinstance(ids, str):
                return ids
            return [leaf for i in ids for leaf in mws.expand(i)]

        table = model.build(ingresses, [TRAEFIK_CLASS], middlewares=resolve)
        known = set(ENDPOINTS)
        conf = render(Render(http_port=HTTP, https_port=HTTPS, ping_port=PING, noep_port=NOEP), self.paths)
        reloaded = await self.nginx.apply(conf) and self.nginx.reloads > 0
        await self.nginx.push(backend_lines(ENDPOINTS))
        await self.nginx.push_certs(router.certs_config(certs or {}))
        routers = router.ingress_routers(table, known) + router.crd_routers(compiled, known)
        await self.nginx.push_routes(router.lua_config(routers, compiled.middlewares))
        self.compiled = compiled
        return reloaded


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    subprocess.run([IP, "netns", "add", NS], check=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([IP, "-n", NS, "link", "set", "lo", "up"], check=True)
        for port in (PORT_A, PORT_B, PORT_C):
            procs.append(subprocess.Popen([IP, "netns", "exec", NS, sys.executable, "-c", ECHO, str(port)]))
        yield NS
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        subprocess.run([IP, "netns", "del", NS], check=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plane(netns: str) -> AsyncIterator[Plane]:
    d = Path(tempfile.mkdtemp(prefix="kwire-irt-"))
    paths = Paths(d)
    nginx = Nginx(paths)
    nginx.command_prefix = [IP, "netns", "exec", netns]
    nginx.prepare()
    p = Plane(nginx, paths, crd.Compiled())
    try:
        await p.apply(ROUTES, [INGRESS])
        for port in (PORT_A, PORT_B, PORT_C):
            deadline = time.monotonic() + 20
            while curl("echo", "/", port=port)[0] != 200:
                assert time.monotonic() < deadline, f"echo backend {port} did not start"
                await asyncio.sleep(0.1)
        yield p
    finally:
        await nginx.stop()
        shutil.rmtree(d, ignore_errors=True)


def curl(host: str, path: str, *extra: str, port: int = HTTP) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body or text, response headers lower-cased) of one request inside the namespace."""
    res = subprocess.run(
        [IP, "netns", "exec", NS, "curl", "-s", "-m", "5", "-D", "/dev/stderr", "-H", f"Host: {host}", *extra,
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    lines = res.stderr.splitlines()
    code = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:]) if v}
    try:
        return code, json.loads(res.stdout), headers
    except ValueError:
        return code, res.stdout, headers


def who(host: str, path: str, *extra: str) -> str:
    code, body, _ = curl(host, path, *extra)
    if code != 200 or not isinstance(body, dict):
        return str(code)
    return {PORT_A: "a", PORT_B: "b", PORT_C: "c"}[body["port"]]


async def test_rules_precedence_priority_and_an_invalid_rule(plane: Plane) -> None:
    cases = [
        ("a.test", "/api/x", (), "a"),
        ("a.test", "/api/x", ("-H", "X-Canary: 1"), "b"),  # priority 1000 beats the longer rule
        ("a.test", "/other", ("-X", "POST"), "b"),
        ("a.test", "/other", (), "404"),
        ("neg.test", "/public", (), "a"),
        ("neg.test", "/private/x", (), "404"),
        ("foo.re.test", "/x", (), "b"),
        ("foo.re.test", "/y?q=1", (), "b"),
        ("foo.re.test", "/y?q=2", (), "404"),
        ("foo.bar.re.test", "/x", (), "404"),
        ("ip.test", "/", (), "a"),  # the client is 127.0.0.1
        ("p.test", "/low", (), "a"),
        ("bad.test", "/", (), "404"),
        ("nothing.test", "/", (), "404"),
    ]
    got = [(h, p, e, who(h, p, *e)) for h, p, e, _ in cases]
    assert got == cases
    problems = plane.compiled.problems[crd.ir_source("default", "rules")]
    assert any("spec.routes[11].match" in p and "unsupported function: Paht at position 21" in p for p in problems)


async def test_weighted_services_and_sticky_cookie(plane: Plane) -> None:
    got = [who("w.test", "/") for _ in range(8)]
    assert sorted(got) == ["a"] * 6 + ["b"] * 2, got
    # No cookie: round-robin over both endpoints, each answer sets the cookie of the endpoint that served it.
    seen = {}
    for _ in range(4):
        code, body, headers = curl("s.test", "/")
        assert code == 200
        cookie = headers["set-cookie"]
        assert cookie.startswith("kw_sticky=") and "HttpOnly" in cookie and "Path=/" in cookie
        seen[body["port"]] = cookie.split(";")[0]
    assert set(seen) == {PORT_A, PORT_C}
    for port, cookie in seen.items():
        for _ in range(3):
            code, body, headers = curl("s.test", "/", "-H", f"Cookie: {cookie}")
            assert (code, body["port"]) == (200, port)
            assert "set-cookie" not in headers  # still valid: not set again


async def test_path_and_header_middlewares(plane: Plane) -> None:
    assert curl("mw.test", "/strip/x?y=1")[1]["path"] == "/x?y=1"
    assert curl("mw.test", "/strip/x")[1]["headers"]["X-Forwarded-Prefix"] == "/strip"
    assert curl("mw.test", "/strip")[1]["path"] == "/"
    assert curl("mw.test", "/add/x")[1]["path"] == "/added/add/x"
    body = curl("mw.test", "/replace/x")[1]
    assert (body["path"], body["headers"]["X-Replaced-Path"]) == ("/replaced", "/replace/x")
    code, body, headers = curl("mw.test", "/hdr", "-A", "curl-test")
    assert code == 200 and body["headers"]["X-Added"] == "yes" and "User-Agent" not in body["headers"]
    assert headers["x-resp"] == "r" and "x-drop" not in headers and headers["x-backend"] == str(PORT_A)
    code, body, headers = curl("mw.test", "/chain/z")
    assert body["path"] == "/z" and body["headers"]["X-Added"] == "yes" and headers["x-resp"] == "r"
    # The Ingress annotation router.middlewares runs the same middlewares on its paths.
    code, body, headers = curl("ing.test", "/strip/i")
    assert (code, body["path"], body["headers"]["X-Added"], headers["x-resp"]) == (200, "/i", "yes", "r")


async def test_bodies_and_forwarded_headers_on_the_common_path_and_through_middlewares(plane: Plane) -> None:
    """A route with no middleware is proxied straight from nginx's server rewrite phase (lua.py's `kw_fast`); one
    with middlewares goes through the whole router (`@kw`): both pass the method, a 300 kB body unread by the
    router, and the same forwarded headers."""
    data = os.urandom(300_000)
    want_md5 = hashlib.md5(data).hexdigest()
    d = Path(tempfile.mkdtemp(prefix="kwire-irt-body-"))
    try:
        (d / "body").write_bytes(data)
        got = {}
        for host, path in (("a.test", "/api/up"), ("mw.test", "/strip/up"), ("ing.test", "/up")):
            code, body, _ = curl(host, path, "-X", "PUT", "--data-binary", f"@{d / 'body'}",
                                 "-H", "Content-Type: application/octet-stream")  # fmt: skip
            assert code == 200, (host, body)
            assert (body["method"], body["body"], body["md5"]) == ("PUT", len(data), want_md5), host
            h = {k.lower(): v for k, v in body["headers"].items()}
            got[host] = {k: h.get(k) for k in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                                                "x-forwarded-port", "x-forwarded-server", "x-real-ip")}  # fmt: skip
            assert got[host]["x-forwarded-host"] == host and got[host]["x-real-ip"] == "127.0.0.1", got[host]
        assert {k: v for k, v in got["a.test"].items() if k != "x-forwarded-host"} == {
            k: v for k, v in got["mw.test"].items() if k != "x-forwarded-host"
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_basic_auth_with_apr1_bcrypt_and_sha1(plane: Plane) -> None:
    code, body, headers = curl("mw.test", "/auth")
    assert code == 401 and body == "401 Unauthorized\n"
    assert headers["www-authenticate"] == 'Basic realm="traefik"'
    for user, pw in (("ann", "apple"), ("bob", "banana"), ("cat", "cherry")):
        code, body, _ = curl("mw.test", "/auth", "-u", f"{user}:{pw}")
        assert code == 200, (user, body)
        assert body["headers"]["X-User"] == user and "Authorization" not in body["headers"]  # removeHeader
        assert curl("mw.test", "/auth", "-u", f"{user}:{pw}x")[0] == 401
    assert curl("mw.test", "/auth", "-u", "dan:apple")[0] == 401


async def test_ip_allow_list_rate_limit_and_redirect(plane: Plane) -> None:
    assert who("mw.test", "/allow-lo") == "a"
    code, body, _ = curl("mw.test", "/allow-ten")
    assert (code, body) == (403, "Forbidden\n")
    assert who("mw.test", "/allow-xff", "-H", "X-Forwarded-For: 10.1.1.1, 192.0.2.7") == "a"  # depth 1
    assert who("mw.test", "/allow-xff", "-H", "X-Forwarded-For: 192.0.2.7, 10.1.1.1") == "403"
    assert [who("mw.test", "/limit") for _ in range(3)] == ["a", "a", "429"]  # burst 2, then 1 per minute
    code, _, headers = curl("mw.test", "/https/x?y=1")
    assert (code, headers["location"]) == (301, "https://mw.test/https/x?y=1")
    assert curl("mw.test", "/https/x", "-X", "POST")[0] == 308


async def test_what_cannot_be_served_is_reported_and_not_served(plane: Plane) -> None:
    for path in ("/cannot", "/loop", "/missing"):
        assert who("mw.test", path) == "404", path
    problems = plane.compiled.problems
    assert (
        "middleware type compress is not supported by this data plane" in problems[crd.mw_source("default", "cannot")]
    )
    mws = problems[crd.ir_source("default", "mws")]
    assert any("middleware default/cannot cannot be served" in p for p in mws)
    assert any("middleware chain cycle" in p for p in mws)
    assert any("middleware default/nope not found" in p for p in mws)
    assert who("mw.test", "/strip") == "a"  # the rest of that IngressRoute serves


def ingress(name: str, host: str, *paths: tuple[str, str, str], **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z",
                     "annotations": {model.ANN + k.replace("_", "."): v for k, v in annotations.items()}},
        "spec": {"rules": [{"host": host, "http": {"paths": [
            {"path": p, "pathType": t, "backend": {"service": {"name": s, "port": {"number": 80}}}}
            for p, t, s in paths]}}]},
    }  # fmt: skip


async def test_a_route_change_needs_no_reload(plane: Plane) -> None:
    """IngressRoutes and Ingresses alike are data for the Lua router: nginx's configuration never changes."""
    new = obj("IngressRoute", "new", {"routes": [route("Host(`new.test`)", svc("svc-b", "http"))]})
    # 300 more of each: the chunk (~200 KB) is larger than nginx's in-memory body buffer by default.
    many = [obj("IngressRoute", f"n{i}", {"routes": [route(f"Host(`n{i}.test`)")]}) for i in range(300)]
    ings = [ingress(f"i{i}", f"i{i}.test", ("/", "Prefix", "svc-a"), ("/b", "Exact", "svc-ac")) for i in range(300)]
    try:
        reloaded = await plane.apply([*ROUTES, new, *many], [INGRESS, *ings])
        assert not reloaded and plane.nginx.reloads == 0
        assert who("new.test", "/") == "b"
        assert who("n299.test", "/") == "a"
        assert who("i299.test", "/x") == "a" and who("i0.test", "/b") in ("a", "c")
    finally:
        await plane.apply(ROUTES, [INGRESS])
    assert who("new.test", "/") == "404" and who("i299.test", "/x") == "404"
    assert plane.nginx.reloads == 0


async def test_ingress_and_ingressroute_routers_share_one_priority_order(plane: Plane) -> None:
    """Traefik puts the routers of both providers in one list ordered by priority (default: the rule's length):
    an Ingress's longer rule wins over an IngressRoute's shorter one on the same host, and the other way round;
    explicit priorities win; on a tie the IngressRoute wins."""
    irs = obj("IngressRoute", "prio", {"routes": [
        route("Host(`prio.test`) && PathPrefix(`/api`)", svc("svc-b", "http")),  # 40 characters
        route("Host(`prio.test`) && Header(`X-Over`, `1`)", svc("svc-b", "http"), priority=1000),
        route("Host(`tie.test`) && PathPrefix(`/`)", svc("svc-b", "http")),  # the Ingress's rule: a tie
        route("PathPrefix(`/anyhost/deeper/than/the/host/rule`)", svc("svc-b", "http")),  # 48, no host
    ]})  # fmt: skip
    ings = [
        ingress("prio", "prio.test", ("/api/v1", "Prefix", "svc-a"), ("/", "Prefix", "svc-a")),  # 43, 37
        ingress("ann", "ann.test", ("/", "Prefix", "svc-a"), router_priority="2000"),
        ingress("tie", "tie.test", ("/", "Prefix", "svc-a")),
    ]
    ann_ir = obj("IngressRoute", "ann-ir", {"routes": [
        route("Host(`ann.test`) && PathPrefix(`/x`)", svc("svc-b", "http"), priority=1500)]})  # fmt: skip
    try:
        await plane.apply([*ROUTES, irs, ann_ir], [INGRESS, *ings])
        cases = [
            ("prio.test", "/api/v1/x", (), "a"),  # the Ingress's Host && PathPrefix(/api/v1) is longer
            ("prio.test", "/api/x", (), "b"),  # the IngressRoute's /api is longer than the Ingress's /
            ("prio.test", "/other", (), "a"),
            ("prio.test", "/api/v1/x", ("-H", "X-Over: 1"), "b"),  # explicit priority 1000
            ("ann.test", "/x", (), "a"),  # router.priority 2000 over the IngressRoute's 1500
            ("tie.test", "/", (), "b"),  # equal priorities: the IngressRoute
            ("prio.test", "/anyhost/deeper/than/the/host/rule", (), "b"),  # a host-less longer rule wins too
        ]
        got = [(h, p, e, who(h, p, *e)) for h, p, e, _ in cases]
        assert got == cases
    finally:
        await plane.apply(ROUTES, [INGRESS])


def served_cert(sni: str, *, port: int = HTTPS) -> str:
    res = subprocess.run(
        [IP, "netns", "exec", NS, "sh", "-c", f"openssl s_client -connect 127.0.0.1:{port} -servername {sni}"
         " </dev/null 2>/dev/null | openssl x509 -noout -subject -nameopt RFC2253"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    return res.stdout.strip().removeprefix("subject=").removeprefix("CN=")


async def test_certificates_by_sni_are_data_too(plane: Plane) -> None:
    """Secrets' certificates go to nginx's memory through the control socket: exact names, `*.` patterns covering
    one label, the default certificate otherwise; a rotation is one push, no reload."""
    from tests.integration.test_ingress_lab import tls_secret

    def pem(name: str, host: str) -> bytes:
        data = json.loads(tls_secret(name, host)[0])["data"]
        return base64.b64decode(data["tls.crt"]) + base64.b64decode(data["tls.key"])

    certs = {"exact.test": pem("e", "exact.test"), "*.wild.test": pem("w", "*.wild.test")}
    try:
        await plane.apply(ROUTES, [INGRESS], certs)
        assert served_cert("exact.test") == "exact.test"
        assert served_cert("a.wild.test") == "*.wild.test"
        assert served_cert("a.b.wild.test") == "TRAEFIK DEFAULT CERT"
        assert served_cert("other.test") == "TRAEFIK DEFAULT CERT"
        await plane.apply(ROUTES, [INGRESS], {**certs, "exact.test": pem("e2", "rotated.test")})
        assert served_cert("exact.test") == "rotated.test"
        assert plane.nginx.reloads == 0
    finally:
        await plane.apply(ROUTES, [INGRESS])


async def test_every_worker_serves_what_one_worker_took(netns: str) -> None:
    """With several workers, the control request lands on one of them; the others load the stored chunks (routes and
    certificates) on their next request: every new connection, whichever worker accepts it, is served alike."""
    d = Path(tempfile.mkdtemp(prefix="kwire-irt2-"))
    paths = Paths(d)
    nginx = Nginx(paths)
    nginx.command_prefix = [IP, "netns", "exec", netns]
    nginx.prepare()
    http, https = HTTP + 1000, HTTPS + 1000
    try:
        await nginx.apply(render(Render(http_port=http, https_port=https, ping_port=PING + 1000, noep_port=NOEP + 1000,
                                        workers=3), paths))  # fmt: skip
        await nginx.push(backend_lines(ENDPOINTS))
        table = model.build([ingress("w", "workers.test", ("/", "Prefix", "svc-a"))], [TRAEFIK_CLASS])
        await nginx.push_routes(router.lua_config(router.ingress_routers(table, set(ENDPOINTS)), {}))
        from tests.integration.test_ingress_lab import tls_secret

        data = json.loads(tls_secret("w", "workers.test")[0])["data"]
        pem = base64.b64decode(data["tls.crt"]) + base64.b64decode(data["tls.key"])
        await nginx.push_certs(router.certs_config({"workers.test": pem}))
        served = [curl("workers.test", "/", port=http) for _ in range(12)]
        assert [(code, body if code != 200 else body["port"]) for code, body, _ in served] == [(200, PORT_A)] * 12
        assert {served_cert("workers.test", port=https) for _ in range(6)} == {"workers.test"}
    finally:
        await nginx.stop()
        shutil.rmtree(d, ignore_errors=True)
