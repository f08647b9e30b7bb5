"""The scheduler: binds Pods that have no `spec.nodeName` to a Node (kube-scheduler's default profile, in small).

Owns the binding of pods (POST pods/NAME/binding, which sets spec.nodeName and PodScheduled=True in one write)
and, for pods that fit nowhere, the PodScheduled=False/Unschedulable condition and `FailedScheduling` Events.

Filters, in kube-scheduler's order, each node failing on the first that rejects it:
- NodeUnschedulable: `spec.unschedulable` (unless the pod tolerates node.kubernetes.io/unschedulable);
- TaintToleration: NoSchedule/NoExecute taints the pod does not tolerate; a node whose Ready condition is not
  True carries node.kubernetes.io/not-ready (False) or node.kubernetes.io/unreachable (Unknown), as the taints
  kube's node lifecycle controller adds;
- NodeAffinity: `spec.nodeSelector` and required node affinity (nodeSelectorTerms);
- NodePorts: a hostPort already used on the node with the same protocol and an overlapping hostIP;
- NodeResourcesFit (pod count against `status.allocatable.pods`), InterPodAffinity (required anti-affinity) and
  PodTopologySpread (`DoNotSchedule`), in `topology.py`.
Score: fewest matching pods in the node's spread domains, then fewest pods of the same owner on the node, then
fewest pods, then node name.

Pods that fit nowhere are tried again when a node is added or changes in a way that matters (labels, taints,
unschedulable, readiness), when a bound pod goes away, and once a minute.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from kwire.client import ApiClient, Conflict, Informers, NotFound
from kwire.client.client import NODES, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, PODS, STORAGECLASSES
from kwire.controllers.common import (
    BY_NODE,
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    TAINT_UNSCHEDULABLE,
    Obj,
    annotations_of,
    condition,
    controller_ref,
    d,
    key_of,
    labels_of,
    lst,
    name_of,
    namespace_of,
    node_ready_status,
    pod_finished,
    set_condition,
    spec,
    split_key,
    taints_of,
    terminating,
    untolerated_taint,
    update_with_retry,
)
from kwire.controllers.queue import Controller
from kwire.controllers.topology import (
    REASON_ANTI_AFFINITY,
    REASON_SPREAD,
    REASON_TOO_MANY_PODS,
    anti_affinity_violated,
    max_pods,
    spread_score,
    spread_violated,
)

log = logging.getLogger(__name__)


SCHEDULER_NAME = "default-scheduler"
RETRY_UNSCHEDULABLE = 60.0
ASSUME_TTL = 30.0

REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_PORTS = "node(s) didn't have free ports for the requested pod ports"
REASON_VOLUME_AFFINITY = "node(s) had volume node affinity conflict"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
RETRY_VOLUME_BINDING = 1.0


def _wants_us(pod: Obj) -> bool:
    return (spec(pod).get("schedulerName") or SCHEDULER_NAME) == SCHEDULER_NAME


def needs_scheduling(pod: Obj) -> bool:
    return not spec(pod).get("nodeName") and not terminating(pod) and not pod_finished(pod) and _wants_us(pod)


def effective_taints(node: Obj) -> list[Obj]:
    """The node's taints plus the condition taint kube's node lifecycle controller would have added."""
    taints = taints_of(node)
    ready = node_ready_status(node)
    implicit = None
    if ready == "False":
        implicit = TAINT_NOT_READY
    elif ready == "Unknown":
        implicit = TAINT_UNREACHABLE
    if implicit and not any(t.get("key") == implicit and t.get("effect") == "NoSchedule" for t in taints):
        taints = [*taints, {"key": implicit, "effect": "NoSchedule"}]
    return taints


def _match_expression(expr: Obj, value: str | None) -> bool:
    op = expr.get("operator")
    values = [str(v) for v in lst(expr.get("values"))]
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            a, b = int(value), int(values[0])
        except ValueError:
            return False
        return a > b if op == "Gt" else a < b
    return False


def matches_node_affinity(pod: Obj, node: Obj) -> bool:
    """spec.nodeSelector and requiredDuringSchedulingIgnoredDuringExecution (terms ORed, expressions ANDed)."""
    labels = labels_of(node)
    selector = d(spec(pod).get("nodeSelector"))
    if any(labels.get(str(k)) != str(v) for k, v in selector.items()):
        return False
    required = d(
        d(d(spec(pod).get("affinity")).get("nodeAffinity")).get("requiredDuringSchedulingIgnoredDuringExecution")
    )
    terms = [t for t in lst(required.get("nodeSelectorTerms")) if isinstance(t, dict)]
    if not required:
        return True
    fields = {"metadata.name": name_of(node)}
    for term in terms:
        exprs = [e for e in lst(term.get("matchExpressions")) if isinstance(e, dict)]
        field_exprs = [e for e in lst(term.get("matchFields")) if isinstance(e, dict)]
        if not exprs and not field_exprs:
            continue  # an empty term matches nothing
        if all(_match_expression(e, labels.get(str(e.get("key")))) for e in exprs) and all(
            _match_expression(e, fields.get(str(e.get("key")))) for e in field_exprs
        ):
            return True
    return False


def volume_fits(pv: Obj, node: Obj) -> bool:
    """A PersistentVolume's spec.nodeAffinity.required against a node (terms ORed, expressions ANDed)."""
    required = d(d(spec(pv).get("nodeAffinity")).get("required"))
    terms = [t for t in lst(required.get("nodeSelectorTerms")) if isinstance(t, dict)]
    if not terms:
        return True
    labels = labels_of(node)
    return any(
        all(_match_expression(e, labels.get(str(e.get("key")))) for e in lst(t.get("matchExpressions"))) for t in terms
    )


