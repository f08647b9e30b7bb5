"""Configuration of the cluster DNS server, and its command line (`python -m kwire.dns --help`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass


def split_ref(ref: str, default_ns: str = "kube-system") -> tuple[str, str]:
    """'kube-system/coredns' or 'coredns' -> (namespace, name)."""
    ns, sep, name = ref.partition("/")
    if not sep:
        ns, name = default_ns, ref
    if not ns or not name:
        raise ValueError(f"{ref!r}: expected <namespace>/<name>")
    return ns, name


@dataclass(frozen=True)
class DnsConfig:
    kubeconfig: str | None = None  # None: in-cluster config (service account)
    listen: str = "0.0.0.0"
    port: int = 53  # UDP and TCP; 0 picks a free port (tests)
    health_port: int = 8080  # GET /health
    ready_port: int = 8181  # GET /ready
    metrics_port: int = 9153  # GET /metrics
    http_listen: str | None = None  # address of the three HTTP ports; None: same as `listen`
    cluster_domain: str = "cluster.local"
    resolv_conf: str = "/etc/resolv.conf"
    node_hosts_configmap: str = "kube-system/coredns"  # key NodeHosts
    custom_configmap: str = "kube-system/coredns-custom"
    dns_service: str = "kube-system/kube-dns"  # its ClusterIP is the address of ns.dns.<zone>
    ttl: int = 5
    cache_ttl: int = 30  # `cache 30`: cap of forwarded answers' cache time
    forward_timeout: float = 2.0
    # Tests only: accept loopback upstreams (normally refused: from the DNS pod they would loop).
    allow_loopback_upstream: bool = False


def parser() -> argparse.ArgumentParser:
    d = DnsConfig()
    p = argparse.ArgumentParser(
        prog="python -m kwire.dns",
        description="kwire cluster DNS: the CoreDNS role as K3s configures it (kubernetes zone, NodeHosts, "
        "coredns-custom, forward to resolv.conf, cache 30, loadbalance).",
    )
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster service account)")
    p.add_argument("--listen", default=d.listen, help="address for DNS over UDP and TCP (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="DNS port (default %(default)s)")
    p.add_argument("--health-port", type=int, default=d.health_port, help="/health (default %(default)s)")
    p.add_argument("--ready-port", type=int, default=d.ready_port, help="/ready (default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=d.metrics_port, help="/metrics (default %(default)s)")
    p.add_argument("--http-listen", default=None, help="address of the HTTP ports (default: --listen)")
    p.add_argument("--cluster-domain", default=d.cluster_domain, help="cluster zone (default %(default)s)")
    p.add_argument("--resolv-conf", default=d.resolv_conf, help="upstream servers (default %(default)s)")
    p.add_argument(
        "--node-hosts-configmap", default=d.node_hosts_configmap, help="ConfigMap with NodeHosts (%(default)s)"
    )
    p.add_argument("--custom-configmap", default=d.custom_configmap, help="optional overrides (%(default)s)")
    p.add_argument("--dns-service", default=d.dns_service, help="this server's Service (%(default)s)")
    p.add_argument("--ttl", type=int, default=d.ttl, help="TTL of cluster records (default %(default)s)")
    p.add_argument("--cache-ttl", type=int, default=d.cache_ttl, help="max cache time of forwarded answers")
    p.add_argument("--forward-timeout", type=float, default=d.forward_timeout, help="upstream deadline, seconds")
    p.add_argument(
        "--allow-loopback-upstream",
        action="store_true",
        help="TESTS ONLY: accept loopback upstreams (normally refused, as they would loop back in the pod)",
    )
    return p


def from_args(argv: Sequence[str] | None = None) -> DnsConfig:
    a = parser().parse_args(argv)
    cfg = DnsConfig(
        kubeconfig=a.kubeconfig,
        listen=a.listen,
        port=a.port,
        health_port=a.health_port,
        ready_port=a.ready_port,
        metrics_port=a.metrics_port,
        http_listen=a.http_listen,
        cluster_domain=a.cluster_domain,
        resolv_conf=a.resolv_conf,
        node_hosts_configmap=a.node_hosts_configmap,
        custom_configmap=a.custom_configmap,
        dns_service=a.dns_service,
        ttl=a.ttl,
        cache_ttl=a.cache_ttl,
        forward_timeout=a.forward_timeout,
        allow_loopback_upstream=a.allow_loopback_upstream,
    )
    for ref in (cfg.node_hosts_configmap, cfg.custom_configmap, cfg.dns_service):
        try:
            split_ref(ref)
        except ValueError as exc:
            parser().error(str(exc))
    return cfg
