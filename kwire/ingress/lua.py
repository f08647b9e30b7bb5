"""The Lua router of the data plane: every route (Ingress paths and IngressRoute rules), Traefik's middlewares,
weighted services, sticky cookies and the certificates chosen by SNI, run by nginx's Lua module in every worker
(Traefik's HTTP muxer, middleware chain and TLS store, re-done on nginx).

The controller turns Ingresses, IngressRoutes and Middlewares into one Lua chunk (router.py) and POSTs it to the
control socket (`/routes`): it is compiled there once (a chunk that does not compile is refused with 400 and the
old one keeps serving), stored in the shared dict, and each worker loads it when the dict's `routes_v` changes,
indexing the routers of each entrypoint by host. A route change is therefore never an nginx reload.

Per request, first `kw_fast(ep, host, uri)` (the server's `set_by_lua`, given $host and $uri; the versions in the
shared dict are read at most once per millisecond tick, the rules' request table is reused): when the request's
router has no middleware and no sticky cookie, its backend goes straight to `$kw_b` and nginx proxies; otherwise
`kw_route(ep)` (the `@kw` location's rewrite phase) does the whole work: the routers of the request's host and the
unpinned ones, merged in the chunk's priority order, are tried; the first whose rule matches wins
(none: 404; a router whose Service does not exist, `nf`: 404): its middlewares run in order (`kw_mw_run`: each
may answer itself: a redirect, 401, 403, 429, or change the request: path, headers), a service is picked by
smooth weighted round-robin (as Traefik's WRR) and put in the `$kw_b` variable, which the balancer takes
(nginxconf.py), honouring a sticky cookie (value: a hash of the endpoint, as Traefik v3 hashes the server URL;
set when absent or stale). Response headers of `headers` middlewares and the sticky cookie are set in the
server's header filter (which returns at once when no route has either).

Certificates (`kw_cert`, the HTTPS server's `ssl_certificate_by_lua`): the controller POSTs the Secrets'
certificates and keys (`/certs`, a chunk of host pattern -> PEM); each worker parses a PEM once (ngx.ssl) and
serves it for the SNI names it covers; other names get the configuration's default certificate.

basicAuth hashes: apr1 (MD5-crypt, computed here with ngx.md5_bin), {SHA} (SHA-1), and bcrypt/MD5/SHA-crypt
through glibc's libxcrypt `crypt()` (LuaJIT FFI; nginx links it for auth_basic); a successful check is cached per
worker (at most 1,024 entries, keyed by an MD5 of password and hash) so bcrypt's cost is paid once per client.
rateLimit: a token bucket per middleware and client key in the `kwire_rl` shared dict (LRU-bounded, entries expire
once full again), refilled at average/period per second up to burst.
"""

