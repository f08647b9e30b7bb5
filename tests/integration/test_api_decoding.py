"""Schemas, fieldValidation and request limits against a real `kwire server`: real kubectl and raw HTTPS attacks."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.apiserver import ServerProcess
from tests.unit.test_schemas_decoding import YAML_BOMB

pytestmark = pytest.mark.kubectl

NS = "/api/v1/namespaces/default"
DEPLOYS = "/apis/apps/v1/namespaces/default/deployments"
UNKNOWN_FIELD = """apiVersion: apps/v1
kind: Deployment
metadata: {name: NAME}
spec:
  replica: 2
  selector: {matchLabels: {app: NAME}}
  template:
    metadata: {labels: {app: NAME}}
    spec: {containers: [{name: c, image: nginx, imagePullPolicyy: Always}]}
"""


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: http.client.HTTPMessage
    seconds: float


def call(
    srv: ServerProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    ctype: str = "application/json",
    chunked: bool = False,
    accept: str = "application/json",
) -> Reply:
    ctx = srv.admin_ssl_context(verify=False)
    conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=60)
    headers = {"Content-Type": ctype, "Accept": accept}
    started = time.monotonic()
    try:
        if chunked and body is not None:
            pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
            conn.request(method, path, body=pieces, headers=headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except (BrokenPipeError, ConnectionResetError):
        # The server may answer and close before the whole body was sent; read what it said.
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    return Reply(resp.status, json.loads(raw) if raw else {}, resp.headers, time.monotonic() - started)


def server_peak_rss_kib(srv: ServerProcess) -> int:
    assert srv.proc is not None
    for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def deployment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
            **spec,
        },
    }


# -- kubectl ---------------------------------------------------------------------------------------------------
def test_kubectl_explain_prints_descriptions_and_types(server: ServerProcess) -> None:
    out = server.kubectl("explain", "deployment.spec").stdout
    assert "FIELD: spec <DeploymentSpec>" in out
    assert "replicas\t<integer>" in out and "Number of desired pods." in out
    assert "selector\t<LabelSelector> -required-" in out
    out = server.kubectl("explain", "svc.spec.ports").stdout
    assert "FIELD: ports <[]ServicePort>" in out and "port\t<integer> -required-" in out
    assert "targetPort\t<string>" in out and "Number or name of the port to access" in out  # IntOrString is a string
    out = server.kubectl("explain", "pods", "--recursive").stdout
    assert "    containers\t<[]Container> -required-" in out and "      imagePullPolicy\t<string>" in out
    out = server.kubectl("explain", "cronjob.spec.jobTemplate.spec.backoffLimit").stdout
    assert "GROUP:      batch" in out and "FIELD: backoffLimit <integer>" in out
    res = server.kubectl("explain", "deployment.spec.replica", check=False)
    assert res.returncode != 0 and 'field "replica" does not exist' in res.stderr


def test_kubectl_apply_unknown_field_strict_warn_ignore(server: ServerProcess) -> None:
    res = server.kubectl("apply", "-f", "-", input=UNKNOWN_FIELD.replace("NAME", "strict"), check=False)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        'Error from server (BadRequest): error when creating "STDIN": Deployment in version "v1" cannot be handled '
        'as a Deployment: strict decoding error: unknown field "spec.replica", unknown field '
        '"spec.template.spec.containers[0].imagePullPolicyy"'
    )
    assert server.kubectl("get", "deploy", "strict", check=False).returncode != 0
    res = server.kubectl("apply", "--validate=warn", "-f", "-", input=UNKNOWN_FIELD.replace("NAME", "warn"))
    assert 'Warning: unknown field "spec.replica"' in res.stderr
    assert "deployment.apps/warn created" in res.stdout
    res = server.kubectl("create", "--validate=false", "-f", "-", input=UNKNOWN_FIELD.replace("NAME", "ignore"))
    assert res.stderr == "" and "deployment.apps/ignore created" in res.stdout
    stored = json.loads(server.kubectl("get", "deploy", "ignore", "-o", "json").stdout)
    assert "replica" not in stored["spec"]
    # kubectl patch sends no fieldValidation: the server's default is Warn.
    res = server.kubectl("patch", "deploy", "warn", "-p", '{"spec":{"paused":true,"pausd":true}}')
    assert res.stderr == 'Warning: unknown field "spec.pausd"\n' and "patched" in res.stdout
    patch = b'{"spec": {"paused": false, "pausd": true}}'
    r = call(server, "PATCH", DEPLOYS + "/warn?fieldValidation=Strict", patch, ctype="application/merge-patch+json")
    assert r.status == 400 and r.body["message"].endswith('strict decoding error: unknown field "spec.pausd"')
    assert call(server, "GET", DEPLOYS + "/warn").body["spec"]["paused"] is True


# -- raw HTTP: field validation --------------------------------------------------------------------------------
def test_duplicate_fields_json_and_yaml(server: ServerProcess) -> None:
    body = json.dumps(deployment("dup", replicas=1))[:-2] + ', "replicas": 2}}'
    r = call(server, "POST", DEPLOYS + "?fieldValidation=Strict", body.encode())
    assert r.status == 400 and r.body["reason"] == "BadRequest"
    assert r.body["message"].endswith('strict decoding error: duplicate field "replicas"')
    r = call(server, "POST", DEPLOYS + "?fieldValidation=Warn", body.encode())
    assert r.status == 201 and r.body["spec"]["replicas"] == 2
    assert r.headers.get_all("Warning") == ['299 - "duplicate field \\"replicas\\""']
    yaml_body = UNKNOWN_FIELD.replace("NAME", "dupyaml").replace("  replica: 2\n", "  paused: true\n  paused: false\n")
    r = call(server, "POST", DEPLOYS + "?fieldValidation=Strict", yaml_body.encode(), ctype="application/yaml")
    assert r.status == 400
    assert 'line 6: key \\"paused\\" already set in map' in json.dumps(r.body["message"])
    assert 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in r.body["message"]


def test_int32_overflow_is_refused(server: ServerProcess) -> None:
    r = call(server, "POST", DEPLOYS, json.dumps(deployment("big", replicas=2147483648)).encode())
    assert r.status == 400
    assert r.body["message"] == (
        'Deployment in version "v1" cannot be handled as a Deployment: json: cannot unmarshal number 2147483648 '
        "into Go struct field DeploymentSpec.spec.replicas of type int32"
    )


# -- raw HTTP: limits ------------------------------------------------------------------------------------------
def test_body_over_3mib_is_413_with_and_without_content_length(server: ServerProcess) -> None:
    big = json.dumps({"metadata": {"name": "huge"}, "data": {"a": "x" * (3 * 1024 * 1024)}}).encode()
    for chunked in (False, True):
        r = call(server, "POST", NS + "/configmaps", big, chunked=chunked)
        assert r.status == 413, (chunked, r.body)
        assert r.body["reason"] == "RequestEntityTooLarge"
        assert r.body["message"] == "Request entity too large: limit is 3145728"


def test_object_size_limits(server: ServerProcess) -> None:
    cm = {"metadata": {"name": "toobig"}, "data": {"a": "x" * (1024 * 1024 + 1)}}
    r = call(server, "POST", NS + "/configmaps", json.dumps(cm).encode())
    assert r.status == 422
    assert r.body["message"] == 'ConfigMap "toobig" is invalid: []: Too long: must have at most 1048576 bytes'
    secret = {"metadata": {"name": "toobig"}, "stringData": {"a": "x" * (1024 * 1024 + 1)}}
    r = call(server, "POST", NS + "/secrets", json.dumps(secret).encode())
    assert r.status == 422 and r.body["message"].endswith("data: Too long: must have at most 1048576 bytes")
    # 1.7 MB of ServiceAccount: within the body limit, over etcd's 1.5 MiB.
    sa = {"metadata": {"name": "huge"}, "secrets": [{"name": f"s-{i:06d}-" + "x" * 50} for i in range(25_000)]}
    r = call(server, "POST", NS + "/serviceaccounts", json.dumps(sa).encode())
    assert r.status == 413 and r.body["message"] == "etcdserver: request is too large"
    r = call(server, "GET", NS + "/serviceaccounts/huge")
    assert r.status == 404


def test_yaml_bomb_is_refused_fast_with_a_small_memory_peak(server: ServerProcess) -> None:
    before = server_peak_rss_kib(server)
    r = call(server, "POST", NS + "/configmaps", YAML_BOMB, ctype="application/yaml")
    after = server_peak_rss_kib(server)
    assert r.status == 400, r.body
    assert r.body["message"] == "error converting YAML to JSON: yaml: document contains excessive aliasing"
    assert r.seconds < 2.0, r.seconds
    assert after - before < 20 * 1024, (before, after)  # peak RSS grew by less than 20 MiB


def test_deep_nesting_is_400(server: ServerProcess) -> None:
    deep = b'{"metadata": {"name": "deep"}, "data": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    assert call(server, "POST", NS + "/configmaps", deep).status == 400
    deep_yaml = b"metadata: {name: deep}\ndata: " + b"[" * 10_000 + b"]" * 10_000 + b"\n"
    assert call(server, "POST", NS + "/configmaps", deep_yaml, ctype="application/yaml").status == 400


def test_json_patch_bombs(server: ServerProcess) -> None:
    r = call(server, "POST", NS + "/configmaps", json.dumps({"metadata": {"name": "pb"}, "data": {}}).encode())
    assert r.status == 201
    ops: list[dict[str, Any]] = [{"op": "add", "path": "/data/a", "value": "x" * 64}]
    ops += [{"op": "copy", "from": "/data", "path": f"/data/{i}"} for i in range(40)]
    body = json.dumps(ops, separators=(",", ":")).encode()
    assert len(body) < 2600
    r = call(server, "PATCH", NS + "/configmaps/pb", body, ctype="application/json-patch+json")
    assert r.status == 422 and "exceeding the limit 3145728" in r.body["message"]
    assert r.seconds < 5, r.seconds
    many = json.dumps([{"op": "test", "path": "/data", "value": {}}] * 10_001).encode()
    r = call(server, "PATCH", NS + "/configmaps/pb", many, ctype="application/json-patch+json")
    assert r.status == 413
    assert r.body["message"].endswith("The allowed maximum operations in a JSON patch is 10000, got 10001")


def test_unsupported_media_type_is_415(server: ServerProcess) -> None:
    r = call(server, "POST", NS + "/configmaps", b"name=x", ctype="text/plain")
    assert r.status == 415 and r.body["reason"] == "UnsupportedMediaType"
    r = call(server, "PATCH", NS + "/configmaps/pb", b"{}", ctype="text/plain")
    assert r.status == 415


def test_openapi_v2_json_and_protobuf(server: ServerProcess) -> None:
    r = call(server, "GET", "/openapi/v2")
    assert r.status == 200 and "io.k8s.api.apps.v1.Deployment" in r.body["definitions"]
    # gnostic's protobuf, read by kubectl: explain from v2 and per-object errors for kinds v3 does not know.
    out = server.kubectl("explain", "deploy.spec.replicas", "--output=plaintext-openapiv2").stdout
    assert "FIELD:    replicas <integer>" in out and "Number of desired pods." in out
    mixed = (
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mixed}\ndta: {}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mixed-ok}\n"
    )
    res = server.kubectl("apply", "-f", "-", input=mixed, check=False)
    assert res.returncode == 1 and "configmap/mixed-ok created" in res.stdout
    assert 'no matches for kind "Gadget" in version "example.com/v1"' in res.stderr
    assert 'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "dta"' in (
        res.stderr
    )


GADGET_CRD = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gizmos.kwire-d.example.com}
spec:
  group: kwire-d.example.com
  scope: Namespaced
  names: {plural: gizmos, singular: gizmo, kind: Gizmo}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: GizmoSpec is what a gizmo should be.
            properties:
              size: {type: integer, description: How big the gizmo is.}
"""


