"""A service-referenced admission webhook served by a pod in a real lab: the API server (in node1's namespace)
resolves `clientConfig.service` to the pod's endpoint, dials it over the cluster network, verifies the certificate
as `hook.default.svc` against the caBundle, and kubectl shows the pod's denial."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.labkit import Lab, wait_for
from tests.integration.webhookserver import WebhookServer

pytestmark = pytest.mark.lab

# Run by the pod (stdlib only): deny every request, naming the address the call came from.
HOOK = textwrap.dedent(
    """
    import http.server, json, ssl, sys

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["request"]
            name = req["object"]["metadata"]["name"]
            answer = {"uid": req["uid"], "allowed": False,
                      "status": {"code": 403, "message": f"{name} refused by the in-cluster webhook"}}
            data = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                               "response": answer}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    httpd = http.server.HTTPServer(("0.0.0.0", 8443), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    httpd.serve_forever()
    """
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("kwt-hook", 1, "vxlan") as lab_:
        yield lab_


def test_service_referenced_webhook_in_the_cluster(lab: Lab, tmp_path: Path) -> None:
    certs = WebhookServer()
    certs.write_certificates(tmp_path)  # hook.crt (hook.default.svc) and hook.key, signed by certs.ca_bundle
    (tmp_path / "hook.py").write_text(HOOK)
    tmp_path.chmod(0o755)
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "hook", "namespace": "default", "labels": {"app": "hook"}},
            "spec": {
                "containers": [
                    {
                        "name": "hook",
                        "image": "kwire/host",
                        # the files reach the pod as a hostPath volume: a container's /tmp is its own
                        "command": ["python3", "/hook/hook.py", "/hook/hook.crt", "/hook/hook.key"],
                        "ports": [{"containerPort": 8443}],
                        "volumeMounts": [{"name": "hook", "mountPath": "/hook", "readOnly": True}],
                    }
                ],
                "volumes": [{"name": "hook", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "hook", "namespace": "default"},
            "spec": {"selector": {"app": "hook"}, "ports": [{"port": 443, "targetPort": 8443}]},
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "guarded", "labels": {"guard": "on"}}},
    ]
    lab.apply(yaml.safe_dump_all(manifests))
    lab.wait_pods_ready("app=hook", 1, timeout=60)
    wait_for(lambda: lab.get("endpoints", "hook").get("subsets"), timeout=30, what="endpoints of the hook service")
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "incluster.example.com"},
        "webhooks": [
            {
                "name": "incluster.example.com",
                "clientConfig": {
                    "service": {"namespace": "default", "name": "hook", "path": "/validate"},
                    "caBundle": certs.ca_bundle,
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["configmaps"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"guard": "on"}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }
        ],
    }
    lab.apply(yaml.safe_dump(config))
    res = lab.kubectl("-n", "guarded", "create", "configmap", "c1", check=False)
    assert res.returncode != 0
    assert 'admission webhook "incluster.example.com" denied the request: c1 refused by the in-cluster webhook' in (
        res.stderr
    )
    lab.kubectl("-n", "default", "create", "configmap", "c2")  # not selected: never sent
    lab.kubectl("delete", "validatingwebhookconfiguration", "incluster.example.com")
