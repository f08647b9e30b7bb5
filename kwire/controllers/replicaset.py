"""The ReplicaSet controller: keeps `spec.replicas` pods matching each ReplicaSet's selector.

Owns the pods of ReplicaSets (created from spec.template as `<rs>-<5 random>` with a controller ownerReference,
adopting matching orphans, releasing pods that stop matching, deleting extras) and ReplicaSet status
(replicas, fullyLabeledReplicas, readyReplicas, availableReplicas, observedGeneration, the ReplicaFailure
condition). Extra pods go in kube's order of preference: unscheduled first, then pending, then not ready,
then the newest.
"""

from __future__ import annotations

import logging
import time

from kwire.client.client import REPLICASETS
from kwire.controllers.common import (
    Obj,
    available_in,
    created_at,
    d,
    int_field,
    key_of,
    labels_of,
    lst,
    meta,
    now_rfc3339,
    pod_active,
    pod_available,
    pod_ready,
    set_or_omit,
    spec,
    split_key,
    status,
    terminating,
    update_status_with_retry,
)
from kwire.controllers.queue import RetryLater
from kwire.controllers.workloads import (
    BURST,
    PodOwnerController,
    pod_from_template,
    selector_of,
)

log = logging.getLogger(__name__)


_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def deletion_order(pod: Obj) -> tuple[int, int, int, float]:
    """Sort key: pods to delete first come first (a reduced controller.ActivePods ordering)."""
    created = created_at(pod)
    return (
        1 if spec(pod).get("nodeName") else 0,
        _PHASE_RANK.get(str(status(pod).get("phase")), 1),
        1 if pod_ready(pod) else 0,
        -created,
    )


def _omit_zero(values: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in values.items() if v}


class ReplicaSetController(PodOwnerController):
    name = "replicaset"
    workers = 4
    component = "replicaset-controller"
    owner_resource = REPLICASETS

    # -- reconcile ---------------------------------------------------------------------------------------------
    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        rs = self.owners.get(ns, name)
        if rs is None:
            self.expectations.forget(key)
            return None
        selector = selector_of(rs)
        if selector is None:
            log.warning("replicaset %s: spec.selector is missing or invalid; nothing to do", key)
            return None
        owned = await self.claim_pods(rs, selector)
        active = [p for p in owned if pod_active(p)]
        failure: tuple[str, str] | None = None
        if self.expectations.satisfied(key) and not terminating(rs):
            failure = await self._manage(rs, active)
        later = await self._update_status(rs, active, failure)
        if failure is not None:
            raise RetryLater(f"replicaset {key}: {failure[0]}: {failure[1]}")
        return later

    async def _manage(self, rs: Obj, active: list[Obj]) -> tuple[str, str] | None:
        key = key_of(rs)
        want = max(0, int_field(spec(rs).get("replicas"), 1))
        diff = len(active) - want
        if diff < 0:
            n = min(-diff, BURST)
            self.expectations.expect(key, adds=n)
            pod = pod_from_template(rs, owner_api_version="apps/v1", owner_kind="ReplicaSet")
            msg = await self.create_owned_pods(rs, n, lambda: pod)
            if msg is not None:
                return ("FailedCreate", msg)
        elif diff > 0:
            victims = sorted(active, key=deletion_order)[: min(diff, BURST)]
            self.expectations.expect(key, deletes={key_of(p) for p in victims})
            err = await self.delete_owned_pods(rs, victims)
            if err is not None:
                msg = getattr(err, "message", None) or str(err)
                await self.recorder.event(rs, "Warning", "FailedDelete", f"Error deleting: {msg}")
                return ("FailedDelete", msg)
        return None

    async def _update_status(self, rs: Obj, active: list[Obj], failure: tuple[str, str] | None) -> float | None:
        now = time.time()
        min_ready = int_field(spec(rs).get("minReadySeconds"))
        tmpl_labels = {
            str(k): str(v) for k, v in d(d(d(spec(rs).get("template")).get("metadata")).get("labels")).items()
        }
        fully = sum(1 for p in active if all(labels_of(p).get(k) == v for k, v in tmpl_labels.items()))
        ready = sum(1 for p in active if pod_ready(p))
        available = sum(1 for p in active if pod_available(p, min_ready, now))
        counts = {"replicas": len(active)} | _omit_zero(
            {
                "fullyLabeledReplicas": fully,
                "readyReplicas": ready,
                "availableReplicas": available,
                "observedGeneration": int_field(meta(rs).get("generation")),
            }
        )
        generation = counts.get("observedGeneration", 0)

        def desired_status(st: Obj) -> Obj:
            new: Obj = {
                k: v for k, v in st.items() if k not in ("fullyLabeledReplicas", "readyReplicas", "availableReplicas")
            }
            new.update(counts)
            if generation < int_field(st.get("observedGeneration")):
                new["observedGeneration"] = st["observedGeneration"]
            conds = [c for c in lst(st.get("conditions")) if isinstance(c, dict) and c.get("type") != "ReplicaFailure"]
            if failure is not None:
                old = next(
                    (c for c in lst(st.get("conditions")) if isinstance(c, dict) and c.get("type") == "ReplicaFailure"),
                    None,
                )
                conds.append(
                    {
                        "type": "ReplicaFailure",
                        "status": "True",
                        "reason": failure[0],
                        "message": failure[1],
                        "lastTransitionTime": (old or {}).get("lastTransitionTime") or now_rfc3339(),
                    }
                )
            set_or_omit(new, "conditions", conds)
            return new

        await update_status_with_retry(self.client, REPLICASETS, rs, desired_status)
        waits = [w for p in active if (w := available_in(p, min_ready, now)) is not None]
        return min(waits) + 0.05 if waits else None
