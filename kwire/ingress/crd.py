"""Traefik's CRDs (traefik.io/v1alpha1 IngressRoute and Middleware) -> the routes and middlewares the Lua router
serves, as pure functions (Traefik's `kubernetescrd` provider, with K3s's chart defaults).

IngressRoute: `entryPoints` (web, websecure; none = both), `routes[]` of `kind: Rule` with `match` (see rules.py),
`priority` (default: the rule's length), `middlewares` (`name` in the route's namespace, `name@kubernetescrd`; a
`namespace` other than the IngressRoute's is refused as Traefik does with `allowCrossNamespace: false`, the chart's
default), `services` (Kubernetes Services by port number or name, `weight`: weighted round-robin between them,
`sticky.cookie`: `name`, `secure`, `httpOnly`, `sameSite`, `maxAge`, `path`), `tls` (`secretName` served by SNI
for the route's Host names and `tls.domains`; a TLS router is on websecure only). Middleware: redirectScheme,
stripPrefix, addPrefix, replacePath, headers (custom request/response headers; an empty value removes),
basicAuth (htpasswd `users` lines from a Secret, or a kubernetes.io/basic-auth Secret), ipAllowList
(`sourceRange`, `ipStrategy.depth`), rateLimit (`average`, `period`, `burst`; per client IP, the request host or
a header), chain. What the data plane cannot express (another middleware type, an option of these it does not
implement, IPv6 ranges, TraefikService backends, ...) is reported and the routes using it are not served (as
Traefik leaves a router with a broken middleware unserved): never served without it.
An invalid rule or a missing Service skips that route, reported; the rest keep serving. Traefik has no status on
these kinds: problems are Warning events on the object (and the log), as the controller reports Ingress problems.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from kwire.ingress import rules
from kwire.ingress.model import ENTRYPOINTS, WEBSECURE, Backend
from kwire.ingress.rules import lua_str

Obj = dict[str, Any]
PROVIDER = "@kubernetescrd"
COOKIE_NAME_RE = re.compile(r"[^A-Za-z0-9_]")
TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
REALM_RE = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]*$")  # printable ASCII but `"` and `\`
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)$")
UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
SAMESITE = {"none": "None", "lax": "Lax", "strict": "Strict"}


def ir_source(ns: str, name: str) -> str:
    return f"IngressRoute:{ns}/{name}"


def mw_source(ns: str, name: str) -> str:
    return f"Middleware:{ns}/{name}"


@dataclass(frozen=True)
class Service:
    backend: Backend
    weight: int
    sticky: str  # Lua table source of the cookie settings, "" when not sticky


@dataclass(frozen=True)
class IRoute:
    """One route of an IngressRoute, compiled."""

    id: str  # "<ns>/<name>#<index>"
    source: str
    rule: str
    expr: rules.Expr
    priority: int
    entrypoints: tuple[str, ...]
    middlewares: tuple[str, ...]  # middleware ids "<ns>/<name>", chains expanded, in order
    services: tuple[Service, ...]


@dataclass
class Compiled:
    routes: list[IRoute] = field(default_factory=list)
    middlewares: dict[str, str] = field(default_factory=dict)  # id -> Lua table source (the working ones)
    tls: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # host -> (namespace, secret, source)
    problems: dict[str, list[str]] = field(default_factory=dict)

    def backends(self) -> set[Backend]:
        return {s.backend for r in self.routes for s in r.services}

    def report(self, source: str, msg: str) -> None:
        self.problems.setdefault(source, []).append(msg)


def _m(o: Obj) -> Obj:
    m: Obj = o.get("metadata") or {}
    return m


def duration_seconds(v: Any) -> float:
    """A Go duration ("1s", "500ms", "1m") or an integer number of seconds, as Traefik's period fields take."""
    if isinstance(v, int | float):
        return float(v)
    s = str(v).strip()
    if s.isdigit():
        return float(s)
    m = DURATION_RE.match(s)
    if not m:
        raise ValueError(f"invalid duration {v!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def _unsupported(spec: Obj, allowed: set[str], what: str) -> list[str]:
    return [f"{what}.{k} is not supported by this data plane" for k in sorted(set(spec) - allowed)]


def htpasswd_users(text: str) -> dict[str, str]:
    """user -> hash of htpasswd lines (blank lines and `#` comments skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        user, _, h = line.partition(":")
        out[user] = h
    return out


def _secret_users(secret: Obj | None) -> dict[str, str] | str:
    """The users of a basicAuth secret, or the problem."""
    if secret is None:
        return "secret not found"
    data = secret.get("data") or {}
    try:
        if secret.get("type") == "kubernetes.io/basic-auth":
            user = base64.b64decode(data.get("username") or "").decode()
            pw = base64.b64decode(data.get("password") or "")
            if not user:
                return "kubernetes.io/basic-auth secret has no username"
            return {user: "{SHA}" + base64.b64encode(hashlib.sha1(pw).digest()).decode()}
        users = htpasswd_users(base64.b64decode(data.get("users") or "").decode())
    except (ValueError, UnicodeDecodeError):
        return "secret data is not valid"
    if not users:
        return "secret has no users"
    supported = ("$apr1$", "{SHA}", "$2y$", "$2a$", "$2b$", "$1$", "$5$", "$6$")
    bad = [u for u, h in users.items() if not h.startswith(supported)]
    if bad:
        return f"users {bad}: hash format not supported (apr1, bcrypt, SHA1, MD5/SHA-crypt are)"
    return users


def _lua_map(d: dict[str, Any]) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, bool):
            val = "true" if v else "false"
        elif isinstance(v, int | float):
            val = repr(v)
        else:
            val = lua_str(str(v))
        parts.append(f"[{lua_str(k)}] = {val}")
    return "{" + ", ".join(parts) + "}"


def compile_middleware(mw: Obj, secrets: dict[str, Obj]) -> tuple[str | None, list[str], list[str]]:
    """(Lua table source, chained middleware refs, problems) of one Middleware; None for a chain or a failure."""
    ns = str(_m(mw).get("namespace") or "default")
    spec: Obj = mw.get("spec") or {}
    kinds = [k for k, v in spec.items() if v is not None]
    if len(kinds) != 1:
        return None, [], [f"a Middleware has exactly one type; this one has {kinds or 'none'}"]
    kind = kinds[0]
    c: Obj = spec[kind] or {}
    problems: list[str] = []
    match kind:
        case "chain":
            refs = [str(x.get("name") or "") for x in c.get("middlewares") or []]
            return None, refs, _unsupported(c, {"middlewares"}, "chain")
        case "redirectScheme":
            problems += _unsupported(c, {"scheme", "port", "permanent"}, kind)
            scheme = str(c.get("scheme") or "https")
            if scheme not in ("http", "https"):
                problems.append(f"redirectScheme.scheme {scheme!r}: only http and https")
            port = str(c.get("port") or "")
            if port and not port.isdigit():
                problems.append(f"redirectScheme.port {port!r} is not a number")
            lua = _lua_map({"t": "redirect", "scheme": scheme, "port": port, "permanent": bool(c.get("permanent"))})
        case "stripPrefix":
            problems += _unsupported(c, {"prefixes", "forceSlash"}, kind)
            prefixes = [str(p) for p in c.get("prefixes") or [] if p]
            lua = "{t = " + lua_str("strip") + ", prefixes = {" + ", ".join(lua_str(p) for p in prefixes) + "}}"
        case "addPrefix":
            problems += _unsupported(c, {"prefix"}, kind)
            p = str(c.get("prefix") or "")
            lua = _lua_map({"t": "addprefix", "prefix": p if p.startswith("/") else "/" + p})
        case "replacePath":
            problems += _unsupported(c, {"path"}, kind)
            lua = _lua_map({"t": "replacepath", "path": str(c.get("path") or "/")})
        case "headers":
            problems += _unsupported(c, {"customRequestHeaders", "customResponseHeaders"}, kind)
            for field_ in ("customRequestHeaders", "customResponseHeaders"):
                for k, v in (c.get(field_) or {}).items():
                    if not TOKEN_RE.match(str(k)) or any(ch in str(v) for ch in "\r\n\0"):
                        problems.append(f"headers.{field_}: {str(k)[:64]!r} is not a valid header name and value")

            def pairs(d: Obj | None) -> str:
                return "{" + ", ".join(f"{{{lua_str(str(k))}, {lua_str(str(v))}}}" for k, v in (d or {}).items()) + "}"

            lua = (
                f"{{t = {lua_str('headers')}, req = {pairs(c.get('customRequestHeaders'))},"
                f" resp = {pairs(c.get('customResponseHeaders'))}}}"
            )
        case "basicAuth":
            problems += _unsupported(c, {"secret", "realm", "removeHeader", "headerField"}, kind)
            if not REALM_RE.match(str(c.get("realm") or "traefik")):
                problems.append("basicAuth.realm: only printable characters without quotes or backslashes")
            users = _secret_users(secrets.get(f"{ns}/{c.get('secret')}")) if c.get("secret") else "no secret"
            if isinstance(users, str):
                problems.append(f"basicAuth secret {ns}/{c.get('secret')}: {users}")
                users = {}
            lua = (
                f"{{t = {lua_str('basicauth')}, users = {_lua_map(users)}, realm = {lua_str(str(c.get('realm') or 'traefik'))},"
                f" remove = {'true' if c.get('removeHeader') else 'false'},"
                f" field = {lua_str(str(c.get('headerField') or ''))}}}"
            )
        case "ipAllowList" | "ipWhiteList":
            problems += _unsupported(c, {"sourceRange", "ipStrategy", "rejectStatusCode"}, kind)
            strat: Obj = c.get("ipStrategy") or {}
            problems += _unsupported(strat, {"depth"}, f"{kind}.ipStrategy")
            ranges = []
            for r in c.get("sourceRange") or []:
                try:
                    net = ipaddress.ip_network(str(r), strict=False)
                except ValueError:
                    problems.append(f"{kind}.sourceRange {r!r} is not an IP or CIDR")
                    continue
                if net.version != 4:
                    problems.append(f"{kind}.sourceRange {r!r}: IPv6 is not supported (this cluster is IPv4)")
                    continue
                ranges.append("{" + rules.cidr_lua(str(net)) + "}")
            status = int(c.get("rejectStatusCode") or 403)
            lua = (
                f"{{t = {lua_str('allow')}, ranges = {{{', '.join(ranges)}}}, depth = {int(strat.get('depth') or 0)},"
                f" status = {status}}}"
            )
        case "rateLimit":
            problems += _unsupported(c, {"average", "period", "burst", "sourceCriterion"}, kind)
            crit: Obj = c.get("sourceCriterion") or {}
            problems += _unsupported(
                crit, {"requestHost", "requestHeaderName", "ipStrategy"}, "rateLimit.sourceCriterion"
            )
            strat = crit.get("ipStrategy") or {}
            problems += _unsupported(strat, {"depth"}, "rateLimit.sourceCriterion.ipStrategy")
            try:
                period = duration_seconds(c.get("period") or 1)
            except ValueError as exc:
                problems.append(f"rateLimit.period: {exc}")
                period = 1.0
            average = float(c.get("average") or 0)
            burst = max(1, int(c.get("burst") or 1))
            rate = average / period if period > 0 else 0.0
            key = "host" if crit.get("requestHost") else "header" if crit.get("requestHeaderName") else "ip"
            lua = _lua_map(
                {
                    "t": "ratelimit",
                    "rate": rate,
                    "burst": burst,
                    "key": key,
                    "header": str(crit.get("requestHeaderName") or ""),
                    "depth": int(strat.get("depth") or 0),
                }
            )
        case _:
            return None, [], [f"middleware type {kind} is not supported by this data plane"]
    return (None if problems else lua), [], problems


@dataclass
class _Middlewares:
    """Compiled Middlewares by id, with chains expanded lazily (cycles and missing refs reported)."""

    objs: dict[str, Obj]
    secrets: dict[str, Obj]
    out: Compiled
    leaves: dict[str, str | None] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def compile_all(self) -> None:
        for mid, mw in self.objs.items():
            lua, refs, problems = compile_middleware(mw, self.secrets)
            ns, name = mid.split("/", 1)
            for p in problems:
                self.out.report(mw_source(ns, name), p)
            if problems:
                self.errors[mid] = problems[0]
            elif lua is not None:
                self.leaves[mid] = lua
                self.out.middlewares[mid] = lua
            else:
                self.chains[mid] = [_ref_id(r, ns) for r in refs]

    def expand(self, mid: str, stack: tuple[str, ...] = ()) -> list[str]:
        """The leaf middleware ids `mid` stands for, or ValueError with the reason."""
        if mid in stack:
            raise ValueError(f"middleware chain cycle: {' -> '.join((*stack, mid))}")
        if mid in self.errors:
            raise ValueError(f"middleware {mid} cannot be served: {self.errors[mid]}")
        if mid in self.leaves:
            return [mid]
        if mid in self.chains:
            out: list[str] = []
            for ref in self.chains[mid]:
                out += self.expand(ref, (*stack, mid))
            return out
        raise ValueError(f"middleware {mid} not found")


def _ref_id(ref: str, ns: str) -> str:
    """A middleware reference inside a chain or an IngressRoute: `name` or `name@kubernetescrd` in `ns`."""
    name = ref.removesuffix(PROVIDER)
    return f"{ns}/{name}"


def annotation_ids(refs: tuple[str, ...], middlewares: list[Obj]) -> list[str] | str:
    """`router.middlewares` values (`<ns>-<name>@kubernetescrd`) -> middleware ids, or the problem."""
    by_key = {f"{_m(m).get('namespace')}-{_m(m).get('name')}": f"{_m(m).get('namespace')}/{_m(m).get('name')}"
              for m in middlewares}  # fmt: skip
    out = []
    for ref in refs:
        if not ref.endswith(PROVIDER):
            return f"middleware {ref}: only the kubernetescrd provider exists here (<namespace>-<name>@kubernetescrd)"
        key = ref.removesuffix(PROVIDER)
        if key not in by_key:
            return f"middleware {ref} not found"
        out.append(by_key[key])
    return out


def cookie_name(name: str, service: str) -> str:
    """Traefik's sticky cookie name: the given one sanitized, else `_` + 5 hex digits of a hash of the service."""
    if name:
        return COOKIE_NAME_RE.sub("_", name)
    return "_" + hashlib.sha1(f"_TRAEFIK_BACKEND_{service}".encode()).hexdigest()[:5]


def _sticky(svc: Obj, backend: Backend, problems: list[str], where: str) -> str:
    sticky: Obj = svc.get("sticky") or {}
    if not sticky:
        return ""
    problems += _unsupported(sticky, {"cookie"}, f"{where}.sticky")
    ck: Obj = sticky.get("cookie") or {}
    problems += _unsupported(ck, {"name", "secure", "httpOnly", "sameSite", "maxAge", "path"}, f"{where}.sticky.cookie")
    same = str(ck.get("sameSite") or "").lower()
    if same and same not in SAMESITE:
        problems.append(f"{where}.sticky.cookie.sameSite {same!r}: none, lax or strict")
    return _lua_map(
        {
            "name": cookie_name(str(ck.get("name") or ""), f"{backend.namespace}-{backend.service}-{backend.port}"),
            "secure": bool(ck.get("secure")),
            "httponly": bool(ck.get("httpOnly")),
            "samesite": SAMESITE.get(same, ""),
            "maxage": int(ck.get("maxAge") or 0),
            "path": str(ck.get("path") or "/"),
        }
    )


def build(ingressroutes: list[Obj], middlewares: list[Obj], secrets: dict[str, Obj]) -> tuple[Compiled, _Middlewares]:
    """Compile every IngressRoute and Middleware; `secrets` by "<ns>/<name>"."""
    out = Compiled()
    mws = _Middlewares({f"{_m(m).get('namespace')}/{_m(m).get('name')}": m for m in middlewares}, secrets, out)
    mws.compile_all()
    for ir in sorted(ingressroutes, key=lambda o: (str(_m(o).get("namespace")), str(_m(o).get("name")))):
        ns = str(_m(ir).get("namespace") or "default")
        name = str(_m(ir).get("name"))
        src = ir_source(ns, name)
        spec: Obj = ir.get("spec") or {}
        eps = tuple(str(e) for e in spec.get("entryPoints") or ENTRYPOINTS)
        unknown = [e for e in eps if e not in ENTRYPOINTS]
        if unknown:
            out.report(src, f"unknown entryPoints {unknown} (this cluster has web and websecure)")
            eps = tuple(e for e in eps if e in ENTRYPOINTS)
        tls: Obj | None = spec.get("tls")
        if tls is not None:
            eps = tuple(e for e in eps if e == WEBSECURE)
            for k in sorted(set(tls) - {"secretName", "domains"}):
                out.report(src, f"spec.tls.{k} is not supported here (served with the default TLS options)")
        tls_hosts: list[str] = []
        for ri, route in enumerate(spec.get("routes") or []):
            where = f"spec.routes[{ri}]"
            problems: list[str] = []
            rule = str(route.get("match") or "")
            if (route.get("kind") or "Rule") != "Rule":
                problems.append(f"{where}.kind: only Rule")
            if route.get("syntax") not in (None, "v3"):
                problems.append(f"{where}.syntax {route.get('syntax')!r}: only Traefik v3's rule syntax")
            try:
                expr = rules.parse(rule)
            except rules.RuleError as exc:
                out.report(src, f"{where}.match {rule!r}: {exc}; this route is not served")
                continue
            ids: list[str] = []
            for ref in route.get("middlewares") or []:
                rns = str(ref.get("namespace") or ns)
                if rns != ns:
                    problems.append(
                        f"{where}.middlewares: {rns}/{ref.get('name')} is in another namespace"
                        " (allowCrossNamespace is false)"
                    )
                    continue
                try:
                    ids += mws.expand(_ref_id(str(ref.get("name") or ""), rns))
                except ValueError as exc:
                    problems.append(f"{where}.middlewares: {exc}")
            services: list[Service] = []
            for si, svc in enumerate(route.get("services") or []):
                sw = f"{where}.services[{si}]"
                problems += _unsupported(svc, {"name", "namespace", "port", "weight", "sticky", "kind", "passHostHeader",
                                               "scheme"}, sw)  # fmt: skip
                if (svc.get("kind") or "Service") != "Service":
                    problems.append(f"{sw}.kind {svc.get('kind')}: only Kubernetes Services")
                if svc.get("passHostHeader") is False:
                    problems.append(f"{sw}.passHostHeader false is not supported")
                if (svc.get("scheme") or "http") != "http":
                    problems.append(f"{sw}.scheme {svc.get('scheme')}: only http")
                sns = str(svc.get("namespace") or ns)
                if sns != ns:
                    problems.append(f"{sw}: Service {sns}/{svc.get('name')} is in another namespace")
                    continue
                b = Backend(ns, str(svc.get("name") or ""), str(svc.get("port") if svc.get("port") is not None else ""))
                weight = int(svc["weight"]) if svc.get("weight") is not None else 1
                services.append(Service(b, weight, _sticky(svc, b, problems, sw)))
            if not services:
                problems.append(f"{where}: no services")
            if problems:
                for p in problems:
                    out.report(src, p + "; this route is not served")
                continue
            prio = int(route.get("priority") or 0) or rules.priority(rule)
            out.routes.append(IRoute(f"{ns}/{name}#{ri}", src, rule, expr, prio, eps, tuple(ids), tuple(services)))
            tls_hosts += rules.hosts(expr)
        if tls is not None:
            for d in tls.get("domains") or []:
                tls_hosts += [str(d.get("main") or ""), *(str(s) for s in d.get("sans") or [])]
            if tls.get("secretName"):
                for h in tls_hosts:
                    if h:
                        out.tls.setdefault(h.lower(), (ns, str(tls["secretName"]), src))
    # Traefik: higher priority first; equal priorities in a stable order (the router's name).
    out.routes.sort(key=lambda r: (-r.priority, r.id))
    return out, mws
