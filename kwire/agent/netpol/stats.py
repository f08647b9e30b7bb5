"""Per-policy packet counters read back from the kernel's table (`nft -j list table ip kwire-netpol`).

allowed_packets of a policy: the counters of its policy chains' rules (each accepting rule's comment is
"<namespace>/<name> <direction> <index>"). denied_packets: the drop counters of the pod chains that jump to its
chains (a pod chain's jump rules are commented with the policy's key), i.e. the new connections refused to or from
the pods it isolates; a pod isolated by two policies counts its drops under both. Counters restart from zero when
the table is replaced whole (a full sync).
"""

from __future__ import annotations

from typing import Any

from kwire.agent.netpol.ruleset import TABLE
from kwire.kernel import nft


def _expr_kind(expr: list[Any], kind: str) -> Any:
    for e in expr:
        if isinstance(e, dict) and kind in e:
            return e[kind]
    return None


def _has(expr: list[Any], kind: str) -> bool:
    return any(isinstance(e, dict) and kind in e for e in expr)


def policy_counters(table: dict[str, Any] | None = None) -> dict[str, dict[str, int]]:
    """{policy key: {"allowed_packets": n, "denied_packets": n}} for every policy with rules on this node."""
    if table is None:
        table = nft.list_table("ip", TABLE)
    if table is None:
        return {}
    rules: dict[str, list[dict[str, Any]]] = {}
    for item in table.get("nftables", []):
        r = item.get("rule") if isinstance(item, dict) else None
        if r:
            rules.setdefault(str(r.get("chain")), []).append(r)
    out: dict[str, dict[str, int]] = {}

    def entry(key: str) -> dict[str, int]:
        return out.setdefault(key, {"allowed_packets": 0, "denied_packets": 0})

    for chain, items in rules.items():
        if chain.startswith("pol-"):
            for r in items:
                counter = _expr_kind(r.get("expr") or [], "counter")
                comment = str(r.get("comment") or "")
                if counter is None or not comment:
                    continue
                key = comment.rsplit(" ", 2)[0]
                entry(key)["allowed_packets"] += int(counter.get("packets", 0))
        elif chain.startswith("pod-"):
            policies = []
            dropped = 0
            for r in items:
                expr = r.get("expr") or []
                if _has(expr, "jump") and r.get("comment"):
                    policies.append(str(r["comment"]))
                elif _has(expr, "drop"):
                    counter = _expr_kind(expr, "counter")
                    if counter is not None:
                        dropped += int(counter.get("packets", 0))
            for key in policies:
                entry(key)["denied_packets"] += dropped
    return out
