"""The HTTPS API: Kubernetes REST paths, authentication (kwire/api/authn), content negotiation (JSON, Table), watch streams.

Paths are parsed by hand from the registry (one catch-all route) so a new kind needs no routing code:
`/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]]` and `/apis/GROUP/VERSION[/namespaces/NS]/PLURAL[/NAME[/SUB]]`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from kwire.api import (
    bootstrap,
    convert,
    decoding,
    discovery,
    encryptionkeys,
    eviction,
    kubeletproxy,
    managedfields,
    openapi,
    protobuf,
    proxy,
    scale,
    streaming,
    tables,
)
from kwire.api.aggregator import Aggregator
from kwire.api.authn import Authenticator, bearer_token, lookup_in
from kwire.api.authn import reviews as authn_reviews
from kwire.api.authn.serviceaccount import TokenIssuer, TokenValidator
from kwire.api.authn.tokens import JoinTokens
from kwire.api.authz import attributes as authz_attributes
from kwire.api.authz import impersonation, reviews
from kwire.api.authz.chain import Authorization
from kwire.api.crd import custom
from kwire.api.encryptionkeys import EncryptionKeys
from kwire.api.errors import ApiError, bad_request, gone, method_not_allowed, unauthorized
from kwire.api.fields import FieldRequirement, FieldSelector, parse_fields
from kwire.api.fields import check as fields_check
from kwire.api.health import ENDPOINTS, Health
from kwire.api.maxinflight import MUTATING, READ_ONLY, MaxInFlight, too_many_requests
from kwire.api.metrics import ApiMetrics, RequestInfo, metric_verb
from kwire.api.nodecerts import NodeCerts
from kwire.api.patch import MERGE_PATCH, apply_patch
from kwire.api.patch import STRATEGIC as STRATEGIC_PATCH
from kwire.api.registry import Kind, by_path, kinds_in
from kwire.api.resources import Resources, decode
from kwire.api.user import (
    MASTERS,
    USER_KEY,
    UserInfo,
    reset_current_user,
    set_current_user,
    user_of,
)
from kwire.base.labels import Selector, SelectorError, parse
from kwire.store.base import ADDED, DELETED, MODIFIED, Compacted

log = logging.getLogger(__name__)

Obj = dict[str, Any]

PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version", "/cacerts"})
# Paths that check their own credential (the cluster join token), not the API's authentication.
JOIN_PATHS = frozenset({bootstrap.PATH})
UNAUTHORIZED_PATHS = frozenset({"/cacerts", bootstrap.PATH})  # served by K3s's supervisor, not kube-apiserver
BOOKMARK_INTERVAL = 5.0
IDLE_CHECK = 1.0  # how often an idle watch checks that its client is still there
JSON = "application/json"
WARNINGS = web.RequestKey("kwire.warnings", list[str])  # fieldValidation=Warn messages, sent as Warning headers


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


def _group_version_rest(path: str) -> tuple[str, str, list[str]] | None:
    """`/api/V/REST...` and `/apis/G/V/REST...` as (group, version, REST segments, never empty); None for any other
    path (discovery, health, /metrics, /openapi, ...)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        return "", parts[1], parts[2:]
    if len(parts) >= 4 and parts[0] == "apis":
        return parts[1], parts[2], parts[3:]
    return None


def parse_target(path: str) -> Target | None:
    api = _group_version_rest(path)
    if api is None:
        return None
    group, version, rest = api
    namespace: str | None = None
    # /api/v1/namespaces/NAME/{status,finalize} are a Namespace's subresources, not a resource in namespace NAME.
    if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
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


def _public(path: str) -> bool:
    """What kube's system:public-info-viewer may read unauthenticated (health checks and their sub-checks)."""
    return path in PUBLIC_PATHS or path.startswith(("/healthz/", "/livez/", "/readyz/"))


_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


