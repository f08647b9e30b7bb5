"""`kwire lab check --name LAB`: `kwire check --scope node` in every running node's namespace (in parallel,
through `ip netns exec`, so each sees its node's links, sysctls, nft ruleset and /sys), the cluster-wide checks
once through the lab's kubeconfig (with every node's agent data dir, for the DNS pods' resolv.conf), and the
comparison across nodes only a view of all of them can make (uplink and flannel.1 MTU)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from kwire.check import cluster, mtu
from kwire.check.finding import Finding
from kwire.client import ApiClient, load_kubeconfig
from kwire.lab import lab, network, topology

NODE_TIMEOUT = 120.0


class LabCheckError(RuntimeError):
    pass


def node_command(host: topology.Host, topo: topology.Topology, st: cluster.Settings, backend: str) -> list[str]:
    return [
        lab.IP,
        "netns",
        "exec",
        host.netns,
        sys.executable,
        "-m",
        "kwire",
        "check",
        "--scope",
        "node",
        "--report",
        "--node",
        host.name,
        "--data-dir",
        str(topo.state_dir / host.name),
        "--cluster-dns",
        st.cluster_dns,
        "--cluster-domain",
        st.cluster_domain,
        "--flannel-iface",
        network.HOST_IFACE,
        "--flannel-backend",
        backend,
    ]


async def _cluster(topo: topology.Topology, running: list[topology.Host]) -> cluster.ClusterReport:
    async with ApiClient(load_kubeconfig(str(topo.kubeconfig)), timeout=20) as client:
        return await cluster.run(client, node_dirs={h.name: topo.state_dir / h.name for h in running})


def run(name: str) -> list[Finding]:
    state = lab.LabState.load(name)
    if state is None:
        raise LabCheckError(f"no lab named {name} (kwire lab up --name {name})")
    topo = topology.build(state.name, nodes=state.nodes)
    running = [h for h in topo.nodes if h.name not in state.stopped]
    findings: list[Finding] = [
        Finding("info", "nodes", h.name, f"{h.name} was stopped with `kwire lab node stop`: not checked", "")
        for h in topo.nodes
        if h.name in state.stopped
    ]
    report = asyncio.run(_cluster(topo, running))
    findings += report.findings
    backend = report.settings.backend or state.flannel_backend
    procs = {
        h.name: subprocess.Popen(
            node_command(h, topo, report.settings, backend), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for h in running
    }
    links: dict[str, mtu.Links] = {}
    for node, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=NODE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            findings.append(Finding("error", "nodes", node, f"the node's checks did not finish in {NODE_TIMEOUT:.0f}s"))
            continue
        try:
            doc = json.loads(out)
        except ValueError:
            findings.append(
                Finding(
                    "error", "nodes", node, f"the node's checks failed (exit {proc.returncode}): {err.strip()[-300:]}"
                )
            )
            continue
        findings += [Finding.from_json(f) for f in doc.get("findings") or []]
        links[node] = mtu.Links.from_json(doc.get("links") or {})
    findings += mtu.check_across(links)
    return findings
