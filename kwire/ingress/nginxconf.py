"""nginx.conf for Debian's nginx with its Lua module (the data plane, as ingress-nginx drives it), and the bodies of
the control socket.

The configuration is constant: it depends on the ports and the worker count, never on Ingresses, IngressRoutes,
Services or certificates, so no route change is an nginx reload and nginx's memory does not grow with the number of
routes. Everything that changes is data in the `kwire` shared dict, which the controller fills through a control
socket (a unix socket in the private directory): `POST /backends` (one line per backend: `<key> <ip:port>...`,
ingress-nginx's dynamic configuration), `POST /routes` (the router's Lua chunk, router.py) and `POST /certs` (the
certificates served by SNI). Each worker reloads what changed on its next request (a version counter per kind).

Servers: one per entrypoint, `web` on the HTTP port and `websecure` on the HTTPS port (TLS, HTTP/2 by ALPN); both
run the Lua router (lua.py) and proxy to one upstream whose `balancer_by_lua` takes the backend the router chose
(`$kw_b`) and picks its next ready endpoint (round-robin per worker; sticky cookies). The common path (a router with
no middleware and no sticky cookie) is decided in the server's `set_by_lua` (no Lua coroutine, no ngx.ctx, no header
filter: what ingress-nginx's balancer.lua also keeps off its per-request path); everything else goes, by an internal
status and `error_page`, to the `@kw` location whose rewrite phase runs the whole router and whose header filter
sets response headers and cookies. A backend
with no ready endpoint is sent to a 127.0.0.1 listener answering 503 (Traefik's "no available server"). The HTTPS
server has the generated default certificate and swaps in a Secret's certificate by SNI
(`ssl_certificate_by_lua`, lua.py's `kw_cert`). Request headers to backends as Traefik sets them: Host unchanged,
X-Forwarded-For/-Proto/-Host/-Port/-Server, X-Real-Ip; WebSocket upgrades pass (HTTP/1.1 upstream with
Upgrade/Connection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kwire.ingress.lua import CERTS_LUA, ROUTER_LUA, ROUTES_CONTROL_LUA

HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
SLOW_STATUS = 599  # internal only: never sent, it sends a request to the whole router (`@kw`)
PATH_RE = re.compile(r"^/[A-Za-z0-9._~!&'()*+,;=:@%/-]*$")  # no `$` (nginx variables), no quotes/spaces

BALANCER_LUA = r"""
    kw_version = -1; kw_peers = {}; kw_rr = {}; kw_balancer = require "ngx.balancer"
    local function kw_load_peers(d, v)
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
    -- The shared dict's versions (backends, routes) are read at most once per tick of nginx's cached clock (a
    -- millisecond; a new tick every event-loop turn under load), not twice per request: each read locks the zone.
    -- Called once per request, by kw_fast (every request's first step); the control requests reset the tick of
    -- their worker, so what they stored is used by its next request.
    kw_tick = -1
    local now = ngx.now
    function kw_sync()
      local t = now()
      if t == kw_tick then return end
      kw_tick = t
      local d = ngx.shared.kwire
      local v = d:get("version") or 0
      if v ~= kw_version then kw_load_peers(d, v) end
      kw_config()
    end
    function kw_pick()  -- the versions were checked by this request's kw_fast (nginxconf's set_by_lua)
      -- the Lua router's choice (lua.py); ngx.ctx only where a sticky cookie can be involved
      local key = ngx.var.kw_b
      local peers = kw_peers[key]
      if not peers or #peers == 0 then
        return kw_balancer.set_current_peer("127.0.0.1", NOEP_PORT)
      end
      local n = #peers
      local failed = kw_balancer.get_last_failure()
      local ctx = kw_cfg.hf and ngx.ctx
      local sticky = ctx and ctx.kw_sticky
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
        kw_tick = -1
        if ngx.var.arg_full == "1" then d:set("ready", true) end  -- the controller's whole first sync is in
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
    """What the configuration depends on: ports and workers."""

    http_port: int = 80
    https_port: int = 443
    ping_port: int = 9000
    noep_port: int = 9001  # 127.0.0.1 only: answers 503 for backends without a ready endpoint
    workers: int = 1


def valid_host(host: str) -> bool:
    return host == "" or bool(HOST_RE.match(host.lower()))


def valid_path(path: str) -> bool:
    return bool(PATH_RE.match(path)) and "//" not in path


def _route_lines(ep: str) -> list[str]:
    """An entrypoint's routing: the common path in `set_by_lua` (lua.py's `kw_fast`, given $host and $uri as
    arguments: the backend, or "" for anything else; the directive's string form, as the block form takes no
    arguments), then nginx proxies at once; "" goes to the `@kw` location (by the error_page of an internal
    status, which keeps method, URI and the unread body) whose rewrite phase runs the whole router (`kw_route`:
    404, 503, middlewares, sticky cookies) and whose header filter sets response headers and cookies."""
    return [
        f"    set_by_lua $kw_b 'return kw_fast(\"{ep}\", ...)' $host $uri;",
        f"    error_page {SLOW_STATUS} = @kw;",
        f'    if ($kw_b = "") {{ return {SLOW_STATUS}; }}',
        "    location / { proxy_pass http://kwire_dyn; }",
        "    location @kw {",
        f'      rewrite_by_lua_block {{ kw_route("{ep}") }}',
        "      header_filter_by_lua_block { kw_hf() }",
        "      proxy_pass http://kwire_dyn;",
        "    }",
    ]


def render(rd: Render, paths: Paths) -> str:
    """nginx.conf (constant for given ports and workers)."""
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
        "  variables_hash_bucket_size 128;",
        "  keepalive_requests 100000;",
        "  client_max_body_size 0;",
        "  init_worker_by_lua_block {",
        BALANCER_LUA.replace("NOEP_PORT", str(rd.noep_port)) + ROUTER_LUA + CERTS_LUA + "  }",
        "  map $http_upgrade $kwire_connection { default upgrade; '' ''; }",
        "  upstream kwire_dyn {",  # the backend is the one the router chose ($kw_b)
        "    server 0.0.0.1;",
        "    balancer_by_lua_block { kw_pick() }",
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
        "    location = /routes { content_by_lua_block {" + ROUTES_CONTROL_LUA.replace("KEY", '"routes"') + "    } }",
        "    location = /certs { content_by_lua_block {" + ROUTES_CONTROL_LUA.replace("KEY", '"certs"') + "    } }",
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
        f"    listen {rd.http_port} default_server reuseport;",  # a socket per worker: connections spread by the kernel
        "    server_name _;",
        *_route_lines("web"),
        "  }",
        "  server {",
        f"    listen {rd.https_port} ssl http2 default_server reuseport;",
        "    server_name _;",
        f"    ssl_certificate {paths.default_cert};",
        f"    ssl_certificate_key {paths.default_cert};",
        "    ssl_certificate_by_lua_block { kw_cert() }",
        *_route_lines("websecure"),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def backend_lines(endpoints: dict[str, list[str]]) -> bytes:
    """The control socket's body: one line per backend key with its ready `ip:port`s."""
    return "".join(f"{k} {' '.join(v)}\n" for k, v in sorted(endpoints.items())).encode()
