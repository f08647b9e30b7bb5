"""kube-system/kwire-config as every reader takes it (the agent at start, `kwire trace`, `kwire check`): one
ClusterSettings (kwire/config.py), one set of keys and defaults."""

from __future__ import annotations

import pytest

from kwire.config import ClusterSettings


def test_absent_keys_take_k3s_defaults() -> None:
    s = ClusterSettings.from_configmap({})
    assert (s.cluster_cidr, s.service_cidr, s.cluster_dns) == ("10.42.0.0/16", "10.43.0.0/16", "10.43.0.10")
    assert (s.cluster_domain, s.flannel_backend) == ("cluster.local", "vxlan")
    assert not s.disable_network_policy and s.node_monitor_grace_period == 40
    assert s == ClusterSettings()


def test_published_values_are_read() -> None:
    data = {
        "cluster-cidr": "10.52.0.0/16",
        "service-cidr": "10.53.0.0/16",
        "cluster-dns": "10.53.0.10",
        "cluster-domain": "example.internal",
        "flannel-backend": "host-gw",
        "disable-network-policy": "true",
        "node-monitor-grace-period": "20",
    }
    assert ClusterSettings.from_configmap(data) == ClusterSettings(
        cluster_cidr="10.52.0.0/16",
        service_cidr="10.53.0.0/16",
        cluster_dns="10.53.0.10",
        cluster_domain="example.internal",
        flannel_backend="host-gw",
        disable_network_policy=True,
        node_monitor_grace_period=20,
    )


def test_a_bad_grace_period_is_refused() -> None:
    with pytest.raises(ValueError):  # the agent retries its read on ValueError
        ClusterSettings.from_configmap({"node-monitor-grace-period": "soon"})
