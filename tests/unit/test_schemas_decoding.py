"""The generated schemas, the OpenAPI documents built from them, field validation and request limits (no server)."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from kwire.api import decoding, fieldcheck, openapi, registry, schemas, validation
from kwire.api.errors import ApiError
from kwire.api.patch import CopySizeError, apply_json_patch, smp_supported, strategic_merge
from tests import UPSTREAM

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = registry.by_kind("apps/v1", "Deployment")
CM = registry.by_kind("v1", "ConfigMap")
SECRET = registry.by_kind("v1", "Secret")
assert DEPLOY and CM and SECRET

# CVE-2019-11253's ConfigMap: ~450 bytes whose aliases expand to 9^9 strings.
YAML_BOMB = (
    b'apiVersion: v1\ndata:\n  a: &a ["web","web","web","web","web","web","web","web","web"]\n'
    + b"".join(
        f"  {n}: &{n} [{','.join([f'*{p}'] * 9)}]\n".encode() for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + b"kind: ConfigMap\nmetadata:\n  name: yaml-bomb\n  namespace: default\n"
)


def _deployment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
            **spec,
        },
    }


def _all_refs(node: Any, acc: set[str]) -> set[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            acc.add(node["$ref"])
        for v in node.values():
            _all_refs(v, acc)
    elif isinstance(node, list):
        for v in node:
            _all_refs(v, acc)
    return acc


# -- the generated definitions ---------------------------------------------------------------------------------
def test_generated_file_is_current() -> None:
    res = subprocess.run(
        [sys.executable, "scripts/gen-schemas.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_builtin_kind_served_has_a_schema_and_every_ref_resolves() -> None:
    for kind in registry.KINDS:
        if kind.group == "metallb.io":
            continue  # custom resources: their schema comes from the CRD
        assert schemas.definition_name(kind.group, kind.version, kind.kind), kind
    defs = schemas.definitions()
    for ref in _all_refs(defs, set()):
        assert ref.startswith("#/definitions/") and ref.rsplit("/", 1)[-1] in defs, ref
    for gvk in [
        ("batch", "v1", "CronJob"),
        ("rbac.authorization.k8s.io", "v1", "ClusterRole"),
        ("apps", "v1", "StatefulSet"),
    ]:
        assert schemas.definition_name(*gvk)
    spec = defs["io.k8s.api.apps.v1.DeploymentSpec"]
    assert spec["properties"]["replicas"] == {
        "description": spec["properties"]["replicas"]["description"],
        "format": "int32",
        "type": "integer",
    }
    assert spec["required"] == ["selector", "template"]
    ports = defs["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert ports["x-kubernetes-patch-merge-key"] == "name" and ports["type"] == "array"
    assert defs["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"] == [
        {"group": "apps", "kind": "Deployment", "version": "v1"}
    ]
    assert "enum" not in defs["io.k8s.api.apps.v1.Deployment"]["properties"]["kind"]


def test_upstream_manifests_decode_strictly() -> None:
    """MetalLB's and Traefik's release manifests (CRDs, RBAC, workloads, webhooks) have no unknown fields."""
    up = UPSTREAM
    docs = 0
    for path in [up / "metallb-native-v0.14.9.yaml", *sorted((up / "traefik-crds-v34.5.0").glob("*.yaml"))]:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            group, _, version = doc["apiVersion"].rpartition("/")
            schema = schemas.builtin_schema(group, version, doc["kind"])
            assert schema is not None, doc["kind"]
            found = fieldcheck.check(schema, doc, types=True, builtin=True)
            assert (found.unknown, found.type_error) == ([], None), (path.name, doc["metadata"]["name"])
            docs += 1
    assert docs >= 30


# -- OpenAPI documents ----------------------------------------------------------------------------------------
def test_v3_documents_are_self_contained_and_v2_has_every_definition() -> None:
    root = openapi.v3_root()["paths"]
    assert "apis/apps/v1" in root and "api/v1" in root
    for path in root:
        doc = orjson.loads(openapi.v3_document(path) or b"")
        comps = doc["components"]["schemas"]
        for ref in _all_refs(doc, set()):
            assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[-1] in comps, (path, ref)
    apps = orjson.loads(openapi.v3_document("apis/apps/v1") or b"")
    deploy = apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]
    assert deploy["properties"]["spec"]["allOf"] == [{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}]
    op = apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in op["parameters"]]
    v2 = orjson.loads(openapi.v2_document())
    assert v2["swagger"] == "2.0" and "io.k8s.api.core.v1.Pod" in v2["definitions"]


WIDGET = registry.Kind(group="kwire-test.example.com", version="v1", kind="Widget", plural="widgets", namespaced=True)
WIDGET_GV = "apis/kwire-test.example.com/v1"


def test_crd_schemas_appear_and_change_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A served custom kind: its CRD schema is in /openapi/v3 (new hash on change) and prunes/refuses fields."""
    real_groups, real_kinds_in = registry.groups, registry.kinds_in

    def groups() -> dict[str, list[str]]:
        return {**real_groups(), WIDGET.group: [WIDGET.version]}

    def kinds_in(group: str, version: str) -> list[registry.Kind]:
        return [WIDGET] if (group, version) == (WIDGET.group, WIDGET.version) else real_kinds_in(group, version)

    for module in (openapi, schemas):
        monkeypatch.setattr(module, "groups", groups)
        monkeypatch.setattr(module, "kinds_in", kinds_in)
    before = openapi.v3_root()["paths"][WIDGET_GV]["serverRelativeURL"]  # served, no schema yet
    spec = {"type": "object", "description": "WidgetSpec.", "properties": {"size": {"type": "integer"}}}
    schema: schemas.Schema = {"type": "object", "properties": {"spec": spec}}

    def source() -> dict[schemas.GVK, schemas.Schema]:
        return {(WIDGET.group, WIDGET.version, WIDGET.kind): schema}

    schemas.register_custom_source(source)
    try:
        after = openapi.v3_root()["paths"][WIDGET_GV]["serverRelativeURL"]
        assert after != before
        doc = orjson.loads(openapi.v3_document(WIDGET_GV) or b"")
        widget = doc["components"]["schemas"]["com.example.kwire-test.v1.Widget"]
        assert widget["x-kubernetes-group-version-kind"] == [
            {"group": "kwire-test.example.com", "version": "v1", "kind": "Widget"}
        ]
        assert widget["properties"]["spec"]["properties"]["size"] == {"type": "integer"}
        assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in doc["components"]["schemas"]
        spec["properties"]["color"] = {"type": "string"}  # the CRD changes: a new document, a new hash
        assert openapi.v3_root()["paths"][WIDGET_GV]["serverRelativeURL"] not in (before, after)
        obj = {"apiVersion": "kwire-test.example.com/v1", "kind": "Widget", "metadata": {"name": "w", "x": 1}}
        obj["spec"] = {"size": 1, "shape": "round"}
        with pytest.raises(ApiError) as err:
            decoding.apply_field_validation(WIDGET, obj, mode=decoding.STRICT, duplicates=[])
        assert err.value.message == (
            'Widget in version "v1" cannot be handled as a Widget: strict decoding error: '
            'unknown field "metadata.x", unknown field "spec.shape"'
        )
    finally:
        schemas.unregister_custom_source(source)
    assert openapi.v3_root()["paths"][WIDGET_GV]["serverRelativeURL"] == before


