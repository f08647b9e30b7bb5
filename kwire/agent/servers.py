"""The agent's list of API servers, learned from the `kubernetes` EndpointSlice, as K3s's agent load balancer
learns the servers from the `kubernetes` Endpoints: with several servers the agent's API client fails over to
another one when its server cannot be connected to (`ApiClient.set_servers`, on each component's client), so pods keep running and service
rules stay in place while a server is down; the configured `--server` stays in the list as K3s keeps it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from kwire.client import Informer

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def server_urls(slice_: Obj) -> list[str]:
    """https://<address>:<port> of every ready endpoint of the kubernetes EndpointSlice."""
    ports = [p.get("port") for p in slice_.get("ports") or [] if p.get("port")]
    if not ports:
        return []
    port = int(ports[0])
    urls = []
    for ep in slice_.get("endpoints") or []:
        if (ep.get("conditions") or {}).get("ready") is False:
            continue
        for addr in ep.get("addresses") or []:
            host = f"[{addr}]" if ipaddress.ip_address(addr).version == 6 else addr
            urls.append(f"https://{host}:{port}")
    return urls


def follow_servers(slices: Informer, *, apply: Callable[[list[str]], None]) -> None:
    """Call `apply` with the servers the kubernetes EndpointSlice names whenever they change."""
    learned: list[str] = []

    def changed(*objs: Obj) -> None:
        obj = objs[-1]
        meta = obj.get("metadata") or {}
        if (
            meta.get("namespace") != "default"
            or (meta.get("labels") or {}).get("kubernetes.io/service-name") != "kubernetes"
        ):
            return
        urls = server_urls(obj)
        if urls and urls != learned:
            learned[:] = urls
            apply(urls)

    slices.on_add(changed)
    slices.on_update(changed)
