"""`kwire trace` output: the numbered hops and the verdict line as text, or the same as JSON (`-o json`).

The text is the first candidate's whole path; further endpoint candidates of a random pick follow as one line
each with their own verdict, so a path whose fate depends on the pick says so.
"""

from __future__ import annotations

from typing import Any

from kwire.trace.path import DELIVERED, DEPENDS, Leg, Prediction


def _verdict_line(verdict: str, step: int, reason: str) -> str:
    if verdict == DELIVERED:
        return "verdict: DELIVERED"
    if verdict == DEPENDS:
        return "verdict: DEPENDS on the endpoint picked (see the candidates above)"
    return f"verdict: {verdict} at step {step} ({reason})"


def _leg_summary(p: Prediction, i: int, leg: Leg) -> str:
    step, hop = p.deciding(i)
    if hop is None:
        return f"  endpoint {leg.endpoint}: DELIVERED"
    return f"  endpoint {leg.endpoint}: {hop.end} at step {step} ({hop.reason}): {hop.text}"


def text(p: Prediction) -> str:
    lines = [f"{i} {h.text}" for i, h in enumerate(p.hops(0), 1)]
    if len(p.legs) > 1:
        lines.append(f"other endpoint candidates ({len(p.legs) - 1}):")
        lines += [_leg_summary(p, i, leg) for i, leg in enumerate(p.legs) if i > 0]
    step, hop = p.deciding(0)
    lines.append(_verdict_line(p.verdict, step, hop.reason if hop is not None else ""))
    return "\n".join(lines)


def as_json(p: Prediction) -> dict[str, Any]:
    def hops(i: int) -> list[dict[str, Any]]:
        return [
            {"step": n, "kind": h.kind, "text": h.text, **({"end": h.end, "reason": h.reason} if h.end else {})}
            for n, h in enumerate(p.hops(i), 1)
        ]

    step, hop = p.deciding(0)
    return {
        "from": {"kind": p.src.kind, "name": p.src.label, "ip": p.src.ip, "node": p.src.node},
        "to": {"kind": p.dst.kind, "name": p.dst.label, "ip": p.dst_ip, "port": p.port, "protocol": p.proto},
        "entryNode": p.entry_node,
        "nodes": p.nodes,
        "hops": hops(0),
        "candidates": [
            {"endpoint": leg.endpoint, "verdict": leg.verdict, "sourceSeen": leg.src_seen, "hops": hops(i)}
            for i, leg in enumerate(p.legs)
        ],
        "verdict": p.verdict,
        "step": step,
        "reason": hop.reason if hop is not None else "",
    }
