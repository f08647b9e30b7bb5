"""The HTTPS API: Kubernetes REST paths, bearer-token auth, content negotiation (JSON, Table), watch streams.

Paths are parsed by hand from the registry (one catch-all route) so a new kind needs no routing code:
`/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]]` and `/apis/GROUP/VERSION[/namespaces/NS]/PLURAL[/NAME[/SUB]]`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import yaml
from aiohttp import web

from kwire.api import bootstrap, discovery, eviction, kubeletproxy, protobuf, scale, streaming, tables
from kwire.api.errors import ApiError, bad_request, gone, method_not_allowed, unauthorized
from kwire.api.fields import FieldSelector, parse_fields
from kwire.api.patch import apply_patch
from kwire.api.registry import Kind, by_path
from kwire.api.resources import Resources, decode
from kwire.base.labels import Selector, SelectorError, parse
from kwire.store.base import ADDED, DELETED, MODIFIED, Compacted

log = logging.getLogger(__name__)

Obj = dict[str, Any]

PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version", "/cacerts"})
BOOKMARK_INTERVAL = 5.0
IDLE_CHECK = 1.0  # how often an idle watch checks that its client is still there
JSON = "application/json"


@dataclass
class Target:
    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON)


def _error(err: ApiError) -> web.Response:
    return _json(err.status(), err.code)


def parse_target(path: str) -> Target | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    kind = by_path(group, version, plural)
    if kind is None:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if len(rest) > 3:
        return None
    if kind.namespaced is False and namespace is not None:
        return None
    return Target(kind, namespace, name, sub)


def _wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "as=Table" in accept


def _bool_param(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true")


def _dry_run(request: web.Request) -> bool:
    return "All" in request.query.getall("dryRun", [])


class ApiServer:
    def __init__(self, resources: Resources, *, tokens: set[str], server_address: str, ca_pem: bytes = b"") -> None:
        self.resources = resources
        self.ca_pem = ca_pem
        self.log_token = next(iter(tokens), "")  # presented to kubelets when proxying pods/log and pods/exec
        self.tokens = tokens
        self.server_address = server_address
        self.ready = True
        self._stopping = asyncio.Event()
        # Set by a server running an embedded etcd: the data a joining server fetches (`bootstrap.py`).
        self.server_bootstrap: Callable[[], Awaitable[dict[str, Any]]] | None = None

    # -- app -------------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    def stop_watches(self) -> None:
        self._stopping.set()

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS and not self._authenticated(request):
            return _error(unauthorized())
        try:
            return await handler(request)
        except ApiError as err:
            return _error(err)
        except web.HTTPException:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad request must never take the server down
            log.exception("internal error on %s %s", request.method, request.path)
            return _error(ApiError(500, "InternalError", f"Internal error occurred: {exc}"))

    def _authenticated(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        presented = auth[7:].strip().encode()
        return any(hmac.compare_digest(presented, t.encode()) for t in self.tokens)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path == bootstrap.PATH and request.method == "GET":
            if self.server_bootstrap is None:
                raise ApiError(
                    404, "NotFound", "this server does not run an embedded etcd (start it with --cluster-init)"
                )
            return _json(await self.server_bootstrap())
        if request.method == "GET":
            static = self._static(path)
            if static is not None:
                return static
        target = parse_target(path)
        if target is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if target.kind.kind == "Pod" and target.subresource == "log" and target.name:
            if request.method != "GET":
                raise method_not_allowed()
            return await kubeletproxy.pod_log(
                request, self.resources, namespace=target.namespace or "", name=target.name, token=self.log_token
            )
        if target.kind.kind == "Pod" and target.subresource in ("exec", "attach") and target.name:
            if request.method not in ("GET", "POST"):
                raise method_not_allowed()
            return await kubeletproxy.pod_stream(
                request,
                self.resources,
                namespace=target.namespace or "",
                name=target.name,
                token=self.log_token,
                verb=target.subresource,
            )
        if (
            target.subresource
            and target.subresource not in target.kind.subresources
            and not (target.kind.kind == "Namespace" and target.subresource == "finalize")
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if target.kind.namespaced and target.namespace is None and target.name is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        m = request.method
        if target.subresource == "scale" and target.name is not None:
            return await self._scale(request, target)
        if target.subresource == "eviction" and target.name is not None:
            if m != "POST":
                raise method_not_allowed()
            status = await eviction.evict(
                self.resources,
                target.namespace or "",
                target.name,
                await self._body(request),
                dry_run=_dry_run(request),
            )
            return _json(status, 201)
        if target.subresource == "binding" and target.name is not None:
            if m != "POST":
                raise method_not_allowed()
            status = await self.resources.bind(
                target.namespace or "", target.name, await self._body(request), dry_run=_dry_run(request)
            )
            return _json(status, 201)
        if target.name is None:
            if m == "GET":
                if _bool_param(request, "watch"):
                    return await self._watch(request, target)
                return await self._list(request, target)
            if m == "POST":
                if target.kind.namespaced and target.namespace is None:
                    raise method_not_allowed()
                return await self._create(request, target)
            if m == "DELETE":
                return await self._delete_collection(request, target)
            raise method_not_allowed()
        if m == "GET":
            obj = await self.resources.get(target.kind, target.namespace, target.name)
            return self._object_response(request, target.kind, obj)
        if m == "PUT":
            body = await self._body(request)
            sub = target.subresource if target.subresource in ("status", "ephemeralcontainers") else None
            obj = await self.resources.update(
                target.kind, target.namespace, target.name, body, subresource=sub, dry_run=_dry_run(request)
            )
            return self._object_response(request, target.kind, obj)
        if m == "PATCH":
            raw = await request.read()
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            obj = await self.resources.patch(
                target.kind,
                target.namespace,
                target.name,
                raw,
                ctype,
                subresource=target.subresource,
                dry_run=_dry_run(request),
            )
            return self._object_response(request, target.kind, obj)
        if m == "DELETE":
            return await self._delete(request, target)
        raise method_not_allowed()

    async def _scale(self, request: web.Request, target: Target) -> web.StreamResponse:
        obj = await self.resources.get(target.kind, target.namespace, target.name or "")
        if request.method == "GET":
            return _json(scale.to_scale(obj))
        if request.method == "PUT":
            wanted = await self._body(request)
        elif request.method == "PATCH":
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            if ctype == "application/strategic-merge-patch+json":
                ctype = "application/merge-patch+json"  # Scale has no list fields: SMP is a merge patch here
            wanted = apply_patch(target.kind, scale.to_scale(obj), await request.read(), ctype)
        else:
            raise method_not_allowed()
        new = scale.apply_scale(target.kind, obj, wanted)
        updated = await self.resources.update(
            target.kind, target.namespace, target.name or "", new, dry_run=_dry_run(request)
        )
        return _json(scale.to_scale(updated))

    def _static(self, path: str) -> web.Response | None:
        if path == "/cacerts" and self.ca_pem:
            # K3s serves its CA bundle unauthenticated; agents pin it by the hash carried in a K10 token.
            return web.Response(body=self.ca_pem, content_type="text/plain")
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok" if self.ready else "not ready", status=200 if self.ready else 500)
        if path == "/version":
            return _json(discovery.VERSION)
        if path == "/api":
            return _json(discovery.api_versions(self.server_address))
        if path == "/apis":
            return _json(discovery.api_group_list())
        if path == "/openapi/v3":
            return _json(discovery.openapi_v3_root())
        if path.startswith("/openapi/v3/"):
            doc = discovery.OPENAPI_V3_DOCS.get(path[len("/openapi/v3/") :])
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return web.Response(body=doc, content_type=JSON)
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "api":
            rl = discovery.resource_list("", parts[1])
            return _json(rl) if rl else None
        if len(parts) == 2 and parts[0] == "apis":
            grp = discovery.api_group(parts[1])
            return _json(grp) if grp else None
        if len(parts) == 3 and parts[0] == "apis":
            rl = discovery.resource_list(parts[1], parts[2])
            return _json(rl) if rl else None
        return None

    # -- helpers ---------------------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> Obj:
        raw = await request.read()
        ctype = request.headers.get("Content-Type", JSON)
        if "protobuf" in ctype:
            return protobuf.decode(raw)
        try:
            if "yaml" in ctype:
                body = yaml.safe_load(raw)
            else:
                body = orjson.loads(raw)
        except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
            raise bad_request(f"the body of the request could not be decoded: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        return body

    def _object_response(self, request: web.Request, kind: Kind, obj: Obj, status: int = 200) -> web.Response:
        if _wants_table(request):
            return _json(self._table(kind, [obj]), status)
        return _json(obj, status)

    def _table(self, kind: Kind, objs: list[Obj], *, resource_version: str = "", continue_token: str = "") -> Obj:
        now = dt.datetime.now(dt.UTC)
        return tables.table(kind, objs, now=now, resource_version=resource_version, continue_token=continue_token)

    @staticmethod
    def _selectors(request: web.Request) -> tuple[Selector, FieldSelector]:
        try:
            labels = parse(request.query.get("labelSelector"))
        except SelectorError as exc:
            raise bad_request(f"unable to parse requirement: {exc}") from None
        return labels, parse_fields(request.query.get("fieldSelector"))

    # -- verbs -----------------------------------------------------------------------------------------------
    async def _create(self, request: web.Request, target: Target) -> web.Response:
        body = await self._body(request)
        obj = await self.resources.create(target.kind, target.namespace, body, dry_run=_dry_run(request))
        return self._object_response(request, target.kind, obj, 201)

    async def _list(self, request: web.Request, target: Target) -> web.StreamResponse:
        labels, fields = self._selectors(request)
        try:
            limit = int(request.query.get("limit") or 0)
        except ValueError:
            raise bad_request("limit must be an integer") from None
        scan = await self.resources.scan(
            target.kind,
            target.namespace,
            labels=labels,
            fields=fields,
            limit=max(limit, 0),
            continue_token=request.query.get("continue", ""),
        )
        rv = str(scan.revision)
        if _wants_table(request):
            items = list(scan)
            return _json(self._table(target.kind, items, resource_version=rv, continue_token=scan.continue_token))

        def metadata() -> Obj:
            meta: Obj = {"resourceVersion": rv}
            if scan.continue_token:
                meta["continue"] = scan.continue_token
            return meta

        kind = target.kind
        return await streaming.write_list(
            request, kind=kind.list_kind_name, api_version=kind.api_version, items=scan, metadata=metadata
        )

    async def _delete_options(self, request: web.Request) -> Obj:
        opts: Obj = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    loaded = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise bad_request(f"invalid DeleteOptions: {exc}") from None
                if isinstance(loaded, dict):
                    opts = loaded
        q = request.query
        if "propagationPolicy" in q:
            opts["propagationPolicy"] = q["propagationPolicy"]
        if "gracePeriodSeconds" in q:
            opts["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
        if opts.get("orphanDependents") is True and "propagationPolicy" not in opts:
            opts["propagationPolicy"] = "Orphan"
        return opts

    async def _delete(self, request: web.Request, target: Target) -> web.Response:
        assert target.name is not None
        opts = await self._delete_options(request)
        obj = await self.resources.delete(
            target.kind,
            target.namespace,
            target.name,
            propagation=opts.get("propagationPolicy"),
            grace_period=opts.get("gracePeriodSeconds"),
            preconditions=opts.get("preconditions"),
            dry_run=_dry_run(request),
        )
        meta = obj.get("metadata") or {}
        still = self.resources.get_or_none(target.kind, target.namespace, target.name)
        pending = bool(meta.get("deletionTimestamp")) and (
            _dry_run(request) or (still is not None and (still.get("metadata") or {}).get("uid") == meta.get("uid"))
        )
        if pending:
            return _json(obj)  # graceful or waiting on finalizers: the object, with its deletionTimestamp
        # Deleted at once: kube-apiserver answers with a Status naming what went.
        details = {"name": target.name, "kind": target.kind.plural, "uid": meta.get("uid", "")}
        if target.kind.group:
            details["group"] = target.kind.group
        return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})

    async def _delete_collection(self, request: web.Request, target: Target) -> web.Response:
        labels, fields = self._selectors(request)
        opts = await self._delete_options(request)
        res = await self.resources.list(target.kind, target.namespace, labels=labels, fields=fields)
        deleted: list[Obj] = []
        for obj in res.items:
            meta = obj["metadata"]
            try:
                deleted.append(
                    await self.resources.delete(
                        target.kind,
                        meta.get("namespace"),
                        meta["name"],
                        propagation=opts.get("propagationPolicy"),
                        grace_period=opts.get("gracePeriodSeconds"),
                        dry_run=_dry_run(request),
                    )
                )
            except ApiError as err:
                if err.code != 404:
                    raise
        kind = target.kind
        return _json({"kind": kind.list_kind_name, "apiVersion": kind.api_version, "metadata": {}, "items": deleted})

    # -- watch -----------------------------------------------------------------------------------------------
    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        kind = target.kind
        labels, fields = self._selectors(request)
        if target.name:  # /namespaces/x/pods/name?watch=1 is the deprecated single-object watch
            fields = parse_fields(
                ",".join(filter(None, [request.query.get("fieldSelector"), f"metadata.name={target.name}"]))
            )
        rv_param = request.query.get("resourceVersion", "")
        bookmarks = _bool_param(request, "allowWatchBookmarks")
        send_initial = _bool_param(request, "sendInitialEvents")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        as_table = _wants_table(request)
        store = self.resources.store
        prefix = kind.prefix(target.namespace)

        initial: Iterable[Obj] = ()
        if rv_param in ("", "0") or send_initial:
            scan = await self.resources.scan(kind, target.namespace, labels=labels, fields=fields)
            initial, start = scan, scan.revision
        else:
            try:
                start = int(rv_param)
            except ValueError:
                raise bad_request(f'invalid resource version "{rv_param}"') from None

        resp = web.StreamResponse(status=200, headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"})
        await resp.prepare(request)

        def line(etype: str, obj: Obj) -> bytes:
            if as_table and etype in (ADDED, MODIFIED, DELETED):
                obj = self._table(kind, [obj], resource_version=obj["metadata"].get("resourceVersion", ""))
            return orjson.dumps({"type": etype, "object": obj}) + b"\n"

        try:
            watch = store.watch(prefix, from_revision=start)
        except Compacted as exc:
            status = gone(f"too old resource version: {start} ({exc.compacted + 1})").status()
            await resp.write(line("ERROR", status))
            return resp

        def matches(obj: Obj) -> bool:
            return labels.matches(obj.get("metadata", {}).get("labels")) and fields.matches(obj)

        def bookmark(revision: int, *, initial_end: bool = False) -> Obj:
            meta: Obj = {"resourceVersion": str(revision)}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": meta}

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            # Initial events go out a bounded batch at a time (decoded lazily), never as one list.
            initial_out = streaming.ChunkWriter(resp)
            for obj in initial:
                await initial_out.add(line(ADDED, obj))
            if send_initial and bookmarks:
                await initial_out.add(line("BOOKMARK", bookmark(start, initial_end=True)))
            await initial_out.flush()
            initial_out.done()
            last_sent = loop.time()
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                # Everything already queued goes out in one write; only an idle watcher waits.
                events = watch.ready()
                if not events:
                    nxt = asyncio.ensure_future(anext(watch))
                    done, _ = await asyncio.wait(
                        {nxt, stop}, timeout=min(left, IDLE_CHECK), return_when=asyncio.FIRST_COMPLETED
                    )
                    if stop in done:
                        nxt.cancel()
                        break
                    if nxt not in done:
                        nxt.cancel()
                        if request.transport is None or request.transport.is_closing():
                            break  # the client went away; aiohttp does not cancel the handler for us
                        if bookmarks and loop.time() - last_sent >= BOOKMARK_INTERVAL:
                            await resp.write(line("BOOKMARK", bookmark(store.revision)))
                            last_sent = loop.time()
                        continue
                    try:
                        events = [nxt.result()]
                    except StopAsyncIteration:
                        break
                    events.extend(watch.ready())
                out = [b for ev in events for b in self._event_lines(ev, line, matches)]
                if out:
                    await resp.write(b"".join(out))
                    last_sent = loop.time()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            stop.cancel()
            watch.close()
        return resp

    @staticmethod
    def _event_lines(ev: Any, line: Callable[[str, Obj], bytes], matches: Callable[[Obj], bool]) -> list[bytes]:
        obj = decode(value=ev.value, revision=ev.revision)
        if ev.type == DELETED:
            return [line(DELETED, obj)] if matches(obj) else []
        now = matches(obj)
        if ev.type == ADDED:
            return [line(ADDED, obj)] if now else []
        before = matches(decode(value=ev.prev_value, revision=ev.revision)) if ev.prev_value else False
        if now and before:
            return [line(MODIFIED, obj)]
        if now:
            return [line(ADDED, obj)]
        if before:
            # The object left the selector: watchers see it deleted (kube's cacher sends the previous state).
            return [line(DELETED, decode(value=ev.prev_value, revision=ev.revision))]
        return []
