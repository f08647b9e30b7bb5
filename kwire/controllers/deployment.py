"""The Deployment controller: one ReplicaSet per pod template, rolled out with RollingUpdate or Recreate.

Owns the ReplicaSets of Deployments (named `<deployment>-<pod-template-hash>`, the hash label added to their
selector and template; adopted when orphaned), their spec.replicas and deployment.kubernetes.io/* annotations,
the Deployment's revision annotation and its status (replicas, updatedReplicas, readyReplicas,
availableReplicas, unavailableReplicas, observedGeneration, collisionCount, the Available and Progressing
conditions). The algorithms are kube's pkg/controller/deployment: rolling.go (maxSurge rounded up,
maxUnavailable rounded down, both 25% by default; old ReplicaSets scaled down as new pods become available),
recreate.go (old ReplicaSets to 0, wait until their pods are gone, then the new one) and sync.go (revisions,
status, conditions, revisionHistoryLimit clean-up of old ReplicaSets at 0 replicas).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

from kwire.client import AlreadyExists, ApiClient, Informers, NotFound
from kwire.client.client import DEPLOYMENTS, PODS, REPLICASETS
from kwire.controllers.common import (
    BY_CONTROLLER,
    BY_NAMESPACE,
    Obj,
    controller_ref,
    created_at,
    d,
    int_field,
    key_of,
    lst,
    meta,
    name_of,
    namespace_of,
    now_rfc3339,
    owner_reference,
    parse_time,
    pod_finished,
    spec,
    split_key,
    status,
    template_hash,
    terminating,
    uid_of,
    update_with_retry,
)
from kwire.controllers.queue import Controller, RetryLater
from kwire.controllers.workloads import claim, owner_key, selecting_owner_keys, selector_of

log = logging.getLogger(__name__)


HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
_NOT_COPIED = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
}


# -- arithmetic (pkg/controller/deployment/util) --------------------------------------------------------------------
def scaled_value(value: Any, total: int, *, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("%"):
                pct = int(text[:-1])
                scaled = pct * total / 100
                return math.ceil(scaled) if round_up else math.floor(scaled)
            return int(text)
        except ValueError:
            return 0
    return 0


def replicas(obj: Obj) -> int:
    return max(0, int_field(spec(obj).get("replicas"), 1))


def _rolling(dep: Obj) -> Obj | None:
    strategy = d(spec(dep).get("strategy"))
    if (strategy.get("type") or "RollingUpdate") != "RollingUpdate":
        return None
    return d(strategy.get("rollingUpdate"))


def fenceposts(dep: Obj) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) for the desired replica count; both 0 would deadlock, so unavailable is 1."""
    ru = _rolling(dep)
    if ru is None:
        return 0, 0
    want = replicas(dep)
    surge = scaled_value(ru.get("maxSurge", "25%"), want, round_up=True)
    unavailable = scaled_value(ru.get("maxUnavailable", "25%"), want, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_unavailable(dep: Obj) -> int:
    if _rolling(dep) is None or replicas(dep) == 0:
        return 0
    return min(fenceposts(dep)[1], replicas(dep))


def max_surge(dep: Obj) -> int:
    return fenceposts(dep)[0] if _rolling(dep) is not None else 0


def revision(rs: Obj) -> int:
    return int_field(d(meta(rs).get("annotations")).get(REVISION))


def _strip_hash(template: Any) -> Obj:
    t = copy.deepcopy(d(template))
    m = d(t.get("metadata"))
    labels = d(m.get("labels"))
    labels.pop(HASH_LABEL, None)
    if not labels:
        m.pop("labels", None)
    if not m:
        t.pop("metadata", None)
    return t


def equal_ignore_hash(a: Any, b: Any) -> bool:
    return _strip_hash(a) == _strip_hash(b)


def sum_status(rss: list[Obj], field: str) -> int:
    return sum(int_field(status(rs).get(field)) for rs in rss)


def sum_replicas(rss: list[Obj]) -> int:
    return sum(replicas(rs) for rs in rss)


def new_rs_replicas(dep: Obj, all_rss: list[Obj], new_rs: Obj | None) -> int:
    """NewRSNewReplicas: how far the new ReplicaSet may grow now."""
    want = replicas(dep)
    current_new = replicas(new_rs) if new_rs is not None else 0
    if _rolling(dep) is None:
        return want
    total = sum_replicas(all_rss)
    max_total = want + max_surge(dep)
    if total >= max_total:
        return current_new
    return current_new + min(max_total - total, max(0, want - current_new))


def deployment_complete(dep: Obj, st: Obj) -> bool:
    want = replicas(dep)
    return (
        int_field(st.get("updatedReplicas")) == want
        and int_field(st.get("replicas")) == want
        and int_field(st.get("availableReplicas")) == want
        and int_field(st.get("observedGeneration")) >= int_field(meta(dep).get("generation"))
    )


def deployment_progressing(dep: Obj, new: Obj) -> bool:
    old = status(dep)
    old_old = int_field(old.get("replicas")) - int_field(old.get("updatedReplicas"))
    new_old = int_field(new.get("replicas")) - int_field(new.get("updatedReplicas"))
    return (
        int_field(new.get("updatedReplicas")) > int_field(old.get("updatedReplicas"))
        or new_old < old_old
        or int_field(new.get("readyReplicas")) > int_field(old.get("readyReplicas"))
        or int_field(new.get("availableReplicas")) > int_field(old.get("availableReplicas"))
    )


def _find(conds: list[Obj], ctype: str) -> Obj | None:
    return next((c for c in conds if c.get("type") == ctype), None)


def set_deployment_condition(
    conds: list[Obj], ctype: str, cstatus: str, reason: str, message: str, *, now: str, refresh: bool = False
) -> list[Obj]:
    """SetDeploymentCondition: same status and reason is no change (unless `refresh`); the transition time
    stays while the status does; the condition moves to the end, as kube's does."""
    cur = _find(conds, ctype)
    if cur is not None and cur.get("status") == cstatus and cur.get("reason") == reason and not refresh:
        return conds
    new = {
        "type": ctype,
        "status": cstatus,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }
    if cur is not None and cur.get("status") == cstatus:
        new["lastTransitionTime"] = cur.get("lastTransitionTime") or now
    return [c for c in conds if c.get("type") != ctype] + [new]


class DeploymentController(Controller):
    name = "deployment"
    workers = 4
    component = "deployment-controller"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.deployments = self.informer(DEPLOYMENTS, indexed=True)
        self.rs = self.informer(REPLICASETS, indexed=True)
        self.pods = self.informer(PODS, indexed=True)
        self.enqueue_on_change(self.deployments)
        self.rs.on_add(self._on_rs)
        self.rs.on_update(self._on_rs_update)
        self.rs.on_delete(self._on_rs)
        self.pods.on_delete(self._on_pod_delete)

    # -- event handlers ----------------------------------------------------------------------------------------
    def _owner_key(self, rs: Obj) -> str | None:
        return owner_key(self.deployments, rs, "Deployment")

    def _on_rs(self, rs: Obj) -> None:
        owner = self._owner_key(rs)
        if owner:
            self.enqueue(owner)
        elif controller_ref(rs) is None:
            for key in selecting_owner_keys(self.deployments, rs):
                self.enqueue(key)

    def _on_rs_update(self, old: Obj, new: Obj) -> None:
        old_owner = self._owner_key(old)
        if old_owner and old_owner != self._owner_key(new):
            self.enqueue(old_owner)
        self._on_rs(new)

    def _on_pod_delete(self, pod: Obj) -> None:
        # Recreate waits for the old pods to be gone.
        ref = controller_ref(pod)
        if ref and ref.get("kind") == "ReplicaSet":
            rs = self.rs.get(namespace_of(pod), str(ref.get("name") or ""))
            if rs is not None:
                owner = self._owner_key(rs)
                if owner:
                    self.enqueue(owner)

    # -- reconcile ---------------------------------------------------------------------------------------------
    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        dep = self.deployments.get(ns, name)
        if dep is None:
            return None
        selector = selector_of(dep)
        if selector is None:
            log.warning("deployment %s: spec.selector is missing or invalid; nothing to do", key)
            return None
        owned = await claim(
            self.client,
            REPLICASETS,
            dep,
            self.rs.by_index(BY_NAMESPACE, ns or ""),
            selector,
            owner_api_version="apps/v1",
            owner_kind="Deployment",
        )
        rss = [copy.deepcopy(rs) for rs in owned if not terminating(rs)]
        if terminating(dep) or spec(dep).get("paused") is True:
            new_rs, old_rss = self._split(dep, rss)
            return await self._sync_status(dep, old_rss, new_rs)
        strategy = d(spec(dep).get("strategy")).get("type") or "RollingUpdate"
        if strategy == "Recreate":
            return await self._recreate(dep, rss)
        return await self._rolling_update(dep, rss)

    def _split(self, dep: Obj, rss: list[Obj]) -> tuple[Obj | None, list[Obj]]:
        template = spec(dep).get("template")
        same = sorted((rs for rs in rss if equal_ignore_hash(spec(rs).get("template"), template)), key=created_at)
        new_rs = same[0] if same else None
        return new_rs, [rs for rs in rss if rs is not new_rs]

    async def _new_and_old(self, dep: Obj, rss: list[Obj], *, create: bool) -> tuple[Obj, Obj | None, list[Obj], str]:
        """getAllReplicaSetsAndSyncRevision: (deployment, new RS or None, old RSes, name of an RS just created)."""
        new_rs, old_rss = self._split(dep, rss)
        next_revision = max((revision(rs) for rs in old_rss), default=0) + 1
        created = ""
        if new_rs is not None:
            wanted_min_ready = int_field(spec(dep).get("minReadySeconds"))
            # copyDeploymentAnnotationsToReplicaSet: the new RS follows the Deployment's annotations (a
            # kubernetes.io/change-cause set after the rollout shows in `kubectl rollout history`).
            copied = {k: v for k, v in d(meta(dep).get("annotations")).items() if k not in _NOT_COPIED}
            rs_ann = d(meta(new_rs).get("annotations"))
            if (
                revision(new_rs) < next_revision
                or int_field(spec(new_rs).get("minReadySeconds")) != wanted_min_ready
                or any(rs_ann.get(k) != v for k, v in copied.items())
            ):

                def bump(o: Obj) -> bool:
                    ann = o.setdefault("metadata", {}).setdefault("annotations", {})
                    changed = False
                    for k, v in copied.items():
                        if ann.get(k) != v:
                            ann[k] = v
                            changed = True
                    if int_field(ann.get(REVISION)) < next_revision:
                        ann[REVISION] = str(next_revision)
                        changed = True
                    if int_field(spec(o).get("minReadySeconds")) != wanted_min_ready:
                        o.setdefault("spec", {})["minReadySeconds"] = wanted_min_ready
                        changed = True
                    return changed

                out = await update_with_retry(self.client, REPLICASETS, new_rs, bump)
                if out is not None:
                    new_rs.clear()
                    new_rs.update(out)
        elif create:
            new_rs = await self._create_rs(dep, old_rss, next_revision)
            created = name_of(new_rs)
        if new_rs is not None:
            rev = str(revision(new_rs))
            if d(meta(dep).get("annotations")).get(REVISION) != rev:

                def set_rev(o: Obj) -> bool:
                    ann = o.setdefault("metadata", {}).setdefault("annotations", {})
                    if ann.get(REVISION) == rev:
                        return False
                    ann[REVISION] = rev
                    return True

                dep = await update_with_retry(self.client, DEPLOYMENTS, dep, set_rev) or dep
        return dep, new_rs, old_rss, created

    async def _create_rs(self, dep: Obj, old_rss: list[Obj], rev: int) -> Obj:
        template = d(spec(dep).get("template"))
        collision = int_field(status(dep).get("collisionCount"))
        pod_hash = template_hash(template, collision)
        new_template = copy.deepcopy(template)
        tmeta = new_template.setdefault("metadata", {})
        tmeta["labels"] = {**d(tmeta.get("labels")), HASH_LABEL: pod_hash}
        selector = copy.deepcopy(d(spec(dep).get("selector")))
        selector["matchLabels"] = {**d(selector.get("matchLabels")), HASH_LABEL: pod_hash}
        count = new_rs_replicas(dep, old_rss, None)
        annotations = {k: v for k, v in d(meta(dep).get("annotations")).items() if k not in _NOT_COPIED}
        annotations.update(
            {
                REVISION: str(rev),
                DESIRED_REPLICAS: str(replicas(dep)),
                MAX_REPLICAS: str(replicas(dep) + max_surge(dep)),
            }
        )
        rs_name = f"{name_of(dep)}-{pod_hash}"
        body = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name,
                "namespace": namespace_of(dep),
                "labels": dict(tmeta["labels"]),
                "annotations": annotations,
                "ownerReferences": [owner_reference(dep, api_version="apps/v1", kind="Deployment")],
            },
            "spec": {
                "replicas": count,
                "minReadySeconds": int_field(spec(dep).get("minReadySeconds")),
                "selector": selector,
                "template": new_template,
            },
        }
        try:
            out = await self.client.create(REPLICASETS, body, namespace_of(dep))
        except AlreadyExists:
            existing = await self.client.get(REPLICASETS, rs_name, namespace_of(dep))
            ref = controller_ref(existing)
            if ref and ref.get("uid") == uid_of(dep) and equal_ignore_hash(spec(existing).get("template"), template):
                return existing
            # A hash collision with someone else's ReplicaSet: the next hash includes a higher collisionCount.

            def bump(o: Obj) -> bool:
                st = o.setdefault("status", {})
                st["collisionCount"] = int_field(st.get("collisionCount")) + 1
                return True

            await update_with_retry(self.client, DEPLOYMENTS, dep, bump, subresource_status=True)
            raise RetryLater(f"replica set name {rs_name} is taken; retrying with a new hash") from None
        log.info("deployment %s: created replica set %s (revision %d)", key_of(dep), rs_name, rev)
        if count > 0:
            await self.recorder.event(
                dep, "Normal", "ScalingReplicaSet", f"Scaled up replica set {rs_name} from 0 to {count}"
            )
        return out

    async def _scale(self, dep: Obj, rs: Obj, count: int) -> bool:
        """Set an RS's replicas (and its desired/max annotations); the local copy is updated. True if scaled."""
        before = replicas(rs)
        desired, most = str(replicas(dep)), str(replicas(dep) + max_surge(dep))

        def apply(o: Obj) -> bool:
            ann = o.setdefault("metadata", {}).setdefault("annotations", {})
            if replicas(o) == count and ann.get(DESIRED_REPLICAS) == desired and ann.get(MAX_REPLICAS) == most:
                return False
            o.setdefault("spec", {})["replicas"] = count
            ann[DESIRED_REPLICAS] = desired
            ann[MAX_REPLICAS] = most
            return True

        out = await update_with_retry(self.client, REPLICASETS, rs, apply)
        if out is None:
            return False
        rs.clear()
        rs.update(out)
        if count != before:
            direction = "up" if count > before else "down"
            await self.recorder.event(
                dep,
                "Normal",
                "ScalingReplicaSet",
                f"Scaled {direction} replica set {name_of(rs)} from {before} to {count}",
            )
        return count != before

    # -- strategies --------------------------------------------------------------------------------------------
    async def _rolling_update(self, dep: Obj, rss: list[Obj]) -> float | None:
        dep, new_rs, old_rss, created = await self._new_and_old(dep, rss, create=True)
        assert new_rs is not None
        all_rss = [*old_rss, new_rs]
        want = replicas(dep)
        # reconcileNewReplicaSet
        if replicas(new_rs) != want:
            target = want if replicas(new_rs) > want else new_rs_replicas(dep, all_rss, new_rs)
            if target != replicas(new_rs) and await self._scale(dep, new_rs, target):
                return await self._sync_status(dep, old_rss, new_rs, created=created)
        # reconcileOldReplicaSets
        if await self._reconcile_old(dep, all_rss, old_rss, new_rs):
            return await self._sync_status(dep, old_rss, new_rs, created=created)
        if deployment_complete(dep, self._calculate_status(dep, [*old_rss, new_rs], new_rs)):
            await self._cleanup(dep, old_rss)
        return await self._sync_status(dep, old_rss, new_rs, created=created)

    async def _reconcile_old(self, dep: Obj, all_rss: list[Obj], old_rss: list[Obj], new_rs: Obj) -> bool:
        if sum_replicas(old_rss) == 0:
            return False
        all_pods = sum_replicas(all_rss)
        min_available = replicas(dep) - max_unavailable(dep)
        new_unavailable = replicas(new_rs) - int_field(status(new_rs).get("availableReplicas"))
        max_scaled_down = all_pods - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False
        # cleanupUnhealthyReplicas: old pods that are not available go first, within the budget.
        cleaned = 0
        for rs in sorted(old_rss, key=created_at):
            if cleaned >= max_scaled_down:
                break
            have, avail = replicas(rs), int_field(status(rs).get("availableReplicas"))
            if have == 0 or have == avail:
                continue
            n = min(max_scaled_down - cleaned, have - avail)
            await self._scale(dep, rs, have - n)
            cleaned += n
        # scaleDownOldReplicaSetsForRollingUpdate: keep at least minAvailable available pods.
        available = sum_status([*old_rss, new_rs], "availableReplicas")
        scaled = 0
        if available > min_available:
            budget = available - min_available
            for rs in sorted(old_rss, key=created_at):
                if scaled >= budget:
                    break
                have = replicas(rs)
                if have == 0:
                    continue
                n = min(have, budget - scaled)
                await self._scale(dep, rs, have - n)
                scaled += n
        return cleaned + scaled > 0

    async def _recreate(self, dep: Obj, rss: list[Obj]) -> float | None:
        dep, new_rs, old_rss, created = await self._new_and_old(dep, rss, create=False)
        scaled = False
        for rs in old_rss:
            if replicas(rs) > 0:
                scaled = await self._scale(dep, rs, 0) or scaled
        if scaled or self._old_pods_running(old_rss):
            return await self._sync_status(dep, old_rss, new_rs, created=created)
        if new_rs is None:
            dep, new_rs, old_rss, created = await self._new_and_old(dep, rss, create=True)
            assert new_rs is not None
        if replicas(new_rs) != replicas(dep):
            await self._scale(dep, new_rs, replicas(dep))
        if deployment_complete(dep, self._calculate_status(dep, [*old_rss, new_rs], new_rs)):
            await self._cleanup(dep, old_rss)
        return await self._sync_status(dep, old_rss, new_rs, created=created)

    def _old_pods_running(self, old_rss: list[Obj]) -> bool:
        for rs in old_rss:
            if int_field(status(rs).get("replicas")) > 0:
                return True
            if any(not pod_finished(p) for p in self.pods.by_index(BY_CONTROLLER, uid_of(rs))):
                return True
        return False

    async def _cleanup(self, dep: Obj, old_rss: list[Obj]) -> None:
        """Delete the oldest old ReplicaSets beyond revisionHistoryLimit (only those scaled to 0 and settled)."""
        limit = spec(dep).get("revisionHistoryLimit")
        if not isinstance(limit, int) or isinstance(limit, bool):
            return
        cleanable = sorted((rs for rs in old_rss if not terminating(rs)), key=lambda rs: (revision(rs), created_at(rs)))
        excess = len(cleanable) - max(0, limit)
        for rs in cleanable[: max(0, excess)]:
            if (
                int_field(status(rs).get("replicas")) != 0
                or replicas(rs) != 0
                or int_field(meta(rs).get("generation")) > int_field(status(rs).get("observedGeneration"))
            ):
                continue
            log.info("deployment %s: deleting old replica set %s", key_of(dep), name_of(rs))
            try:
                await self.client.delete(REPLICASETS, name_of(rs), namespace_of(rs), preconditions={"uid": uid_of(rs)})
            except NotFound:
                pass

    # -- status ------------------------------------------------------------------------------------------------
    def _calculate_status(self, dep: Obj, all_rss: list[Obj], new_rs: Obj | None) -> Obj:
        available = sum_status(all_rss, "availableReplicas")
        values = {
            "observedGeneration": int_field(meta(dep).get("generation")),
            "replicas": sum_status(all_rss, "replicas"),
            "updatedReplicas": int_field(status(new_rs).get("replicas")) if new_rs is not None else 0,
            "readyReplicas": sum_status(all_rss, "readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": max(0, replicas(dep) - available),
        }
        st: Obj = {k: v for k, v in values.items() if v}
        old = status(dep)
        if "collisionCount" in old:
            st["collisionCount"] = old["collisionCount"]
        conds = [c for c in lst(old.get("conditions")) if isinstance(c, dict)]
        now = now_rfc3339()
        if available >= replicas(dep) - max_unavailable(dep):
            conds = set_deployment_condition(
                conds, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.", now=now
            )
        else:
            conds = set_deployment_condition(
                conds,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                now=now,
            )
        st["conditions"] = conds
        return st

    async def _sync_status(
        self, dep: Obj, old_rss: list[Obj], new_rs: Obj | None, *, created: str = ""
    ) -> float | None:
        all_rss = [*old_rss, new_rs] if new_rs is not None else list(old_rss)
        new = self._calculate_status(dep, all_rss, new_rs)
        conds: list[Obj] = new["conditions"]
        deadline = spec(dep).get("progressDeadlineSeconds")
        has_deadline = isinstance(deadline, int) and not isinstance(deadline, bool)
        later: float | None = None
        if has_deadline and not terminating(dep) and spec(dep).get("paused") is not True:
            now = now_rfc3339()
            cur = _find(conds, "Progressing")
            rs_name = name_of(new_rs) if new_rs is not None else ""
            complete_already = (
                int_field(new.get("replicas")) == int_field(new.get("updatedReplicas"))
                and cur is not None
                and cur.get("reason") == "NewReplicaSetAvailable"
            )
            if not complete_already:
                if deployment_complete(dep, new):
                    conds = set_deployment_condition(
                        conds,
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        f'ReplicaSet "{rs_name}" has successfully progressed.',
                        now=now,
                    )
                elif created:
                    conds = set_deployment_condition(
                        conds,
                        "Progressing",
                        "True",
                        "NewReplicaSetCreated",
                        f'Created new replica set "{created}"',
                        now=now,
                    )
                elif cur is None and new_rs is not None:
                    conds = set_deployment_condition(
                        conds,
                        "Progressing",
                        "True",
                        "FoundNewReplicaSet",
                        f'Found new replica set "{rs_name}"',
                        now=now,
                    )
                elif deployment_progressing(dep, new):
                    msg = f'ReplicaSet "{rs_name}" is progressing.' if rs_name else "Deployment is progressing."
                    conds = set_deployment_condition(
                        conds, "Progressing", "True", "ReplicaSetUpdated", msg, now=now, refresh=True
                    )
                else:
                    cur = _find(conds, "Progressing")
                    since = parse_time((cur or {}).get("lastUpdateTime"))
                    if cur is not None and cur.get("reason") != "ProgressDeadlineExceeded" and since is not None:
                        left = since + int(deadline) - time.time()  # type: ignore[arg-type]
                        if left <= 0:
                            conds = set_deployment_condition(
                                conds,
                                "Progressing",
                                "False",
                                "ProgressDeadlineExceeded",
                                f'ReplicaSet "{rs_name}" has timed out progressing.',
                                now=now,
                            )
                        else:
                            later = left + 0.5
            new["conditions"] = conds
        if not new["conditions"]:
            del new["conditions"]

        def apply(o: Obj) -> bool:
            cur_status = status(o)
            if int_field(cur_status.get("observedGeneration")) > int_field(new.get("observedGeneration")):
                return False  # a newer sync already wrote a later picture
            merged = dict(new)
            if "collisionCount" in cur_status:
                merged["collisionCount"] = max(
                    int_field(cur_status["collisionCount"]), int_field(new.get("collisionCount"))
                )
            if merged == cur_status:
                return False
            o["status"] = merged
            return True

        await update_with_retry(self.client, DEPLOYMENTS, dep, apply, subresource_status=True)
        return later
