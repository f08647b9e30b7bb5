"""Scheduler filters that depend on the other pods: pod count, inter-pod anti-affinity, topology spread.

kube-scheduler's NodeResourcesFit (the `pods` resource only: kwire pods ask for no CPU or memory that is
enforced), InterPodAffinity (required anti-affinity, both ways: the incoming pod's terms against pods already
placed, and placed pods' terms against the incoming pod) and PodTopologySpread (`whenUnsatisfiable:
DoNotSchedule` constraints filter; `ScheduleAnyway` ones only score). Messages are kube-scheduler's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from kwire.base.labels import from_label_selector
from kwire.controllers.common import Obj, d, labels_of, lst, name_of, spec

REASON_TOO_MANY_PODS = "Too many pods"
REASON_ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"
REASON_SPREAD = "node(s) didn't match pod topology spread constraints"


def max_pods(node: Obj) -> int:
    """The node's allocatable pod count (the kubelet's max-pods, 110 by default)."""
    raw = d(d(node.get("status")).get("allocatable")).get("pods")
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return 110


def _namespace(pod: Obj) -> str:
    return str(d(pod.get("metadata")).get("namespace") or "default")


def _term_selects(term: Obj, owner: Obj, other: Obj) -> bool:
    """Does an affinity term of `owner` select `other`? Its labelSelector (none selects nothing), in the term's
    `namespaces` or the owner's own namespace; an empty `namespaceSelector` means every namespace (a non-empty one
    is not evaluated: the scheduler has no namespace cache, so only the listed namespaces count)."""
    if term.get("labelSelector") is None:
        return False
    all_namespaces = term.get("namespaceSelector") == {}
    namespaces = [str(n) for n in lst(term.get("namespaces"))] or [_namespace(owner)]
    if not all_namespaces and _namespace(other) not in namespaces:
        return False
    return from_label_selector(d(term.get("labelSelector"))).matches(labels_of(other))


def _anti_terms(pod: Obj) -> list[Obj]:
    anti = d(d(spec(pod).get("affinity")).get("podAntiAffinity"))
    return [t for t in lst(anti.get("requiredDuringSchedulingIgnoredDuringExecution")) if isinstance(t, dict)]


def anti_affinity_violated(pod: Obj, node: Obj, placed: Mapping[str, list[Obj]], nodes: Iterable[Obj]) -> bool:
    """True when putting `pod` on `node` breaks a required anti-affinity term (its own or a placed pod's)."""
    by_name = {name_of(n): n for n in nodes}
    node_labels = labels_of(node)
    own = _anti_terms(pod)
    for other_node, pods in placed.items():
        other_labels = labels_of(by_name.get(other_node, {}))
        for other in pods:
            for term in own:
                key = str(term.get("topologyKey") or "")
                if key in node_labels and other_labels.get(key) == node_labels[key] and _term_selects(term, pod, other):
                    return True
            for term in _anti_terms(other):
                key = str(term.get("topologyKey") or "")
                if key in node_labels and other_labels.get(key) == node_labels[key] and _term_selects(term, other, pod):
                    return True
    return False


def _constraints(pod: Obj, when: str) -> list[Obj]:
    return [
        c
        for c in lst(spec(pod).get("topologySpreadConstraints"))
        if isinstance(c, dict) and (c.get("whenUnsatisfiable") or "DoNotSchedule") == when
    ]


def _selector_of(constraint: Obj, pod: Obj) -> Any:
    sel = dict(d(constraint.get("labelSelector")))
    keys = [str(k) for k in lst(constraint.get("matchLabelKeys"))]
    if keys:  # matchLabelKeys: the incoming pod's values of those keys are ANDed in (kube 1.27+)
        own = labels_of(pod)
        extra = [{"key": k, "operator": "In", "values": [own[k]]} for k in keys if k in own]
        sel["matchExpressions"] = [*lst(sel.get("matchExpressions")), *extra]
    return from_label_selector(sel)


def _domain_counts(constraint: Obj, pod: Obj, eligible: Iterable[Obj], placed: Mapping[str, list[Obj]]) -> Counter[str]:
    key = str(constraint.get("topologyKey") or "")
    selector = _selector_of(constraint, pod)
    counts: Counter[str] = Counter()
    for node in eligible:
        value = labels_of(node).get(key)
        if value is None:
            continue
        counts[value] += sum(
            1
            for p in placed.get(name_of(node), [])
            if _namespace(p) == _namespace(pod) and selector.matches(labels_of(p))
        )
    return counts


def spread_violated(pod: Obj, node: Obj, eligible: list[Obj], placed: Mapping[str, list[Obj]]) -> bool:
    """PodTopologySpread's filter: skew = pods in the node's domain + 1 - the smallest domain's count, over the
    nodes the pod could go to by node affinity (nodeAffinityPolicy Honor); more than maxSkew refuses the node.
    A node without the topology key is refused."""
    for c in _constraints(pod, "DoNotSchedule"):
        key = str(c.get("topologyKey") or "")
        value = labels_of(node).get(key)
        if value is None:
            return True
        counts = _domain_counts(c, pod, eligible, placed)
        lowest = min(counts.values()) if counts else 0
        self_match = 1 if _selector_of(c, pod).matches(labels_of(pod)) else 0
        if counts.get(value, 0) + self_match - lowest > int(c.get("maxSkew") or 1):
            return True
    return False


def spread_score(pod: Obj, node: Obj, eligible: list[Obj], placed: Mapping[str, list[Obj]]) -> int:
    """Matching pods already in the node's domains over every constraint (lower is better)."""
    total = 0
    for c in _constraints(pod, "DoNotSchedule") + _constraints(pod, "ScheduleAnyway"):
        value = labels_of(node).get(str(c.get("topologyKey") or ""))
        if value is not None:
            total += _domain_counts(c, pod, eligible, placed).get(value, 0)
    return total
