"""The checks of one node, run in the network namespace the process is in (on a host: the host's; in a lab:
`kwire lab check` starts `kwire check --scope node` inside each node's namespace with `ip netns exec`, which also
gives it that namespace's /sys). Each family gathers its facts and hands them to its pure check; a family that
cannot read its facts says so as a warning instead of failing the others."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kwire.check import cni, dns, firewall, hairpin, kernel, mtu, offload, sysctls, vethpods
from kwire.check.finding import Finding
from kwire.config import ClusterSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeOptions:
    node: str
    data_dir: Path | None = None  # the agent's --data-dir (subnet.env); None: not known here
    cluster_dns: str = ClusterSettings.cluster_dns
    cluster_domain: str = ClusterSettings.cluster_domain
    cluster_cidr: str = ClusterSettings.cluster_cidr
    flannel_iface: str = ""
    backend: str = ClusterSettings.flannel_backend


@dataclass
class NodeReport:
    findings: list[Finding] = field(default_factory=list)
    links: mtu.Links = field(default_factory=mtu.Links)


def _guard(report: NodeReport, node: str, family: str, fn: Callable[[], list[Finding]]) -> None:
    try:
        report.findings += fn()
    except Exception as exc:  # noqa: BLE001 - one family failing must not hide the others
        log.debug("check %s failed", family, exc_info=True)
        report.findings.append(
            Finding("warning", family, node, f"could not run the {family} check: {exc}", "run kwire check as root")
        )


def run(opts: NodeOptions) -> NodeReport:
    report = NodeReport()
    node = opts.node
    _guard(report, node, "kernel", lambda: kernel.check(kernel.gather(), node=node, flannel_backend=opts.backend))
    _guard(report, node, "sysctl", lambda: sysctls.check(sysctls.gather(), node=node))

    subnet_env = ""
    if opts.data_dir is not None and opts.data_dir.is_dir() and opts.backend != "none":
        path = opts.data_dir / "flannel" / "subnet.env"
        try:
            subnet_env = path.read_text()
        except OSError:
            report.findings.append(
                Finding(
                    "error",
                    "flannel",
                    node,
                    f"flannel has not written {path}: the CNI plugin cannot give pods an address on this node",
                    "look at the agent's log: is its podCIDR lease there (kubectl get node -o wide)?",
                )
            )

        text, where = cni.read(opts.data_dir)
        _guard(report, node, "cni", lambda: cni.check(text, node=node, path=where))
    pods = vethpods.gather(opts.data_dir)

    def do_mtu() -> list[Finding]:
        report.links = mtu.gather(uplink_hint=opts.flannel_iface, subnet_env=subnet_env)
        return mtu.check(report.links, node=node, pods=pods)

    _guard(report, node, "mtu", do_mtu)
    _guard(report, node, "offload", lambda: offload.check(offload.gather(uplink=report.links.uplink), node=node))
    vxlan = report.links.flannel_mtu is not None
    probes = firewall.probes_for_node(vxlan=vxlan, cluster_cidr=opts.cluster_cidr)
    _guard(report, node, "firewall", lambda: firewall.check_nft(firewall.gather_nft(), node=node, probes=probes))

    def legacy() -> list[Finding]:
        save = firewall.gather_legacy()
        return firewall.check_legacy(save, node=node, probes=probes) if save else []

    _guard(report, node, "firewall", legacy)
    _guard(report, node, "hairpin", lambda: hairpin.check(hairpin.gather(), node=node, pods=pods))
    _guard(report, node, "dns", lambda: dns.check_node_resolv(dns.local_resolv(), node=node))
    name = f"kubernetes.default.svc.{opts.cluster_domain}."
    _guard(
        report,
        node,
        "dns",
        lambda: dns.check_answer(dns.query(opts.cluster_dns, name), node=node, server=opts.cluster_dns, name=name),
    )
    return report
