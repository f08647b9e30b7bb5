"""The rules as the kernel holds them, read back from a node's namespace (`nft -j list table`), for `kwire trace`:

- the difference between what the node's agent should have programmed (the same `nft.Table` the trace computed)
  and what is there: chain names and the verdict maps that steer every packet (the proxy's `service-ips`,
  `service-nodeports`, `no-endpoint-*`; NetworkPolicy's `ingress-pods`/`egress-pods`), so an agent that has not
  synced (stopped, failing, lagging) shows up as a difference instead of a wrong prediction;
- the proxy's ClientIP affinity entries (dynamic sets only the kernel knows), which decide the endpoint of a client
  that already has one.

Elements are turned into the text form kwire's model keeps them in (`10.43.0.10 . udp . 53` -> `goto service-...`).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kwire.kernel import nft
from kwire.kernel.nft.kernel import NFT

IP = "/usr/sbin/ip"
MAPS = {
    "kwire-proxy": ("service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports"),
    "kwire-netpol": ("ingress-pods", "egress-pods"),
}
MAX_LISTED = 5  # differences listed per map before "and N more"


@dataclass
class KernelTable:
    chains: set[str] = field(default_factory=set)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)


def _key(k: Any) -> str:
    if isinstance(k, dict) and "concat" in k:
        return " . ".join(_key(x) for x in k["concat"])
    if isinstance(k, dict) and "prefix" in k:
        return f"{k['prefix']['addr']}/{k['prefix']['len']}"
    if isinstance(k, dict) and "range" in k:
        return f"{k['range'][0]}-{k['range'][1]}"
    if isinstance(k, dict) and "elem" in k:
        return _key(k["elem"].get("val"))
    return str(k)


def _verdict(v: Any) -> str:
    if isinstance(v, dict) and len(v) == 1:
        kind, arg = next(iter(v.items()))
        return f"{kind} {arg['target']}" if isinstance(arg, dict) and "target" in arg else str(kind)
    return str(v)


def parse(objs: list[dict[str, Any]]) -> KernelTable:
    out = KernelTable()
    for o in objs:
        if "chain" in o:
            out.chains.add(str(o["chain"]["name"]))
        elif "map" in o:
            out.maps[str(o["map"]["name"])] = {_key(k): _verdict(v) for k, v in o["map"].get("elem") or []}
        elif "set" in o:
            out.sets[str(o["set"]["name"])] = {_key(e) for e in o["set"].get("elem") or []}
    return out


def read(ns: str, table: str) -> KernelTable | None:
    """`nft -j list table ip TABLE` in namespace `ns` ("" = this one); None when the table is not there."""
    cmd = [NFT, "-j", "list", "table", "ip", table]
    res = subprocess.run(
        cmd if not ns else [IP, "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=20, check=False
    )
    if res.returncode != 0:
        return None
    return parse(list(json.loads(res.stdout).get("nftables") or []))


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def differences(desired: nft.Table, kernel: KernelTable | None) -> list[str]:
    """How the kernel's table differs from the computed one (chain names and the steering maps)."""
    if kernel is None:
        return [f"table ip {desired.name} is missing"]
    out = []
    missing = sorted(set(desired.chains) - kernel.chains)
    extra = sorted(kernel.chains - set(desired.chains))
    if missing:
        out.append(f"{desired.name}: chains missing in the kernel: {_listed(missing)}")
    if extra:
        out.append(f"{desired.name}: chains the agent would not have: {_listed(extra)}")
    for name in MAPS.get(desired.name, ()):
        want = dict(desired.maps[name].elements) if name in desired.maps else {}
        have = kernel.maps.get(name, {})
        gone = [f"{k} : {v}" for k, v in sorted(want.items()) if have.get(k) != v]
        stale = [f"{k} : {v}" for k, v in sorted(have.items()) if want.get(k) != v]
        if gone:
            out.append(f"{desired.name} map {name}: missing in the kernel: {_listed(gone)}")
        if stale:
            out.append(f"{desired.name} map {name}: in the kernel, not computed: {_listed(stale)}")
    return out


def affinity(kernel: KernelTable | None) -> dict[str, set[str]]:
    """The proxy's affinity sets: set name -> the client addresses pinned to that endpoint."""
    if kernel is None:
        return {}
    return {name: elems for name, elems in kernel.sets.items() if name.startswith("affinity-") and elems}


def node_report(tables: Mapping[str, nft.Table], kernel: Mapping[str, KernelTable | None]) -> list[str]:
    out: list[str] = []
    for name, desired in tables.items():
        out += differences(desired, kernel.get(name))
    return out
