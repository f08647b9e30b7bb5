"""The transactions kwire writes, given to a real kernel: the proxy's, NetworkPolicy's, Flannel's and ServiceLB's
tables applied
whole and then as differences in a scratch namespace (`kwire-nfttest<id>`), and after every step the kernel's own
listing (`nft -j list table`) holds exactly the chains, rules, sets and map elements of the desired `nft.Table`.
Also the stale-UDP conntrack cleanup over netlink, on a real conntrack entry made by a DNATed UDP packet.

Everything happens inside the scratch namespace; the machine's own namespace is never changed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kwire.agent.flannel.flannel import masquerade_table
from kwire.agent.netpol.model import parse_policy
from kwire.agent.proxy import ruleset
from kwire.agent.svclb import servicelb_table
from kwire.kernel import netns, nft
from kwire.kernel.conntrack import NetlinkConntrack, StaleUdp
from tests.unit import test_netpol_rules as np_cases
from tests.unit import test_proxy_rules as proxy_cases

pytestmark = pytest.mark.lab

NS = f"kwire-nfttest{os.environ.get('KWIRE_TEST_ID', '')}"


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    netns.remove(NS)
    netns.create(NS)
    try:
        yield NS
    finally:
        netns.remove(NS)


def _apply(txn: nft.Transaction) -> None:
    # The `nft` command, started from a thread inside the namespace (the long-lived libnftables context belongs
    # to whichever namespace first created it).
    netns.run_in(NS, lambda: nft.KernelApplier(library=False).apply(txn))


def _kernel(family: str, table: str) -> dict[str, Any]:
    """What the kernel holds: chain -> rule count, set/map -> element count, base chain -> hook."""
    out = subprocess.run(
        ["ip", "netns", "exec", NS, "nft", "-j", "list", "table", family, table],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    chains: dict[str, int] = {}
    hooks: dict[str, str] = {}
    elements: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        if "chain" in item:
            c = item["chain"]
            chains.setdefault(c["name"], 0)
            if "hook" in c:
                hooks[c["name"]] = c["hook"]
        elif "rule" in item:
            chains[item["rule"]["chain"]] = chains.get(item["rule"]["chain"], 0) + 1
        elif "set" in item or "map" in item:
            s = item.get("set") or item["map"]
            elements[s["name"]] = len(s.get("elem", []))
    return {"chains": chains, "hooks": hooks, "elements": elements}


def _model(t: nft.Table) -> dict[str, Any]:
    elements = {n: len(s.elements) for n, s in t.sets.items()}
    elements.update({n: len(m.elements) for n, m in t.maps.items()})
    return {
        "chains": {n: len(c.rules) for n, c in t.chains.items()},
        "hooks": {n: c.hook.hook for n, c in t.chains.items() if c.hook is not None},
        "elements": elements,
    }


def _interval_elements(kernel: dict[str, Any], t: nft.Table) -> dict[str, Any]:
    """nft lists an interval set's ranges as the kernel merged them: compare those sets by presence only."""
    for n, s in t.sets.items():
        if "interval" in s.flags and n in kernel["elements"]:
            kernel["elements"][n] = len(s.elements)
    return kernel


def _walk(steps: list[nft.Table]) -> None:
    applied: nft.Table | None = None
    for desired in steps:
        txn = nft.diff(applied, desired)
        _apply(txn)
        family, name = desired.ident
        assert _interval_elements(_kernel(family, name), desired) == _model(desired), txn.render()
        applied = desired


