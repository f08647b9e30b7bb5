"""Hairpin mode on cni0's ports. K3s's CNI config sets `hairpinMode: true` on the bridge plugin so a pod reaching a
Service that picks the pod itself gets its packet back through its own veth; a port with hairpin off drops that
packet (the bridge never sends a frame out of the port it came in on). Read from
/sys/class/net/cni0/brif/<port>/hairpin_mode in the node's namespace."""

from __future__ import annotations

import os
from pathlib import Path

from kwire.check.finding import Finding
from kwire.check.vethpods import label

BRIF = Path("/sys/class/net/cni0/brif")


def check(ports: dict[str, bool], *, node: str, pods: dict[str, str] | None = None) -> list[Finding]:
    off = sorted(p for p, on in ports.items() if not on)
    if not off:
        return []
    return [
        Finding(
            "warning",
            "hairpin",
            f"{node}/cni0",
            f"hairpin mode is off on cni0 port{'s' if len(off) > 1 else ''} {', '.join(label(p, pods or {}) for p in off)}: a pod behind "
            "such a port cannot reach itself through a Service",
            " ; ".join(f"bridge link set dev {p} hairpin on" for p in off[:3]) + (" ..." if len(off) > 3 else ""),
        )
    ]


def gather(brif: Path = BRIF) -> dict[str, bool]:
    ports: dict[str, bool] = {}
    try:
        names = os.listdir(brif)
    except OSError:
        return ports
    for name in names:
        try:
            ports[name] = (brif / name / "hairpin_mode").read_text().strip() == "1"
        except OSError:
            continue
    return ports
