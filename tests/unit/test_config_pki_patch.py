"""Config merging (K3s rules), PKI reuse and SANs, patch semantics and validation messages, without privileges."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from cryptography import x509

from kwire.api import registry
from kwire.api.certs import ensure_pki, ensure_token
from kwire.api.errors import ApiError
from kwire.api.patch import apply_patch
from kwire.api.validation import validate_create, validate_update
from kwire.config import AgentConfig, ClusterSettings, ConfigError, ServerConfig, load_config

SVC = registry.by_kind("v1", "Service")
DEPLOY = registry.by_kind("apps/v1", "Deployment")


def _load(tmp_path: Path, files: dict[str, str], flags: dict[str, object] | None = None) -> ServerConfig:
    main = tmp_path / "config.yaml"
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return load_config(cls=ServerConfig, flags=flags or {}, config_file=str(main), env={})


def test_config_defaults_are_k3s_defaults(tmp_path: Path) -> None:
    cfg = load_config(cls=ServerConfig, flags={}, config_file=None, env={"KWIRE_CONFIG_FILE": ""})
    assert (cfg.cluster_cidr, cfg.service_cidr, cfg.cluster_dns) == ("10.42.0.0/16", "10.43.0.0/16", "10.43.0.10")
    assert cfg.cluster_domain == "cluster.local" and cfg.node_port_range == (30000, 32767)
    assert cfg.flannel_backend == "vxlan" and cfg.api_service_ip == "10.43.0.1"


def test_config_dropins_later_wins_plus_appends_flags_override(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        {
            "config.yaml": "cluster-cidr: 10.52.0.0/16\ndisable: [traefik]\nnode-label: [a=1]\n",
            "config.yaml.d/10-more.yaml": "cluster-cidr: 10.62.0.0/16\ndisable+: [servicelb]\nnode-label: [b=2]\n",
        },
        flags={"cluster-domain": "edge.local", "disable": ["coredns"]},
    )
    assert cfg.cluster_cidr == "10.62.0.0/16"  # the later file wins
    assert cfg.node_label == ("b=2",)  # without `+` a later file replaces a list
    assert cfg.disable == ("coredns",)  # flags override files
    assert cfg.cluster_domain == "edge.local"
    cfg2 = _load(tmp_path, {})
    assert cfg2.disable == ("traefik", "servicelb")  # `key+` appends
    assert cfg2.disabled("servicelb") and not cfg2.disabled("coredns")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("cluster-dns: 10.99.0.10\n", "not inside service-cidr"),
        ("service-node-port-range: 30000\n", "low-high"),
        ("flannel-backend: wireguard-native\n", "flannel-backend"),
        ("no-such-key: 1\n", "unknown key"),
        ("- a list\n", "mapping"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _load(tmp_path, {"config.yaml": text})


def test_agent_config_has_its_own_keys(tmp_path: Path) -> None:
    cfg = load_config(
        cls=AgentConfig, flags={"server": "https://10.0.0.1:6443", "token": "t"}, config_file=None, env={}
    )
    assert cfg.server == "https://10.0.0.1:6443" and cfg.cluster_dns == "10.43.0.10"
    with pytest.raises(ConfigError):
        load_config(cls=AgentConfig, flags={"cluster-cidr": "10.1.0.0/16"}, config_file=None, env={})


def test_pki_is_reused_and_covers_the_service_names(tmp_path: Path) -> None:
    sans_dns = ["kubernetes", "kubernetes.default.svc.cluster.local", "localhost"]
    pki = ensure_pki(tmp_path, sans_dns=sans_dns, sans_ip=["127.0.0.1", "10.43.0.1", "192.168.77.11"])
    first = pki.serving_cert.read_bytes()
    cert = x509.load_pem_x509_certificate(first)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans_dns) <= set(ext.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.43.0.1", "192.168.77.11"} <= {str(i) for i in ext.get_values_for_type(x509.IPAddress)}
    again = ensure_pki(tmp_path, sans_dns=sans_dns, sans_ip=["127.0.0.1", "10.43.0.1", "192.168.77.11"])
    assert again.serving_cert.read_bytes() == first
    ca = pki.ca_cert.read_bytes()
    # A new SAN (e.g. a changed node IP) re-issues the serving certificate from the same CA.
    ensure_pki(tmp_path, sans_dns=sans_dns, sans_ip=["127.0.0.1", "10.43.0.1", "192.168.77.12"])
    assert pki.serving_cert.read_bytes() != first and pki.ca_cert.read_bytes() == ca
    tok = ensure_token(tmp_path, None)
    assert tok and ensure_token(tmp_path, None) == tok


def _svc(**spec: object) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": spec}


def test_strategic_merge_patch_merges_ports_by_port_and_deletes_with_directive() -> None:
    assert SVC is not None
    cur = _svc(ports=[{"port": 80, "protocol": "TCP", "name": "http"}, {"port": 443, "protocol": "TCP", "name": "s"}])
    body = orjson.dumps({"spec": {"ports": [{"port": 80, "name": "web"}, {"port": 443, "$patch": "delete"}]}})
    out = apply_patch(SVC, cur, body, "application/strategic-merge-patch+json")
    assert out["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "name": "web"}]
    assert cur["spec"]["ports"][0]["name"] == "http"  # the input is untouched


def test_merge_and_json_patch() -> None:
    assert SVC is not None
    cur = _svc(selector={"app": "a", "tier": "x"})
    out = apply_patch(SVC, cur, b'{"spec": {"selector": {"tier": null}}}', "application/merge-patch+json")
    assert out["spec"]["selector"] == {"app": "a"}
    out = apply_patch(
        SVC, cur, b'[{"op": "replace", "path": "/spec/selector/app", "value": "b"}]', "application/json-patch+json"
    )
    assert out["spec"]["selector"]["app"] == "b"
    with pytest.raises(ApiError) as e:
        apply_patch(
            SVC, cur, b'[{"op": "test", "path": "/spec/selector/app", "value": "z"}]', "application/json-patch+json"
        )
    assert e.value.code == 422
    with pytest.raises(ApiError) as e:
        apply_patch(SVC, cur, b"{}", "text/plain")
    assert e.value.code == 415


def test_service_validation_messages_are_kube_apiservers() -> None:
    assert SVC is not None
    bad = _svc(ports=[{"port": 70000, "protocol": "ICMP"}, {"port": 80, "name": "Bad_Name"}], selector={"a": "b"})
    msgs = [str(e) for e in validate_create(SVC, bad)]
    assert "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive" in msgs
    assert any(m.startswith('spec.ports[0].protocol: Unsupported value: "ICMP"') for m in msgs)
    assert any(m.startswith('spec.ports[1].name: Invalid value: "Bad_Name"') for m in msgs)
    old = _svc(clusterIP="10.43.5.5", ports=[{"port": 80, "protocol": "TCP"}])
    new = _svc(clusterIP="10.43.5.6", ports=[{"port": 80, "protocol": "TCP"}])
    msgs = [str(e) for e in validate_update(SVC, new, old)]
    assert any("spec.clusterIP" in m and "field is immutable" in m for m in msgs)


def test_deployment_selector_must_match_template() -> None:
    assert DEPLOY is not None
    d = {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "other"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    msgs = [str(e) for e in validate_create(DEPLOY, d)]
    assert any(
        m.startswith("spec.template.metadata.labels: Invalid value") and "`selector` does not match" in m for m in msgs
    )


def test_cluster_settings_round_trip_through_the_configmap_the_server_publishes() -> None:
    cfg = ServerConfig(
        cluster_cidr="10.50.0.0/16",
        flannel_backend="host-gw",
        disable=("traefik", "servicelb"),
        disable_network_policy=True,
        node_monitor_grace_period=20,
    )
    data = ClusterSettings.of_server(cfg).to_configmap()
    assert data["disable"] == "servicelb,traefik" and data["disable-network-policy"] == "true"
    assert data["service-node-port-range"] == "30000-32767" and data["node-monitor-grace-period"] == "20"
    back = ClusterSettings.from_configmap(data)
    assert back == ClusterSettings.of_server(cfg)
    assert (back.cluster_cidr, back.flannel_backend, back.disable) == (
        "10.50.0.0/16",
        "host-gw",
        ("servicelb", "traefik"),
    )
    assert ClusterSettings.from_configmap({}) == ClusterSettings.of_server(ServerConfig())
    with pytest.raises(ConfigError, match="node-monitor-grace-period"):
        ClusterSettings.from_configmap({"node-monitor-grace-period": "soon"})
