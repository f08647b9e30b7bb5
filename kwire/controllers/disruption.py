"""The disruption controller: keeps PodDisruptionBudget status current (kube's pkg/controller/disruption), which
the eviction subresource (`kwire/api/eviction.py`) reads to allow or refuse an eviction.

Owns PodDisruptionBudget status: `expectedPods`, `currentHealthy` (selected pods that are Ready and not being
deleted), `desiredHealthy`, `disruptionsAllowed` = max(0, currentHealthy - desiredHealthy), `disruptedPods`
(evictions the API granted whose pod is not gone yet; dropped after 2 minutes as kube does), `observedGeneration`
and the `DisruptionAllowed` condition (SufficientPods / InsufficientPods). With an integer minAvailable the
expected count is the number of selected pods; with maxUnavailable or a percentage it is the scale of the pods'
controllers (a ReplicaSet's replicas, or its Deployment's; a StatefulSet's), percentages rounded up.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from kwire.base.labels import SelectorError, from_label_selector
from kwire.client import ApiClient, Informers
from kwire.client.client import DEPLOYMENTS, PODDISRUPTIONBUDGETS, PODS, REPLICASETS, STATEFULSETS
from kwire.controllers.common import (
    BY_NAMESPACE,
    Obj,
    controller_ref,
    d,
    int_field,
    key_of,
    labels_of,
    lst,
    meta,
    name_of,
    namespace_of,
    now_rfc3339,
    parse_time,
    pod_ready,
    set_or_omit,
    spec,
    split_key,
    terminating,
    update_status_with_retry,
)
from kwire.controllers.queue import Controller

log = logging.getLogger(__name__)


DISRUPTED_TIMEOUT = 120.0


def int_or_percent(value: Any, total: int, *, round_up: bool) -> int | None:
    """An IntOrString against `total` (GetScaledValueFromIntOrPercent); None when malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = int(value[:-1])
        except ValueError:
            return None
        scaled = pct * total / 100
        return math.ceil(scaled) if round_up else math.floor(scaled)
    try:
        return int(str(value))
    except ValueError:
        return None


def desired_healthy(pdb: Obj, *, pod_count: int, controller_scale: int) -> tuple[int, int]:
    """(expectedPods, desiredHealthy) as kube's getExpectedPodCount."""
    sp = spec(pdb)
    if "maxUnavailable" in sp:
        expected = controller_scale
        unavailable = int_or_percent(sp["maxUnavailable"], expected, round_up=True) or 0
        return expected, max(0, expected - unavailable)
    if "minAvailable" not in sp:
        return 0, 0  # policy/v1 has no default: neither set means no requirement (kube's getExpectedPodCount)
    min_available = sp["minAvailable"]
    if isinstance(min_available, int) and not isinstance(min_available, bool):
        return pod_count, min_available
    expected = controller_scale
    return expected, int_or_percent(min_available, expected, round_up=True) or 0