def _api_path(method: str, path: str, query: Any) -> tuple[str, str, str, str, str, str, str] | None:
    """kube's RequestInfoFactory.NewRequestInfo for `/api/v1/...` and `/apis/G/V/...`, as (verb, group, version,
    namespace, resource, name, subresource), without consulting the served kinds; None for anything else (a
    non-resource request: discovery, health, /metrics, /openapi, ...)."""
    api = _group_version_rest(path)
    if api is None:
        return None
    group, version, rest = api
    verb = _METHOD_VERBS.get(method) or method.lower()
    if rest[0] == "watch":  # the deprecated /api/v1/watch/... paths
        verb, rest = "watch", rest[1:]
        if not rest:
            return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    name = rest[1] if len(rest) >= 2 else ""
    sub = rest[2] if len(rest) >= 3 else ""
    if verb == "get" and (query.get("watch") or "").lower() in ("1", "true"):
        verb = "watch"
    elif not name:
        if verb == "get":
            verb = "list"
        elif verb == "delete":
            verb = "deletecollection"
    if not name and verb in ("list", "watch"):
        # A list or watch of one name (fieldSelector metadata.name=X) is authorized as that name, as kube does.
        for term in (query.get("fieldSelector") or "").split(","):
            key, eq, value = term.partition("=")
            if eq and key.strip() == "metadata.name":
                name = value.lstrip("=").strip()
    return verb, group, version, namespace, rest[0], name, sub


def request_info(request: web.Request) -> RequestInfo:
    """kube's RequestInfo: the labels the request metrics carry and the attributes authorization reads."""
    query = request.query
    path = request.path
    dry = "All" if "dryRun" in query and "All" in query.getall("dryRun") else ""
    api = _api_path(request.method, path, query)
    if api is None:
        return RequestInfo(verb=request.method, dry_run=dry, api_verb=request.method.lower(), path=path)
    api_verb, api_group, api_version, namespace, resource, name, sub = api
    target = parse_target(path.rstrip("/"))
    if target is None:
        via = proxy.parse(request.rel_url.raw_path)
        if via is None:
            # A resource kwire does not serve: authorized as kube would (then 404), not labelled in the metrics.
            metric = (request.method, "", api_version, "", "", "")
        else:
            scope = "resource" if via.namespace is None else "namespace"
            metric = ("CONNECT", "", "v1", via.resource, "proxy", scope)
    else:
        named = target.name is not None
        scope = "resource" if named else ("namespace" if target.namespace is not None else "cluster")
        metric_sub = target.subresource or ""
        metric = (
            metric_verb(request.method, named=named, watch=api_verb == "watch", subresource=metric_sub),
            target.kind.group,
            target.kind.version,
            target.kind.plural,
            metric_sub,
            scope,
        )
    return RequestInfo(
        *metric,
        dry_run=dry,
        api_verb=api_verb,
        api_group=api_group,
        api_resource=resource,
        api_subresource=sub,
        namespace=namespace,
        name=name,
        path=path,
        resource_request=True,
    )


def _wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "as=Table" in accept


def _include_object(request: web.Request) -> str:
    """The `includeObject` of a Table request (kubectl's --sort-by asks for Object); Metadata by default."""
    value = request.query.get("includeObject") or "Metadata"
    if value not in tables.INCLUDE_OBJECT:
        raise bad_request(
            f'includeObject: Unsupported value: "{value}": supported values: "Metadata", "None", "Object"'
        )
    return value


