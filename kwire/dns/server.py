"""The cluster DNS server process: informers, DNS over UDP and TCP on one port, /health, /ready, /metrics.

UDP is served from the event loop's reader callback on a non-blocking socket, which drains up to 64
datagrams per wake-up; the fast path (precomputed responses, see handler.py) is inlined there, everything else
goes through `DnsHandler.handle` (answers that need the network are finished in a task). TCP connections may
pipeline queries; each gets its answer as soon as it is ready (idle connections close after 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import socket
import struct
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from kwire.base.prom import metrics_response
from kwire.base.tasks import cancel_and_wait
from kwire.client import ApiClient, Informers
from kwire.client.client import CONFIGMAPS, ENDPOINTSLICES, NAMESPACES, SERVICES
from kwire.client.kubeconfig import Config, flag_or_in_cluster
from kwire.dns.config import DnsConfig, split_ref
from kwire.dns.forward import Forwarder, read_resolv_conf, usable_upstreams
from kwire.dns.handler import DnsHandler, Entry
from kwire.dns.metrics import B0, DnsCollector, SockStats, Stats
from kwire.dns.records import ClusterRecords
from kwire.dns.wire import fast_key, servfail_for

log = logging.getLogger(__name__)

BATCH = 64
TCP_IDLE = 10.0
RECV_SIZE = 65535
SYNC_LOG_EVERY = 30.0
PANIC_LOG_EVERY = 10.0
MAX_PENDING = 10000  # queries waiting for upstreams at once
MAX_TCP_CONNECTIONS = 1000


def kube_config(cfg: DnsConfig, environ: Mapping[str, str] = os.environ) -> Config:
    """--kubeconfig, else the in-cluster service account: its files are in $KWIRE_SERVICEACCOUNT_DIR when kwire's
    kubelet runs the pod (no mount namespace there), else in /var/run/secrets/kubernetes.io/serviceaccount."""
    return flag_or_in_cluster(cfg.kubeconfig, environ)


def _version() -> str:
    try:
        return importlib.metadata.version("kwire")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class _Udp:
    """One UDP socket served from a reader callback."""

    def __init__(self, srv: DnsServer, sock: socket.socket, sstats: SockStats) -> None:
        self.srv = srv
        self.sock = sock
        self.sstats = sstats
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        recv = self.sock.recvfrom
        send = self.sock.sendto
        handler = self.srv.handler
        get = handler.fast_udp.get
        sstats = self.sstats
        b0 = sstats.b0
        dsum = sstats.dsum
        perf = time.perf_counter
        now = time.monotonic()
        t_prev = perf()
        for _ in range(BATCH):
            try:
                data, addr = recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp recv: %s", exc)
                return
            # Fast path: everything after the ID is the key. For a lower-case question without EDNS options
            # that is the key `wire.fast_key` gives, under which the handler stores its responses; anything else
            # (upper case, EDNS options, malformed) misses here and the slow path still finds a cached answer.
            e: Entry | None = get(data[2:])
            if e is not None and (not e.exp or e.exp > now):
                if e.n == 1:
                    rest = e.rest0
                else:
                    i = e.i + 1
                    if i >= e.n:
                        i = 0
                    e.i = i
                    rest = e.rests[i]
                try:
                    send(data[:2] + rest, addr)
                except OSError:
                    pass
                t = perf()
                d = t - t_prev
                t_prev = t
                st = e.stat
                if d <= B0:
                    b0[st] += 1
                else:
                    sstats.observe_slow(st, d)
                dsum[st] += d
                continue
            self.srv.slow(data, addr, False, sstats, t_prev, self._reply)
            t_prev = perf()

    def _reply(self, out: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(out, addr)
        except OSError as exc:
            log.debug("udp send to %s: %s", addr, exc)


class _Tcp(asyncio.Protocol):
    def __init__(self, srv: DnsServer, sstats: SockStats) -> None:
        self.srv = srv
        self.sstats = sstats
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.srv.tcp_conns) >= MAX_TCP_CONNECTIONS:
            transport.close()
            return
        self.srv.tcp_conns.add(self)
        self._arm()

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE, self._timeout)

    def _timeout(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None
        self.srv.tcp_conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._arm()
        buf = self.buf
        while len(buf) >= 2:
            n = buf[0] << 8 | buf[1]
            if len(buf) < 2 + n:
                break
            msg = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            t0 = time.perf_counter()
            out = self.srv.fast_tcp(msg, self.sstats, t0)
            if out is not None:
                self._reply(out, None)
            else:
                self.srv.slow(msg, None, True, self.sstats, t0, self._reply)

    def _reply(self, out: bytes, _addr: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(struct.pack("!H", len(out)) + out)


class DnsServer:
    def __init__(self, cfg: DnsConfig, *, kube: Config | None = None) -> None:
        self.cfg = cfg
        self.kube = kube
        server_host = "" if cfg.listen in ("0.0.0.0", "::") else cfg.listen
        self.stats = Stats(f"dns://{server_host}:{cfg.port}")
        self.records = ClusterRecords(cfg.cluster_domain, cfg.ttl, split_ref(cfg.dns_service))
        self.forwarder = Forwarder(timeout=cfg.forward_timeout, attempt_timeout=cfg.forward_timeout / 2)
        self.handler = DnsHandler(
            self.records,
            self.forwarder,
            self.stats,
            upstreams=[],
            allow_loopback=cfg.allow_loopback_upstream,
            cache_max_ttl=cfg.cache_ttl,
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            DnsCollector(
                self.stats,
                forward_requests=lambda: dict(self.forwarder.requests),
                forward_responses=lambda: dict(self.forwarder.responses),
                cache_entries=self.handler.cache_entries,
                version=_version(),
            )
        )
        self.port = cfg.port
        self.health_port = cfg.health_port
        self.ready_port = cfg.ready_port
        self.metrics_port = cfg.metrics_port
        self.client: ApiClient | None = None
        self.informers: Informers | None = None
        self.tcp_conns: set[_Tcp] = set()
        self._udp: list[_Udp] = []
        self._tcp_server: asyncio.base_events.Server | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sync_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self._panic_logged = 0.0

    @property
    def ready(self) -> bool:
        return self.records.synced

    # -- serving -------------------------------------------------------------------------------------------
    def fast_tcp(self, msg: bytes, sstats: SockStats, t0: float) -> bytes | None:
        fk = fast_key(msg)
        if fk is None:
            return None
        e = self.handler.fast_tcp.get(fk[0])
        if e is None or (e.exp and e.exp <= time.monotonic()):
            return None
        out = e.response(msg, fk[1])
        sstats.observe(e.stat, time.perf_counter() - t0)
        return out

    def slow(self, data: bytes, addr: Any, tcp: bool, sstats: SockStats, t0: float, reply: Any) -> None:
        try:
            # As CoreDNS's forward `max_concurrent`: with MAX_PENDING queries waiting for upstreams, REFUSED.
            out = self.handler.handle(data, tcp, sstats, t0, may_wait=len(self._tasks) < MAX_PENDING)
        except Exception:
            self._panic()
            out = servfail_for(data)
        if out is None:
            return
        if isinstance(out, bytes):
            reply(out, addr)
            return
        task = asyncio.get_running_loop().create_task(self._later(out, data, addr, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _panic(self) -> None:
        """An unexpected error answering a query: SERVFAIL, counted (coredns_panics_total), logged with its
        traceback at most every PANIC_LOG_EVERY seconds."""
        self.stats.panics += 1
        now = time.monotonic()
        if now - self._panic_logged > PANIC_LOG_EVERY:
            self._panic_logged = now
            log.exception("query handling failed (%d so far); answered SERVFAIL", self.stats.panics)

    async def _later(self, coro: Coroutine[Any, Any, bytes | None], data: bytes, addr: Any, reply: Any) -> None:
        try:
            out = await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self._panic()
            out = servfail_for(data)
        if out is not None:
            reply(out, addr)

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Serve, and follow the API (list, then watch) through informers."""
        await self.open()
        self._start_informers()

    async def open(self) -> None:
        """Read the upstreams and open the DNS and HTTP sockets; the records stay empty (unsynced) until
        `start()`'s informers fill them (tests fill `records` directly)."""
        cfg = self.cfg
        ups = read_resolv_conf(cfg.resolv_conf)
        self.handler.upstreams = usable_upstreams(ups, cfg.resolv_conf, allow_loopback=cfg.allow_loopback_upstream)
        log.info("upstreams from %s: %s", cfg.resolv_conf, ", ".join(map(str, self.handler.upstreams)) or "none")
        await self._open_dns()
        await self._open_http()
        log.info(
            "kwire DNS serving %s on %s:%d (udp+tcp); health :%d, ready :%d, metrics :%d",
            cfg.cluster_domain,
            cfg.listen,
            self.port,
            self.health_port,
            self.ready_port,
            self.metrics_port,
        )

    async def _open_dns(self) -> None:
        cfg = self.cfg
        family = socket.AF_INET6 if ":" in cfg.listen else socket.AF_INET
        fam_label = "2" if family == socket.AF_INET6 else "1"
        for attempt in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                for s in (udp, tcp):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                with contextlib.suppress(OSError):
                    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                udp.bind((cfg.listen, self.cfg.port))
                port = udp.getsockname()[1]
                tcp.bind((cfg.listen, port))
            except OSError:
                udp.close()
                tcp.close()
                if cfg.port == 0 and attempt < 19:
                    continue  # the ephemeral UDP port is taken for TCP: pick another
                raise
            break
        self.port = port
        udp.setblocking(False)
        tcp.setblocking(False)
        tcp.listen(1024)
        self._udp.append(_Udp(self, udp, self.stats.socket("udp", fam_label)))
        tcp_stats = self.stats.socket("tcp", fam_label)
        try:
            self._tcp_server = await asyncio.get_running_loop().create_server(lambda: _Tcp(self, tcp_stats), sock=tcp)
        except BaseException:
            tcp.close()
            raise

    async def _open_http(self) -> None:
        cfg = self.cfg
        host = cfg.http_listen if cfg.http_listen is not None else cfg.listen
        routes: dict[int, list[web.RouteDef]] = {}
        routes.setdefault(cfg.health_port, []).append(web.get("/health", self._health))
        routes.setdefault(cfg.ready_port, []).append(web.get("/ready", self._ready))
        routes.setdefault(cfg.metrics_port, []).append(web.get("/metrics", self._metrics))
        for port, defs in routes.items():
            app = web.Application()
            app.add_routes(defs)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
            self._runners.append(runner)
            actual = port
            if port == 0 and runner.addresses:
                actual = runner.addresses[-1][1]
            names = {r.path for r in defs}  # type: ignore[attr-defined]
            if "/health" in names:
                self.health_port = actual
            if "/ready" in names:
                self.ready_port = actual
            if "/metrics" in names:
                self.metrics_port = actual

    async def _health(self, _req: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _ready(self, _req: web.Request) -> web.Response:
        if self.ready:
            return web.Response(text="OK")
        return web.Response(status=503, text="kubernetes")

    async def _metrics(self, _req: web.Request) -> web.Response:
        return metrics_response(self.registry)

    def _start_informers(self) -> None:
        cfg = self.cfg
        kube = self.kube or kube_config(cfg)
        self.client = ApiClient(kube)
        inf = self.informers = Informers(self.client)
        rec = self.records

        def wire(resource: Any, add: Any, delete: Any, **kw: Any) -> None:
            i = inf.get(resource, **kw)
            i.on_add(add)
            i.on_update(lambda _old, new: add(new))
            i.on_delete(delete)

        wire(SERVICES, rec.set_service, rec.delete_service)
        wire(ENDPOINTSLICES, rec.set_slice, rec.delete_slice)
        wire(NAMESPACES, rec.set_namespace, rec.delete_namespace)
        nh_ns, nh_name = split_ref(cfg.node_hosts_configmap)
        wire(
            CONFIGMAPS,
            lambda o: self.handler.set_node_hosts(str((o.get("data") or {}).get("NodeHosts") or "")),
            lambda _o: self.handler.set_node_hosts(""),
            namespace=nh_ns,
            field_selector=f"metadata.name={nh_name}",
        )
        c_ns, c_name = split_ref(cfg.custom_configmap)
        wire(
            CONFIGMAPS,
            lambda o: self.handler.set_custom({str(k): str(v) for k, v in (o.get("data") or {}).items()}),
            lambda _o: self.handler.set_custom(None),
            namespace=c_ns,
            field_selector=f"metadata.name={c_name}",
        )
        inf.start()
        self._sync_task = asyncio.get_running_loop().create_task(self._wait_synced())

    async def _wait_synced(self) -> None:
        assert self.informers is not None
        start = time.monotonic()
        while True:
            try:
                await self.informers.wait_synced(timeout=SYNC_LOG_EVERY)
                break
            except TimeoutError:
                log.warning(
                    "Kubernetes API caches not synced after %.0fs: cluster names get SERVFAIL until they are",
                    time.monotonic() - start,
                )
        self.records.set_synced(True)
        log.info(
            "synced with the Kubernetes API: %d services, %d namespaces",
            len(self.records.services),
            len(self.records.namespaces),
        )

    async def close(self) -> None:
        await cancel_and_wait(self._sync_task)
        for u in self._udp:
            u.close()
        self._udp.clear()
        if self._tcp_server is not None:
            self._tcp_server.close()
        for c in list(self.tcp_conns):
            if c.transport is not None:
                c.transport.close()
        if self._tcp_server is not None:
            with contextlib.suppress(Exception):
                await self._tcp_server.wait_closed()
            self._tcp_server = None
        await cancel_and_wait(*self._tasks)
        for r in self._runners:
            await r.cleanup()
        self._runners.clear()
        if self.informers is not None:
            await self.informers.stop()
        if self.client is not None:
            await self.client.close()
        self.forwarder.close()
        self.closed.set()


async def start(cfg: DnsConfig, *, kube: Config | None = None) -> DnsServer:
    srv = DnsServer(cfg, kube=kube)
    try:
        await srv.start()
    except BaseException:
        await srv.close()
        raise
    return srv


async def run(cfg: DnsConfig) -> None:
    """Serve until cancelled (the pod's process: `python -m kwire.dns ...`)."""
    srv = await start(cfg)
    try:
        await asyncio.Event().wait()
    finally:
        await srv.close()
