"""The Lua router of the data plane: IngressRoute rules, Traefik's middlewares, weighted services and sticky cookies,
run by nginx's Lua module in every worker (Traefik's HTTP muxer and middleware chain, re-done on nginx).

The controller compiles IngressRoutes and Middlewares (crd.py, rules.py) into one Lua chunk and POSTs it to the
control socket (`/routes`): it is compiled there once (a chunk that does not compile is refused with 400 and the
old one keeps serving), stored in the shared dict, and each worker loads it when the dict's `routes_v` changes. A
route change is therefore never an nginx reload.

Per request (every host server block runs `kw_ir()` in its rewrite phase; with no route it returns after one
shared-dict read): the routes of the request's entrypoint (websecure when TLS, else web) are tried in priority
order; the first whose rule matches wins: its middlewares run in order (`kw_mw_run`: each may answer itself: a
redirect, 401, 403, 429, or change the request: path, headers), a service is picked by smooth weighted
round-robin (as Traefik's WRR) and put in ngx.ctx, and the request proxies from whatever location it is in: every
balancer takes ngx.ctx's backend first (nginxconf.py), its endpoints from the same shared dict as Ingress
backends, honouring a sticky cookie (value: a hash of the endpoint, as Traefik v3 hashes the server URL; set when
absent or stale). Response headers of `headers` middlewares and the sticky cookie are set in the server's header
filter. IngressRoutes are tried before Ingress paths (Traefik orders both kinds by priority together; here the
IngressRoute wins a tie or a conflict). Ingress paths whose `router.middlewares` annotation names Middlewares run
`kw_mw_run` in their location when the router chose nothing. Routes carrying a generation (`gen`, fastpath.py: an
Ingress change bridged until its reload lands) are used only by workers whose configuration is older (`kw_gen`);
a route marked `nf` answers 404.

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

    kw_cfg_v = -1; kw_cfg = {routes = {}, active = {}, mw = {}, uses_ctx = false}; kw_wrr = {}
    function kw_config()
      local d = ngx.shared.kwire
      local v = d:get("routes_v") or 0
      if v ~= kw_cfg_v then
        local f, err = loadstring(d:get("routes") or "return {routes = {}, mw = {}}", "=kwire-routes")
        local ok, res = false, err
        if f then ok, res = pcall(f) end
        if ok then
          res.active = {}
          res.uses_ctx = #res.routes > 0 or next(res.mw) ~= nil
          for _, rt in ipairs(res.routes) do
            -- routes bridging a reload (fastpath.py): only for workers of an older configuration
            if not rt.gen or rt.gen > kw_gen then res.active[#res.active + 1] = rt end
          end
          kw_cfg = res
        else
          ngx.log(ngx.ERR, "kwire: routes: ", res)
        end
        kw_cfg_v = v; kw_wrr = {}
      end
      return kw_cfg
    end

    function kw_reply(status, body, headers)
      ngx.status = status
      ngx.header["Content-Type"] = "text/plain; charset=utf-8"
      for k, v in pairs(headers or {}) do ngx.header[k] = v end
      ngx.print(body)
      return ngx.exit(ngx.HTTP_OK)
    end

    function kw_ir()
      local routes = kw_config().active
      if #routes == 0 then return false end
      local ep = ngx.var.https == "on" and "websecure" or "web"
      local r = {host = (ngx.var.host or ""):lower(), path = ngx.var.uri, method = ngx.req.get_method()}
      for i = 1, #routes do
        local rt = routes[i]
        if rt[ep] and rt.m(r) then
          if rt.nf then return ngx.exit(404) end
          kw_mw_run(rt.mw)
          local svc = kw_pick_service(rt)
          if not svc then return kw_reply(503, "no available server\n") end
          ngx.ctx.kw_b = svc.b
          ngx.ctx.kw_sticky = svc.sticky
          return true
        end
      end
      return false
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
      local mws = kw_config().mw
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
      if not kw_cfg.uses_ctx then return end
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
        local f, err = loadstring(body or "", "=kwire-routes")
        if not f then ngx.status = 400; ngx.say(err); return ngx.exit(ngx.HTTP_OK) end
        local d = ngx.shared.kwire
        local ok, serr = d:set("routes", body)
        if not ok then ngx.status = 507; ngx.say(serr); return ngx.exit(ngx.HTTP_OK) end
        d:incr("routes_v", 1, 0)
        ngx.say("ok")
"""
