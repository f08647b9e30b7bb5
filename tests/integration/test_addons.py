"""Add-ons as K3s deploys them: the coredns Deployment, kube-dns Service at cluster-dns and the coredns ConfigMap
with NodeHosts following the nodes; `disable: [coredns]` removes them and leaves the user's coredns-custom."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from kwire.client import ApiClient, NotFound, load_kubeconfig
from kwire.client.client import CONFIGMAPS, DEPLOYMENTS, NODES, SERVICES
from kwire.config import ServerConfig
from kwire.server import start
from tests.integration.apiserver import free_port, server_config
from tests.polling import until


async def all_present(c: ApiClient, *, objects: tuple[tuple[Any, str], ...]) -> bool:
    """Every (resource, name) of an add-on is in kube-system (a missing one raises NotFound for `until`)."""
    for res, name in objects:
        await c.get(res, name, "kube-system")
    return True


async def all_gone(c: ApiClient, *, objects: tuple[tuple[Any, str], ...]) -> bool:
    """None of an add-on's (resource, name) is left in kube-system."""
    for res, name in objects:
        try:
            await c.get(res, name, "kube-system")
            return False
        except NotFound:
            pass
    return True


def _cfg(tmp: Path, port: int, **kw: Any) -> ServerConfig:
    return server_config(tmp, token="addons-test", port=port, **kw)


async def test_coredns_addon_follows_nodes_and_disable_removes_it(tmp_path: Path) -> None:
    port = free_port()
    srv = await start(_cfg(tmp_path, port, cluster_domain="edge.local"))
    try:
        async with ApiClient(load_kubeconfig(str(tmp_path / "kubeconfig"))) as c:
            dep = await until(lambda: c.get(DEPLOYMENTS, "coredns", "kube-system"), what="coredns Deployment")
            container = dep["spec"]["template"]["spec"]["containers"][0]
            assert container["image"].startswith("kwire/coredns")
            assert "edge.local" in container["args"]
            assert dep["spec"]["template"]["metadata"]["labels"] == {"k8s-app": "kube-dns"}
            svc = await c.get(SERVICES, "kube-dns", "kube-system")
            assert svc["spec"]["clusterIP"] == "10.43.0.10"
            assert sorted((p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]) == [
                ("dns", 53, "UDP"),
                ("dns-tcp", 53, "TCP"),
                ("metrics", 9153, "TCP"),
            ]
            await c.create(
                NODES,
                {
                    "metadata": {"name": "edge1"},
                    "status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.31"}]},
                },
            )
            await c.patch(
                NODES,
                "edge1",
                {"status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.31"}]}},
                subresource="status",
            )

            async def hosts() -> bool:
                cm = await c.get(CONFIGMAPS, "coredns", "kube-system")
                return "192.168.77.31 edge1" in cm["data"]["NodeHosts"] and "edge.local" in cm["data"]["Corefile"]

            await until(hosts, what="NodeHosts with the new node")
            await c.create(
                CONFIGMAPS, {"metadata": {"name": "coredns-custom"}, "data": {"hosts": "1.2.3.4 x"}}, "kube-system"
            )
    finally:
        await srv.close()
    # The same cluster restarted with `disable: [coredns]`.
    srv = await start(_cfg(tmp_path, port, cluster_domain="edge.local", disable=("coredns",)))
    try:
        async with ApiClient(load_kubeconfig(str(tmp_path / "kubeconfig"))) as c:
            coredns = ((DEPLOYMENTS, "coredns"), (SERVICES, "kube-dns"), (CONFIGMAPS, "coredns"))
            await until(partial(all_gone, c, objects=coredns), what="coredns add-on removed")
            assert (await c.get(CONFIGMAPS, "coredns-custom", "kube-system"))["data"] == {"hosts": "1.2.3.4 x"}
    finally:
        await srv.close()
