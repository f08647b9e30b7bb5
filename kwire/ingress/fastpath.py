"""Ingress route changes served before nginx's reload lands: the changed hosts' routes as Lua router routes.

An Ingress change is an nginx reload (routes are locations), and on a busy machine a reload takes a few hundred
milliseconds to have new workers accepting. Meanwhile the workers of the previous configuration keep serving; this
module gives them the new routes of every host whose routes changed, as routes of the Lua router (lua.py), pushed
before the reload is signalled, so a change serves as soon as the controller has pushed it.

Configurations carry a generation (`kw_gen` in each worker); these routes carry the generation of the
configuration that has them as locations, and a worker of that generation or later skips them (it has the real
locations). For each changed host the whole route list is given, in nginx's order (Exact paths, then Prefix paths
longest first, the element-wise Prefix match of the Ingress rule), followed by a 404 for anything else on that
host: exactly what the new locations will answer, so the two agree while both exist; a host gone gets the
host-less routes and a 404, as the new default server answers it. Left to the reload alone:
wildcard hosts (nginx prefers an exact server name, which a Lua check here would not know), hosts with their own
certificate (SNI picks it from server blocks), and any change of the host-less routes (they are on every host).
"""

from __future__ import annotations

from kwire.ingress.model import WEB, WEBSECURE, Route
from kwire.ingress.nginxconf import valid_path
from kwire.ingress.rules import lua_str


def _path_cond(r: Route) -> str:
    if r.kind == "Exact":
        return f"r.path == {lua_str(r.path)}"
    if r.path == "/":
        return "true"
    return f"(r.path == {lua_str(r.path)} or K.prefix(r.path, {lua_str(r.path + '/')}))"


def _ordered(routes: list[Route]) -> list[Route]:
    exact = [r for r in routes if r.kind == "Exact"]
    prefix = sorted((r for r in routes if r.kind == "Prefix"), key=lambda r: -len(r.path))
    return exact + prefix


def _lua_route(rid: str, host: str, cond: str, gen: int, *, web: bool, websecure: bool, body: str) -> str:
    return (
        f"  {{id = {lua_str(rid)}, gen = {gen}, web = {'true' if web else 'false'},"
        f" websecure = {'true' if websecure else 'false'},"
        f" m = function(r) return r.host == {lua_str(host)} and {cond} end, {body}}},"
    )


def pending_routes(
    served: dict[str, list[Route]] | None,
    new: dict[str, list[Route]],
    *,
    gen: int,
    known_backends: set[str],
    bridged: set[str],
) -> list[str]:
    """Lua route entries (lua.py's route table) bridging the configuration `served` to `new` (generation `gen`).

    `bridged` are the hosts this may cover (valid exact names without their own certificate, or gone)."""
    if served is None or served.get("") != new.get(""):
        return []
    out: list[str] = []
    # A host gone falls to the default server: the host-less routes (unchanged here), then 404.
    changed = {h: new[h] for h in new if served.get(h) != new[h]}
    changed |= {h: new.get("", []) for h in served if h not in new}
    for host in sorted(changed):
        if host not in bridged:
            continue
        for i, r in enumerate(_ordered([r for r in changed[host] if valid_path(r.path)])):
            if r.backend.key in known_backends:
                mws = ", ".join(lua_str(m) for m in r.middlewares)
                body = f"mw = {{{mws}}}, svc = {{{{b = {lua_str(r.backend.key)}, w = 1}}}}"
            else:
                body = "nf = true, mw = {}, svc = {}"
            out.append(_lua_route(f"ing:{host}#{i}", host, _path_cond(r), gen, web=WEB in r.entrypoints,
                                  websecure=WEBSECURE in r.entrypoints, body=body))  # fmt: skip
        out.append(_lua_route(f"ing:{host}#404", host, "true", gen, web=True, websecure=True,
                              body="nf = true, mw = {}, svc = {}"))  # fmt: skip
    return out
