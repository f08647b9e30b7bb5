"""The StatefulSet controller: pods with a stable identity `<set>-<ordinal>`, created, updated and removed in
order (kube's pkg/controller/statefulset: stateful_set_control.go and stateful_set_utils.go).

Owns the pods of StatefulSets (name `<set>-<ordinal>`, `spec.hostname` = the pod's name and `spec.subdomain` =
serviceName so the headless Service gives each one a DNS name, labels `statefulset.kubernetes.io/pod-name`,
`apps.kubernetes.io/pod-index` and `controller-revision-hash` = the name of the revision it was created from),
their PersistentVolumeClaims `<template>-<set>-<ordinal>` from volumeClaimTemplates (created when the API serves
PVCs, else a Warning Event says why not), the set's ControllerRevisions (`history.py`) and its status.

What `plan` decides, as kube does: OrderedReady creates ordinals one at a time and waits for each to be Running
and Ready (and available after minReadySeconds) before the next, scales down from the highest ordinal one at a
time, and blocks while any pod is unhealthy; Parallel does both for every ordinal at once. Failed or Succeeded
pods are deleted and come back. RollingUpdate replaces pods whose revision is not the update revision from the
highest ordinal down to `partition`, one at a time, waiting for each replacement to be healthy; pods created
below the partition use the current revision. OnDelete never replaces a pod: a deleted one comes back at the
update revision.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from dataclasses import dataclass

from kwire.client import ApiClient, Conflict, Informers, NotFound
from kwire.client.client import CONTROLLERREVISIONS, PERSISTENTVOLUMECLAIMS, PODS, STATEFULSETS
from kwire.controllers.common import (
    BY_CONTROLLER,
    BY_NAMESPACE,
    Obj,
    available_in,
    controller_ref,
    d,
    int_field,
    labels_of,
    lst,
    meta,
    name_of,
    namespace_of,
    owner_reference,
    pod_available,
    pod_finished,
    pod_ready,
    spec,
    split_key,
    status,
    terminating,
    uid_of,
    update_status_with_retry,
)
from kwire.controllers.history import Revisions, reconcile_revisions, template_of, truncate_history
from kwire.controllers.queue import Controller, RetryLater
from kwire.controllers.workloads import claim, owner_key, selecting_owner_keys, selector_of

log = logging.getLogger(__name__)


POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
REVISION_LABEL = "controller-revision-hash"


def ordinal_of(set_name: str, pod: Obj) -> int | None:
    """The ordinal in `<set>-<ordinal>`, or None when the pod's name is not one of the set's."""
    m = re.fullmatch(re.escape(set_name) + r"-(0|[1-9][0-9]*)", name_of(pod))
    return int(m.group(1)) if m else None


def running_and_ready(pod: Obj) -> bool:
    return status(pod).get("phase") == "Running" and pod_ready(pod)


def healthy(pod: Obj, min_ready_seconds: int, now: float) -> bool:
    """isHealthy (running, ready, available after minReadySeconds) and not terminating."""
    return running_and_ready(pod) and pod_available(pod, min_ready_seconds, now) and not terminating(pod)


def start_ordinal(sts: Obj) -> int:
    return max(0, int_field(d(spec(sts).get("ordinals")).get("start")))


def partition_of(sts: Obj) -> int:
    strategy = d(spec(sts).get("updateStrategy"))
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return 0
    return max(0, int_field(d(strategy.get("rollingUpdate")).get("partition")))


@dataclass(frozen=True)
class Action:
    """One step of a sync: create the pod of `ordinal` at `revision`, or delete `pod`."""

    op: str  # "create" | "delete"
    ordinal: int
    revision: str = ""
    pod: Obj | None = None


def plan(sts: Obj, pods: list[Obj], *, current_revision: str, update_revision: str, now: float) -> list[Action]:
    """The creations and deletions one sync of `sts` makes, given its pods (kube's updateStatefulSet)."""
    name = name_of(sts)
    replicas = max(0, int_field(spec(sts).get("replicas"), 1))
    start = start_ordinal(sts)
    monotonic = spec(sts).get("podManagementPolicy", "OrderedReady") != "Parallel"
    min_ready = int_field(spec(sts).get("minReadySeconds"))
    rolling = d(spec(sts).get("updateStrategy")).get("type", "RollingUpdate") == "RollingUpdate"
    partition = partition_of(sts)
    slots: dict[int, Obj] = {}
    condemned: list[tuple[int, Obj]] = []
    for pod in pods:
        ordinal = ordinal_of(name, pod)
        if ordinal is None:
            continue
        if start <= ordinal < start + replicas:
            slots[ordinal] = pod
        else:
            condemned.append((ordinal, pod))
    condemned.sort(key=lambda t: -t[0])
    actions: list[Action] = []

    def unhealthy_exists(but: Obj | None = None) -> bool:
        every = list(slots.values()) + [p for _, p in condemned]
        return any(p is not but and not healthy(p, min_ready, now) for p in every)

    for ordinal in range(start, start + replicas):
        slot = slots.get(ordinal)
        if slot is None:
            revision = current_revision if rolling and ordinal - start < partition else update_revision
            actions.append(Action("create", ordinal, revision=revision))
            if monotonic:
                return actions
            continue
        if pod_finished(slot) and not terminating(slot):
            actions.append(Action("delete", ordinal, pod=slot))
            if monotonic:
                return actions
            continue
        if monotonic and not healthy(slot, min_ready, now):
            return actions
    for ordinal, pod in condemned:
        if terminating(pod):
            if monotonic:
                return actions
            continue
        if monotonic and unhealthy_exists(but=pod):
            return actions
        actions.append(Action("delete", ordinal, pod=pod))
        if monotonic:
            return actions
    if not rolling or actions:
        return actions
    for ordinal in range(start + replicas - 1, start + partition - 1, -1):
        target = slots.get(ordinal)
        if target is None:
            return actions
        if labels_of(target).get(REVISION_LABEL) != update_revision and not terminating(target):
            return [Action("delete", ordinal, pod=target)]
        if not healthy(target, min_ready, now):
            return actions
    return actions


def claim_name(template: Obj, sts: Obj, ordinal: int) -> str:
    return f"{name_of(template)}-{name_of(sts)}-{ordinal}"


def new_pod(sts: Obj, template: Obj, ordinal: int, revision: str) -> Obj:
    """newVersionedStatefulSetPod: the pod of `ordinal` from `template` (the template of `revision`)."""
    name = f"{name_of(sts)}-{ordinal}"
    tmeta = d(template.get("metadata"))
    labels = {str(k): str(v) for k, v in d(tmeta.get("labels")).items()}
    labels.update({POD_NAME_LABEL: name, POD_INDEX_LABEL: str(ordinal), REVISION_LABEL: revision})
    pod_meta: Obj = {
        "name": name,
        "namespace": namespace_of(sts),
        "labels": labels,
        "ownerReferences": [owner_reference(sts, api_version="apps/v1", kind="StatefulSet")],
    }
    if d(tmeta.get("annotations")):
        pod_meta["annotations"] = copy.deepcopy(tmeta["annotations"])
    pod_spec = copy.deepcopy(d(template.get("spec")))
    pod_spec["hostname"] = name
    if spec(sts).get("serviceName"):
        pod_spec["subdomain"] = spec(sts)["serviceName"]
    claims = [t for t in lst(spec(sts).get("volumeClaimTemplates")) if isinstance(t, dict) and name_of(t)]
    if claims:
        names = {name_of(t) for t in claims}
        volumes = [v for v in lst(pod_spec.get("volumes")) if not (isinstance(v, dict) and v.get("name") in names)]
        for t in claims:
            volumes.append({"name": name_of(t), "persistentVolumeClaim": {"claimName": claim_name(t, sts, ordinal)}})
        pod_spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": pod_spec}


def new_claim(sts: Obj, template: Obj, ordinal: int) -> Obj:
    """getPersistentVolumeClaims: a claim from a volumeClaimTemplate, labelled with the set's selector labels."""
    labels = {str(k): str(v) for k, v in d(meta(template).get("labels")).items()}
    labels.update({str(k): str(v) for k, v in d(d(spec(sts).get("selector")).get("matchLabels")).items()})
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim_name(template, sts, ordinal), "namespace": namespace_of(sts), "labels": labels},
        "spec": copy.deepcopy(d(template.get("spec"))),
    }


