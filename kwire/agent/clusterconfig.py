"""The cluster-wide settings the server publishes in `kube-system/kwire-config` (kwire/server.py writes it): what
every agent reads at start, as a K3s agent reads the server's `/v1-k3s/config`, and what `kwire trace` reads to
compute the data path. One table of keys and defaults serves both readers, so a default cannot drift between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# field name -> (kwire-config key, the value when the key is absent): the network settings every reader shares
NETWORK_KEYS: dict[str, tuple[str, str]] = {
    "cluster_cidr": ("cluster-cidr", "10.42.0.0/16"),
    "service_cidr": ("service-cidr", "10.43.0.0/16"),
    "cluster_dns": ("cluster-dns", "10.43.0.10"),
    "cluster_domain": ("cluster-domain", "cluster.local"),
    "flannel_backend": ("flannel-backend", "vxlan"),
}


def network_settings(data: Mapping[str, str]) -> dict[str, str]:
    """The network settings of kwire-config's `data`, by field name (the defaults for absent keys)."""
    return {name: data.get(key, default) for name, (key, default) in NETWORK_KEYS.items()}


def network_policy_disabled(data: Mapping[str, str]) -> bool:
    """`disable-network-policy`: true when the server runs with --disable-network-policy."""
    return data.get("disable-network-policy", "false") == "true"


@dataclass
class ClusterSettings:
    """What an agent needs of kwire-config."""

    cluster_cidr: str
    service_cidr: str
    cluster_dns: str
    cluster_domain: str
    flannel_backend: str
    disable_network_policy: bool = False
    node_monitor_grace_period: int = 40

    @classmethod
    def from_data(cls, data: Mapping[str, str]) -> ClusterSettings:
        """Raises ValueError when node-monitor-grace-period is not a whole number."""
        return cls(
            **network_settings(data),
            disable_network_policy=network_policy_disabled(data),
            node_monitor_grace_period=int(data.get("node-monitor-grace-period") or 40),
        )
