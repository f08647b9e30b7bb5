"""Services whose selector matches no pod (the K3s guides' `kubectl get endpoints` / `kubectl describe service`
recipe), with the nearest label mismatch: `app=web` while the pods say `app=webapp`. Services without a
selector (endpoints managed by hand), ExternalName and headless-without-selector ones are left alone; finished
pods do not count, as the endpoints controller ignores them."""

from __future__ import annotations

import difflib
from typing import Any

from kwire.base import fields
from kwire.check.finding import Finding

Obj = dict[str, Any]


def _labels(obj: Obj) -> dict[str, str]:
    return {str(k): str(v) for k, v in (fields.meta(obj).get("labels") or {}).items()}


def live(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and not fields.meta(pod).get(
        "deletionTimestamp"
    )


def nearest(selector: dict[str, str], pods: list[Obj]) -> tuple[list[Obj], list[str]]:
    """The pods that miss the fewest selector entries (at least one label in common with it, or the same keys),
    and how they differ ("app=webapp, not app=web")."""
    best: list[Obj] = []
    best_missing = len(selector) + 1
    for pod in pods:
        labels = _labels(pod)
        missing = sum(1 for k, v in selector.items() if labels.get(k) != v)
        close = any(k in labels for k in selector) or any(
            difflib.get_close_matches(k, list(labels), n=1, cutoff=0.6) for k in selector
        )
        if not close:
            continue
        if missing < best_missing:
            best, best_missing = [pod], missing
        elif missing == best_missing:
            best.append(pod)
    if not best:
        return [], []
    labels = _labels(best[0])
    diffs = []
    for k, v in sorted(selector.items()):
        have = labels.get(k)
        if have == v:
            continue
        if have is not None:
            diffs.append(f"{k}={have}, not {k}={v}")
            continue
        similar = difflib.get_close_matches(k, list(labels), n=1, cutoff=0.6)
        if similar:
            diffs.append(f"{similar[0]}={labels[similar[0]]}, not {k}={v}")
        else:
            diffs.append(f"no label {k}")
    return best, diffs


def check(services: list[Obj], pods: list[Obj]) -> list[Finding]:
    findings = []
    by_ns: dict[str, list[Obj]] = {}
    for pod in pods:
        if live(pod):
            by_ns.setdefault(str(fields.meta(pod).get("namespace", "")), []).append(pod)
    for svc in services:
        spec = svc.get("spec") or {}
        selector = {str(k): str(v) for k, v in (spec.get("selector") or {}).items()}
        if not selector or spec.get("type") == "ExternalName":
            continue
        ns, name = str(fields.meta(svc).get("namespace", "")), str(fields.meta(svc).get("name", ""))
        candidates = by_ns.get(ns, [])
        if any(all(_labels(p).get(k) == v for k, v in selector.items()) for p in candidates):
            continue
        sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        near, diffs = nearest(selector, candidates)
        if near:
            names = ", ".join(sorted(str(fields.meta(p).get("name")) for p in near)[:3]) + (
                " ..." if len(near) > 3 else ""
            )
            findings.append(
                Finding(
                    "error",
                    "services",
                    f"{ns}/{name}",
                    f"Service selects {sel} but no pod matches: nearest are {names} with {'; '.join(diffs)} "
                    "(connections to the Service are refused)",
                    f"kubectl -n {ns} edit service {name} (fix spec.selector), or fix the pods' labels",
                )
            )
        else:
            findings.append(
                Finding(
                    "warning",
                    "services",
                    f"{ns}/{name}",
                    f"Service selects {sel} but no pod in namespace {ns} has labels like these (scaled to zero, or "
                    "in another namespace?): connections to it are refused",
                    f"kubectl -n {ns} get pods --show-labels; fix spec.selector or start its pods",
                )
            )
    return findings
