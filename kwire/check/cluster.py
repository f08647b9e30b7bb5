"""The cluster-wide checks, from the API through `kwire.client`: nodes and flannel leases (`flannel`), Services
whose selector matches no pod (`services`), pending LoadBalancers (`loadbalancers`), and the resolv.conf of every
cluster DNS pod whose node's agent data dir is readable here (`dns`: the pod's sandbox record in
`<data-dir>/pods/<uid>.json` names its network namespace, whose resolv.conf is `/etc/netns/<netns>/resolv.conf`).
Also returns the cluster's settings (kube-system/kwire-config, published by the server) the node checks need."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kwire.check import dns, flannel, loadbalancers, services
from kwire.check.finding import Finding
from kwire.client import ApiClient, ApiStatusError, NotFound
from kwire.client.client import CONFIGMAPS, EVENTS, IPADDRESSPOOLS, NODES, PODS, SERVICES
from kwire.config import CLUSTER_CONFIG, ClusterSettings

ETC_NETNS = Path("/etc/netns")


@dataclass
class ClusterReport:
    findings: list[Finding] = field(default_factory=list)
    settings: ClusterSettings = field(default_factory=ClusterSettings)


async def settings(client: ApiClient) -> ClusterSettings:
    with contextlib.suppress(NotFound):
        cm = await client.get(CONFIGMAPS, CLUSTER_CONFIG, "kube-system")
        return ClusterSettings.from_configmap({str(k): str(v) for k, v in (cm.get("data") or {}).items()})
    return ClusterSettings()


def dns_pod_resolv(pod: dict[str, Any], data_dir: Path) -> str | None:
    """The resolv.conf a pod of this node sees, found through the agent's sandbox record; None when unknown."""
    uid = str((pod.get("metadata") or {}).get("uid", ""))
    try:
        record = json.loads((data_dir / "pods" / f"{uid}.json").read_text())
        return (ETC_NETNS / str(record["netns"]) / "resolv.conf").read_text()
    except (OSError, ValueError, KeyError):
        return None


async def run(client: ApiClient, *, node_dirs: dict[str, Path]) -> ClusterReport:
    report = ClusterReport(settings=await settings(client))
    st = report.settings
    nodes = (await client.list_all(NODES)).get("items") or []
    report.findings += flannel.check(nodes, backend=st.flannel_backend)
    svcs = (await client.list_all(SERVICES)).get("items") or []
    pods = (await client.list_all(PODS)).get("items") or []
    report.findings += services.check(svcs, pods)
    pools: list[dict[str, Any]] = []
    metallb = True
    try:
        pools = (await client.list_all(IPADDRESSPOOLS)).get("items") or []
    except ApiStatusError:  # the kind is not served: MetalLB is not installed
        metallb = False
    events = []
    if metallb:
        events = [
            e
            for e in (await client.list_all(EVENTS)).get("items") or []
            if (e.get("involvedObject") or {}).get("kind") == "Service"
        ]
    report.findings += loadbalancers.check(
        loadbalancers.LbState(
            services=svcs,
            pods=pods,
            servicelb="servicelb" not in st.disable,
            metallb=metallb,
            pools=pools,
            events=events,
        )
    )
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if labels.get("k8s-app") != "kube-dns" or node not in node_dirs or not services.live(pod):
            continue
        text = dns_pod_resolv(pod, node_dirs[node])
        if text is not None:
            name = f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}"
            report.findings += dns.check_dns_pod_resolv(text, pod=name, node=node)
    return report
