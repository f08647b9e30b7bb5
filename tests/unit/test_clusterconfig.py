"""kube-system/kwire-config as the agent and `kwire trace` read it: one set of keys and defaults."""

from __future__ import annotations

import pytest

from kwire.agent.clusterconfig import ClusterSettings
from kwire.trace.state import Settings


def test_absent_keys_take_k3s_defaults_in_both_readers() -> None:
    agent = ClusterSettings.from_data({})
    trace = Settings.from_configmap({})
    assert (agent.cluster_cidr, agent.service_cidr, agent.cluster_dns) == ("10.42.0.0/16", "10.43.0.0/16", "10.43.0.10")
    assert (agent.cluster_domain, agent.flannel_backend) == ("cluster.local", "vxlan")
    assert not agent.disable_network_policy and agent.node_monitor_grace_period == 40
    assert trace == Settings()  # the snapshot's defaults are the same settings
    assert (trace.cluster_cidr, trace.flannel_backend, trace.network_policy) == ("10.42.0.0/16", "vxlan", True)


def test_published_values_are_read_alike() -> None:
    data = {
        "cluster-cidr": "10.52.0.0/16",
        "service-cidr": "10.53.0.0/16",
        "cluster-dns": "10.53.0.10",
        "cluster-domain": "example.internal",
        "flannel-backend": "host-gw",
        "disable-network-policy": "true",
        "node-monitor-grace-period": "20",
    }
    agent = ClusterSettings.from_data(data)
    trace = Settings.from_configmap(data)
    assert agent == ClusterSettings(
        "10.52.0.0/16", "10.53.0.0/16", "10.53.0.10", "example.internal", "host-gw", True, 20
    )
    assert trace == Settings("10.52.0.0/16", "10.53.0.0/16", "10.53.0.10", "example.internal", "host-gw", False)


def test_a_bad_grace_period_is_refused() -> None:
    with pytest.raises(ValueError):
        ClusterSettings.from_data({"node-monitor-grace-period": "soon"})
