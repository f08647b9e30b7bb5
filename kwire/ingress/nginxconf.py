"""The routing table -> nginx.conf for Debian's nginx with its Lua module (the data plane, as ingress-nginx drives it).

Routes (hosts, paths, TLS certificates) are the configuration file: a change is a graceful reload (SIGHUP: new
workers take new connections, old ones finish theirs). Endpoints are not: every location proxies to its backend's
upstream (one per Service port in use) whose `balancer_by_lua` picks the next ready endpoint (round-robin per
worker) from a shared dict, which the controller fills through a control socket (`POST /backends`, one line per
backend: `<key> <ip:port> <ip:port>...`), so endpoint changes never reload, as ingress-nginx's dynamic
configuration does. A backend with no ready endpoint is sent to a 127.0.0.1 listener answering 503 (Traefik's "no
available server"); an unknown Service answers 404; no matching route 404.

Server blocks: one per host listening on 80 (Traefik's `web`) and 443 (`websecure`, TLS with HTTP/2 by ALPN), or
one per port when the host has routes restricted to one entrypoint; exact names
as `server_name`, `*.foo.com` as a regex covering exactly one label; the default server of each port holds the
routes of every host (host-less rules, defaultBackend). Paths: Exact -> `location = /p`; Prefix /p ->
`location = /p` + `location /p/` (element-wise); Prefix / -> `location /`. nginx picks exact matches first and
then the longest prefix, which is the Ingress rule (longest wins, Exact before Prefix on the same path).
Request headers to backends as Traefik sets them: Host unchanged, X-Forwarded-For/-Proto/-Host/-Port/-Server,
X-Real-Ip; WebSocket upgrades pass (HTTP/1.1 upstream with Upgrade/Connection).
Before its locations, every host server block runs the Lua router (lua.py: IngressRoutes, Ingress routes bridging a
reload) in its rewrite phase; what it chooses is in ngx.ctx, which every balancer honours first, so whichever
location the request is in proxies there (no internal redirect, no extra location per server). With the router
on, every location proxies: a path without a backend goes to the `kwire_dyn` upstream, which sends what the
router did not choose to a 127.0.0.1 listener answering 404 (a `return` would run before the router). Ingress
paths with `router.middlewares` run them in Lua in their location. The control socket also takes the router's chunk
(`POST /routes`). The configuration carries its generation (`kw_gen`, the first line of init_worker).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kwire.ingress.lua import ROUTER_LUA, ROUTES_CONTROL_LUA
from kwire.ingress.model import WEB, WEBSECURE, Route, Table, host_matches
from kwire.ingress.rules import lua_str

HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
PATH_RE = re.compile(r"^/[A-Za-z0-9._~!&'()*+,;=:@%/-]*$")  # no `$` (nginx variables), no quotes/spaces

GEN_MARK = "kw_gen = "  # init_worker's first line: the configuration's generation
BALANCER_LUA = r"""
    kw_version = -1; kw_peers = {}; kw_rr = {}; kw_balancer = require "ngx.balancer"; kw_no_ctx = {}
    function kw_pick(key)
      local d = ngx.shared.kwire
      local v = d:get("version") or 0
      if v ~= kw_version then
        kw_peers = {}
        for _, k in ipairs(d:get_keys(0)) do
          if k:byte(1) == 98 and k:byte(2) == 58 then
            local list = {}
            for host, port in (d:get(k) or ""):gmatch("([^%s:]+):(%d+)") do list[#list + 1] = {host, tonumber(port)} end
            kw_peers[k:sub(3)] = list
          end
        end
        kw_version = v
      end
      -- the Lua router's choice (lua.py) wins over the location's own backend; ngx.ctx (a table made per request)
      -- is looked at only when the router or a middleware can have written it
      local ctx = kw_cfg.uses_ctx and ngx.ctx or kw_no_ctx
      key = ctx.kw_b or key
      if not key then return kw_balancer.set_current_peer("127.0.0.1", NOTFOUND_PORT) end
      local peers = kw_peers[key]
      if not peers or #peers == 0 then
        return kw_balancer.set_current_peer("127.0.0.1", NOEP_PORT)
      end
      local n = #peers
      local failed = kw_balancer.get_last_failure()
      local sticky = ctx.kw_sticky
      local i
      if sticky and not failed then
        local want = ngx.var["cookie_" .. sticky.name]
        if want then
          for j = 1, n do
            local p = peers[j]
            if not p[3] then p[3] = ngx.md5(p[1] .. ":" .. p[2]):sub(1, 16) end
            if p[3] == want then i = j; break end
          end
        end
      end
      if not i then
        i = (kw_rr[key] or 0) % n + 1
        kw_rr[key] = i
        if sticky then
          local p = peers[i]
          if not p[3] then p[3] = ngx.md5(p[1] .. ":" .. p[2]):sub(1, 16) end
          ctx.kw_cookie = kw_cookie(sticky, p[3])
        end
      end
      if n > 1 and not failed then kw_balancer.set_more_tries(n - 1) end
      local ok, err = kw_balancer.set_current_peer(peers[i][1], peers[i][2])
      if not ok then ngx.log(ngx.ERR, "kwire: ", err) end
    end
"""

CONTROL_LUA = r"""
        ngx.req.read_body()
        local d = ngx.shared.kwire
        local body = ngx.req.get_body_data()
        if not body then
          local f = ngx.req.get_body_file()
          if f then local h = io.open(f, "rb"); body = h:read("*a"); h:close() end
        end
        local keep = {}
        for line in (body or ""):gmatch("[^\n]+") do
          local k, v = line:match("^(%S+)%s*(.*)$")
          if k then d:set("b:" .. k, v); keep["b:" .. k] = true end
        end
        if ngx.var.arg_full == "1" then
          for _, k in ipairs(d:get_keys(0)) do
            if k:byte(1) == 98 and k:byte(2) == 58 and not keep[k] then d:delete(k) end
          end
        end
        d:incr("version", 1, 0)
        d:set("ready", true)
        ngx.say("ok")
"""


@dataclass(frozen=True)
class Paths:
    """Where the proxy keeps its files (a private directory of the pod)."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def control(self) -> Path:
        return self.root / "control.sock"

    @property
    def pid(self) -> Path:
        return self.root / "nginx.pid"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def default_cert(self) -> Path:
        return self.certs / "default.pem"


@dataclass
class Render:
    """What to render besides the table: which backends resolve, which certificate file serves which host."""

    known_backends: set[str] = field(default_factory=set)  # backend keys whose Service and port exist
    certs: dict[str, Path] = field(default_factory=dict)  # TLS host pattern -> PEM file (cert + key)
    http_port: int = 80
    https_port: int = 443
    ping_port: int = 9000
    noep_port: int = 9001  # 127.0.0.1 only: answers 503 for backends without a ready endpoint
    notfound_port: int = 9002  # 127.0.0.1 only: answers 404 (what no route matches, with the Lua router on)
    workers: int = 1
    routes_on: bool = True  # every host server runs the Lua router first (lua.py); off: plain nginx routing
    generation: int = 0  # the configuration's generation (`kw_gen`: fastpath.py)


def _q(s: str) -> str:
    """An nginx string literal (values are validated before they get here; quoting keeps them one token)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def valid_host(host: str) -> bool:
    return host == "" or bool(HOST_RE.match(host.lower()))


def valid_path(path: str) -> bool:
    return bool(PATH_RE.match(path)) and "//" not in path


def _server_name(host: str) -> str:
    if not host:
        return "_"
    if host.startswith("*."):
        return "~^[^.]+" + re.escape(host[1:].lower()).replace("\\-", "-") + "$"
    return host.lower()


def upstream_names(rd: Render) -> dict[str, str]:
    """One upstream per known backend (its balancer knows its key, so a request reads no variable)."""
    return {key: f"kwire_b{i}" for i, key in enumerate(sorted(rd.known_backends))}


def _not_found(rd: Render) -> str:
    # `return` runs in the rewrite phase before rewrite_by_lua (the Lua router); with the router on, such a
    # location proxies like any other: to what the router chose, else to the 127.0.0.1 listener answering 404.
    return "proxy_pass http://kwire_dyn;" if rd.routes_on else "return 404;"


def _location_body(r: Route, names: dict[str, str], rd: Render) -> list[str]:
    if r.backend.key not in names:
        return [_not_found(rd)]
    out = []
    if r.middlewares:
        # (overrides the server's rewrite handler: the router first, the path's middlewares if it chose nothing)
        ids = ", ".join(lua_str(m) for m in r.middlewares)
        out.append(f"rewrite_by_lua_block {{ if not kw_ir() then kw_mw_run({{{ids}}}) end }}")
    return [*out, f"proxy_pass http://{names[r.backend.key]};"]


def _locations(routes: list[Route], entrypoint: str, names: dict[str, str], rd: Render) -> list[str]:
    out: list[str] = []
    exact: set[str] = set()
    prefix: set[str] = set()
    chosen = [r for r in routes if entrypoint in r.entrypoints and valid_path(r.path)]
    for r in chosen:
        if r.kind == "Exact" and r.path not in exact:
            exact.add(r.path)
            out.append(f"location = {_q(r.path)} {{ {' '.join(_location_body(r, names, rd))} }}")
    for r in chosen:
        if r.kind != "Prefix" or r.path in prefix:
            continue
        prefix.add(r.path)
        body = " ".join(_location_body(r, names, rd))
        if r.path == "/":
            out.append(f"location / {{ {body} }}")
            continue
        if r.path not in exact:
            exact.add(r.path)
            out.append(f"location = {_q(r.path)} {{ {body} }}")
        out.append(f"location {_q(r.path + '/')} {{ {body} }}")
    if "/" not in prefix:
        out.append(f"location / {{ {_not_found(rd)} }}")
    return out


def cert_for(host: str, rd: Render, paths: Paths) -> Path:
    if host in rd.certs:
        return rd.certs[host]
    for pattern, f in sorted(rd.certs.items()):
        if host and not host.startswith("*.") and host_matches(pattern, host):
            return f
    return paths.default_cert


def render(table: Table, rd: Render, paths: Paths) -> str:
    """nginx.conf for the table (only valid hosts and paths; the controller reports the others)."""
    lines = [
        "load_module /usr/share/nginx/modules/ndk_http_module.so;",
        "load_module /usr/share/nginx/modules/ngx_http_lua_module.so;",
        f"worker_processes {rd.workers};",
        "daemon off;",
        f"pid {paths.pid};",
        "error_log stderr warn;",
        "worker_rlimit_nofile 16384;",
        "events { worker_connections 8192; multi_accept on; }",
        "http {",
        "  access_log off;",
        "  server_tokens off;",
        "  default_type text/plain;",
        "  lua_shared_dict kwire 32m;",
        "  lua_shared_dict kwire_rl 10m;",
        f"  client_body_temp_path {paths.root}/body;",
        f"  proxy_temp_path {paths.root}/proxy;",
        f"  fastcgi_temp_path {paths.root}/fastcgi;",
        f"  uwsgi_temp_path {paths.root}/uwsgi;",
        f"  scgi_temp_path {paths.root}/scgi;",
        "  server_names_hash_bucket_size 128;",
        "  server_names_hash_max_size 65536;",
        "  variables_hash_bucket_size 128;",
        "  keepalive_requests 100000;",
        "  client_max_body_size 0;",
        "  init_worker_by_lua_block {",
        f"    {GEN_MARK}{rd.generation}",
        BALANCER_LUA.replace("NOEP_PORT", str(rd.noep_port)).replace("NOTFOUND_PORT", str(rd.notfound_port))
        + ROUTER_LUA
        + "  }",
        "  map $http_upgrade $kwire_connection { default upgrade; '' ''; }",
    ]
    names = upstream_names(rd)
    for key, name in names.items():
        lines += [
            f"  upstream {name} {{",
            "    server 0.0.0.1;",
            f"    balancer_by_lua_block {{ kw_pick({_q(key)}) }}",
            "    keepalive 512;",
            "    keepalive_requests 100000;",
            "  }",
        ]
    lines += [
        "  upstream kwire_dyn {",  # IngressRoute services: the backend key is in ngx.ctx (lua.py)
        "    server 0.0.0.1;",
        "    balancer_by_lua_block { kw_pick(nil) }",
        "    keepalive 512;",
        "    keepalive_requests 100000;",
        "  }",
        "  proxy_http_version 1.1;",
        "  proxy_buffering off;",
        "  proxy_request_buffering off;",
        "  proxy_read_timeout 3600s;",
        "  proxy_send_timeout 3600s;",
        "  proxy_connect_timeout 5s;",
        "  proxy_next_upstream error timeout;",
        "  proxy_set_header Host $http_host;",
        "  proxy_set_header Upgrade $http_upgrade;",
        "  proxy_set_header Connection $kwire_connection;",
        "  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "  proxy_set_header X-Forwarded-Proto $scheme;",
        "  proxy_set_header X-Forwarded-Host $http_host;",
        "  proxy_set_header X-Forwarded-Port $server_port;",
        "  proxy_set_header X-Forwarded-Server $hostname;",
        "  proxy_set_header X-Real-Ip $remote_addr;",
        "  server {",
        f"    listen unix:{paths.control};",
        # Bodies stay in memory: a temporary file would be written by a worker (an unprivileged user) into the
        # private 0700 directory, which it cannot; the shared dict bounds what they hold anyway.
        "    client_body_buffer_size 32m;",
        "    client_max_body_size 32m;",
        "    location = /backends { content_by_lua_block {" + CONTROL_LUA + "    } }",
        "    location = /routes { content_by_lua_block {" + ROUTES_CONTROL_LUA + "    } }",
        "  }",
        "  server {",
        f"    listen {rd.ping_port};",
        "    location = /ping { content_by_lua_block {",
        '      if ngx.shared.kwire:get("ready") then ngx.say("OK") else ngx.status = 503; ngx.say("not ready") end',
        "    } }",
        "    location / { return 404; }",
        "  }",
        "  server {",
        f"    listen 127.0.0.1:{rd.noep_port};",
        '    location / { return 503 "no available server\\n"; }',
        "  }",
        "  server {",
        f"    listen 127.0.0.1:{rd.notfound_port};",
        "    location / { return 404; }",
        "  }",
    ]
    hosts = sorted(h for h in table.hosts if valid_host(h))
    for host in hosts:
        routes = table.hosts[host]
        both = all(set(r.entrypoints) == {WEB, WEBSECURE} for r in routes)
        # One server block serves both ports when every route of the host does (most hosts): nginx's per-server
        # memory (~40 KB with the Lua module loaded) then counts once per host, not twice.
        for eps in ((WEB, WEBSECURE),) if both else ((WEB,), (WEBSECURE,)):
            default = " default_server" if not host else ""
            lines.append("  server {")
            if WEB in eps:
                lines.append(f"    listen {rd.http_port}{default};")
            if WEBSECURE in eps:
                lines.append(f"    listen {rd.https_port} ssl http2{default};")
                # Only the default server and hosts with their own certificate name one: nginx makes an SSL
                # context per server that has a certificate, and a server without one keeps the default
                # server's context, i.e. serves the default certificate, which is what it should serve.
                cert = cert_for(host, rd, paths)
                if not host or cert != paths.default_cert:
                    lines.append(f"    ssl_certificate {cert};")
                    lines.append(f"    ssl_certificate_key {cert};")
            lines.append(f"    server_name {_server_name(host)};")
            if rd.routes_on:
                lines += ["    rewrite_by_lua_block { kw_ir() }", "    header_filter_by_lua_block { kw_hf() }"]
            lines.extend("    " + loc for loc in _locations(routes, eps[0], names, rd))
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def backend_lines(endpoints: dict[str, list[str]]) -> bytes:
    """The control socket's body: one line per backend key with its ready `ip:port`s."""
    return "".join(f"{k} {' '.join(v)}\n" for k, v in sorted(endpoints.items())).encode()