def test_proxy_tables_in_the_kernel(ns: str) -> None:
    """Every service type from the unit cases, added one by one, then changed and removed, one diff per step."""
    pt = ruleset.ProxyTable(
        cluster_cidr=proxy_cases.CLUSTER,
        service_cidr=proxy_cases.SVC_CIDR,
        node_ips=(proxy_cases.NODE1,),
        pod_cidr="10.42.0.0/24",
    )
    steps = [pt.table()]
    for i, (service, _node) in enumerate(proxy_cases.CASES.values()):
        obj, slices = service
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["name"] = f"svc{i}"
        obj["spec"]["clusterIP"] = f"10.43.1.{i + 1}"
        for p in obj["spec"]["ports"]:
            if p.get("nodePort"):
                p["nodePort"] = 30100 + i
        sl = [{**s, "metadata": {**s["metadata"], "labels": {"kubernetes.io/service-name": f"svc{i}"}}} for s in slices]
        for sp in proxy_cases.ports_of(obj, sl):
            pt.set(ruleset.service_rules(sp, node="node1", cluster_cidr=proxy_cases.CLUSTER))
        steps.append(pt.table())
    long = "a-very-long-service-name-" + "x" * 40  # a truncated chain name: the key goes into the chain comment
    for sp in proxy_cases.ports_of(
        proxy_cases.svc(long, clusterIP="10.43.2.1"), [proxy_cases.slice_(long, proxy_cases.THREE)]
    ):
        pt.set(ruleset.service_rules(sp, node="node1", cluster_cidr=proxy_cases.CLUSTER))
    steps.append(pt.table())
    for key in sorted(pt.services)[::2]:
        pt.remove(key)
        steps.append(pt.table())
    _walk(steps)
    _apply(nft.delete("ip", ruleset.TABLE))
    assert not netns.run_in(NS, lambda: nft.table_exists("ip", ruleset.TABLE))


def test_netpol_tables_in_the_kernel(ns: str) -> None:
    w = np_cases.World()
    c = w.compile("n1")
    steps = [c.build().table()]
    for p in np_cases.POLICIES:
        c.set_policy(f"{p['metadata']['namespace']}/{p['metadata']['name']}", parse_policy(p))
        steps.append(c.build().table())
    c.set_policy("x/deny", None)
    steps.append(c.build().table())
    _walk(steps)


def test_flannel_and_servicelb_tables_in_the_kernel(ns: str) -> None:
    _walk([masquerade_table(cluster_cidr="10.42.0.0/16", subnet="10.42.3.0/24")])
    env = {"SRC_PORT": "80", "DEST_PORT": "8080", "DEST_IPS": "10.43.74.49 10.43.74.50", "SRC_RANGES": "10.0.0.0/8"}
    _walk([servicelb_table(env)])


def test_stale_udp_conntrack_entries_are_deleted_over_netlink(ns: str) -> None:
    """A UDP packet to a ClusterIP, DNATed to an address of the namespace, leaves a conntrack entry; the netlink
    cleanup deletes exactly the entries matching the stale endpoint."""
    for cmd in (
        ["ip", "addr", "add", "10.42.0.2/32", "dev", "lo"],
        ["ip", "route", "add", "10.43.0.0/16", "dev", "lo"],
    ):
        subprocess.run(["ip", "netns", "exec", NS, *cmd], capture_output=True)
    pt = ruleset.ProxyTable(
        cluster_cidr="10.42.0.0/16", service_cidr="10.43.0.0/16", node_ips=("10.42.0.2",), pod_cidr=""
    )
    sp = proxy_cases.ports_of(
        proxy_cases.svc("dns", clusterIP="10.43.0.10", ports=[{"name": "http", "port": 53, "protocol": "UDP"}]),
        [proxy_cases.slice_("dns", [("10.42.0.2", "node1", proxy_cases.READY)], port=5353, proto="UDP")],
    )[0]
    pt.set(ruleset.service_rules(sp, node="node1", cluster_cidr="10.42.0.0/16"))
    _apply(nft.replace(pt.table()))
    rx = netns.open_socket(NS, socket.AF_INET, socket.SOCK_DGRAM, bind=("10.42.0.2", 5353))
    tx = netns.open_socket(NS, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tx.sendto(b"x", ("10.43.0.10", 53))
        rx.settimeout(5)
        assert rx.recv(10) == b"x"  # DNATed to the endpoint

        def entries() -> list[str]:
            out = subprocess.run(
                ["ip", "netns", "exec", NS, "conntrack", "-L", "-p", "udp"], capture_output=True, text=True
            ).stdout
            return [ln for ln in out.splitlines() if "dst=10.43.0.10" in ln]

        assert entries(), "no conntrack entry for the DNATed packet"
        ct = NetlinkConntrack()
        assert netns.run_in(NS, lambda: ct.delete_udp([StaleUdp(orig_dst="10.43.0.10", dnat_to="10.42.0.9")])) == 0
        assert entries()  # another endpoint's entries are left alone
        deleted = netns.run_in(NS, lambda: ct.delete_udp([StaleUdp(orig_dst="10.43.0.10", dnat_to="10.42.0.2")]))
        assert deleted == 1
        deadline = time.monotonic() + 5
        while entries() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not entries()
    finally:
        rx.close()
        tx.close()