ROUTER_LUA = r"""
    kw_K = {}
    local K = kw_K
    local re_find = ngx.re.find
    function K.re(s, pat)
      local from, _, err = re_find(s or "", pat, "jo")
      if err then ngx.log(ngx.ERR, "kwire: regexp ", pat, ": ", err) return false end
      return from ~= nil
    end
    function K.prefix(s, p) return s:sub(1, #p) == p end
    local function vals(v) if v == nil then return {} elseif type(v) == "table" then return v end return {v} end
    function K.headers(r) if not r.h then r.h = ngx.req.get_headers(100) end return r.h end
    function K.header(r, k, v)
      for _, x in ipairs(vals(K.headers(r)[k])) do if x == v then return true end end
      return false
    end
    function K.header_re(r, k, p)
      for _, x in ipairs(vals(K.headers(r)[k])) do if K.re(x, p) then return true end end
      return false
    end
    function K.args(r) if not r.a then r.a = ngx.req.get_uri_args(100) end return r.a end
    function K.query(r, k, v)
      local x = K.args(r)[k]
      if x == nil then return false end
      if v == nil then return true end
      for _, y in ipairs(vals(x)) do if y == v or (y == true and v == "") then return true end end
      return false
    end
    function K.query_re(r, k, p)
      for _, y in ipairs(vals(K.args(r)[k])) do if type(y) == "string" and K.re(y, p) then return true end end
      return false
    end
    function K.ip4(s)
      local a, b, c, d = (s or ""):match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
      if not a then return nil end
      return ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
    end
    function K.in_net(n, pre, bits) return n ~= nil and math.floor(n / 2 ^ (32 - bits)) == pre end
    function K.cidr(r, pre, bits) return K.in_net(K.ip4(ngx.var.remote_addr), pre, bits) end
    function K.client(depth)
      if depth <= 0 then return ngx.var.remote_addr end
      local parts = {}
      for p in (ngx.var.http_x_forwarded_for or ""):gmatch("[^,%s]+") do parts[#parts + 1] = p end
      return parts[#parts - depth + 1]
    end

    function K.method(r) if not r.method then r.method = ngx.req.get_method() end return r.method end
    function K.wild(host, rest)  -- `*.rest`: exactly one label before rest
      local dot = host:find(".", 1, true)
      return dot ~= nil and dot > 1 and host:sub(dot + 1) == rest
    end

    local EMPTY = {}
    local function kw_index(routes, ep)
      local x = {hosts = {}, any = {}}
      for i, rt in ipairs(routes) do
        if rt[ep] then
          if rt.h then
            for _, h in ipairs(rt.h) do
              local l = x.hosts[h]
              if not l then l = {}; x.hosts[h] = l end
              l[#l + 1] = i
            end
          else
            x.any[#x.any + 1] = i
          end
        end
      end
      return x
    end
    -- Every route's request flags, computed once per chunk: `fast` when the router needs nothing but a backend
    -- (no middleware, a Service that exists, no sticky cookie), `any` when its rule is `true` (Prefix /).
    local function kw_flags(routes)
      for _, rt in ipairs(routes) do
        local fast = #rt.mw == 0 and not rt.nf
        for _, s in ipairs(rt.svc) do if s.sticky then fast = false end end
        rt.fast = fast
      end
    end

    kw_cfg = {routes = {}, mw = {}, hf = false, web = {hosts = {}, any = {}},
                             websecure = {hosts = {}, any = {}}}; kw_wrr = {}
    -- What a chunk's table becomes in this worker (the control socket's worker uses it at once: no second compile)
    kw_use = {}
    function kw_use.routes(res, v)
      kw_flags(res.routes)
      res.web = kw_index(res.routes, "web")
      res.websecure = kw_index(res.routes, "websecure")
      -- the header filter has work only with response headers or sticky cookies
      res.hf = false
      for _, m in pairs(res.mw) do if m.t == "headers" and #m.resp > 0 then res.hf = true end end
      for _, rt in ipairs(res.routes) do for _, s in ipairs(rt.svc) do if s.sticky then res.hf = true end end end
      kw_cfg = res; kw_v.routes = v; kw_wrr = {}
    end
    -- A chunk from the shared dict (what another worker's control request stored): compiled and run here
    function kw_load(key, v)
      local chunk = ngx.shared.kwire:get(key)
      if not chunk then return end  -- nothing pushed yet
      local f, err = loadstring(chunk, "=kwire-" .. key)
      local ok, res = false, err
      if f then ok, res = pcall(f) end
      if ok and type(res) == "table" then return kw_use[key](res, v) end
      ngx.log(ngx.ERR, "kwire: ", key, ": ", res)
    end
    -- The version of each chunk this worker uses (set by kw_use); kw_fresh loads a chunk whose version in the
    -- shared dict differs (routes: once per clock tick, from kw_sync; certificates: per TLS handshake)
    kw_v = {routes = -1, certs = -1}
    local VKEY = {routes = "routes_v", certs = "certs_v"}
    function kw_fresh(key)
      local v = ngx.shared.kwire:get(VKEY[key]) or 0
      if v ~= kw_v[key] then
        kw_load(key, v)
        kw_v[key] = v
      end
    end
    function kw_config()
      kw_fresh("routes")
      return kw_cfg
    end

    function kw_reply(status, body, headers)
      ngx.status = status
      ngx.header["Content-Type"] = "text/plain; charset=utf-8"
      for k, v in pairs(headers or {}) do ngx.header[k] = v end
      ngx.print(body)
      return ngx.exit(ngx.HTTP_OK)
    end

    -- The common path (`kw_fast`, the servers' `set_by_lua`, no coroutine, no ngx.ctx, no table made): the
    -- request's router as kw_route finds it; when it is `fast`, its backend (weighted round-robin among its
    -- services) is the value of $kw_b and nginx proxies at once. Anything else (no router: 404, a missing Service,
    -- middlewares, sticky cookies, no weighted service) returns "" and the server sends the request to its `@kw`
    -- location, where kw_route (rewrite phase) and the header filter do the whole work as before.
    -- `host` and `uri` are nginx's $host and $uri, passed by set_by_lua as arguments: an `ngx.var` read here would
    -- be an FFI call from the interpreter (this function's entry is never a JIT trace: its loop aborts the root
    -- trace, "inner loop in root trace"), which cost more than the whole routing (jit.v; bench/ingress_ab.py).
    local RQ = {host = "", path = ""}  -- the rules' request table, reused: set_by_lua runs to completion
    function kw_fast(ep, host, uri)
      kw_sync()
      local cfg = kw_cfg
      local routes, x = cfg.routes, cfg[ep]
      local hl, al = x.hosts[host] or EMPTY, x.any
      local i, j = 1, 1
      local r
      while true do
        local a, b = hl[i], al[j]
        local rt
        if a and (not b or a < b) then rt = routes[a]; i = i + 1
        elseif b then rt = routes[b]; j = j + 1
        else return "" end
        if not rt.any and not r then
          r = RQ
          r.host = host; r.path = uri; r.h = nil; r.a = nil; r.method = nil
        end
        if rt.any or rt.m(r) then
          if not rt.fast then return "" end
          local svc = kw_pick_service(rt)
          return svc and svc.b or ""
        end
      end
    end

    -- The request's router: the first, in priority order, of its host's routers and the unpinned ones whose rule
    -- matches; none -> 404.
    function kw_route(ep)
      local cfg = kw_cfg  -- as kw_fast (this request's first step) found it
      local routes, x = cfg.routes, cfg[ep]
      local r = {host = ngx.var.host or "", path = ngx.var.uri}
      local hl, al = x.hosts[r.host] or EMPTY, x.any
      local i, j = 1, 1
      while true do
        local a, b = hl[i], al[j]
        local rt
        if a and (not b or a < b) then rt = routes[a]; i = i + 1
        elseif b then rt = routes[b]; j = j + 1
        else break end
        if rt.m(r) then
          if rt.nf then return ngx.exit(404) end
          if #rt.mw > 0 then kw_mw_run(rt.mw) end
          local svc = kw_pick_service(rt)
          if not svc then return kw_reply(503, "no available server\n") end
          -- the backend goes to the balancer in a variable: ngx.ctx (a table and a cleanup handler per request) is
          -- made only for a sticky service (and by middlewares that set response headers)
          ngx.var.kw_b = svc.b
          if svc.sticky then ngx.ctx.kw_sticky = svc.sticky end
          return
        end
      end
      return ngx.exit(404)
    end

    function kw_pick_service(rt)
      local s = rt.svc
      if #s == 1 then return s[1] end
      local st = kw_wrr[rt.id]
      if not st then st = {}; kw_wrr[rt.id] = st end
      local total, best, bi = 0, nil, nil
      for i, x in ipairs(s) do
        if x.w > 0 then
          st[i] = (st[i] or 0) + x.w
          total = total + x.w
          if best == nil or st[i] > best then best = st[i]; bi = i end
        end
      end
      if not bi then return nil end
      st[bi] = st[bi] - total
      return s[bi]
    end

    local ffi = require "ffi"
    ffi.cdef[[char *crypt(const char *key, const char *setting);]]
    local okc, libc = pcall(function() local _ = ffi.C.crypt; return ffi.C end)
    local crypt_lib = okc and libc or ffi.load("libcrypt.so.1")
    local ITOA = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    local function to64(v, n)
      local s = ""
      for _ = 1, n do local k = v % 64; s = s .. ITOA:sub(k + 1, k + 1); v = math.floor(v / 64) end
      return s
    end
    function kw_apr1(pw, setting)
      local salt = (setting:match("^%$apr1%$([^$]*)") or ""):sub(1, 8)
      local md5 = ngx.md5_bin
      local ctx = pw .. "$apr1$" .. salt
      local final = md5(pw .. salt .. pw)
      local pl = #pw
      while pl > 0 do ctx = ctx .. final:sub(1, math.min(16, pl)); pl = pl - 16 end
      local i = #pw
      while i > 0 do
        if i % 2 == 1 then ctx = ctx .. "\0" else ctx = ctx .. pw:sub(1, 1) end
        i = math.floor(i / 2)
      end
      final = md5(ctx)
      for j = 0, 999 do
        local c = (j % 2 == 1) and pw or final
        if j % 3 ~= 0 then c = c .. salt end
        if j % 7 ~= 0 then c = c .. pw end
        c = c .. ((j % 2 == 1) and final or pw)
        final = md5(c)
      end
      local b = {final:byte(1, 16)}
      return "$apr1$" .. salt .. "$" .. to64(b[1] * 65536 + b[7] * 256 + b[13], 4)
        .. to64(b[2] * 65536 + b[8] * 256 + b[14], 4) .. to64(b[3] * 65536 + b[9] * 256 + b[15], 4)
        .. to64(b[4] * 65536 + b[10] * 256 + b[16], 4) .. to64(b[5] * 65536 + b[11] * 256 + b[6], 4)
        .. to64(b[12], 2)
    end
    kw_ok = {}; kw_ok_n = 0
    function kw_verify(pass, hash)
      local key = ngx.md5(pass .. "\0" .. hash)
      if kw_ok[key] then return true end
      local ok
      if hash:sub(1, 6) == "$apr1$" then
        ok = kw_apr1(pass, hash) == hash
      elseif hash:sub(1, 5) == "{SHA}" then
        ok = "{SHA}" .. ngx.encode_base64(ngx.sha1_bin(pass)) == hash
      else
        local res = crypt_lib.crypt(pass, hash)
        ok = res ~= nil and ffi.string(res) == hash
      end
      if ok then
        if kw_ok_n >= 1024 then kw_ok = {}; kw_ok_n = 0 end
        kw_ok[key] = true; kw_ok_n = kw_ok_n + 1
      end
      return ok
    end

    kw_MW = {}
    function kw_MW.redirect(m)
      local port = m.port
      if port == (m.scheme == "https" and "443" or "80") then port = "" end
      if ngx.var.scheme == m.scheme then return end
      local url = m.scheme .. "://" .. ngx.var.host .. (port ~= "" and (":" .. port) or "") .. ngx.var.request_uri
      local get = ngx.req.get_method() == "GET"
      local status = m.permanent and (get and 301 or 308) or (get and 302 or 307)
      return ngx.redirect(url, status)
    end
    function kw_MW.strip(m)
      local uri = ngx.var.uri
      for _, p in ipairs(m.prefixes) do
        if uri:sub(1, #p) == p then
          local rest = uri:sub(#p + 1)
          if rest:sub(1, 1) ~= "/" then rest = "/" .. rest end
          ngx.req.set_uri(rest)
          ngx.req.set_header("X-Forwarded-Prefix", p)
          return
        end
      end
    end
    function kw_MW.addprefix(m) ngx.req.set_uri(m.prefix .. ngx.var.uri) end
    function kw_MW.replacepath(m)
      ngx.req.set_header("X-Replaced-Path", ngx.var.uri)
      ngx.req.set_uri(m.path)
    end
    function kw_MW.headers(m)
      for _, kv in ipairs(m.req) do
        if kv[2] == "" then ngx.req.clear_header(kv[1]) else ngx.req.set_header(kv[1], kv[2]) end
      end
      if #m.resp > 0 then
        local t = ngx.ctx.kw_rh or {}
        for _, kv in ipairs(m.resp) do t[#t + 1] = kv end
        ngx.ctx.kw_rh = t
      end
    end
    function kw_MW.basicauth(m)
      local user
      local b = (ngx.var.http_authorization or ""):match("^[Bb]asic%s+(%S+)")
      local dec = b and ngx.decode_base64(b)
      if dec then
        local u, p = dec:match("^([^:]*):(.*)$")
        local hash = u and m.users[u]
        if hash and kw_verify(p, hash) then user = u end
      end
      if not user then
        return kw_reply(401, "401 Unauthorized\n", {["WWW-Authenticate"] = 'Basic realm="' .. m.realm .. '"'})
      end
      if m.remove then ngx.req.clear_header("Authorization") end
      if m.field ~= "" then ngx.req.set_header(m.field, user) end
    end
    function kw_MW.allow(m)
      local n = K.ip4(K.client(m.depth))
      for _, r in ipairs(m.ranges) do if K.in_net(n, r[1], r[2]) then return end end
      return kw_reply(m.status, "Forbidden\n")
    end
    function kw_MW.ratelimit(m, id)
      if m.rate <= 0 then return end
      local who
      if m.key == "host" then
        who = ngx.var.host
      elseif m.key == "header" then
        local h = ngx.req.get_headers()[m.header]
        who = type(h) == "table" and h[1] or h or ""
      else
        who = K.client(m.depth) or ""
      end
      local d = ngx.shared.kwire_rl
      local k = id .. "|" .. who
      local now = ngx.now()
      local tokens, t = m.burst, now
      local v = d:get(k)
      if v then
        local a, b = v:match("^([^|]+)|(.+)$")
        tokens, t = tonumber(a) or m.burst, tonumber(b) or now
      end
      tokens = math.min(m.burst, tokens + (now - t) * m.rate)
      local ttl = math.ceil(m.burst / m.rate) + 1
      if tokens < 1 then
        d:set(k, tokens .. "|" .. now, ttl)
        return kw_reply(429, "Too Many Requests\n", {["Retry-After"] = tostring(math.ceil((1 - tokens) / m.rate))})
      end
      d:set(k, (tokens - 1) .. "|" .. now, ttl)
    end

    function kw_mw_run(list)
      local mws = kw_cfg.mw  -- the chunk the router matched in
      for _, id in ipairs(list) do
        local m = mws[id]
        if not m then
          ngx.log(ngx.ERR, "kwire: middleware ", id, " is not loaded")
          return ngx.exit(404)
        end
        kw_MW[m.t](m, id)
      end
    end

    function kw_hf()
      if not kw_cfg.hf then return end
      local ctx = ngx.ctx
      for _, kv in ipairs(ctx.kw_rh or {}) do
        if kv[2] == "" then ngx.header[kv[1]] = nil else ngx.header[kv[1]] = kv[2] end
      end
      local c = ctx.kw_cookie
      if c then
        local cur = ngx.header["Set-Cookie"]
        if cur == nil then ngx.header["Set-Cookie"] = c
        elseif type(cur) == "table" then cur[#cur + 1] = c; ngx.header["Set-Cookie"] = cur
        else ngx.header["Set-Cookie"] = {cur, c} end
      end
    end

    function kw_cookie(s, hash)
      local c = s.name .. "=" .. hash .. "; Path=" .. s.path
      if s.maxage > 0 then c = c .. "; Max-Age=" .. s.maxage end
      if s.secure then c = c .. "; Secure" end
      if s.httponly then c = c .. "; HttpOnly" end
      if s.samesite ~= "" then c = c .. "; SameSite=" .. s.samesite end
      return c
    end
"""

