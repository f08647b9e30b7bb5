"""Ingress v1 objects -> the routing table the proxy serves, as pure functions (Traefik's Kubernetes Ingress provider).

Mirrors what Traefik's `kubernetesIngress` provider derives from networking.k8s.io/v1 Ingresses, as K3s runs it:
- Class: an Ingress is ours when `spec.ingressClassName` names an IngressClass whose controller is
  `traefik.io/ingress-controller`, when the `kubernetes.io/ingress.class` annotation says `traefik`, or when it has
  neither and our class is the default (`ingressclass.kubernetes.io/is-default-class: "true"`). Others are ignored.
- Hosts: exact names, `*.foo.com` covering exactly one label, and rules without host (every host).
- Paths: Exact, Prefix (element-wise: `/foo` matches `/foo`, `/foo/`, `/foo/bar`, never `/foobar`; a trailing
  slash is ignored) and ImplementationSpecific (as Prefix). Each path is one Traefik router whose rule
  (`rule_text`) and priority (`priority`: the rule's length unless `router.priority`) order it among every other
  router, IngressRoutes' included (router.py): the longest path wins, Exact before Prefix on the same path, and a
  host's own paths before host-less rules of the same path; the `defaultBackend` comes last (hosts[""] holds the
  host-less routes and the default backend).
- Several Ingresses merge on one host; for the same host, path and type the oldest Ingress wins (a conflict is
  reported, not served twice).
- Traefik's Ingress annotations: `traefik.ingress.kubernetes.io/router.entrypoints` (web, websecure),
  `router.tls` ("true": HTTPS only), `router.priority` (higher first), `router.middlewares`
  (`<ns>-<name>@kubernetescrd`, resolved to Middleware ids by the caller (crd.annotation_ids); a middleware that is
  missing or cannot be served leaves the Ingress's routes unserved, as Traefik does, and the reason is reported).
  An Ingress with `spec.tls` is served over HTTPS only, as Traefik makes its routers TLS routers.
- TLS: `spec.tls[].hosts` -> secret, chosen by SNI; other names get the default certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

CONTROLLER_NAME = "traefik.io/ingress-controller"
CLASS_NAME = "traefik"
CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
ANN = "traefik.ingress.kubernetes.io/"
WEB = "web"
WEBSECURE = "websecure"
ENTRYPOINTS = (WEB, WEBSECURE)


@dataclass(frozen=True, order=True)
class Backend:
    """A Service port an Ingress path points at: `port` is the number or the port name, as written."""

    namespace: str
    service: str
    port: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.service}:{self.port}"


@dataclass(frozen=True)
class Route:
    """One path of one host: `kind` Exact or Prefix, `path` normalized ("/" or no trailing slash)."""

    path: str
    kind: str
    backend: Backend
    source: str  # "<ns>/<ingress>"
    entrypoints: tuple[str, ...] = ENTRYPOINTS
    priority: int = 0
    middlewares: tuple[str, ...] = ()
    host_less: bool = False


@dataclass
class Table:
    """hosts ("" = any host) -> routes; TLS secrets per host name; problems to report per Ingress."""

    hosts: dict[str, list[Route]] = field(default_factory=dict)
    tls: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # host -> (namespace, secret, source)
    problems: dict[str, list[str]] = field(default_factory=dict)  # "<ns>/<ingress>" -> messages
    served: list[str] = field(default_factory=list)  # "<ns>/<ingress>" of the Ingresses that are ours

    def backends(self) -> set[Backend]:
        return {r.backend for routes in self.hosts.values() for r in routes}


def _meta(o: Obj) -> Obj:
    m: Obj = o.get("metadata") or {}
    return m


def is_ours(ing: Obj, classes: list[Obj]) -> bool:
    """Whether the Traefik role serves this Ingress (see the module docstring)."""
    ours = {str(_meta(c).get("name")) for c in classes if (c.get("spec") or {}).get("controller") == CONTROLLER_NAME}
    name = (ing.get("spec") or {}).get("ingressClassName")
    if name:
        return str(name) in ours
    ann = (_meta(ing).get("annotations") or {}).get(CLASS_ANNOTATION)
    if ann is not None:
        return str(ann) == CLASS_NAME or str(ann) in ours
    return any(
        (_meta(c).get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"
        and (c.get("spec") or {}).get("controller") == CONTROLLER_NAME
        for c in classes
    )


def normalize_path(path: str) -> str:
    if not path:
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    return path.rstrip("/") or "/"


def _backend(namespace: str, b: Obj) -> Backend | None:
    svc = b.get("service") or {}
    if not svc.get("name"):
        return None
    port = svc.get("port") or {}
    p = port.get("number") if port.get("number") is not None else port.get("name")
    return Backend(namespace, str(svc["name"]), str(p if p is not None else ""))


def _split(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _annotations(ing: Obj, problems: list[str]) -> tuple[tuple[str, ...], int, tuple[str, ...]]:
    ann = _meta(ing).get("annotations") or {}
    eps = _split(str(ann.get(ANN + "router.entrypoints", ""))) or ENTRYPOINTS
    unknown = [e for e in eps if e not in ENTRYPOINTS]
    if unknown:
        problems.append(f"unknown entrypoints {unknown} (this cluster has web and websecure)")
        eps = tuple(e for e in eps if e in ENTRYPOINTS)
    tls_only = str(ann.get(ANN + "router.tls", "")).lower() == "true" or bool((ing.get("spec") or {}).get("tls"))
    if tls_only:
        eps = tuple(e for e in eps if e == WEBSECURE)
    try:
        prio = int(str(ann.get(ANN + "router.priority", "0")) or "0")
    except ValueError:
        problems.append(f"router.priority {ann.get(ANN + 'router.priority')!r} is not a number")
        prio = 0
    mws = _split(str(ann.get(ANN + "router.middlewares", "")))
    return eps, prio, mws


def _age(ing: Obj) -> tuple[str, str, str]:
    m = _meta(ing)
    return (str(m.get("creationTimestamp") or ""), str(m.get("namespace") or ""), str(m.get("name") or ""))


MiddlewareResolver = Callable[[tuple[str, ...]], "list[str] | str"]


def _no_middlewares(refs: tuple[str, ...]) -> list[str] | str:
    return f"middleware {refs[0]} not found"


def build(
    ingresses: list[Obj],
    classes: list[Obj],
    *,
    middlewares: MiddlewareResolver = _no_middlewares,
) -> Table:
    """The routing table for every Ingress that is ours. `middlewares` turns `router.middlewares` references into
    middleware ids (or the problem)."""
    t = Table()
    seen: dict[tuple[str, str, str, tuple[str, ...]], str] = {}
    host_less: list[Route] = []
    defaults: list[Route] = []
    for ing in sorted(ingresses, key=_age):
        if not is_ours(ing, classes):
            continue
        ns = str(_meta(ing).get("namespace") or "default")
        src = f"{ns}/{_meta(ing).get('name')}"
        t.served.append(src)
        problems: list[str] = []
        eps, prio, refs = _annotations(ing, problems)
        mws: tuple[str, ...] = ()
        if refs:
            resolved = middlewares(refs)
            if isinstance(resolved, str):
                # Traefik leaves a router whose middleware is missing or broken unserved (404): serving the routes
                # without, say, a basicAuth would expose them.
                problems.append(f"router.middlewares: {resolved}; the routes of this Ingress are not served")
                t.problems[src] = problems
                continue
            mws = tuple(resolved)
        sp = ing.get("spec") or {}
        for tls in sp.get("tls") or []:
            if tls.get("secretName"):
                for h in tls.get("hosts") or []:
                    t.tls.setdefault(str(h).lower(), (ns, str(tls["secretName"]), src))
        if sp.get("defaultBackend"):
            b = _backend(ns, sp["defaultBackend"])
            if b is None:
                problems.append("spec.defaultBackend: only service backends are supported")
            else:
                defaults.append(Route("/", "Prefix", b, src, eps, -1, mws, host_less=True))
        for ri, rule in enumerate(sp.get("rules") or []):
            host = str(rule.get("host") or "")
            for pi, p in enumerate((rule.get("http") or {}).get("paths") or []):
                b = _backend(ns, p.get("backend") or {})
                if b is None:
                    problems.append(f"spec.rules[{ri}].http.paths[{pi}].backend: only service backends are supported")
                    continue
                kind = "Exact" if p.get("pathType") == "Exact" else "Prefix"
                path = normalize_path(str(p.get("path") or "/"))
                r = Route(path, kind, b, src, eps, prio, mws, host_less=not host)
                k = (host, path, kind, eps)
                if k in seen and seen[k] != src:
                    problems.append(f"{host or '*'}{path} ({kind}) is already served by Ingress {seen[k]}")
                    continue
                seen[k] = src
                if host:
                    t.hosts.setdefault(host, []).append(r)
                else:
                    host_less.append(r)
        if problems:
            t.problems[src] = problems
    # Host-less rules and the (oldest) default backend: routes of every host, ordered with the rest by priority.
    t.hosts.setdefault("", []).extend(host_less + defaults[:1])
    return t


DEFAULT_BACKEND_PRIORITY = -(2**31)  # Traefik gives the defaultBackend's router math.MinInt32


def rule_text(host: str, r: Route) -> str:
    """The Traefik rule of an Ingress path (Traefik's kubernetes Ingress provider writes the same), whose length is
    the router's default priority: `Host(...)`, or `HostRegexp(...)` for `*.` hosts, `&&` the path matcher."""
    path = f"Path(`{r.path}`)" if r.kind == "Exact" else f"PathPrefix(`{r.path}`)"
    if not host or r.host_less:
        return path
    if host.startswith("*."):
        return f"HostRegexp(`^[a-zA-Z0-9-]+{host[1:].replace('.', chr(92) + '.')}$`) && {path}"
    return f"Host(`{host}`) && {path}"


def priority(host: str, r: Route) -> int:
    """`router.priority` when set, else the rule's length (Traefik's default); the defaultBackend lowest.

    One departure: an Exact path counts as long as the same rule with `PathPrefix`, plus one, so that Kubernetes'
    "Exact before Prefix on the same path" holds (by length alone Traefik would let `PathPrefix(`/p`)` outrank
    `Path(`/p`)`); a longer Prefix path still outranks a shorter one, as Ingress v1's longest match wants. As in
    Traefik, a wildcard host's HostRegexp rule is usually longer than an exact host's, so it wins where both match."""
    if r.priority < 0:
        return DEFAULT_BACKEND_PRIORITY
    if r.priority > 0:
        return r.priority
    return len(rule_text(host, r)) + (len("Prefix") + 1 if r.kind == "Exact" else 0)


def host_matches(pattern: str, host: str) -> bool:
    """Ingress host matching: exact (case-insensitive), or `*.foo.com` = exactly one label before foo.com."""
    host = host.lower().split(":", 1)[0]
    pattern = pattern.lower()
    if pattern.startswith("*."):
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return host == pattern


def path_matches(route: Route, path: str) -> bool:
    if route.kind == "Exact":
        return path == route.path
    if route.path == "/":
        return True
    return path == route.path or path.startswith(route.path + "/")
