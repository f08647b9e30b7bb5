"""Every route of both providers -> one list of routers ordered by priority, as the Lua chunk the data plane loads.

Mirrors Traefik's HTTP muxer (`pkg/muxer/http`): the routers of every provider (kubernetescrd's IngressRoutes and
the kubernetes Ingress provider's paths) sit in one list per entrypoint sorted by priority, highest first, and the
first whose rule matches a request takes it. A router's priority is its explicit `priority` (IngressRoute
`routes[].priority`, the Ingress annotation `router.priority`), else the length of its rule (crd.py, model.py).
Ties: Traefik v3.3 (K3s's chart) leaves them to Go's map order and later Traefik to the providers' precedence;
here an IngressRoute wins a tie over an Ingress, then the router with the smaller id.

The chunk (`lua_config`) lists the routers in that order, each with its entrypoints, the exact hosts its rule
requires when it has any (`rules.pinned_hosts`: `Host` names, and every Ingress host that is not a wildcard), its
rule as a Lua function, its middlewares and services (or `nf`: a Service that does not exist answers 404). Each
worker indexes them per entrypoint by host (lua.py): a request walks the routers of its own host and the
unpinned ones, merged in list order, so 1,000 hosts cost one table lookup, not 1,000 rule evaluations.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from kwire.ingress import crd, model, rules
from kwire.ingress.model import WEB, WEBSECURE
from kwire.ingress.nginxconf import valid_host, valid_path
from kwire.ingress.rules import lua_str

SAFE_RE = re.compile(rb"[^A-Za-z0-9 ./_+=-]+")
CRD, INGRESS = 0, 1  # provider order on a tie: kubernetescrd first


@dataclass(frozen=True, slots=True)
class Router:
    id: str
    priority: int
    provider: int
    hosts: tuple[str, ...] | None  # the exact hosts the rule requires; None: any host may match
    entrypoints: tuple[str, ...]
    match: str  # a Lua expression over the request table `r` (rules.to_lua)
    middlewares: tuple[str, ...]
    services: str  # the Lua list of services; "" when the backend does not exist (the router answers 404)

    @property
    def order(self) -> tuple[int, int, str]:
        return (-self.priority, self.provider, self.id)


def _path_match(r: model.Route) -> str:
    if r.kind == "Exact":
        return f"r.path == {lua_str(r.path)}"
    if r.path == "/":
        return "true"
    return f"(r.path == {lua_str(r.path)} or K.prefix(r.path, {lua_str(r.path + '/')}))"


def ingress_routers(table: model.Table, known_backends: set[str]) -> list[Router]:
    """One router per served Ingress path (valid host and path; the controller reports the others)."""
    out: list[Router] = []
    for host, routes in table.hosts.items():
        if not valid_host(host):
            continue
        for r in routes:
            if not valid_path(r.path):
                continue
            match = _path_match(r)
            pinned: tuple[str, ...] | None = None
            if host and host.startswith("*."):
                match = f"K.wild(r.host, {lua_str(host[2:].lower())}) and {match}"
            elif host:
                pinned = (host.lower(),)  # the index checks the host: the rule is the path alone
            key = r.backend.key
            services = f"{{{{b = {lua_str(key)}, w = 1}}}}" if key in known_backends else ""
            rid = f"ing:{r.source}|{host}|{r.kind}|{r.path}|{','.join(r.entrypoints)}"
            out.append(Router(rid, model.priority(host, r), INGRESS, pinned, r.entrypoints, match, r.middlewares,
                              services))  # fmt: skip
    return out


def crd_routers(compiled: crd.Compiled, known_backends: set[str]) -> list[Router]:
    """One router per compiled IngressRoute route whose Services all exist (the controller reports the others)."""
    out: list[Router] = []
    for r in compiled.routes:
        if not all(s.backend.key in known_backends for s in r.services):
            continue
        svcs = ", ".join(
            f"{{b = {lua_str(s.backend.key)}, w = {s.weight}, sticky = {s.sticky or 'nil'}}}" for s in r.services
        )
        pinned = rules.pinned_hosts(r.expr)
        out.append(Router(r.id, r.priority, CRD, None if pinned is None else tuple(sorted(pinned)), r.entrypoints,
                          rules.to_lua(r.expr), r.middlewares, f"{{{svcs}}}"))  # fmt: skip
    return out


def ordered(routers: list[Router]) -> list[Router]:
    return sorted(routers, key=lambda r: r.order)


def _bool(b: bool) -> str:
    return "true" if b else "false"


@functools.lru_cache(maxsize=16384)  # every sync re-renders every router; most are unchanged (bounded)
def _router_lua(r: Router) -> str:
    hosts = "nil" if r.hosts is None else "{" + ", ".join(lua_str(h) for h in r.hosts) + "}"
    body = f"svc = {r.services}" if r.services else "nf = true, svc = {}"
    return (
        f"  {{id = {lua_str(r.id)}, web = {_bool(WEB in r.entrypoints)},"
        f" websecure = {_bool(WEBSECURE in r.entrypoints)}, h = {hosts},"
        f" m = function(r) return {r.match} end,{' any = true,' if r.match == 'true' else ''}"
        f" mw = {{{', '.join(lua_str(m) for m in r.middlewares)}}}, {body}}},"
    )


def lua_config(routers: list[Router], middlewares: dict[str, str]) -> str:
    """The Lua chunk the router loads (lua.py): routers in priority order, then the middlewares by id."""
    lines = ["local K = kw_K", "local R = {}", "R.routes = {"]
    lines += [_router_lua(r) for r in ordered(routers)]
    lines.append("}")
    lines.append("R.mw = {")
    for mid, lua in sorted(middlewares.items()):
        lines.append(f"  [{lua_str(mid)}] = {lua},")
    lines.append("}")
    lines.append("return R")
    return "\n".join(lines) + "\n"


def _lua_bytes(b: bytes) -> str:
    """A Lua string literal of any bytes (as rules.lua_str, not cached: these are private keys)."""
    return '"' + SAFE_RE.sub(lambda m: "".join(f"\\{c:03d}" for c in m.group()).encode(), b).decode("ascii") + '"'


def certs_config(certs: dict[str, bytes]) -> str:
    """The Lua chunk of the certificates served by SNI (lua.py's `kw_cert`): TLS host pattern -> PEM (certificate
    and key). Exact names first; `*.foo.com` covers one label."""
    ids: dict[bytes, str] = {}
    exact: list[str] = []
    wild: list[str] = []
    for host, pem in sorted(certs.items()):
        cid = ids.setdefault(pem, f"c{len(ids)}")
        if host.startswith("*."):
            wild.append(f"[{lua_str(host[2:])}] = {lua_str(cid)}")
        else:
            exact.append(f"[{lua_str(host)}] = {lua_str(cid)}")
    pems = [f"[{lua_str(cid)}] = {_lua_bytes(pem)}" for pem, cid in ids.items()]
    return f"return {{exact = {{{', '.join(exact)}}}, wild = {{{', '.join(wild)}}},\n  pem = {{{','.join(pems)}}}}}\n"