ROUTES_CONTROL_LUA = r"""
        ngx.req.read_body()
        local body = ngx.req.get_body_data()
        if not body then
          local f = ngx.req.get_body_file()
          if f then local h = io.open(f, "rb"); body = h:read("*a"); h:close() end
        end
        local f, err = loadstring(body or "", "=kwire-" .. KEY)
        local ok, res = false, err
        if f then ok, res = pcall(f) end
        if not ok or type(res) ~= "table" then ngx.status = 400; ngx.say(res); return ngx.exit(ngx.HTTP_OK) end
        local d = ngx.shared.kwire
        local sok, serr = d:set(KEY, body)
        if not sok then ngx.status = 507; ngx.say(serr); return ngx.exit(ngx.HTTP_OK) end
        kw_use[KEY](res, d:incr(KEY .. "_v", 1, 0))
        kw_tick = -1
        ngx.say("ok")
"""

CERTS_LUA = r"""
    local kw_ssl = require "ngx.ssl"
    kw_certs = {exact = {}, wild = {}, pem = {}}; kw_parsed = {}
    function kw_use.certs(res, v) kw_certs = res; kw_v.certs = v; kw_parsed = {} end
    -- The certificate for the client's SNI name (ssl_certificate_by_lua): an exact name, else a `*.` pattern
    -- covering one label; none -> the configuration's default certificate. Parsed once per worker and PEM.
    function kw_cert()
      kw_fresh("certs")
      local name = kw_ssl.server_name()
      if not name then return end
      name = name:lower()
      local id = kw_certs.exact[name]
      if not id then
        local dot = name:find(".", 1, true)
        if dot and dot > 1 then id = kw_certs.wild[name:sub(dot + 1)] end
      end
      if not id then return end
      local c = kw_parsed[id]
      if not c then
        local pem = kw_certs.pem[id]
        local cert, err = kw_ssl.parse_pem_cert(pem)
        local key, kerr = kw_ssl.parse_pem_priv_key(pem)
        if not cert or not key then ngx.log(ngx.ERR, "kwire: certificate ", id, ": ", err or kerr); return end
        c = {cert, key}
        kw_parsed[id] = c
      end
      local ok, err = kw_ssl.clear_certs()
      if ok then ok, err = kw_ssl.set_cert(c[1]) end
      if ok then ok, err = kw_ssl.set_priv_key(c[2]) end
      if not ok then ngx.log(ngx.ERR, "kwire: certificate ", id, ": ", err) end
    end
"""