# -- field validation ------------------------------------------------------------------------------------------
def test_unknown_fields_strict_warn_ignore() -> None:
    body = _deployment(replica=2)
    body["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(ApiError) as err:
        decoding.apply_field_validation(DEPLOY, orjson.loads(orjson.dumps(body)), mode="Strict", duplicates=[])
    assert err.value.code == 400 and err.value.reason == "BadRequest"
    assert err.value.message == (
        'Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: '
        'unknown field "spec.replica", unknown field "spec.template.spec.containers[0].imagePullPolicyy"'
    )
    warned = orjson.loads(orjson.dumps(body))
    assert decoding.apply_field_validation(DEPLOY, warned, mode="Warn", duplicates=['duplicate field "x"']) == [
        'duplicate field "x"',
        'unknown field "spec.replica"',
        'unknown field "spec.template.spec.containers[0].imagePullPolicyy"',
    ]
    assert "replica" not in warned["spec"]  # dropped, as decoding into the Go struct drops it
    ignored = orjson.loads(orjson.dumps(body))
    assert decoding.apply_field_validation(DEPLOY, ignored, mode="Ignore", duplicates=[]) == []
    assert "imagePullPolicyy" not in ignored["spec"]["template"]["spec"]["containers"][0]


def test_a_patch_is_not_blamed_for_unknown_fields_already_stored() -> None:
    stored = _deployment(replica=2)  # written by an older kwire that did not validate fields
    patched = _deployment(replica=2, paused=True, pausd=True)
    with pytest.raises(ApiError) as err:
        decoding.apply_field_validation(DEPLOY, patched, mode="Strict", duplicates=[], stored=stored)
    assert err.value.message.endswith('strict decoding error: unknown field "spec.pausd"')
    patched = _deployment(replica=2, paused=True)
    assert decoding.apply_field_validation(DEPLOY, patched, mode="Strict", duplicates=[], stored=stored) == []
    assert "replica" not in patched["spec"]  # dropped all the same


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"replicas": 2147483648},
            "json: cannot unmarshal number 2147483648 into Go struct field DeploymentSpec.spec.replicas of type int32",
        ),
        (
            {"replicas": "2"},
            "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32",
        ),
        ({"paused": 1}, "json: cannot unmarshal number into Go struct field DeploymentSpec.spec.paused of type bool"),
        (
            {"replicas": 1.5},
            "json: cannot unmarshal number 1.5 into Go struct field DeploymentSpec.spec.replicas of type int32",
        ),
    ],
)
def test_wrong_types_fail_decoding_in_every_mode(spec: dict[str, Any], message: str) -> None:
    for mode in ("Strict", "Warn", "Ignore"):
        with pytest.raises(ApiError) as err:
            decoding.apply_field_validation(DEPLOY, _deployment(**spec), mode=mode, duplicates=[])
        assert err.value.code == 400
        assert err.value.message == f'Deployment in version "v1" cannot be handled as a Deployment: {message}'


