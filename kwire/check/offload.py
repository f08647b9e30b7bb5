"""The VXLAN UDP checksum offload bug (flannel-io/flannel#1279, k3s-io/k3s#556 and their many duplicates): with tx
checksum offload on flannel.1, kernels before 5.7 (the netfilter NAT fix for UDP checksums in VXLAN) and VMware's
vmxnet3 NICs send VXLAN packets whose inner checksum is wrong after NAT, so Service and NodePort traffic to pods on
other nodes is dropped while ping works. K3s's documented fix is `ethtool -K flannel.1 tx-checksum-ip-generic off`.
The state is read over ethtool netlink (pyroute2), so no `ethtool` binary is needed."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kwire.check.finding import Finding

FEATURE = "tx-checksum-ip-generic"
AFFECTED_DRIVERS = ("vmxnet3",)
FIXED_KERNEL = (5, 7)


@dataclass(frozen=True)
class OffloadFacts:
    tx_checksum: bool | None  # flannel.1's tx-checksum-ip-generic; None without flannel.1 or when unreadable
    kernel: str  # uname -r
    uplink_driver: str = ""


def kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check(facts: OffloadFacts, *, node: str) -> list[Finding]:
    if not facts.tx_checksum:
        return []
    reasons = []
    if kernel_version(facts.kernel) < FIXED_KERNEL:
        reasons.append(f"kernel {facts.kernel} is older than 5.7")
    if facts.uplink_driver in AFFECTED_DRIVERS:
        reasons.append(f"the uplink's driver is {facts.uplink_driver}")
    if not reasons:
        return []
    return [
        Finding(
            "warning",
            "offload",
            f"{node}/flannel.1",
            f"{FEATURE} is on for flannel.1 and {' and '.join(reasons)}: the VXLAN checksum offload bug drops "
            "Service/NodePort traffic to pods on other nodes (ping still works)",
            f"ethtool -K flannel.1 {FEATURE} off",
        )
    ]


def gather(*, uplink: str) -> OffloadFacts:
    tx: bool | None = None
    if Path("/sys/class/net/flannel.1").exists() or _has_link("flannel.1"):
        try:
            from kwire.kernel.pyroute import Ethtool

            eth = Ethtool()
            try:
                feature = eth.get_features("flannel.1").features.get(FEATURE)
                tx = bool(feature.enable) if feature is not None else None
            finally:
                eth.close()
        except Exception:  # noqa: BLE001 - ethtool netlink missing or the device vanished: unknown, not a finding
            tx = None
    driver = ""
    if uplink:
        try:
            driver = os.path.basename(os.readlink(f"/sys/class/net/{uplink}/device/driver"))
        except OSError:
            driver = ""
    return OffloadFacts(tx_checksum=tx, kernel=os.uname().release, uplink_driver=driver)


def _has_link(name: str) -> bool:
    from kwire.kernel.pyroute import IPRoute

    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))
