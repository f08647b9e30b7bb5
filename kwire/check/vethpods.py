"""Which pod is behind which cni0 port: the CNI result cache the kubelet keeps (libcni's `cniCacheV1` files under
`<data-dir>/cni/cache/results/`) lists the host-side veth of each ADD (the interface without a sandbox, other than
the bridge) beside the pod's K8S_POD_NAMESPACE/K8S_POD_NAME CNI args. Findings about ports then name pods, not
`veth853e7149`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BRIDGE = "cni0"


def from_cache(doc: dict[str, Any]) -> tuple[str, str] | None:
    """(host veth, "namespace/name") from one cniCacheV1 document; None when it names no such pair."""
    args = {str(a[0]): str(a[1]) for a in doc.get("cniArgs") or [] if isinstance(a, list) and len(a) == 2}
    ns, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    if not ns or not name:
        return None
    for iface in (doc.get("result") or {}).get("interfaces") or []:
        ifname = str(iface.get("name", ""))
        if ifname and ifname != BRIDGE and not iface.get("sandbox"):
            return ifname, f"{ns}/{name}"
    return None


def gather(data_dir: Path | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if data_dir is None:
        return out
    for path in (data_dir / "cni" / "cache" / "results").glob("*"):
        try:
            pair = from_cache(json.loads(path.read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if pair is not None:
            out[pair[0]] = pair[1]
    return out


def label(port: str, pods: dict[str, str]) -> str:
    return f"{port} (pod {pods[port]})" if port in pods else port