def host_ports(pod: Obj) -> list[tuple[str, str, int]]:
    """(protocol, hostIP, hostPort) of every container port that asks for a host port."""
    out = []
    for c in lst(spec(pod).get("containers")) + lst(spec(pod).get("initContainers")):
        for p in lst(d(c).get("ports")):
            p = d(p)
            port = p.get("hostPort")
            if isinstance(port, int) and not isinstance(port, bool) and port > 0:
                ip = str(p.get("hostIP") or "0.0.0.0")
                out.append((str(p.get("protocol") or "TCP"), ip, port))
    return out


def ports_conflict(wanted: list[tuple[str, str, int]], used: list[tuple[str, str, int]]) -> bool:
    wildcard = ("0.0.0.0", "::")
    for proto, ip, port in wanted:
        for uproto, uip, uport in used:
            if port == uport and proto == uproto and (ip == uip or ip in wildcard or uip in wildcard):
                return True
    return False


def filter_node(pod: Obj, node: Obj, node_pods: list[Obj]) -> str | None:
    """None when the pod fits on the node, else the reason (kube-scheduler's wording)."""
    tolerations = lst(spec(pod).get("tolerations"))
    if spec(node).get("unschedulable") is True and untolerated_taint(
        [{"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule"}], tolerations, effects=("NoSchedule",)
    ):
        return REASON_UNSCHEDULABLE
    taint = untolerated_taint(effective_taints(node), tolerations, effects=("NoSchedule", "NoExecute"))
    if taint is not None:
        return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value') or ''}}}"
    if not matches_node_affinity(pod, node):
        return REASON_AFFINITY
    wanted = host_ports(pod)
    if wanted:
        used = [hp for other in node_pods for hp in host_ports(other)]
        if ports_conflict(wanted, used):
            return REASON_PORTS
    return None


def failure_message(total: int, reasons: Counter[str]) -> str:
    if total == 0:
        return "no nodes available to schedule pods"
    parts = sorted(f"{n} {reason}" for reason, n in reasons.items())
    return f"0/{total} nodes are available: {', '.join(parts)}."


