"""The DaemonSet controller: one pod of each DaemonSet on every node that should run it.

Owns the pods of DaemonSets (named `<ds>-<5 random>`, bound by setting spec.nodeName directly, except when a
hostPort they ask for is already taken on the node: such a pod is created unbound with kube's node affinity
`matchFields metadata.name In [node]`, so the scheduler keeps it Pending until the port is free; labelled
controller-revision-hash with a hash of the template) and DaemonSet status (desiredNumberScheduled,
currentNumberScheduled, numberReady, numberAvailable, numberUnavailable, updatedNumberScheduled,
numberMisscheduled, observedGeneration).

A node should run the pod when the template's nodeSelector / required node affinity match it and the pod
tolerates its NoSchedule and NoExecute taints; pods get the tolerations kube's DaemonSet controller adds
(not-ready and unreachable NoExecute; disk/memory/pid-pressure and unschedulable NoSchedule; network-unavailable
for hostNetwork pods). As in kube, a pod already on a node that gained a NoSchedule taint it does not tolerate
keeps running there; an untolerated NoExecute taint, a selector that no longer matches or a node that went
away removes it. A template change replaces the pods node by node (RollingUpdate, maxUnavailable) or waits for
them to be deleted (OnDelete).
"""

from __future__ import annotations

import copy
import logging
import time

from kwire.client import ApiClient, Informers
from kwire.client.client import CONTROLLERREVISIONS, DAEMONSETS, NODES
from kwire.controllers.common import (
    BY_CONTROLLER,
    BY_NODE,
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    TAINT_UNSCHEDULABLE,
    Obj,
    available_in,
    created_at,
    d,
    int_field,
    key_of,
    labels_of,
    lst,
    meta,
    name_of,
    pod_available,
    pod_ready,
    spec,
    split_key,
    status,
    taints_of,
    template_hash,
    terminating,
    uid_of,
    untolerated_taint,
    update_status_with_retry,
)
from kwire.controllers.deployment import scaled_value
from kwire.controllers.history import reconcile_revisions, truncate_history
from kwire.controllers.queue import RetryLater
from kwire.controllers.scheduler import host_ports, matches_node_affinity, ports_conflict
from kwire.controllers.workloads import (
    BURST,
    PodOwnerController,
    pod_from_template,
    selector_of,
)

log = logging.getLogger(__name__)


HASH_LABEL = "controller-revision-hash"