def test_type_error_names_the_innermost_struct_and_the_path_without_indices() -> None:
    body = _deployment()
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "PORT", "value": 443}]
    with pytest.raises(ApiError) as err:
        decoding.apply_field_validation(DEPLOY, body, mode="Ignore", duplicates=[])
    assert err.value.message.endswith(
        "json: cannot unmarshal number into Go struct field EnvVar.spec.template.spec.containers.env.value of type string"
    )


def test_int_or_string_quantity_and_free_form_fields_are_accepted() -> None:
    body = _deployment(replicas=2147483647, strategy={"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}})
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {"cpu": 0.5, "memory": "64Mi"}}
    body["metadata"]["managedFields"] = [{"manager": "m", "fieldsV1": {"f:spec": {"f:anything": {}}}}]
    assert decoding.apply_field_validation(DEPLOY, body, mode="Strict", duplicates=[]) == []
    assert body["metadata"]["managedFields"][0]["fieldsV1"] == {"f:spec": {"f:anything": {}}}


def test_deep_nesting_does_not_recurse() -> None:
    deep: Any = "x"
    for _ in range(20_000):
        deep = [deep]
    found = fieldcheck.check({"type": "object", "properties": {"a": {}}}, {"a": deep, "b": 1}, types=True)
    assert found.unknown == ["b"]


# -- decoding --------------------------------------------------------------------------------------------------
def test_json_and_yaml_duplicate_keys() -> None:
    _, dups = decoding.loads_json(b'{"spec": {"replicas": 1, "replicas": 2}}', duplicates=True)
    assert dups == ['duplicate field "replicas"']
    # The cheap pre-count must not be fooled by spacing, escaped quotes or \u escapes.
    assert decoding.loads_json(b'{"a" :1, "b":2, "b" \n: 3}', duplicates=True)[1] == ['duplicate field "b"']
    assert decoding.loads_json(b'{"a": "\\"x\\": ", "b": 1}', duplicates=True)[1] == []
    tricky = b'{"a" :1, "c":"\\u0022x\\": ", "b":2, "b":3}'
    assert decoding.loads_json(tricky, duplicates=True)[1] == ['duplicate field "b"']
    value, dups = decoding.loads_yaml(b"spec:\n  replicas: 1\n  replicas: 2\n")
    assert value == {"spec": {"replicas": 2}}
    assert dups == ['yaml: unmarshal errors:\n  line 3: key "replicas" already set in map']


def test_yaml_timestamps_stay_strings_as_in_go_yaml() -> None:
    body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: t\n  annotations: {since: 2024-01-01}\n"
    decoded = decoding.decode_object(body, "application/yaml", kind=CM, mode="Strict")
    assert decoded.obj["metadata"]["annotations"] == {"since": "2024-01-01"}


def test_yaml_alias_bomb_is_refused_fast_with_a_small_memory_peak() -> None:
    assert len(YAML_BOMB) < 450
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ApiError) as err:
            decoding.loads_yaml(YAML_BOMB)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.code == 400
    assert err.value.message == "error converting YAML to JSON: yaml: document contains excessive aliasing"
    assert elapsed < 1.0, elapsed
    assert peak < 2 * 1024 * 1024, peak  # expanded, it would be ~387M strings
    # Ordinary aliases still work, and each use is its own copy.
    value, _ = decoding.loads_yaml(b"a: &x {b: 1}\nc: *x\n")
    assert value == {"a": {"b": 1}, "c": {"b": 1}} and value["a"] is not value["c"]


def test_yaml_bodies_use_libyaml() -> None:
    # PyYAML's wheels bundle libyaml; without it a 3 MiB body of "[" would cost minutes (quadratic parser).
    assert decoding._BaseLoader is yaml.CSafeLoader


