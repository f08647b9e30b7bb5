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
from kwire.config import ClusterSettings
from kwire.lab import lab, network, topology

NODE_TIMEOUT = 120.0


class LabCheckError(RuntimeError):
    pass


def node_command(host: topology.Host, topo: topology.Topology, st: ClusterSettings, backend: str) -> list[str]:
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
        "--cluster-cidr",
        st.cluster_cidr,
        "--flannel-iface",
        network.HOST_IFACE,
        "--flannel-backend",
        backend,
    ]


def run(name: str) -> list[Finding]:
    state = lab.LabState.load(name)
    if state is None:
        raise LabCheckError(f"no lab named {name} (kwire lab up --name {name})")
    return asyncio.run(_run(state))


async def _run(state: lab.LabState) -> list[Finding]:
    topo = topology.build(state.name, nodes=state.nodes)
    running = [h for h in topo.nodes if h.name not in state.stopped]
    findings: list[Finding] = [
        Finding("info", "nodes", h.name, f"{h.name} was stopped with `kwire lab node stop`: not checked", "")
        for h in topo.nodes
        if h.name in state.stopped
    ]
    async with ApiClient(load_kubeconfig(str(topo.kubeconfig)), timeout=20) as client:
        settings = await cluster.settings(client)
        backend = settings.flannel_backend or state.flannel_backend
        # The nodes' checks run while the cluster's are read: each is a process in its node's namespace.
        procs = {
            h.name: await asyncio.create_subprocess_exec(
                *node_command(h, topo, settings, backend), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for h in running
        }
        try:
            report = await cluster.run(client, node_dirs={h.name: topo.state_dir / h.name for h in running})
        finally:
            outputs = await asyncio.gather(*(_collect(node, proc) for node, proc in procs.items()))
    findings += report.findings
    links: dict[str, mtu.Links] = {}
    for node, node_findings, node_links in outputs:
        findings += node_findings
        if node_links is not None:
            links[node] = node_links
    findings += mtu.check_across(links)
    return findings


async def _collect(node: str, proc: asyncio.subprocess.Process) -> tuple[str, list[Finding], mtu.Links | None]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return node, [Finding("error", "nodes", node, f"the node's checks did not finish in {NODE_TIMEOUT:.0f}s")], None
    try:
        doc = json.loads(out)
    except ValueError:
        why = err.decode(errors="replace").strip()[-300:]
        return (
            node,
            [Finding("error", "nodes", node, f"the node's checks failed (exit {proc.returncode}): {why}")],
            None,
        )
    found = [Finding.from_json(f) for f in doc.get("findings") or []]
    return node, found, mtu.Links.from_json(doc.get("links") or {})
