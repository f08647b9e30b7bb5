"""`kwire lab up` returns when the cluster is usable, not only when nodes are Ready: cluster DNS answers from
every node (a pod created right after `up` resolves names at once) and every packaged add-on serves.

Before, `up` returned as soon as the nodes were Ready and the pod network carried traffic; the CoreDNS pod was
then still starting, and until it was Ready *and* each node's service proxy had its endpoint, a query to the
kube-dns ClusterIP met the proxy's reject for a Service without endpoints ("connection refused"), for a few
seconds. Here each node asks kube-dns (`kubernetes.default.svc.<domain>` A, through the ClusterIP, as a pod's
resolver does) until it answers, and every add-on workload (objects labelled `kwire.io/addon` in kube-system:
Deployments with all replicas available, DaemonSets with every daemon pod available) is waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import dns.message
import dns.query
import dns.rcode

from kwire.client import ApiClient, NotFound, Resource
from kwire.client.client import CONFIGMAPS, DAEMONSETS, DEPLOYMENTS
from kwire.config import CLUSTER_CONFIG
from kwire.kernel import netns
from kwire.lab.topology import Topology

ADDON_LABEL = "kwire.io/addon"


def dns_answers(ns_name: str, server: str, name: str) -> bool:
    """One A query for `name` to `server`:53 from inside network namespace `ns_name`; True on an answer."""
    q = dns.message.make_query(name, "A")
    try:
        sock = netns.open_socket(ns_name, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return False
    try:
        r = dns.query.udp(q, server, timeout=1.0, sock=sock)
    except (OSError, dns.exception.DNSException):
        return False
    finally:
        sock.close()
    return r.rcode() == dns.rcode.NOERROR and bool(r.answer)


async def cluster_settings(client: ApiClient) -> dict[str, str]:
    with contextlib.suppress(NotFound):
        cm = await client.get(CONFIGMAPS, CLUSTER_CONFIG, "kube-system")
        return {str(k): str(v) for k, v in (cm.get("data") or {}).items()}
    return {}


async def wait_dns(topo: Topology, *, server: str, domain: str, timeout: float) -> None:
    """Until kube-dns answers on every node."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    pending = [h.netns for h in topo.nodes]
    name = f"kubernetes.default.svc.{domain}."
    while pending:
        results = await asyncio.gather(*(asyncio.to_thread(dns_answers, ns, server, name) for ns in pending))
        pending = [ns for ns, ok in zip(pending, results, strict=True) if not ok]
        if not pending:
            return
        if loop.time() > end:
            raise TimeoutError(f"cluster DNS ({server}) does not answer from {', '.join(pending)}")
        await asyncio.sleep(0.2)


def _available(res: Resource, obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    if res is DEPLOYMENTS:
        want = int((obj.get("spec") or {}).get("replicas", 1) or 0)
        return int(st.get("availableReplicas") or 0) >= want and int(st.get("updatedReplicas") or 0) >= want
    want = int(st.get("desiredNumberScheduled") or 0)
    return want > 0 and int(st.get("numberAvailable") or 0) >= want


async def wait_addons(client: ApiClient, *, timeout: float) -> list[str]:
    """Until every add-on workload is available; their names."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        names, waiting = [], []
        for res in (DEPLOYMENTS, DAEMONSETS):
            with contextlib.suppress(NotFound):
                items = (await client.list(res, "kube-system", label_selector=ADDON_LABEL)).get("items") or []
                for obj in items:
                    n = f"{res.kind.lower()}/{obj['metadata']['name']}"
                    names.append(n)
                    if not _available(res, obj):
                        waiting.append(n)
        if not waiting:
            return names
        if loop.time() > end:
            raise TimeoutError(f"add-ons not available: {', '.join(waiting)}")
        await asyncio.sleep(0.2)