@pytest.mark.parametrize("loader", ["json", "yaml"])
def test_deep_nesting_is_a_bad_request(loader: str) -> None:
    raw = b"[" * 10_001 + b"]" * 10_001
    with pytest.raises(ApiError) as err:
        if loader == "json":
            decoding.loads_json(raw, duplicates=True)
        else:
            decoding.loads_yaml(raw)
    assert err.value.code == 400


def test_warnings_are_bounded() -> None:
    few = ['unknown field "a"', 'unknown field "a"', 'unknown field "b"']
    assert decoding.bounded_warnings(few) == ['unknown field "a"', 'unknown field "b"']
    many = [f'unknown field "spec.{i:04d}{"x" * 300}"' for i in range(1000)]
    out = decoding.bounded_warnings(many)
    assert 10 < len(out) <= 16 and all(len(w) == 256 for w in out)
    assert decoding.warning_header('unknown field "a"') == '299 - "unknown field \\"a\\""'


def test_unsupported_media_type() -> None:
    with pytest.raises(ApiError) as err:
        decoding.decode_object(b"x", "text/plain", kind=DEPLOY, mode="Strict")
    assert err.value.code == 415 and err.value.reason == "UnsupportedMediaType"
    assert "accepted media types include: application/json, application/yaml" in err.value.message


# -- size limits -----------------------------------------------------------------------------------------------
def test_configmap_and_secret_data_over_1mib_are_invalid() -> None:
    cm = {"metadata": {"name": "big", "namespace": "default"}, "data": {"a": "x" * (1024 * 1024 + 1)}}
    errs = validation.validate_create(CM, cm)
    assert [str(e) for e in errs] == ["[]: Too long: must have at most 1048576 bytes"]
    import base64

    secret = {
        "metadata": {"name": "big", "namespace": "default"},
        "data": {"a": base64.b64encode(b"x" * (1024 * 1024 + 3)).decode()},
    }
    assert [str(e) for e in validation.validate_create(SECRET, secret)] == [
        "data: Too long: must have at most 1048576 bytes"
    ]
    secret["data"]["a"] = base64.b64encode(b"x" * 1024 * 1024).decode()
    assert validation.validate_create(SECRET, secret) == []


def test_json_patch_limits() -> None:
    ops: list[Any] = [{"op": "add", "path": "/data/a", "value": "x" * 64}]
    ops += [{"op": "copy", "from": "/data", "path": f"/data/k{i}"} for i in range(40)]
    assert len(orjson.dumps(ops)) < 2600  # the ~2.5 KB patch that would build tens of MB
    started = time.perf_counter()
    with pytest.raises(CopySizeError, match="exceeding the limit 3145728"):
        apply_json_patch({"data": {}}, ops)
    assert time.perf_counter() - started < 5
    with pytest.raises(ApiError) as err:
        apply_json_patch({}, [{"op": "test", "path": "/a", "value": 1}] * 10_001)
    assert err.value.code == 413
    assert err.value.message.endswith("The allowed maximum operations in a JSON patch is 10000, got 10001")
    assert apply_json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 1}] * 10_000) == {"a": 1}


# -- strategic merge patch from the schemas --------------------------------------------------------------------
def test_strategic_merge_keys_come_from_the_schemas_for_every_builtin_kind() -> None:
    sts = registry.Kind(group="apps", version="v1", kind="StatefulSet", plural="statefulsets", namespaced=True)
    current = {
        "metadata": {"name": "db", "finalizers": ["a"]},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "db", "image": "pg:15", "env": [{"name": "A", "value": "1"}]},
                        {"name": "sidecar", "image": "x"},
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                }
            }
        },
    }
    patch = {
        "metadata": {"finalizers": ["b"]},
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "db", "image": "pg:16", "env": [{"name": "B", "value": "2"}]}]}
            }
        },
    }
    out = strategic_merge(sts, current, patch)
    containers = out["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["db", "sidecar"]
    assert containers[0]["image"] == "pg:16" and [e["name"] for e in containers[0]["env"]] == ["A", "B"]
    assert out["metadata"]["finalizers"] == ["a", "b"] and out["spec"]["template"]["spec"]["volumes"]
    # A recursive definition (CRD schemas nest JSONSchemaProps) is handled without recursing forever.
    crd = registry.Kind(
        group="apiextensions.k8s.io",
        version="v1",
        kind="CustomResourceDefinition",
        plural="customresourcedefinitions",
        namespaced=False,
    )
    assert strategic_merge(crd, {"spec": {"group": "a"}}, {"spec": {"group": "b"}}) == {"spec": {"group": "b"}}
    pool = registry.Kind(group="metallb.io", version="v1beta1", kind="IPAddressPool", plural="ps", namespaced=True)
    assert not smp_supported(pool) and smp_supported(sts)
