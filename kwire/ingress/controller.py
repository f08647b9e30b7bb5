"""The ingress controller (the Traefik role): informers -> routers, endpoints and certificates pushed to nginx, status.

Runs in the `traefik` pod with its service account. It watches Ingresses, IngressClasses, Services,
EndpointSlices, Secrets and Traefik's IngressRoutes and Middlewares (informers: list, then watch, relisting with
back-off on errors; the two CRD kinds are waited for only briefly at start, so Ingresses are served even where
Traefik's CRDs are not installed); any change marks the state dirty and one sync loop (at most one sync at a time,
coalescing bursts) does:
- build the table (`model.build`) and compile the IngressRoutes and Middlewares (`crd.build`), resolve each backend
  (Service exists, port by number or name) and its ready endpoints from EndpointSlices (ready and not
  terminating, as Traefik: terminating endpoints are drained);
- order every Ingress path and IngressRoute route as Traefik's routers (router.py) into the Lua router's chunk;
- start nginx once with its constant configuration (nginxconf.py), then push through the control socket what
  changed: the new endpoints (partially, before a new route refers to them), the certificates, the router's chunk,
  then every endpoint (dropping the backends no route uses). No change is an nginx reload;
- set `status.loadBalancer.ingress` of every Ingress it serves to the `traefik` Service's load-balancer
  addresses (Ingresses of another class get nothing);
- report problems as Warning events on the Ingress, IngressRoute or Middleware (once per distinct message): an
  unknown Service or port (its paths answer 404, everything else keeps serving), a TLS secret that is missing or
  malformed (the default certificate serves that host), an invalid host or path, a conflicting path, an invalid
  rule, a middleware that is missing or that the data plane cannot express.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from kwire.base.fields import Obj
from kwire.base.memory import trim_soon
from kwire.client import ApiClient, ApiStatusError, Informers, NotFound
from kwire.client.client import (
    ENDPOINTSLICES,
    EVENTS,
    INGRESSCLASSES,
    INGRESSES,
    INGRESSROUTES,
    MIDDLEWARES,
    SECRETS,
    SERVICES,
)
from kwire.ingress import crd, model, router
from kwire.ingress.nginx import Nginx
from kwire.ingress.nginxconf import Paths, Render, backend_lines, render, valid_host, valid_path

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
COMPONENT = "traefik"


@dataclass(frozen=True)
class Settings:
    service_namespace: str = "kube-system"
    service_name: str = "traefik"  # whose load-balancer addresses become the Ingresses' status
    state_dir: Path = Path("/run/kwire-ingress")
    http_port: int = 80
    https_port: int = 443
    ping_port: int = 9000
    workers: int = 1
    coalesce: float = 0.005  # seconds to wait for more events before a sync (a burst becomes one sync)


def _m(o: Obj) -> Obj:
    m: Obj = o.get("metadata") or {}
    return m


def slice_index(o: Obj) -> list[str]:
    svc = (_m(o).get("labels") or {}).get(SERVICE_NAME_LABEL)
    return [f"{_m(o).get('namespace')}/{svc}"] if svc else []


def resolve(b: model.Backend, service: Obj | None, slices: list[Obj]) -> list[str] | None:
    """Ready `ip:port`s of a backend; None when the Service or its port does not exist."""
    if service is None:
        return None
    ports = (service.get("spec") or {}).get("ports") or []
    sp = next(
        (p for p in ports if (str(p.get("port")) == b.port if b.port.isdigit() else p.get("name") == b.port)),
        None,
    )
    if sp is None or (sp.get("protocol") or "TCP") != "TCP":
        return None
    name = sp.get("name") or ""
    out: list[str] = []
    for s in slices:
        if s.get("addressType", "IPv4") != "IPv4":
            continue
        port = next((p.get("port") for p in s.get("ports") or [] if (p.get("name") or "") == name), None)
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is False or cond.get("terminating"):
                continue
            for addr in ep.get("addresses") or []:
                out.append(f"{addr}:{port}")
    return sorted(set(out))


def combined_pem(secret: Obj) -> bytes | None:
    """tls.crt + tls.key of a Secret as one PEM, or None when either is missing or does not parse."""
    data = secret.get("data") or {}
    try:
        crt = base64.b64decode(data.get("tls.crt") or "")
        key = base64.b64decode(data.get("tls.key") or "")
        x509.load_pem_x509_certificates(crt)
        load_pem_private_key(key, None)
    except ValueError:
        return None
    return crt.rstrip(b"\n") + b"\n" + key.rstrip(b"\n") + b"\n"


class IngressController:
    def __init__(self, client: ApiClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.informers = Informers(client)
        self.ingresses = self.informers.get(INGRESSES)
        self.classes = self.informers.get(INGRESSCLASSES)
        self.services = self.informers.get(SERVICES)
        self.slices = self.informers.get(ENDPOINTSLICES)
        self.secrets = self.informers.get(SECRETS)
        self.routes = self.informers.get(INGRESSROUTES)
        self.middlewares = self.informers.get(MIDDLEWARES)
        self.slices.add_indexer("service", slice_index)
        self.paths = Paths(settings.state_dir)
        self.nginx = Nginx(self.paths)
        self._dirty = asyncio.Event()
        self._reported: dict[str, set[str]] = {}
        self._pushed: bytes | None = None
        self._routes_pushed: str | None = None
        self._certs_pushed: str | None = None
        self._event_at = 0.0
        self.syncs = 0
        for inf in (self.ingresses, self.classes, self.services, self.slices, self.secrets, self.routes,
                    self.middlewares):  # fmt: skip
            inf.on_add(self._kick)
            inf.on_update(self._ingress_kick if inf is self.ingresses else self._kick2)
            inf.on_delete(self._kick)

    async def _kick(self, _obj: Obj) -> None:
        self._mark()

    async def _kick2(self, _old: Obj, _new: Obj) -> None:
        self._mark()

    async def _ingress_kick(self, old: Obj, new: Obj) -> None:
        # The status this controller writes comes back as an update: it changes no route, so no sync for it (a
        # sync per status write doubled the syncs of every Ingress change and queued the next change behind it).
        if old.get("spec") != new.get("spec") or _m(old).get("annotations") != _m(new).get("annotations"):
            self._mark()

    def _mark(self) -> None:
        if not self._dirty.is_set():
            self._event_at = time.monotonic()  # the first event of the next sync (its wait is logged)
        self._dirty.set()

    async def run(self) -> None:
        self.nginx.prepare()
        self.informers.start()
        try:
            core = (self.ingresses, self.classes, self.services, self.slices, self.secrets)
            await asyncio.gather(*(inf.wait_synced(120) for inf in core))
            try:
                await asyncio.gather(*(inf.wait_synced(10) for inf in (self.routes, self.middlewares)))
            except TimeoutError:
                log.warning("Traefik's CRDs (IngressRoute, Middleware) are not served yet; serving Ingresses meanwhile")
            attempt = 0
            while True:
                try:
                    await self.sync()
                    attempt = 0
                except (ApiStatusError, OSError, RuntimeError) as exc:
                    attempt += 1
                    log.warning("ingress sync failed (attempt %d): %s", attempt, exc)
                    self._pushed = None
                    self._routes_pushed = None
                    self._certs_pushed = None
                    await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
                    self._dirty.set()
                if not self.nginx.running() and self.nginx.proc is not None:
                    raise RuntimeError(f"nginx exited with {self.nginx.proc.returncode}")
                try:
                    await asyncio.wait_for(self._dirty.wait(), timeout=5.0)
                except TimeoutError:
                    continue
                await asyncio.sleep(self.settings.coalesce)
        finally:
            await self.nginx.stop()
            await self.informers.stop()

    async def sync(self) -> None:
        """One pass: build everything from the informers' caches and push what changed."""
        self._dirty.clear()
        t0 = time.monotonic()
        event_at, self._event_at = self._event_at or t0, 0.0
        s = self.settings
        secrets = {f"{_m(o).get('namespace')}/{_m(o).get('name')}": o for o in self.secrets.items()}
        middlewares = self.middlewares.items()
        compiled, mws = crd.build(self.routes.items(), middlewares, secrets)

        def resolve_mw(refs: tuple[str, ...]) -> list[str] | str:
            ids = crd.annotation_ids(refs, middlewares)
            if isinstance(ids, str):
                return ids
            try:
                return [leaf for i in ids for leaf in mws.expand(i)]
            except ValueError as exc:
                return str(exc)

        table = model.build(self.ingresses.items(), self.classes.items(), middlewares=resolve_mw)
        tls = dict(table.tls)
        for host, t in compiled.tls.items():
            tls.setdefault(host, t)
        problems: dict[str, list[str]] = {k: list(v) for k, v in table.problems.items()}
        for k, v in compiled.problems.items():
            problems.setdefault(k, []).extend(v)
        for host, routes in table.hosts.items():
            for r in routes:
                if not valid_host(host):
                    problems.setdefault(r.source, []).append(f"host {host!r} is not a valid DNS name")
                if not valid_path(r.path):
                    problems.setdefault(r.source, []).append(f"path {r.path!r} is not served")
        endpoints: dict[str, list[str]] = {}
        known: set[str] = set()
        for b in table.backends() | compiled.backends():
            eps = resolve(
                b,
                self.services.get(b.namespace, b.service),
                self.slices.by_index("service", f"{b.namespace}/{b.service}"),
            )
            if eps is None:
                srcs = {r.source for routes in table.hosts.values() for r in routes if r.backend == b}
                srcs |= {r.source for r in compiled.routes if any(x.backend == b for x in r.services)}
                for src in srcs:
                    problems.setdefault(src, []).append(f"Service {b.namespace}/{b.service} port {b.port} not found")
                continue
            known.add(b.key)
            endpoints[b.key] = eps
        certs: dict[str, bytes] = {}
        for host, (ns, name, src) in tls.items():
            secret = self.secrets.get(ns, name)
            pem = combined_pem(secret) if secret else None
            if pem is None:
                problems.setdefault(src, []).append(
                    f"TLS secret {ns}/{name} for {host} is missing or has no valid tls.crt/tls.key"
                )
                continue
            certs[host.lower()] = pem
        routers = router.ingress_routers(table, known) + router.crd_routers(compiled, known)
        lua = router.lua_config(routers, compiled.middlewares)
        cert_chunk = router.certs_config(certs)
        tb = time.monotonic()
        if not self.nginx.running():
            await self.nginx.apply(
                render(Render(http_port=s.http_port, https_port=s.https_port, ping_port=s.ping_port,
                              workers=s.workers), self.paths)
            )  # fmt: skip
        # Endpoints first (what a new route refers to is loaded; backends dropped by the full push at the end
        # belong only to routes being removed), then certificates (a new host's certificate before its route).
        body = backend_lines(endpoints)
        if lua != self._routes_pushed and body != self._pushed:
            await self.nginx.push(body, full=False)
        if cert_chunk != self._certs_pushed:
            await self.nginx.push_certs(cert_chunk)
            self._certs_pushed = cert_chunk
        if lua != self._routes_pushed:
            await self.nginx.push_routes(lua)
            self._routes_pushed = lua
        if body != self._pushed:
            await self.nginx.push(body)
            self._pushed = body
        t1 = time.monotonic()
        await self._statuses(table)
        await self._events(problems)
        self.syncs += 1
        trim_soon()  # each sync rebuilds the table: give the freed heap back (a burst of 1,000 changes left ~60 MB)
        # Monotonic timestamps are the machine's (CLOCK_MONOTONIC): bench/ingress.py lines them up with its own.
        log.debug("ingress sync %.1f ms (build %.1f ms, push %.1f ms) event_at=%.4f start_at=%.4f pushed_at=%.4f",
                  (time.monotonic() - t0) * 1000, (tb - t0) * 1000, (t1 - tb) * 1000, event_at, t0, t1)  # fmt: skip

    async def _statuses(self, table: model.Table) -> None:
        svc = self.services.get(self.settings.service_namespace, self.settings.service_name)
        lb = [
            {k: v for k, v in i.items() if k in ("ip", "hostname")}
            for i in ((svc or {}).get("status") or {}).get("loadBalancer", {}).get("ingress") or []
        ]
        want = {"loadBalancer": {"ingress": lb}} if lb else {"loadBalancer": {}}
        for src in table.served:
            ns, name = src.split("/", 1)
            ing = self.ingresses.get(ns, name)
            if ing is None:
                continue
            cur = (ing.get("status") or {}).get("loadBalancer") or {}
            if (cur.get("ingress") or []) == (want["loadBalancer"].get("ingress") or []):
                continue
            try:
                await self.client.update_status(INGRESSES, {**ing, "status": want})
            except NotFound:
                continue

    async def _events(self, problems: dict[str, list[str]]) -> None:
        for src, msgs in problems.items():
            seen = self._reported.setdefault(src, set())
            for msg in msgs:
                if msg in seen:
                    continue
                seen.add(msg)
                kind, _, key = src.rpartition(":")
                log.warning("%s %s: %s", kind or "Ingress", key, msg)
                await self._event(src, msg)
        for src in list(self._reported):
            if src not in problems:
                del self._reported[src]  # fixed: report again if it comes back

    async def _event(self, src: str, msg: str) -> None:
        """A Warning event on the object `src` names: "<ns>/<name>" (an Ingress) or "<Kind>:<ns>/<name>"."""
        kind, _, key = src.rpartition(":")
        ns, name = key.split("/", 1)
        inf, api_version = {
            "": (self.ingresses, "networking.k8s.io/v1"),
            "IngressRoute": (self.routes, "traefik.io/v1alpha1"),
            "Middleware": (self.middlewares, "traefik.io/v1alpha1"),
        }[kind]
        kind = kind or "Ingress"
        ing = inf.get(ns, name)
        if ing is None:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        event = {
            "metadata": {"generateName": f"{name}.", "namespace": ns},
            "involvedObject": {
                "apiVersion": api_version,
                "kind": kind,
                "name": name,
                "namespace": ns,
                "uid": _m(ing).get("uid"),
                "resourceVersion": _m(ing).get("resourceVersion"),
            },
            "reason": "ServiceNotFound" if msg.startswith("Service ") else f"Invalid{kind}",
            "message": msg,
            "type": "Warning",
            "source": {"component": COMPONENT},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": COMPONENT,
        }
        try:
            await self.client.create(EVENTS, event, ns)
        except ApiStatusError as exc:
            log.warning("cannot record event for %s: %s", src, exc)