class Scheduler(Controller):
    name = "scheduler"
    workers = 1  # one pod at a time, so each decision sees the previous ones

    component = "default-scheduler"

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.pods = self.informer(PODS, indexed=True)
        self.nodes = self.informer(NODES)
        self.claims = self.informer(PERSISTENTVOLUMECLAIMS)
        self.volumes = self.informer(PERSISTENTVOLUMES)
        self.classes = self.informer(STORAGECLASSES)
        # Pods bound by us that the cache does not show bound yet: key -> (node, pod, when).
        self._assumed: dict[str, tuple[str, Obj, float]] = {}
        self._pending: set[str] = set()
        self.pods.on_add(self._on_pod)
        self.pods.on_update(self._on_pod_update)
        self.pods.on_delete(self._on_pod_delete)
        self.nodes.on_add(lambda n: self._retry_pending())
        self.nodes.on_update(self._on_node_update)
        self.nodes.on_delete(lambda n: self._retry_pending())

    # -- event handlers ----------------------------------------------------------------------------------------
    def _on_pod(self, pod: Obj) -> None:
        key = key_of(pod)
        if spec(pod).get("nodeName"):
            self._assumed.pop(key, None)
            self._pending.discard(key)
            if pod_finished(pod):
                self._retry_pending()
        elif needs_scheduling(pod):
            self.enqueue(key)
        else:
            self._pending.discard(key)

    def _on_pod_update(self, old: Obj, new: Obj) -> None:
        if key_of(new) in self._pending and spec(old) == spec(new) and labels_of(old) == labels_of(new):
            return  # our own Unschedulable status, or the like: nothing new to decide on
        self._on_pod(new)

    def _on_pod_delete(self, pod: Obj) -> None:
        key = key_of(pod)
        self._assumed.pop(key, None)
        self._pending.discard(key)
        if spec(pod).get("nodeName"):
            self._retry_pending()

    def _on_node_update(self, old: Obj, new: Obj) -> None:
        def view(n: Obj) -> tuple[Any, ...]:
            return (labels_of(n), taints_of(n), spec(n).get("unschedulable"), node_ready_status(n))

        if view(old) != view(new):
            self._retry_pending()

    def _retry_pending(self) -> None:
        for key in list(self._pending):
            self.enqueue(key)

    # -- scheduling --------------------------------------------------------------------------------------------
    def _pods_by_node(self) -> dict[str, list[Obj]]:
        now = time.monotonic()
        for key, (_, _, when) in list(self._assumed.items()):
            if now - when > ASSUME_TTL:
                del self._assumed[key]
        out: dict[str, list[Obj]] = {}
        for node in self.nodes.items():
            n = name_of(node)
            out[n] = [p for p in self.pods.by_index(BY_NODE, n) if not pod_finished(p)]
        for key, (n, pod, _) in self._assumed.items():
            bucket = out.setdefault(n, [])
            if all(key_of(p) != key for p in bucket):
                bucket.append(pod)
        return out

    async def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        pod = self.pods.get(ns, name)
        if pod is None or not needs_scheduling(pod):
            self._pending.discard(key)
            return None
        if key in self._assumed:
            return None  # bound already; the cache has not caught up
        nodes = sorted(self.nodes.items(), key=name_of)
        by_node = self._pods_by_node()
        reasons: Counter[str] = Counter()
        feasible: list[Obj] = []
        claims = self._claims(pod)
        if isinstance(claims, str):
            await self._unschedulable(pod, f"0/{len(nodes)} nodes are available: {claims}.")
            self._pending.add(key)
            return RETRY_UNSCHEDULABLE
        bound_volumes, waiting = claims
        selected = {annotations_of(c).get(ANN_SELECTED_NODE) for c in waiting} - {None}
        # Spread domains count the nodes the pod may go to by node affinity (kube's nodeAffinityPolicy Honor).
        eligible = [n for n in nodes if matches_node_affinity(pod, n)]
        for node in nodes:
            here = by_node.get(name_of(node), [])
            reason = filter_node(pod, node, here)
            if reason is None and len(here) >= max_pods(node):
                reason = REASON_TOO_MANY_PODS
            if reason is None and (
                not all(volume_fits(pv, node) for pv in bound_volumes) or (selected and selected != {name_of(node)})
            ):
                reason = REASON_VOLUME_AFFINITY
            if reason is None and anti_affinity_violated(pod, node, by_node, nodes):
                reason = REASON_ANTI_AFFINITY
            if reason is None and spread_violated(pod, node, eligible, by_node):
                reason = REASON_SPREAD
            if reason is None:
                feasible.append(node)
            else:
                reasons[reason] += 1
        if not feasible:
            await self._unschedulable(pod, failure_message(len(nodes), reasons))
            self._pending.add(key)
            return RETRY_UNSCHEDULABLE
        owner = controller_ref(pod)
        owner_uid = owner.get("uid") if owner else None

        def score(node: Obj) -> tuple[int, int, int, str]:
            here = by_node.get(name_of(node), [])
            same = sum(1 for p in here if owner_uid and (controller_ref(p) or {}).get("uid") == owner_uid)
            return (spread_score(pod, node, eligible, by_node), same, len(here), name_of(node))

        target = min(feasible, key=score)
        node_name = name_of(target)
        if waiting:
            # VolumeBinding's PreBind: WaitForFirstConsumer claims learn the node; the pod is bound once they are.
            for claim in waiting:
                if not annotations_of(claim).get(ANN_SELECTED_NODE):
                    await self._select_node(claim, node_name)
            self._pending.add(key)
            return RETRY_VOLUME_BINDING
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": pod["metadata"].get("uid")},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
        }
        try:
            await self.client.request("POST", PODS.path(ns, name, "binding"), body=binding)
        except NotFound:
            return None
        except Conflict as exc:
            log.info("scheduler: binding %s: %s", key, exc.message)
            return None
        self._pending.discard(key)
        bound = {**pod, "spec": {**spec(pod), "nodeName": node_name}}
        self._assumed[key] = (node_name, bound, time.monotonic())
        log.info("scheduler: %s -> %s", key, node_name)
        await self.recorder.event(pod, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {node_name}")
        return None

    def _claims(self, pod: Obj) -> str | tuple[list[Obj], list[Obj]]:
        """The pod's claims as kube's VolumeBinding plugin sees them: the PVs of bound claims and the unbound
        WaitForFirstConsumer claims, or why the pod cannot be scheduled yet."""
        ns = namespace_of(pod)
        bound: list[Obj] = []
        waiting: list[Obj] = []
        for vol in lst(spec(pod).get("volumes")):
            claim_name = d(d(vol).get("persistentVolumeClaim")).get("claimName")
            if not claim_name:
                continue
            claim = self.claims.get(ns, str(claim_name))
            if claim is None:
                return f'persistentvolumeclaim "{claim_name}" not found'
            if claim["metadata"].get("deletionTimestamp"):
                return f'persistentvolumeclaim "{claim_name}" is being deleted'
            volume = str(spec(claim).get("volumeName") or "")
            if volume:
                pv = self.volumes.get(None, volume)
                if pv is None:
                    return f'persistentvolume "{volume}" not found'
                bound.append(pv)
                continue
            cls = self.classes.get(None, str(spec(claim).get("storageClassName") or ""))
            if cls is None or cls.get("volumeBindingMode") != "WaitForFirstConsumer":
                return "pod has unbound immediate PersistentVolumeClaims"
            waiting.append(claim)
        return bound, waiting

    async def _select_node(self, claim: Obj, node: str) -> None:
        def mark(obj: Obj) -> bool:
            anns = obj["metadata"].setdefault("annotations", {})
            if anns.get(ANN_SELECTED_NODE):
                return False
            anns[ANN_SELECTED_NODE] = node
            return True

        log.info("scheduler: claim %s will be provisioned on %s", key_of(claim), node)
        await update_with_retry(self.client, PERSISTENTVOLUMECLAIMS, claim, mark)

    async def _unschedulable(self, pod: Obj, message: str) -> None:
        log.info("scheduler: %s: %s", key_of(pod), message)
        await self.recorder.event(pod, "Warning", "FailedScheduling", message)
        cond = condition(pod, "PodScheduled")
        if cond and cond.get("status") == "False" and cond.get("message") == message:
            return

        def mark(obj: Obj) -> bool:
            if spec(obj).get("nodeName"):
                return False
            st = obj.setdefault("status", {})
            conds = lst(st.get("conditions"))
            changed = set_condition(
                conds,
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": None,
                },
            )
            st["conditions"] = conds
            return changed

        await update_with_retry(self.client, PODS, pod, mark, subresource_status=True)
