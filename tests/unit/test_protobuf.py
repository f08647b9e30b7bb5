"""Protobuf request bodies, as captured from `kubectl create ...` (kubectl 1.32), decode to kubectl's JSON form."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kwire.api.errors import ApiError
from kwire.api.protobuf import MAGIC, decode

DATA = Path(__file__).parent / "data"


def test_service_with_named_and_numeric_target_ports() -> None:
    obj = decode((DATA / "service-clusterip.pb").read_bytes())
    assert obj["kind"] == "Service" and obj["apiVersion"] == "v1"
    assert obj["metadata"] == {"name": "svc1", "labels": {"app": "svc1"}}
    assert obj["spec"] == {
        "ports": [
            {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
            {"name": "443-https", "protocol": "TCP", "port": 443, "targetPort": "https"},
        ],
        "selector": {"app": "svc1"},
        "type": "ClusterIP",
    }
    assert "status" not in obj


def test_deployment_template_and_replicas() -> None:
    obj = decode((DATA / "deployment.pb").read_bytes())
    assert obj["spec"] == {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "d1"}},
        "template": {
            "metadata": {"labels": {"app": "d1"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}]}]},
        },
    }


def test_ingress_rule_value_is_inlined() -> None:
    obj = decode((DATA / "ingress.pb").read_bytes())
    spec = obj["spec"]
    assert spec["ingressClassName"] == "traefik"
    assert spec["tls"] == [{"hosts": ["tls.com"], "secretName": "mysecret"}]
    assert spec["rules"][0] == {
        "host": "foo.com",
        "http": {
            "paths": [
                {"path": "/bar", "pathType": "Exact", "backend": {"service": {"name": "svc1", "port": {"number": 80}}}}
            ]
        },
    }
    assert spec["rules"][1]["http"]["paths"][0]["backend"]["service"]["port"] == {"name": "https"}


def test_secret_data_is_base64_as_in_json() -> None:
    obj = decode((DATA / "secret.pb").read_bytes())
    assert obj["data"] == {"x": "eQ=="}


def test_unknown_kind_is_415_and_garbage_is_400() -> None:
    # runtime.Unknown{typeMeta{apiVersion "example.com/v1", kind "Widget"}}
    tm = b"\x0a\x0eexample.com/v1" + b"\x12\x06Widget"
    with pytest.raises(ApiError) as e:
        decode(MAGIC + b"\x0a" + bytes([len(tm)]) + tm)
    assert e.value.code == 415
    with pytest.raises(ApiError) as e:
        decode(b"not protobuf")
    assert e.value.code == 400


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(body: bytes) -> None:
    for candidate in (body, MAGIC + body, (DATA / "deployment.pb").read_bytes()[: len(body)]):
        try:
            decode(candidate)
        except ApiError:
            pass
