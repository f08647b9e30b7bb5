"""The traefik add-on as K3s manages it: the Traefik CRDs (K3s's traefik-crd chart), IngressClass, LoadBalancer
Service and Deployment created on start, removed with `disable: [traefik]`, restored when the key is removed again
(an in-process server, no nodes)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from kwire.client import ApiClient, NotFound, load_kubeconfig
from kwire.client.client import CRDS, DEPLOYMENTS, INGRESSCLASSES, MIDDLEWARES, SERVICES
from kwire.server import start
from tests.integration.apiserver import free_port
from tests.integration.test_addons import _cfg, all_gone, all_present, until

OBJECTS = (
    (DEPLOYMENTS, "traefik"),
    (SERVICES, "traefik"),
    (INGRESSCLASSES, "traefik"),
    (CRDS, "ingressroutes.traefik.io"),
    (CRDS, "middlewares.traefik.io"),
    (CRDS, "traefikservices.traefik.io"),
)
TRAEFIK_CRDS = {
    f"{p}.traefik.io"
    for p in (
        "ingressroutes ingressroutetcps ingressrouteudps middlewares middlewaretcps serverstransports"
        " serverstransporttcps tlsoptions tlsstores traefikservices"
    ).split()
}


_present = partial(all_present, objects=OBJECTS)
_gone = partial(all_gone, objects=OBJECTS)


async def _served(c: ApiClient, mw: dict[str, object]) -> bool:
    try:
        await c.get(MIDDLEWARES, "strip", "default")
    except NotFound:
        try:
            await c.create(MIDDLEWARES, mw, "default")
        except NotFound:
            return False  # the kind is not served yet
    return True


async def test_disable_traefik_removes_the_addon_and_enabling_restores_it(tmp_path: Path) -> None:
    port = free_port()
    for disable, check in (((), _present), (("traefik",), _gone), ((), _present)):
        srv = await start(_cfg(tmp_path, port, disable=disable))
        try:
            async with ApiClient(load_kubeconfig(str(tmp_path / "kubeconfig"))) as c:
                await until(partial(check, c), timeout=20, what=f"traefik with disable={disable}")
                if check is _present:
                    svc = await c.get(SERVICES, "traefik", "kube-system")
                    assert svc["spec"]["type"] == "LoadBalancer"
                    assert [p["port"] for p in svc["spec"]["ports"]] == [80, 443]
                    dep = await c.get(DEPLOYMENTS, "traefik", "kube-system")
                    container = dep["spec"]["template"]["spec"]["containers"][0]
                    assert container["image"] == "kwire/ingress:latest"
                    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
                    crds = {c["metadata"]["name"] for c in (await c.list(CRDS)).get("items") or []}
                    assert TRAEFIK_CRDS <= crds, crds
                    # Served with their structural schemas: a Middleware is created and its schema prunes.
                    mw = {
                        "metadata": {"name": "strip"},
                        "spec": {"stripPrefix": {"prefixes": ["/a"]}, "unknownField": 1},
                    }
                    await until(partial(_served, c, mw), timeout=20, what="Middleware kind served")
                    got = await c.get(MIDDLEWARES, "strip", "default")
                    assert got["spec"] == {"stripPrefix": {"prefixes": ["/a"]}}
        finally:
            await srv.close()
