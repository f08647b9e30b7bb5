"""Sysctls in the node's network namespace that the K3s data path needs: net.ipv4.ip_forward (pod traffic is
routed), net.bridge.bridge-nf-call-iptables (bridged pod-to-pod traffic passes netfilter: Service replies are
un-NATed and NetworkPolicy sees it; K3s and kube-proxy require it), and reverse-path filtering on flannel.1 and
cni0 (strict mode, 1, drops tunnelled or hairpinned packets whose reverse route is elsewhere; the effective value
is the larger of `conf.all` and the interface's, as the kernel computes it), and the conntrack table filling up
(net.netfilter.nf_conntrack_count against nf_conntrack_max: a full table drops new connections, the K3s guides'
"increase conntrack limits")."""

from __future__ import annotations

from pathlib import Path

from kwire.check.finding import Finding

PROC_SYS = Path("/proc/sys")
IP_FORWARD = "net.ipv4.ip_forward"
BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"
RP_IFACES = ("flannel.1", "cni0")
CT_COUNT = "net.netfilter.nf_conntrack_count"
CT_MAX = "net.netfilter.nf_conntrack_max"
CT_FULL = 0.9


def names(ifaces: tuple[str, ...] = RP_IFACES) -> list[str]:
    out = [IP_FORWARD, BRIDGE_NF, "net.ipv4.conf.all.rp_filter", CT_COUNT, CT_MAX]
    out += [f"net.ipv4.conf.{i}.rp_filter" for i in ifaces]
    return out


def _path(name: str) -> Path:
    """`net.ipv4.conf.flannel.1.rp_filter` -> /proc/sys/net/ipv4/conf/flannel.1/rp_filter."""
    if name.startswith("net.ipv4.conf.") and name.endswith(".rp_filter"):
        iface = name[len("net.ipv4.conf.") : -len(".rp_filter")]
        return PROC_SYS / "net" / "ipv4" / "conf" / iface / "rp_filter"
    return PROC_SYS.joinpath(*name.split("."))


def gather(ifaces: tuple[str, ...] = RP_IFACES) -> dict[str, str | None]:
    """Each sysctl's value in the calling process's network namespace; None when it does not exist."""
    out: dict[str, str | None] = {}
    for name in names(ifaces):
        try:
            out[name] = _path(name).read_text().strip()
        except OSError:
            out[name] = None
    return out


def check(values: dict[str, str | None], *, node: str) -> list[Finding]:
    findings = []
    if values.get(IP_FORWARD) not in (None, "1"):
        findings.append(
            Finding(
                "error",
                "sysctl",
                f"{node}/{IP_FORWARD}",
                f"{IP_FORWARD} is {values[IP_FORWARD]}: the node does not route, so traffic between pods of "
                "different nodes and to Services is dropped",
                f"sysctl -w {IP_FORWARD}=1 (and persist it in /etc/sysctl.d/)",
            )
        )
    if values.get(BRIDGE_NF) not in (None, "1"):
        findings.append(
            Finding(
                "error",
                "sysctl",
                f"{node}/{BRIDGE_NF}",
                f"{BRIDGE_NF} is {values[BRIDGE_NF]}: traffic between pods on this node's cni0 bypasses netfilter "
                "(Service replies are not un-NATed, NetworkPolicy does not see it)",
                f"sysctl -w {BRIDGE_NF}=1",
            )
        )
    all_rp = _int(values.get("net.ipv4.conf.all.rp_filter"))
    for iface in RP_IFACES:
        own = values.get(f"net.ipv4.conf.{iface}.rp_filter")
        if own is None:
            continue  # no such interface
        effective = max(all_rp, _int(own))
        if effective == 1:
            findings.append(
                Finding(
                    "warning",
                    "sysctl",
                    f"{node}/{iface}",
                    f"strict reverse-path filtering (rp_filter=1) on {iface}: packets whose reverse route leaves by "
                    "another interface are dropped silently (asymmetric routes, multi-NIC nodes)",
                    f"sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{iface.replace('.', '/')}.rp_filter=2 (loose)",
                )
            )
    count, limit = _int(values.get(CT_COUNT)), _int(values.get(CT_MAX))
    if limit and count >= CT_FULL * limit:
        findings.append(
            Finding(
                "warning" if count < limit else "error",
                "sysctl",
                f"{node}/{CT_COUNT}",
                f"the conntrack table holds {count} of {limit} entries: when it is full new connections are dropped "
                "(dmesg: nf_conntrack: table full, dropping packet)",
                f"sysctl -w {CT_MAX}={limit * 2} (and persist it in /etc/sysctl.d/)",
            )
        )
    return findings


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
