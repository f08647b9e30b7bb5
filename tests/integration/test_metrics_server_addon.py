"""The metrics-server add-on as K3s manages it (an in-process server, no nodes): Deployment, Service and the
`v1beta1.metrics.k8s.io` APIService created on start, removed with `disable: [metrics-server]`, restored when the
key is removed again; an APIService whose Service has no endpoints is reported unavailable (kube-aggregator's
condition), left out of discovery, and requests to its group are kube's 503."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from kwire.client import ApiClient, load_kubeconfig
from kwire.client.client import APISERVICES, CLUSTERROLES, DEPLOYMENTS, SERVICES, ApiStatusError
from kwire.server import start
from tests.integration.apiserver import free_port
from tests.integration.test_addons import _cfg, all_gone, all_present, until

OBJECTS = (
    (DEPLOYMENTS, "metrics-server"),
    (SERVICES, "metrics-server"),
    (APISERVICES, "v1beta1.metrics.k8s.io"),
    (CLUSTERROLES, "system:aggregated-metrics-reader"),
)


_present = partial(all_present, objects=OBJECTS)
_gone = partial(all_gone, objects=OBJECTS)


async def _condition(c: ApiClient) -> dict[str, str] | None:
    apiservice = await c.get(APISERVICES, "v1beta1.metrics.k8s.io")
    conds = (apiservice.get("status") or {}).get("conditions") or []
    return next((x for x in conds if x["type"] == "Available"), None)


async def test_disable_metrics_server_removes_the_addon_and_enabling_restores_it(tmp_path: Path) -> None:
    port = free_port()
    for disable, check in (((), _present), (("metrics-server",), _gone), ((), _present)):
        srv = await start(_cfg(tmp_path, port, disable=disable))
        try:
            async with ApiClient(load_kubeconfig(str(tmp_path / "kubeconfig"))) as c:
                await until(partial(check, c), timeout=20, what=f"metrics-server with disable={disable}")
                if check is not _present:
                    continue
                dep = await c.get(DEPLOYMENTS, "metrics-server", "kube-system")
                container = dep["spec"]["template"]["spec"]["containers"][0]
                assert container["image"].startswith("rancher/mirrored-metrics-server:")
                assert "--secure-port=10250" in container["args"]
                svc = await c.get(SERVICES, "metrics-server", "kube-system")
                assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
                    ("https", 443, "https")
                ]
                apiservice = await c.get(APISERVICES, "v1beta1.metrics.k8s.io")
                assert apiservice["spec"]["service"] == {
                    "name": "metrics-server",
                    "namespace": "kube-system",
                    "port": 443,
                }
                # No node runs the pod: kube-aggregator's condition says why, and nothing pretends to serve it.
                cond = await until(partial(_condition, c), timeout=20, what="Available condition")
                assert cond["status"] == "False"
                assert cond["reason"] in ("MissingEndpoints", "ServiceNotFound")
                groups = [g["name"] for g in (await c.request("GET", "/apis"))["groups"]]
                assert "metrics.k8s.io" not in groups
                try:
                    await c.request("GET", "/apis/metrics.k8s.io/v1beta1/nodes")
                    raise AssertionError("an unavailable APIService answered")
                except ApiStatusError as exc:
                    assert exc.code == 503
                    assert "the server is currently unable to handle the request" in str(exc)
        finally:
            await srv.close()
