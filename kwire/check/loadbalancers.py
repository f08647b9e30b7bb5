"""LoadBalancer Services left `<pending>` and why, the question K3s users ask most about ServiceLB (Klipper):

- a port another LoadBalancer Service (or a pod's hostPort) already holds: ServiceLB's svclb pods for it cannot be
  scheduled on any node, and K3s gives no explanation (the svclb DaemonSet's pods stay Pending);
- MetalLB: no IPAddressPool at all, or none that matches (MetalLB's AllocationFailed event is quoted);
- neither ServiceLB nor MetalLB running;
- ServiceLB and MetalLB both active (both claim every LoadBalancer Service: K3s's docs say to disable servicelb).
Services with a spec.loadBalancerClass belong to another controller and are left alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kwire.base import fields
from kwire.check.finding import Finding

Obj = dict[str, Any]
SVCNAME = "svccontroller.k3s.cattle.io/svcname"
SVCNAMESPACE = "svccontroller.k3s.cattle.io/svcnamespace"


@dataclass(frozen=True)
class LbState:
    services: list[Obj]  # every Service
    pods: list[Obj]  # every pod
    servicelb: bool  # ServiceLB's controller runs (not disabled)
    metallb: bool  # MetalLB is installed (its IPAddressPool kind is served)
    pools: list[Obj] = field(default_factory=list)  # IPAddressPools
    events: list[Obj] = field(default_factory=list)  # Events about Services


def _key(obj: Obj) -> str:
    return f"{fields.meta(obj).get('namespace', '')}/{fields.meta(obj).get('name', '')}"


def is_lb(svc: Obj) -> bool:
    spec = svc.get("spec") or {}
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def pending(svc: Obj) -> bool:
    return not ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")


def _ports(svc: Obj) -> list[tuple[int, str]]:
    return [
        (int(p.get("port", 0)), str(p.get("protocol") or "TCP")) for p in (svc.get("spec") or {}).get("ports") or []
    ]


def _svclb_of(pod: Obj) -> str:
    labels = fields.meta(pod).get("labels") or {}
    if SVCNAME not in labels:
        return ""
    return f"{labels.get(SVCNAMESPACE, '')}/{labels[SVCNAME]}"


def _host_ports(pod: Obj) -> list[tuple[int, str]]:
    out = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append((int(p["hostPort"]), str(p.get("protocol") or "TCP")))
    return out


def _live(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def check(state: LbState) -> list[Finding]:
    findings: list[Finding] = []
    lbs = [s for s in state.services if is_lb(s)]
    svclb_ds = any(_svclb_of(p) for p in state.pods)
    if state.servicelb and state.metallb and (svclb_ds or lbs):
        findings.append(
            Finding(
                "warning",
                "loadbalancers",
                "cluster",
                "ServiceLB and MetalLB are both active: both claim every LoadBalancer Service and fight over its "
                "status and ports",
                "disable ServiceLB (disable: [servicelb] in the server's config.yaml) when MetalLB is installed",
            )
        )
    for svc in lbs:
        if not pending(svc):
            continue
        key = _key(svc)
        if state.servicelb:
            findings += _servicelb_reason(svc, key, state)
        elif state.metallb:
            findings += _metallb_reason(svc, key, state)
        else:
            findings.append(
                Finding(
                    "error",
                    "loadbalancers",
                    key,
                    "LoadBalancer Service is pending: ServiceLB is disabled and MetalLB is not installed, so nothing "
                    "assigns it an address",
                    "remove servicelb from `disable:`, or install MetalLB with an IPAddressPool",
                )
            )
    return findings


def _servicelb_reason(svc: Obj, key: str, state: LbState) -> list[Finding]:
    own = [p for p in state.pods if _svclb_of(p) == key and _live(p)]
    running = [p for p in own if (p.get("spec") or {}).get("nodeName")]
    waiting = [p for p in own if not (p.get("spec") or {}).get("nodeName")]
    created = str(fields.meta(svc).get("creationTimestamp", ""))
    for port, proto in _ports(svc):
        holders = []
        for other in state.services:
            if other is svc or not is_lb(other) or _key(other) == key:
                continue
            if (port, proto) in _ports(other) and (
                not pending(other) or str(fields.meta(other).get("creationTimestamp", "")) < created
            ):
                holders.append(f"LoadBalancer Service {_key(other)}")
        for pod in state.pods:
            owner = _svclb_of(pod)
            if owner == key or not _live(pod) or not (pod.get("spec") or {}).get("nodeName"):
                continue
            if owner == "" and (port, proto) in _host_ports(pod):
                holders.append(f"pod {_key(pod)}'s hostPort on {(pod.get('spec') or {}).get('nodeName')}")
        if holders and not running:
            return [
                Finding(
                    "error",
                    "loadbalancers",
                    key,
                    f"LoadBalancer Service is pending: port {port}/{proto} is already taken by {', '.join(holders)}, so "
                    "ServiceLB's svclb pods for it cannot run on any node",
                    f"give it another port (kubectl -n {key.split('/')[0]} edit service {key.split('/')[1]}), or "
                    "split the nodes between them with the svccontroller.k3s.cattle.io/lbpool label",
                )
            ]
    if waiting and not running:
        return [
            Finding(
                "error",
                "loadbalancers",
                key,
                f"LoadBalancer Service is pending: its {len(waiting)} svclb pods are not scheduled on any node "
                "(enablelb labels exclude every node, or the nodes are full/tainted)",
                "kubectl -n kube-system describe pods -l " + f"{SVCNAME}={key.split('/')[1]}",
            )
        ]
    if not own:
        return [
            Finding(
                "warning",
                "loadbalancers",
                key,
                "LoadBalancer Service is pending and ServiceLB has no svclb pods for it yet",
                "kubectl -n kube-system get daemonsets; look at the server's log (servicelb)",
            )
        ]
    return []


def _metallb_reason(svc: Obj, key: str, state: LbState) -> list[Finding]:
    if not state.pools:
        return [
            Finding(
                "error",
                "loadbalancers",
                key,
                "LoadBalancer Service is pending: MetalLB is installed but there is no IPAddressPool",
                "kubectl apply an IPAddressPool and an L2Advertisement (see examples/metallb-lab.yaml)",
            )
        ]
    ns, name = key.split("/", 1)
    failures = [
        e
        for e in state.events
        if e.get("reason") == "AllocationFailed"
        and (e.get("involvedObject") or {}).get("name") == name
        and (e.get("involvedObject") or {}).get("namespace", ns) == ns
    ]
    if failures:
        last = max(failures, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return [
            Finding(
                "error",
                "loadbalancers",
                key,
                f"LoadBalancer Service is pending: MetalLB says {last.get('message', '')}",
                "add a pool that matches (namespaces, serviceSelectors, free addresses), or fix the requested IP",
            )
        ]
    pools = ", ".join(sorted(str(fields.meta(p).get("name")) for p in state.pools))
    return [
        Finding(
            "warning",
            "loadbalancers",
            key,
            f"LoadBalancer Service is pending and MetalLB has not said why (pools: {pools})",
            "kubectl -n metallb-system logs -l component=controller",
        )
    ]