def test_crd_schemas_in_explain_and_strict_decoding(server: ServerProcess) -> None:
    server.apply(GADGET_CRD)
    out = ""
    for _ in range(100):  # the CRD becomes Established and its schema reaches /openapi/v3
        res = server.kubectl("explain", "gizmos.spec", check=False)
        out = res.stdout
        if res.returncode == 0:
            break
        time.sleep(0.2)
    assert "GROUP:      kwire-d.example.com" in out and "GizmoSpec is what a gizmo should be." in out
    assert "size\t<integer>" in out and "How big the gizmo is." in out
    # A new field in the CRD: a new document hash, and explain shows it.
    server.apply(GADGET_CRD + "              color: {type: string, description: Its color.}\n")
    for _ in range(100):
        out = server.kubectl("explain", "gizmos.spec").stdout
        if "color\t<string>" in out:
            break
        time.sleep(0.2)
    assert "color\t<string>" in out and "Its color." in out
    cr = "apiVersion: kwire-d.example.com/v1\nkind: Gizmo\nmetadata: {name: g1}\nspec: {size: 2, shape: round}\n"
    res = server.kubectl("apply", "-f", "-", input=cr, check=False)
    assert res.returncode == 1
    assert (
        'Gizmo in version "v1" cannot be handled as a Gizmo: strict decoding error: unknown field "spec.shape"'
        in res.stderr
    )
    server.kubectl("apply", "--validate=false", "-f", "-", input=cr)
    stored = json.loads(server.kubectl("get", "gizmo", "g1", "-o", "json").stdout)
    assert stored["spec"] == {"size": 2}
