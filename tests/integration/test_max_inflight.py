"""kube-apiserver's max-in-flight limit on a real `kwire server` started with K3s's
`--kube-apiserver-arg max-mutating-requests-inflight=1`: while one create is held by a slow admission webhook, a
second create from a ServiceAccount gets kube's 429 with Retry-After, reads still pass, a cluster admin
(system:masters) is still served, and the refusal is counted in apiserver_request_terminations_total."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.apiserver import ServerProcess, running_server
from tests.integration.labkit import wait_for
from tests.integration.test_admission_webhooks import configuration, url
from tests.integration.test_authn import _kubectl_as, _token_kubeconfig
from tests.integration.webhookserver import WebhookServer, running

pytestmark = pytest.mark.kubectl

NS = "flood"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--kube-apiserver-arg", "max-mutating-requests-inflight=1", "--kube-apiserver-arg", "audit-log-path=-"]
    with running_server(tmp_path_factory.mktemp("server"), extra_args=args) as srv:
        yield srv


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookServer]:
    with running(tmp_path_factory.mktemp("hook")) as srv:
        yield srv


def _call(server: ServerProcess, method: str, path: str, *, token: str, body: Any = None) -> tuple[int, Any, str]:
    """(status, body, Retry-After) of one request as the bearer of `token`."""
    ctx = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "server-ca.crt"))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
            raw, code, retry = r.read(), r.status, r.headers.get("Retry-After", "")
    except urllib.error.HTTPError as err:
        raw, code, retry = err.read(), err.code, err.headers.get("Retry-After", "")
    try:
        return code, json.loads(raw), retry
    except ValueError:
        return code, raw.decode(), retry


def _configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}


def test_past_the_mutating_limit_a_service_account_gets_429(
    server: ServerProcess, hook: WebhookServer, tmp_path: Path
) -> None:
    k = server.kubectl
    k("create", "namespace", NS)
    k("label", "namespace", NS, f"hooktest={NS}")
    k("create", "serviceaccount", "robot", "-n", NS)
    k("create", "role", "cm", "--verb=create,get,list", "--resource=configmaps", "-n", NS)
    k("create", "rolebinding", "cm", "--role=cm", f"--serviceaccount={NS}:robot", "-n", NS)
    k("apply", "-f", "-", input=configuration("ValidatingWebhookConfiguration", "slow.example.com", NS,
                                                url(hook, "/slow"), timeoutSeconds=10))  # fmt: skip
    token = k("create", "token", "robot", "-n", NS, "--duration", "10m").stdout.strip()
    path = f"/api/v1/namespaces/{NS}/configmaps"

    kc = _token_kubeconfig(server, token, tmp_path / "robot.kubeconfig")
    held: dict[str, Any] = {}
    retried: dict[str, Any] = {}
    slow = threading.Thread(
        target=lambda: held.update(r=_call(server, "POST", path, token=token, body=_configmap("held")))
    )
    kubectl = threading.Thread(
        target=lambda: retried.update(r=_kubectl_as(kc, "create", "configmap", "retried", "-n", NS))
    )
    slow.start()
    try:
        # the webhook has the first create: it sleeps 3 s while the create holds the one mutating slot
        assert wait_for(lambda: any(r.get("name") == "held" for r in hook.reviews), timeout=10)
        code, body, retry = _call(server, "POST", path, token=token, body=_configmap("second"))
        assert (code, retry) == (429, "1")
        assert body == "Too many requests, please try again later.\n"
        kubectl.start()  # kubectl (client-go) waits Retry-After and tries again by itself
        code, listed, _ = _call(server, "GET", path, token=token)  # reads have their own limit
        assert code == 200 and listed["kind"] == "ConfigMapList"
        k("create", "configmap", "by-admin", "-n", "default")  # system:masters: always answered
        assert slow.is_alive(), "the held create ended before the admin's create was tried"
    finally:
        slow.join(timeout=20)
        if kubectl.ident is not None:
            kubectl.join(timeout=40)
    assert held["r"][0] == 201
    assert retried["r"].returncode == 0, retried["r"].stderr
    assert k("get", "configmap", "retried", "-n", NS, "-o", "name").stdout.strip() == "configmap/retried"
    assert k("get", "configmap", "second", "-n", NS, check=False).returncode != 0  # refused, never stored
    metrics = k("get", "--raw", "/metrics").stdout
    refused = [
        line
        for line in metrics.splitlines()
        if line.startswith("apiserver_request_terminations_total{") and 'resource="configmaps"' in line
    ]
    assert len(refused) == 1 and 'code="429"' in refused[0] and 'verb="POST"' in refused[0]
    assert float(refused[0].rsplit(" ", 1)[1]) >= 2  # the raw create and kubectl's first try
