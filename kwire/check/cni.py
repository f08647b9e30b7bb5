"""The node's CNI configuration, the K3s guides' first pod-to-pod recipe (`cat /etc/cni/net.d/10-flannel.conflist`):
the agent's `<data-dir>/cni/net.d/10-flannel.conflist` exists, parses, starts with the `flannel` plugin (then
`portmap` for hostPorts, which ServiceLB's svclb pods need) and keeps `hairpinMode` on in the bridge delegate."""

from __future__ import annotations

import json
from pathlib import Path

from kwire.check.finding import Finding

CONFLIST = Path("cni") / "net.d" / "10-flannel.conflist"


def check(text: str | None, *, node: str, path: str) -> list[Finding]:
    subject = f"{node}/10-flannel.conflist"
    if text is None:
        return [
            Finding(
                "error",
                "cni",
                subject,
                f"{path} does not exist: the kubelet cannot wire any pod to the network",
                "look at the agent's log; it writes the file once flannel has its subnet",
            )
        ]
    try:
        doc = json.loads(text)
        plugins = [p for p in doc.get("plugins") or [] if isinstance(p, dict)]
    except (ValueError, AttributeError) as exc:
        return [Finding("error", "cni", subject, f"{path} is not a CNI conflist ({exc})", "restart the agent")]
    types = [str(p.get("type", "")) for p in plugins]
    findings = []
    if not types or types[0] != "flannel":
        findings.append(
            Finding(
                "error",
                "cni",
                subject,
                f"{path} starts with {types[0] if types else 'no plugin'}, not flannel: pods do not get flannel's "
                "subnet and MTU",
                "restart the agent (it rewrites K3s's conflist)",
            )
        )
    elif (plugins[0].get("delegate") or {}).get("hairpinMode") is False:
        findings.append(
            Finding(
                "warning",
                "cni",
                subject,
                f"{path} turns hairpinMode off: new pods cannot reach themselves through a Service",
                "restart the agent (K3s's conflist sets hairpinMode: true)",
            )
        )
    if "portmap" not in types:
        findings.append(
            Finding(
                "warning",
                "cni",
                subject,
                f"{path} has no portmap plugin: hostPorts (and ServiceLB's svclb pods) do not work",
                "restart the agent (it rewrites K3s's conflist)",
            )
        )
    return findings


def read(data_dir: Path) -> tuple[str | None, str]:
    path = data_dir / CONFLIST
    try:
        return path.read_text(), str(path)
    except OSError:
        return None, str(path)
