"""Server-side apply as users drive it: real kubectl 1.32 (`apply --server-side`, `--force-conflicts`,
`--show-managed-fields`, client-side apply then server-side) and the official Python client."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config, dynamic
from kubernetes.client.rest import ApiException

from tests.integration.apiserver import ServerProcess

pytestmark = pytest.mark.kubectl

DEPLOY = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {labels}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: nginx
        image: nginx:1
        ports: [{{containerPort: 80}}]
"""


def deploy(name: str, *, replicas: int = 2, labels: str = "{app: web}") -> str:
    return DEPLOY.format(name=name, replicas=replicas, labels=labels)


def get(server: ServerProcess, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(server.kubectl("get", *args, "-o", "json", "--show-managed-fields").stdout)  # type: ignore[no-any-return]


def test_server_side_apply_creates_conflicts_forces_and_prunes(server: ServerProcess) -> None:
    out = server.kubectl("apply", "--server-side", "-f", "-", input=deploy("web")).stdout
    assert out.strip() == "deployment.apps/web serverside-applied"
    obj = get(server, "deploy", "web")
    mine = [e for e in obj["metadata"]["managedFields"] if e["manager"] == "kubectl"]
    assert mine and mine[0]["operation"] == "Apply" and mine[0]["apiVersion"] == "apps/v1"
    assert mine[0]["fieldsV1"]["f:spec"]["f:replicas"] == {}
    containers = mine[0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert set(containers['k:{"name":"nginx"}']) == {".", "f:image", "f:name", "f:ports"}
    # The controller's status writes are their own entry, on the status subresource.
    yaml_out = server.kubectl("get", "deploy", "web", "-o", "yaml", "--show-managed-fields").stdout
    assert "managedFields:" in yaml_out and "fieldsType: FieldsV1" in yaml_out
    assert "managedFields" not in server.kubectl("get", "deploy", "web", "-o", "yaml").stdout

    # Another manager (kubectl edit's Update) changes replicas: applying a different value is a conflict.
    server.kubectl(
        "patch", "deploy", "web", "--field-manager=kubectl-client-side-apply", "-p", '{"spec":{"replicas":5}}'
    )
    res = server.kubectl("apply", "--server-side", "-f", "-", input=deploy("web", replicas=3), check=False)
    assert res.returncode != 0
    assert (
        'Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas'
        in res.stderr
    )
    assert get(server, "deploy", "web")["spec"]["replicas"] == 5
    res = server.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=deploy("web", replicas=3))
    obj = get(server, "deploy", "web")
    assert obj["spec"]["replicas"] == 3
    assert "kubectl-client-side-apply" not in {e["manager"] for e in obj["metadata"]["managedFields"]}

    # A field no longer applied is removed.
    server.kubectl("apply", "--server-side", "-f", "-", input=deploy("web", replicas=3, labels="{app: web, tier: x}"))
    assert get(server, "deploy", "web")["metadata"]["labels"] == {"app": "web", "tier": "x"}
    server.kubectl("apply", "--server-side", "-f", "-", input=deploy("web", replicas=3, labels="{app: web}"))
    assert get(server, "deploy", "web")["metadata"]["labels"] == {"app": "web"}


def test_conflict_status_from_the_api(server: ServerProcess) -> None:
    server.kubectl("apply", "--server-side", "--field-manager=one", "-f", "-", input=deploy("api", replicas=1))
    res = server.kubectl(
        "apply", "--server-side", "--field-manager=two", "-f", "-", input=deploy("api", replicas=4), check=False
    )
    assert 'Apply failed with 1 conflict: conflict with "one": .spec.replicas' in res.stderr
    raw = server.kubectl(
        "get", "--raw", "/apis/apps/v1/namespaces/default/deployments/api", check=True
    ).stdout  # the apply left it as it was
    assert json.loads(raw)["spec"]["replicas"] == 1


def test_client_side_apply_then_server_side(server: ServerProcess) -> None:
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: upgrade}\ndata: {a: '1', b: '2'}\n"
    assert "created" in server.kubectl("apply", "-f", "-", input=cm).stdout
    managers = {e["manager"] for e in get(server, "cm", "upgrade")["metadata"]["managedFields"]}
    assert managers == {"kubectl-client-side-apply"}
    out = server.kubectl("apply", "--server-side", "-f", "-", input=cm.replace("'2'", "'3'")).stdout
    assert "serverside-applied" in out
    obj = get(server, "cm", "upgrade")
    assert obj["data"] == {"a": "1", "b": "3"}
    last = json.loads(obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert last["data"] == {"a": "1", "b": "3"}
    # ... and client-side apply still works afterwards.
    assert "configured" in server.kubectl("apply", "-f", "-", input=cm.replace("'2'", "'4'")).stdout
    assert get(server, "cm", "upgrade")["data"]["b"] == "4"


def patch_raw(server: ServerProcess, path: str, body: bytes, content_type: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    ctx = server.admin_ssl_context()
    req = urllib.request.Request(
        server.url + path,
        data=body,
        method="PATCH",
        headers={"Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_apply_errors(server: ServerProcess) -> None:
    body = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {k: v}\n"
    path = "/api/v1/namespaces/default/configmaps/x"
    code, status = patch_raw(server, path, body, "application/apply-patch+yaml")
    assert code == 422
    assert status["message"] == (
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
    )
    code, status = patch_raw(server, path + "?fieldManager=m", body, "application/apply-patch+cbor")
    assert code == 415 and "application/apply-patch+yaml" in status["message"]
    code, status = patch_raw(
        server, path + "?fieldManager=m&force=true", b'{"data":{}}', "application/merge-patch+json"
    )
    assert code == 422 and "force: Forbidden: may not be specified for non-apply patch" in status["message"]
    # YAML (not only JSON) bodies; the object is created, and applying it again changes nothing.
    code, obj = patch_raw(server, path + "?fieldManager=m", body, "application/apply-patch+yaml")
    assert code == 201 and obj["data"] == {"k": "v"}
    code, again = patch_raw(server, path + "?fieldManager=m", body, "application/apply-patch+yaml")
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    # fieldValidation applies to an apply that creates (kubectl 1.32 sends Strict), as to one that updates.
    typo = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndatta: {k: v}\n"
    typo_path = "/api/v1/namespaces/default/configmaps/typo?fieldManager=m"
    code, status = patch_raw(server, typo_path + "&fieldValidation=Strict", typo, "application/apply-patch+yaml")
    assert code == 400 and 'strict decoding error: unknown field "datta"' in status["message"], status
    res = server.kubectl("get", "configmap", "typo", check=False)
    assert res.returncode != 0  # nothing was created
    res = server.kubectl("apply", "--server-side", "-f", "-", input=typo.decode(), check=False)
    assert res.returncode != 0 and 'unknown field "datta"' in res.stderr
    code, created = patch_raw(server, typo_path + "&fieldValidation=Ignore", typo, "application/apply-patch+yaml")
    assert code == 201 and "datta" not in created


def test_python_client_server_side_apply(server: ServerProcess) -> None:
    api_client = config.new_client_from_config(config_file=str(server.kubeconfig))
    apps = client.AppsV1Api(api_client)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "py", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "py"}},
            "template": {
                "metadata": {"labels": {"app": "py"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }
    created = apps.patch_namespaced_deployment(
        "py", "default", body, field_manager="py-ssa", _content_type="application/apply-patch+yaml"
    )
    assert created.spec.replicas == 1
    assert [(m.manager, m.operation) for m in created.metadata.managed_fields] == [("py-ssa", "Apply")]
    dyn = dynamic.DynamicClient(api_client)
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    body["spec"]["replicas"] = 2  # type: ignore[index]
    with pytest.raises(ApiException) as err:
        deployments.server_side_apply(body=body, namespace="default", field_manager="other")
    assert err.value.status == 409
    assert json.loads(err.value.body)["details"]["causes"][0]["reason"] == "FieldManagerConflict"
    applied = deployments.server_side_apply(body=body, namespace="default", field_manager="other", force_conflicts=True)
    assert applied.spec.replicas == 2


def test_apply_to_the_status_subresource(server: ServerProcess) -> None:
    server.kubectl("create", "namespace", "ssa-status")
    body = (
        b'{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"ssa-status","labels":{"ignored":"yes"}},'
        b'"status":{"conditions":[{"type":"Custom","status":"True","reason":"Test"}]}}'
    )
    code, obj = patch_raw(
        server, "/api/v1/namespaces/ssa-status/status?fieldManager=st", body, "application/apply-patch+yaml"
    )
    assert code == 200, obj
    assert [c["type"] for c in obj["status"]["conditions"]] == ["Custom"]
    assert "ignored" not in (obj["metadata"].get("labels") or {})  # the status subresource writes status only
    entry = next(e for e in obj["metadata"]["managedFields"] if e["manager"] == "st")
    assert (entry["operation"], entry["subresource"]) == ("Apply", "status")
    assert entry["fieldsV1"] == {
        "f:status": {
            "f:conditions": {
                'k:{"type":"Custom"}': {".": {}, "f:reason": {}, "f:status": {}, "f:type": {}},
            }
        }
    }


def test_apply_to_a_custom_resource_merges_by_its_schema(server: ServerProcess) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gates.ssa.example.com"},
        "spec": {
            "group": "ssa.example.com",
            "scope": "Namespaced",
            "names": {"plural": "gates", "singular": "gate", "kind": "Gate"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "rules": {
                                            "type": "array",
                                            "x-kubernetes-list-type": "map",
                                            "x-kubernetes-list-map-keys": ["name"],
                                            "items": {
                                                "type": "object",
                                                "required": ["name"],
                                                "properties": {
                                                    "name": {"type": "string"},
                                                    "allow": {"type": "boolean"},
                                                },
                                            },
                                        }
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    server.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(crd))
    server.kubectl("wait", "--for=condition=established", "crd/gates.ssa.example.com", "--timeout=30s")

    def gate(rule: str) -> str:
        return json.dumps(
            {
                "apiVersion": "ssa.example.com/v1",
                "kind": "Gate",
                "metadata": {"name": "g"},
                "spec": {"rules": [{"name": rule, "allow": True}]},
            }
        )

    for manager, rule in (("team-a", "a"), ("team-b", "b")):
        deadline = time.monotonic() + 30
        while True:  # kubectl may need a moment to discover the new group
            res = server.kubectl(
                "apply", "--server-side", f"--field-manager={manager}", "-f", "-", input=gate(rule), check=False
            )
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert res.returncode == 0, res.stderr
    obj = get(server, "gates.ssa.example.com", "g")
    assert [r["name"] for r in obj["spec"]["rules"]] == ["a", "b"]  # merged by the list-map key, not replaced
    owned = {e["manager"]: e["fieldsV1"] for e in obj["metadata"]["managedFields"]}
    assert 'k:{"name":"b"}' in owned["team-b"]["f:spec"]["f:rules"]
    server.kubectl("delete", "crd", "gates.ssa.example.com", "--wait=false")