def daemon_tolerations(pod_spec: Obj) -> list[Obj]:
    """The pod's tolerations plus those kube's DaemonSet controller adds (AddOrUpdateDaemonPodTolerations)."""
    tols = [copy.deepcopy(t) for t in lst(pod_spec.get("tolerations")) if isinstance(t, dict)]
    wanted = [
        (TAINT_NOT_READY, "NoExecute"),
        (TAINT_UNREACHABLE, "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        (TAINT_UNSCHEDULABLE, "NoSchedule"),
    ]
    if pod_spec.get("hostNetwork") is True:
        wanted.append(("node.kubernetes.io/network-unavailable", "NoSchedule"))
    for key, effect in wanted:
        if not any(t.get("key") == key and t.get("effect") == effect and t.get("operator") == "Exists" for t in tols):
            tols.append({"key": key, "operator": "Exists", "effect": effect})
    return tols


def should_run(ds: Obj, node: Obj) -> tuple[bool, bool]:
    """(should run a new pod here, should keep an existing one): kube's NodeShouldRunDaemonPod."""
    tmpl_spec = d(d(spec(ds).get("template")).get("spec"))
    fixed = tmpl_spec.get("nodeName")
    if fixed and fixed != name_of(node):
        return False, False
    pod = {"spec": tmpl_spec}
    if not matches_node_affinity(pod, node):
        return False, False
    tolerations = daemon_tolerations(tmpl_spec)
    taints = taints_of(node)
    if untolerated_taint(taints, tolerations, effects=("NoSchedule", "NoExecute")) is not None:
        return False, untolerated_taint(taints, tolerations, effects=("NoExecute",)) is None
    return True, True


def affinity_node(pod: Obj) -> str:
    """The node an unbound daemon pod is meant for (its `matchFields metadata.name In [node]`), or ""."""
    aff = ((spec(pod).get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in aff.get("nodeSelectorTerms") or []:
        for e in (term or {}).get("matchFields") or []:
            vals = (e or {}).get("values") or []
            if (e or {}).get("key") == "metadata.name" and (e or {}).get("operator") == "In" and len(vals) == 1:
                return str(vals[0])
    return ""


class DaemonSetController(PodOwnerController):
    name = "daemonset"
    workers = 2
    component = "daemonset-controller"
    owner_resource = DAEMONSETS

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.revisions = self.informer(CONTROLLERREVISIONS, indexed=True)
        self.revisions.on_delete(lambda r: self.enqueue(self.owner_of(r)))
        self.nodes = self.informer(NODES)
        self.nodes.on_add(lambda n: self._all())
        self.nodes.on_update(self._on_node_update)
        self.nodes.on_delete(lambda n: self._all())

    # -- event handlers ----------------------------------------------------------------------------------------
    def _all(self) -> None:
        for ds in self.owners.items():
            self.enqueue(key_of(ds))

    def _on_node_update(self, old: Obj, new: Obj) -> None:
        if (labels_of(old), taints_of(old)) != (labels_of(new), taints_of(new)):
            self._all()

    # -- reconcile ---------------------------------------------------------------------------------------------
    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        ds = self.owners.get(ns, name)
        if ds is None:
            self.expectations.forget(key)
            return None
        selector = selector_of(ds)
        if selector is None:
            log.warning("daemonset %s: spec.selector is missing or invalid; nothing to do", key)
            return None
        if terminating(ds):
            return None
        owned = await self.claim_pods(ds, selector)
        nodes = {name_of(n): n for n in self.nodes.items()}
        by_node: dict[str, list[Obj]] = {}
        for pod in owned:
            by_node.setdefault(str(spec(pod).get("nodeName") or affinity_node(pod)), []).append(pod)
        current_hash = template_hash(spec(ds).get("template"))
        # ControllerRevisions `<ds>-<hash>` record the template history for `kubectl rollout history/undo ds`.
        revisions = await reconcile_revisions(
            self.client,
            ds,
            self.revisions.by_index(BY_CONTROLLER, uid_of(ds)),
            api_version="apps/v1",
            kind="DaemonSet",
            current_name=f"{name}-{current_hash}",
            collision_count=0,
            name_hash=current_hash,
        )
        await truncate_history(self.client, ds, revisions, {labels_of(p).get(HASH_LABEL, "") for p in owned})
        error: str | None = None
        if self.expectations.satisfied(key):
            error = await self._manage(ds, nodes, by_node, current_hash)
        later = await self._update_status(ds, nodes, by_node, current_hash)
        if error is not None:
            raise RetryLater(f"daemonset {key}: {error}")
        return later

    def _ports_taken(self, pod: Obj, node_name: str) -> bool:
        wanted = host_ports(pod)
        if not wanted:
            return False
        used = [
            hp
            for other in self.pods.by_index(BY_NODE, node_name)
            if not terminating(other) and status(other).get("phase") not in ("Succeeded", "Failed")
            for hp in host_ports(other)
        ]
        return ports_conflict(wanted, used)

    async def _manage(
        self, ds: Obj, nodes: dict[str, Obj], by_node: dict[str, list[Obj]], current_hash: str
    ) -> str | None:
        key = key_of(ds)
        create_on: list[str] = []
        delete: list[Obj] = []
        for node_name, node in sorted(nodes.items()):
            run, keep = should_run(ds, node)
            pods = sorted(by_node.get(node_name, []), key=created_at)
            live = [p for p in pods if not terminating(p)]
            if run and not pods:
                create_on.append(node_name)
            elif keep:
                failed = [p for p in live if status(p).get("phase") == "Failed"]
                delete += failed  # a failed daemon pod is replaced
                running = [p for p in live if p not in failed]
                delete += running[1:]  # more than one: keep the oldest
            else:
                delete += live
        for node_name, pods in by_node.items():
            if node_name not in nodes:
                delete += [p for p in pods if not terminating(p)]  # unscheduled, or its node went away
        if not create_on and not delete:
            delete += self._rolling_victims(ds, nodes, by_node, current_hash)
        create_on = create_on[:BURST]
        delete = delete[:BURST]
        if not create_on and not delete:
            return None
        self.expectations.expect(key, adds=len(create_on), deletes={key_of(p) for p in delete})
        problems: list[str] = []
        if delete:
            err = await self.delete_owned_pods(ds, delete)
            if err is not None:
                problems.append(f"deleting pods: {getattr(err, 'message', None) or err}")
        if create_on:
            queue = list(create_on)

            def make_pod() -> Obj:
                node_name = queue.pop(0)
                pod = pod_from_template(
                    ds,
                    owner_api_version="apps/v1",
                    owner_kind="DaemonSet",
                    extra_labels={HASH_LABEL: current_hash},
                    node_name=node_name,
                )
                pod["spec"]["tolerations"] = daemon_tolerations(pod["spec"])
                if self._ports_taken(pod, node_name):
                    # Leave it to the scheduler, pinned to the node as kube's DaemonSet controller pins every pod:
                    # it stays Pending (NodePorts) while another pod holds the port.
                    del pod["spec"]["nodeName"]
                    pod["spec"].setdefault("affinity", {})["nodeAffinity"] = {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}
                            ]
                        }
                    }
                return pod

            msg = await self.create_owned_pods(ds, len(create_on), make_pod)
            if msg is not None:
                problems.append(f"creating pods: {msg}")
        return "; ".join(problems) or None

    def _rolling_victims(
        self, ds: Obj, nodes: dict[str, Obj], by_node: dict[str, list[Obj]], current_hash: str
    ) -> list[Obj]:
        """Old-template pods to delete now (RollingUpdate with maxUnavailable; OnDelete deletes nothing)."""
        strategy = d(spec(ds).get("updateStrategy"))
        if (strategy.get("type") or "RollingUpdate") != "RollingUpdate":
            return []
        now = time.time()
        min_ready = int_field(spec(ds).get("minReadySeconds"))
        desired = [n for n, node in nodes.items() if should_run(ds, node)[0]]
        budget = max(
            1, scaled_value(d(strategy.get("rollingUpdate")).get("maxUnavailable", 1), len(desired), round_up=True)
        )
        unavailable = 0
        old: list[Obj] = []
        for n in sorted(desired):
            live = sorted((p for p in by_node.get(n, []) if not terminating(p)), key=created_at)
            if not live or not pod_available(live[0], min_ready, now):
                unavailable += 1
            if live and labels_of(live[0]).get(HASH_LABEL) != current_hash:
                old.append(live[0])
        victims = [p for p in old if not pod_available(p, min_ready, now)]
        for p in old:
            if p in victims:
                continue
            if unavailable >= budget:
                break
            victims.append(p)
            unavailable += 1
        return victims

    async def _update_status(
        self, ds: Obj, nodes: dict[str, Obj], by_node: dict[str, list[Obj]], current_hash: str
    ) -> float | None:
        now = time.time()
        min_ready = int_field(spec(ds).get("minReadySeconds"))
        desired = current = ready = available = updated = misscheduled = 0
        waits: list[float] = []
        for node_name, node in nodes.items():
            run, _ = should_run(ds, node)
            pods = sorted(by_node.get(node_name, []), key=lambda p: (terminating(p), created_at(p)))
            if run:
                desired += 1
                if not pods:
                    continue
                current += 1
                pod = pods[0]
                if pod_ready(pod):
                    ready += 1
                    if pod_available(pod, min_ready, now):
                        available += 1
                    elif (w := available_in(pod, min_ready, now)) is not None:
                        waits.append(w)
                if labels_of(pod).get(HASH_LABEL) == current_hash:
                    updated += 1
            elif pods:
                misscheduled += 1
        counts = {
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
        }
        optional = {
            "numberAvailable": available,
            "numberUnavailable": desired - available,
            "updatedNumberScheduled": updated,
            "observedGeneration": int_field(meta(ds).get("generation")),
        }

        def desired_status(st: Obj) -> Obj:
            new = {k: v for k, v in st.items() if k not in optional}
            new.update(counts)
            new.update({k: v for k, v in optional.items() if v})
            return new

        await update_status_with_retry(self.client, DAEMONSETS, ds, desired_status)
        return min(waits) + 0.05 if waits else None