def _bool_param(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true")


def _dry_run(request: web.Request) -> bool:
    return "All" in request.query.getall("dryRun", [])


def _connect_options(request: web.Request, subresource: str) -> Obj:
    """The PodExecOptions/PodAttachOptions/PodPortForwardOptions object CONNECT admission sees, from the query."""
    q = request.query
    if subresource == "portforward":
        opts: Obj = {"kind": "PodPortForwardOptions", "apiVersion": "v1"}
        ports = [int(p) for v in q.getall("ports", []) for p in v.split(",") if p.strip().isdigit()]
        if ports:
            opts["ports"] = ports
        return opts
    opts = {"kind": "PodExecOptions" if subresource == "exec" else "PodAttachOptions", "apiVersion": "v1"}
    for flag in ("stdin", "stdout", "stderr", "tty"):
        if q.get(flag, "").lower() in ("1", "true"):
            opts[flag] = True
    if q.get("container"):
        opts["container"] = q["container"]
    if subresource == "exec":
        opts["command"] = q.getall("command", [])
    return opts


def _field_manager(request: web.Request) -> str:
    """The request's field manager: `?fieldManager=`, else the User-Agent's prefix (kube's default)."""
    name = request.query.get("fieldManager")
    if name is None:
        return managedfields.manager_from_user_agent(request.headers.get("User-Agent", ""))
    if len(name) > managedfields.MAX_MANAGER_LENGTH:
        raise ApiError(
            422,
            "Invalid",
            f'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Too long: may not be more than '
            f"{managedfields.MAX_MANAGER_LENGTH} bytes",
        )
    return name


class ApiServer:
    def __init__(
        self,
        resources: Resources,
        *,
        server_address: str,
        authorization: Authorization,
        ca_pem: bytes = b"",
        authn: Authenticator | None = None,
        join_tokens: JoinTokens | None = None,
        issuer: TokenIssuer | None = None,
        validator: TokenValidator | None = None,
        kubelet_ssl: ssl.SSLContext | None = None,
        node_certs: NodeCerts | None = None,
        max_inflight: MaxInFlight | None = None,
    ) -> None:
        self.resources = resources
        self.authorization = authorization
        self.ca_pem = ca_pem
        self.authn = authn or Authenticator(tokens=validator)
        self.join_tokens = join_tokens  # who may fetch the server bootstrap (the server token)
        self.issuer = issuer  # signs TokenRequest tokens
        self.validator = validator  # answers TokenReviews
        # The API server's kubelet-client credentials (client-kube-apiserver.crt) and trust in the kubelets'
        # serving certificates (the cluster CA), for pods/log, exec, attach and nodes/proxy.
        self.kubelet_ssl = kubelet_ssl
        self.node_certs = node_certs  # the /v1-k3s/ node-credential endpoints (nodecerts.py)
        self.server_address = server_address
        self.ready = True
        self._stopping = asyncio.Event()
        # Set by a server running an embedded etcd: the data a joining server fetches (`bootstrap.py`).
        self.server_bootstrap: Callable[[], Awaitable[dict[str, Any]]] | None = None
        # The aggregation layer (APIServices served by a Service's pods), set by the server role.
        self.aggregator: Aggregator | None = None
        # Set when Secrets are encrypted at rest: answers `kwire secrets-encrypt` (encryptionkeys.py).
        self.encryption: EncryptionKeys | None = None
        self.health = Health()
        for name in ("ping", "log"):
            self.health.add(name, lambda: True)
        self.health.add("etcd", self._store_answers)
        self.health.add("etcd-readiness", self._store_answers, ready_only=True)
        self.health.add("shutdown", lambda: self.ready and not self._stopping.is_set(), ready_only=True)
        self.metrics = ApiMetrics(count_objects=self._count_objects)
        self.max_inflight = max_inflight or MaxInFlight()  # kube's --max-(mutating-)requests-inflight

    def _store_answers(self) -> bool:
        return self.resources.store.healthy()

    async def _count_objects(self, prefix: str) -> int:
        return len((await self.resources.store.range(prefix)).items)

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
        user: UserInfo | None = None
        if request.path not in JOIN_PATHS:
            try:
                user = self.authn.authenticate(request)  # the request's user is set here, for everything after
            except ApiError as err:
                if not NodeCerts.handles(request.path):
                    return _error(err)
                user = None  # the /v1-k3s/ endpoints authenticate nodes themselves (the agent token)
            if user is None and not _public(request.path) and not NodeCerts.handles(request.path):
                return _error(unauthorized())
        info = request_info(request)
        kind = MUTATING if info.mutating else READ_ONLY
        counted = not info.long_running  # long-running requests are outside kube's in-flight limit
        if counted:
            if not self.max_inflight.admit(kind, privileged=user is not None and MASTERS in user.groups):
                self.metrics.terminated(info, code=429)
                return too_many_requests()
            self.metrics.inflight.labels(request_kind=kind).set(self.max_inflight.current[kind])
        started = time.monotonic()
        code = 500
        context = None
        try:
            if user is not None:
                user = self._authorize(request, user, info)
                request[USER_KEY] = user
                context = set_current_user(user)
            resp = await handler(request)
            code = resp.status
            if not resp.prepared:
                for warning in decoding.bounded_warnings(request.get(WARNINGS, [])):
                    resp.headers.add("Warning", decoding.warning_header(warning))
            return resp
        except ApiError as err:
            code = err.code
            return _error(err)
        except web.HTTPException as exc:
            code = exc.status
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad request must never take the server down
            log.exception("internal error on %s %s", request.method, request.path)
            return _error(ApiError(500, "InternalError", f"Internal error occurred: {exc}"))
        finally:
            if context is not None:
                reset_current_user(context)
            if counted:
                self.max_inflight.release(kind)
                self.metrics.inflight.labels(request_kind=kind).set(self.max_inflight.current[kind])
            self.metrics.observe(info, code=code, seconds=time.monotonic() - started)

    def _authorize(self, request: web.Request, user: UserInfo, info: RequestInfo) -> UserInfo:
        """kube's WithImpersonation then WithAuthorization: the user the request acts as, or a 403/400."""
        if impersonation.requested(request.headers):
            user = impersonation.impersonate(request.headers, user, self.authorization)
        if MASTERS in user.groups or request.path in UNAUTHORIZED_PATHS or NodeCerts.handles(request.path):
            return user  # kube's privileged group; K3s's own supervisor endpoints check the token themselves
        self.authorization.check(authz_attributes.from_request(user, info))
        return user

    async def _secrets_encrypt(self, request: web.Request, path: str) -> web.StreamResponse:
        """K3s's `secrets-encrypt status|rotate-keys`, for cluster admins (system:masters) only."""
        user = user_of(request)
        if MASTERS not in user.groups:
            raise ApiError(
                403, "Forbidden", f'forbidden: User "{user.name}" cannot {request.method.lower()} path "{path}"'
            )
        want = "GET" if path == encryptionkeys.STATUS_PATH else "POST"
        if request.method != want:
            raise method_not_allowed()
        if self.encryption is None:
            if path == encryptionkeys.STATUS_PATH:
                return _json({"enable": False, "stage": "", "hashMatch": True, "keys": []})
            raise ApiError(
                400, "BadRequest", "secrets encryption is not enabled (start the server with --secrets-encryption)"
            )
        if path == encryptionkeys.STATUS_PATH:
            return _json(await self.encryption.status())
        return _json(await self.encryption.rotate())

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if self.node_certs is not None and NodeCerts.handles(path):
            return await self.node_certs.handle(request, user=request.get(USER_KEY))
        if path == bootstrap.PATH and request.method == "GET":
            presented = bearer_token(request) or ""
            if self.join_tokens is None or not self.join_tokens.server_may_join(presented):
                raise unauthorized()
            if self.server_bootstrap is None:
                raise ApiError(
                    404, "NotFound", "this server does not run an embedded etcd (start it with --cluster-init)"
                )
            return _json(await self.server_bootstrap())
        if path in (encryptionkeys.STATUS_PATH, encryptionkeys.ROTATE_PATH):
            return await self._secrets_encrypt(request, path)
        parts = path.strip("/").split("/")
        if request.method == "GET" and parts[0] in ENDPOINTS and len(parts) <= 3:
            answer = self.health.answer(
                parts[0],
                sub="/".join(parts[1:]),
                verbose="verbose" in request.query,
                exclude=request.query.getall("exclude", []),
            )
            if answer is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return web.Response(text=answer[1], status=answer[0], content_type="text/plain")
        if request.method == "GET" and path == "/metrics":
            return web.Response(
                body=await self.metrics.exposition(),
                content_type="text/plain",
                headers={"X-Content-Type-Options": "nosniff"},
            )
        if request.method == "GET" and path in ("/api", "/apis"):
            agg = discovery.aggregated_version(request.headers.get("Accept", ""))
            if agg is not None:
                doc = discovery.aggregated_discovery(core=path == "/api", version=agg)
                return web.Response(
                    body=orjson.dumps(doc), headers={"Content-Type": discovery.aggregated_content_type(agg)}
                )
        if request.method == "GET" and (path == "/openapi/v2" or path.startswith("/openapi/v3")):
            # Building the documents takes 0.1-0.3 s when kinds or CRDs changed: off the event loop.
            return await asyncio.to_thread(self._openapi, path, request.headers.get("Accept", ""))
        if (
            len(parts) >= 3
            and parts[0] == "apis"
            and self.aggregator is not None
            and not kinds_in(parts[1], parts[2])
            and self.aggregator.serves(parts[1], parts[2])
        ):
            return await self.aggregator.proxy(request, parts[1], parts[2])
        if request.method == "GET":
            static = self._static(path)
            if static is not None:
                return static
        if request.method == "POST":
            authn_answer = await self._authentication_api(request, path)
            if authn_answer is not None:
                return authn_answer
        proxy_target = proxy.parse(request.rel_url.raw_path)
        if proxy_target is not None:
            return await proxy.handle(request, self.resources, proxy_target, kubelet_ssl=self.kubelet_ssl)
        target = parse_target(path)
        if target is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if target.kind.group == authn_reviews.GROUP:
            raise method_not_allowed()  # TokenReview, SelfSubjectReview: create only, answered above
        if target.kind.group == reviews.GROUP and target.kind.kind in reviews.KINDS:
            if request.method != "POST" or target.name is not None:
                raise method_not_allowed()
            body = await self._body(request, target.kind)
            reviewed = reviews.review(
                target.kind.kind, target.namespace, body, user=user_of(request), authz=self.authorization
            )
            return _json(reviewed, 201)
        if target.kind.kind == "Pod" and target.subresource == "log" and target.name:
            if request.method != "GET":
                raise method_not_allowed()
            return await kubeletproxy.pod_log(
                request,
                self.resources,
                namespace=target.namespace or "",
                name=target.name,
                kubelet_ssl=self.kubelet_ssl,
            )
        if target.kind.kind == "Pod" and target.subresource in ("exec", "attach", "portforward") and target.name:
            if request.method not in ("GET", "POST"):
                raise method_not_allowed()
            await self.resources.connect(
                target.kind,
                target.namespace or "",
                target.name,
                target.subresource,
                _connect_options(request, target.subresource),
            )
            return await kubeletproxy.pod_stream(
                request,
                self.resources,
                namespace=target.namespace or "",
                name=target.name,
                kubelet_ssl=self.kubelet_ssl,
                verb="portForward" if target.subresource == "portforward" else target.subresource,
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
            body = await self._body(request, target.kind)
            sub = target.subresource if target.subresource in ("status", "approval", "ephemeralcontainers") else None
            obj = await self.resources.update(
                target.kind,
                target.namespace,
                target.name,
                body,
                subresource=sub,
                dry_run=_dry_run(request),
                manager=_field_manager(request),
            )
            return self._object_response(request, target.kind, obj)
        if m == "PATCH":
            raw = await decoding.read_body(request)
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            force = request.query.get("force")
            if force is not None and not ctype.startswith("application/apply-patch"):
                raise ApiError(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified for non-apply patch',
                )
            created = ctype.startswith("application/apply-patch") and (
                self.resources.get_or_none(target.kind, target.namespace, target.name) is None
            )
            obj = await self.resources.patch(
                target.kind,
                target.namespace,
                target.name,
                raw,
                ctype,
                subresource=target.subresource,
                dry_run=_dry_run(request),
                check=self._patch_check(request, target.kind, raw, ctype.lower()),
                manager=_field_manager(request) if "fieldManager" in request.query or "apply" not in ctype else None,
                force=(force or "").lower() == "true",
            )
            return self._object_response(request, target.kind, obj, 201 if created else 200)
        if m == "DELETE":
            return await self._delete(request, target)
        raise method_not_allowed()

    async def _authentication_api(self, request: web.Request, path: str) -> web.Response | None:
        """TokenRequest, TokenReview and SelfSubjectReview (authn/reviews.py), or None for any other path."""
        if path == authn_reviews.SELF_SUBJECT_REVIEWS:
            await self._body(request)
            return _json(authn_reviews.self_subject_review(user_of(request)), 201)
        if path == authn_reviews.TOKEN_REVIEWS:
            return _json(authn_reviews.token_review(await self._body(request), validator=self.validator), 201)
        sa = authn_reviews.token_request_path(path)
        if sa is None:
            return None
        if self.issuer is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        body = await self._body(request)
        answer = authn_reviews.token_request(
            body, namespace=sa[0], name=sa[1], issuer=self.issuer, lookup=lookup_in(self.resources)
        )
        return _json(answer, 201)

    async def _scale(self, request: web.Request, target: Target) -> web.StreamResponse:
        obj = await self.resources.get(target.kind, target.namespace, target.name or "")
        if request.method == "GET":
            return _json(scale.to_scale(obj, target.kind))
        if request.method == "PUT":
            wanted = await self._body(request)
        elif request.method == "PATCH":
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            if ctype == "application/strategic-merge-patch+json":
                ctype = "application/merge-patch+json"  # Scale has no list fields: SMP is a merge patch here
            wanted = apply_patch(
                target.kind, scale.to_scale(obj, target.kind), await decoding.read_body(request), ctype
            )
        else:
            raise method_not_allowed()
        new = scale.apply_scale(target.kind, obj, wanted)
        updated = await self.resources.update(
            target.kind,
            target.namespace,
            target.name or "",
            new,
            dry_run=_dry_run(request),
            manager=_field_manager(request),
            tracked_subresource="scale",
        )
        return _json(scale.to_scale(updated, target.kind))

    @staticmethod
    def _openapi(path: str, accept: str) -> web.Response:
        if path == "/openapi/v2":
            if "protobuf" in accept:
                return web.Response(body=openapi.v2_protobuf(), headers={"Content-Type": openapi.V2_PROTOBUF})
            return web.Response(body=openapi.v2_document(), content_type=JSON)
        if path == "/openapi/v3":
            return _json(openapi.v3_root())
        doc = openapi.v3_document(path[len("/openapi/v3/") :])
        if doc is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.Response(body=doc, content_type=JSON, headers={"Cache-Control": "no-cache, private"})

    def _static(self, path: str) -> web.Response | None:
        if path == "/cacerts" and self.ca_pem:
            # K3s serves its CA bundle unauthenticated; agents pin it by the hash carried in a K10 token.
            return web.Response(body=self.ca_pem, content_type="text/plain")
        if path == "/version":
            return _json(discovery.VERSION)
        if path == "/api":
            return _json(discovery.api_versions(self.server_address))
        if path == "/apis":
            return _json(discovery.api_group_list())
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
    async def _body(self, request: web.Request, kind: Kind | None = None) -> Obj:
        """The decoded body; with `kind`, fieldValidation applies (unknown fields dropped, Strict refuses)."""
        raw = await decoding.read_body(request)
        mode = decoding.validation_mode(request)
        decoded = decoding.decode_object(raw, decoding.media_type(request), kind=kind, mode=mode)
        if decoded.warnings:
            request.setdefault(WARNINGS, []).extend(decoded.warnings)
        return decoded.obj

    def _patch_check(self, request: web.Request, kind: Kind, raw: bytes, ctype: str) -> Callable[[Obj, Obj], None]:
        """fieldValidation for a patch: duplicate keys in the patch body, unknown fields in the patched object."""
        mode = decoding.validation_mode(request)
        dups: list[str] = []
        if mode != decoding.IGNORE and ctype in (MERGE_PATCH, STRATEGIC_PATCH):
            dups = decoding.loads_json(raw, duplicates=True)[1]

        def check(patched: Obj, old: Obj) -> None:
            request[WARNINGS] = decoding.apply_field_validation(kind, patched, mode=mode, duplicates=dups, stored=old)

        return check

    def _object_response(self, request: web.Request, kind: Kind, obj: Obj, status: int = 200) -> web.Response:
        if _wants_table(request):
            return _json(self._table(kind, [obj], include=_include_object(request)), status)
        return _json(obj, status)

    def _table(
        self,
        kind: Kind,
        objs: list[Obj],
        *,
        resource_version: str = "",
        continue_token: str = "",
        include: str = "Metadata",
    ) -> Obj:
        now = dt.datetime.now(dt.UTC)
        return tables.table(
            kind, objs, now=now, resource_version=resource_version, continue_token=continue_token, include=include
        )

    @staticmethod
    def _selectors(request: web.Request, kind: Kind) -> tuple[Selector, FieldSelector]:
        try:
            labels = parse(request.query.get("labelSelector"))
        except SelectorError as exc:
            raise bad_request(f"unable to parse requirement: {exc}") from None
        fields = parse_fields(request.query.get("fieldSelector"))
        if kind.custom is not None:
            custom.check_field_selector(kind, fields)
            return labels, fields
        return labels, fields_check(fields, kind=kind.kind, namespaced=kind.namespaced)

    # -- verbs -----------------------------------------------------------------------------------------------
    async def _create(self, request: web.Request, target: Target) -> web.Response:
        body = await self._body(request, target.kind)
        obj = await self.resources.create(
            target.kind, target.namespace, body, dry_run=_dry_run(request), manager=_field_manager(request)
        )
        return self._object_response(request, target.kind, obj, 201)

    async def _list(self, request: web.Request, target: Target) -> web.StreamResponse:
        labels, fields = self._selectors(request, target.kind)
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
            return _json(
                self._table(
                    target.kind,
                    items,
                    resource_version=rv,
                    continue_token=scan.continue_token,
                    include=_include_object(request),
                )
            )

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
            raw = await decoding.read_body(request)
            if "protobuf" in request.headers.get("Content-Type", "") and raw:
                # kubectl drain's fallback and the typed clients send DeleteOptions as protobuf
                decoded = protobuf.decode(raw)
                opts = {k: v for k, v in decoded.items() if k not in ("apiVersion", "kind")}
            elif raw.strip():
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
        labels, fields = self._selectors(request, target.kind)
        opts = await self._delete_options(request)
        matching = await self.resources.list(target.kind, target.namespace, labels=labels, fields=fields)
        deleted: list[Obj] = []
        for obj in matching:
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
        labels, fields = self._selectors(request, target.kind)
        if target.name:  # /namespaces/x/pods/name?watch=1 is the deprecated single-object watch
            fields = FieldSelector((*fields.requirements, FieldRequirement(("metadata", "name"), target.name, False)))
        rv_param = request.query.get("resourceVersion", "")
        bookmarks = _bool_param(request, "allowWatchBookmarks")
        send_initial = _bool_param(request, "sendInitialEvents")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        as_table = _wants_table(request)
        include = _include_object(request)
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
                obj = self._table(
                    kind, [obj], resource_version=obj["metadata"].get("resourceVersion", ""), include=include
                )
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
        # Initial events go out a bounded batch at a time (decoded lazily), never as one list.
        initial_out = streaming.ChunkWriter(resp)
        try:
            for obj in initial:
                await initial_out.add(line(ADDED, obj))
            if send_initial and bookmarks:
                await initial_out.add(line("BOOKMARK", bookmark(start, initial_end=True)))
            await initial_out.flush()
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
                out = [b for ev in events for b in await self._event_lines(kind, ev, line, matches)]
                if out:
                    await resp.write(b"".join(out))
                    last_sent = loop.time()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            stop.cancel()
            watch.close()
            initial_out.done()  # the connection's buffers are freed only now: a large watch ends with a trim
        return resp

    async def _event_lines(
        self, kind: Kind, ev: Any, line: Callable[[str, Obj], bytes], matches: Callable[[Obj], bool]
    ) -> list[bytes]:
        obj = decode(value=ev.value, revision=ev.revision)
        if kind.custom is not None:
            obj = await self.resources.present(kind, obj)
        if ev.type == DELETED:
            return [line(DELETED, convert.from_storage(kind, obj))] if matches(obj) else []
        now = matches(obj)
        if ev.type == ADDED:
            return [line(ADDED, convert.from_storage(kind, obj))] if now else []
        prev = decode(value=ev.prev_value, revision=ev.revision) if ev.prev_value else None
        if prev is not None and kind.custom is not None:
            prev = await self.resources.present(kind, prev)
        before = matches(prev) if prev is not None else False
        if now and before:
            return [line(MODIFIED, convert.from_storage(kind, obj))]
        if now:
            return [line(ADDED, convert.from_storage(kind, obj))]
        if before:
            # The object left the selector: watchers see it deleted (kube's cacher sends the previous state).
            assert prev is not None
            return [line(DELETED, convert.from_storage(kind, prev))]
        return []