def compute_status(sts: Obj, pods: list[Obj], revisions: Revisions, *, now: float) -> Obj:
    """computeReplicaStatus + completeRollingUpdate."""
    min_ready = int_field(spec(sts).get("minReadySeconds"))
    current, update = name_of(revisions.current), name_of(revisions.update)
    st: Obj = {
        "observedGeneration": int_field(meta(sts).get("generation")),
        "replicas": 0,
        "readyReplicas": 0,
        "availableReplicas": 0,
        "currentReplicas": 0,
        "updatedReplicas": 0,
        "currentRevision": current,
        "updateRevision": update,
        "collisionCount": revisions.collision_count,
    }
    for pod in pods:
        st["replicas"] += 1
        if running_and_ready(pod):
            st["readyReplicas"] += 1
            if pod_available(pod, min_ready, now):
                st["availableReplicas"] += 1
        if not terminating(pod):
            rev = labels_of(pod).get(REVISION_LABEL)
            st["currentReplicas"] += rev == current
            st["updatedReplicas"] += rev == update
    rolling = d(spec(sts).get("updateStrategy")).get("type", "RollingUpdate") == "RollingUpdate"
    if rolling and st["updatedReplicas"] == st["replicas"] and st["readyReplicas"] == st["replicas"]:
        st["currentRevision"] = update
        st["currentReplicas"] = st["updatedReplicas"]
    return st