class DisruptionController(Controller):
    name = "disruption"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.pdbs = self.informer(PODDISRUPTIONBUDGETS, indexed=True)
        self.pods = self.informer(PODS, indexed=True)
        self.rs = self.informer(REPLICASETS)
        self.deployments = self.informer(DEPLOYMENTS)
        self.sets = self.informer(STATEFULSETS)
        self.enqueue_on_change(self.pdbs)
        self.pods.on_add(self._on_pod)
        self.pods.on_update(self._on_pod_update)
        self.pods.on_delete(self._on_pod)
        for inf in (self.rs, self.deployments, self.sets):
            inf.on_update(self._on_scale)

    def _budgets_of(self, pod: Obj) -> list[str]:
        labels = labels_of(pod)
        out = []
        for pdb in self.pdbs.by_index(BY_NAMESPACE, namespace_of(pod)):
            sel = spec(pdb).get("selector")
            if not isinstance(sel, dict) or not sel:
                continue
            try:
                if from_label_selector(sel).matches(labels):
                    out.append(key_of(pdb))
            except (SelectorError, AttributeError, TypeError):
                continue
        return out

    def _on_pod(self, pod: Obj) -> None:
        for key in self._budgets_of(pod):
            self.enqueue(key)

    def _on_pod_update(self, old: Obj, new: Obj) -> None:
        for key in set(self._budgets_of(old)) | set(self._budgets_of(new)):
            self.enqueue(key)

    def _on_scale(self, old: Obj, new: Obj) -> None:
        if spec(old).get("replicas") != spec(new).get("replicas"):
            for pdb in self.pdbs.by_index(BY_NAMESPACE, namespace_of(new)):
                self.enqueue(key_of(pdb))

    def _controller_scale(self, pods: list[Obj]) -> int:
        """The sum of the replicas of the distinct controllers of `pods` (kube's finders)."""
        seen: dict[str, int] = {}
        for pod in pods:
            ref = controller_ref(pod)
            if ref is None:
                continue
            ns = namespace_of(pod)
            if ref.get("kind") == "ReplicaSet":
                rs = self.rs.get(ns, str(ref.get("name")))
                if rs is None:
                    continue
                dref = controller_ref(rs)
                dep = (
                    self.deployments.get(ns, str(dref.get("name")))
                    if dref and dref.get("kind") == "Deployment"
                    else None
                )
                owner = dep or rs
                seen[f"{owner.get('kind', '')}/{key_of(owner)}"] = int_field(spec(owner).get("replicas"), 1)
            elif ref.get("kind") == "StatefulSet":
                sts = self.sets.get(ns, str(ref.get("name")))
                if sts is not None:
                    seen[f"StatefulSet/{key_of(sts)}"] = int_field(spec(sts).get("replicas"), 1)
        return sum(seen.values())

    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        pdb = self.pdbs.get(ns, name)
        if pdb is None or terminating(pdb):
            return None
        sel = spec(pdb).get("selector")
        pods: list[Obj] = []
        if isinstance(sel, dict) and sel:
            try:
                selector = from_label_selector(sel)
                pods = [p for p in self.pods.by_index(BY_NAMESPACE, ns or "") if selector.matches(labels_of(p))]
            except (SelectorError, AttributeError, TypeError):
                pods = []
        now = time.time()
        live = [p for p in pods if not terminating(p)]
        live_names = {name_of(p) for p in live}
        expected, desired = desired_healthy(pdb, pod_count=len(live), controller_scale=self._controller_scale(pods))
        generation = int_field(meta(pdb).get("generation"))
        disrupted: dict[str, Any] = {}

        def desired_status(current: Obj) -> Obj:
            # Computed from the object being written (re-read on a conflict), so an eviction's fresh entry in
            # disruptedPods is never lost to a stale cache.
            nonlocal disrupted
            st = dict(current)
            disrupted = {
                k: v
                for k, v in d(st.get("disruptedPods")).items()
                if k in live_names and (parse_time(v) or 0) + DISRUPTED_TIMEOUT > now
            }
            healthy = sum(1 for p in live if pod_ready(p) and name_of(p) not in disrupted)
            allowed = max(0, healthy - desired)
            cstatus = "True" if allowed > 0 else "False"
            old_cond = next(
                (c for c in lst(st.get("conditions")) if isinstance(c, dict) and c.get("type") == "DisruptionAllowed"),
                None,
            )
            cond = {
                "type": "DisruptionAllowed",
                "status": cstatus,
                "reason": "SufficientPods" if allowed > 0 else "InsufficientPods",
                "message": "",
                "observedGeneration": generation,
                "lastTransitionTime": (
                    old_cond.get("lastTransitionTime")
                    if old_cond and old_cond.get("status") == cstatus
                    else now_rfc3339()
                ),
            }
            new = {
                **st,
                "observedGeneration": generation,
                "disruptionsAllowed": allowed,
                "currentHealthy": healthy,
                "desiredHealthy": desired,
                "expectedPods": expected,
                "conditions": [cond],
            }
            set_or_omit(new, "disruptedPods", disrupted)
            return new

        await update_status_with_retry(self.client, PODDISRUPTIONBUDGETS, pdb, desired_status)
        if disrupted:
            return min((parse_time(v) or now) + DISRUPTED_TIMEOUT - now for v in disrupted.values()) + 0.1
        return None