class StatefulSetController(Controller):
    name = "statefulset"
    workers = 2
    component = "statefulset-controller"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.sets = self.informer(STATEFULSETS, indexed=True)
        self.pods = self.informer(PODS, indexed=True)
        self.revisions = self.informer(CONTROLLERREVISIONS, indexed=True)
        self.enqueue_on_change(self.sets)
        for inf in (self.pods, self.revisions):
            inf.on_add(self._on_owned)
            inf.on_update(self._on_owned_update)
            inf.on_delete(self._on_owned)
        self._claims_unserved: set[str] = set()

    def _on_owned_update(self, old: Obj, new: Obj) -> None:
        self._on_owned(old)
        self._on_owned(new)

    def _on_owned(self, obj: Obj) -> None:
        owner = owner_key(self.sets, obj, "StatefulSet")
        if owner:
            self.enqueue(owner)
        elif controller_ref(obj) is None and obj.get("kind", "Pod") == "Pod":
            for key in selecting_owner_keys(self.sets, obj):
                self.enqueue(key)

    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        sts = self.sets.get(ns, name)
        if sts is None:
            return None
        selector = selector_of(sts)
        if selector is None:
            return None
        candidates = [p for p in self.pods.by_index(BY_NAMESPACE, ns or "") if ordinal_of(name, p) is not None]
        owned_pods = await claim(
            self.client, PODS, sts, candidates, selector, owner_api_version="apps/v1", owner_kind="StatefulSet"
        )
        if terminating(sts):
            return None
        owned_revs = [r for r in self.revisions.by_index(BY_CONTROLLER, uid_of(sts))]
        revisions = await reconcile_revisions(
            self.client,
            sts,
            owned_revs,
            api_version="apps/v1",
            kind="StatefulSet",
            current_name=str(status(sts).get("currentRevision") or ""),
            collision_count=int_field(status(sts).get("collisionCount")),
        )
        templates = {name_of(r): template_of(r) for r in revisions.all}
        now = time.time()
        actions = plan(
            sts,
            owned_pods,
            current_revision=name_of(revisions.current),
            update_revision=name_of(revisions.update),
            now=now,
        )
        error: str | None = None
        for action in actions:
            try:
                if action.op == "create":
                    await self._create(sts, templates[action.revision], action.ordinal, action.revision)
                elif action.pod is not None:
                    await self._delete(sts, action.pod)
            except (Conflict, NotFound) as exc:
                error = str(exc)
        await self._update_status(sts, owned_pods, revisions, now=now)
        live = {labels_of(p).get(REVISION_LABEL, "") for p in owned_pods}
        await truncate_history(self.client, sts, revisions, live)
        if error is not None:
            raise RetryLater(f"statefulset {key}: {error}")
        min_ready = int_field(spec(sts).get("minReadySeconds"))
        waits = [w for p in owned_pods if (w := available_in(p, min_ready, now)) is not None]
        return min(waits) + 0.05 if waits else None

    async def _create(self, sts: Obj, template: Obj, ordinal: int, revision: str) -> None:
        for tpl in lst(spec(sts).get("volumeClaimTemplates")):
            if isinstance(tpl, dict) and name_of(tpl):
                await self._ensure_claim(sts, tpl, ordinal)
        pod = new_pod(sts, template, ordinal, revision)
        try:
            await self.client.create(PODS, pod, namespace_of(sts))
        except Conflict as exc:
            if exc.reason != "AlreadyExists":
                raise
            return  # the cache lags: the pod is there already
        await self.recorder.event(
            sts, "Normal", "SuccessfulCreate", f"create Pod {name_of(pod)} in StatefulSet {name_of(sts)} successful"
        )

    async def _ensure_claim(self, sts: Obj, tpl: Obj, ordinal: int) -> None:
        claim_obj = new_claim(sts, tpl, ordinal)
        try:
            await self.client.create(PERSISTENTVOLUMECLAIMS, claim_obj, namespace_of(sts))
        except Conflict:
            return  # it exists: a claim outlives its pod
        except NotFound:
            # This server does not serve PersistentVolumeClaims: the pod is created without its claim.
            await self.recorder.event(
                sts,
                "Warning",
                "FailedCreate",
                f"create Claim {name_of(claim_obj)} for Pod {name_of(sts)}-{ordinal} in StatefulSet {name_of(sts)} "
                "skipped: the API server does not serve persistentvolumeclaims",
            )
            return
        await self.recorder.event(
            sts,
            "Normal",
            "SuccessfulCreate",
            f"create Claim {name_of(claim_obj)} Pod {name_of(sts)}-{ordinal} in StatefulSet {name_of(sts)} success",
        )

    async def _delete(self, sts: Obj, pod: Obj) -> None:
        try:
            await self.client.delete(PODS, name_of(pod), namespace_of(pod), preconditions={"uid": uid_of(pod)})
        except NotFound:
            return
        await self.recorder.event(
            sts, "Normal", "SuccessfulDelete", f"delete Pod {name_of(pod)} in StatefulSet {name_of(sts)} successful"
        )

    async def _update_status(self, sts: Obj, pods: list[Obj], revisions: Revisions, *, now: float) -> None:
        new = compute_status(sts, pods, revisions, now=now)

        await update_status_with_retry(self.client, STATEFULSETS, sts, lambda st: {**st, **new})
