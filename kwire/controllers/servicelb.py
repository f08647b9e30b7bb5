"""ServiceLB, K3s's embedded load balancer (the Klipper role; k3s `pkg/cloudprovider/servicelb.go`).

For every Service of type LoadBalancer without a loadBalancerClass: a DaemonSet `svclb-<name>-<uid8>` in
kube-system whose pods hold one hostPort per service port (image `kwire/servicelb`: inside the pod, klipper-lb's
DNAT from that port to the ClusterIP, in nft), on the nodes labelled `svccontroller.k3s.cattle.io/enablelb=true`
if any node is, and of the Service's `svccontroller.k3s.cattle.io/lbpool` when it names one. The Service's
status.loadBalancer.ingress lists the nodes whose svclb pod is Ready (a node's ExternalIP if it has one, else its
InternalIP), sorted. A port another LoadBalancer already holds leaves the new pods Pending (the scheduler's
hostPort check), so that Service stays <pending>. DaemonSets whose Service is gone or no longer a LoadBalancer are
deleted. `disable: [servicelb]` leaves this controller out. The pods run as ServiceAccount `svclb` (created in
kube-system when missing) with no token mounted, as K3s's: they never talk to the API.

Events on the Service, as K3s's cluster shows them: kube's service-controller's `EnsuringLoadBalancer` ("Ensuring
load balancer") when the DaemonSet is created or changed, `EnsuredLoadBalancer` once the Service has addresses, and
`DeletingLoadBalancer`/`DeletedLoadBalancer` when it stops being a LoadBalancer; K3s's servicelb's own
`AppliedDaemonSet` ("Applied LoadBalancer DaemonSet kube-system/svclb-...") and `UpdatedLoadBalancer` ("Updated
LoadBalancer with new IPs: [old] -> [new]").
"""

from __future__ import annotations

import hashlib
import json

from kwire.base import fields
from kwire.base.keys import pod_ready
from kwire.client import AlreadyExists, ApiClient, Informers, NotFound
from kwire.client.client import DAEMONSETS, NODES, PODS, SERVICEACCOUNTS, SERVICES
from kwire.client.events import EventRecorder
from kwire.controllers.common import Obj
from kwire.controllers.queue import Controller

NS = "kube-system"
IMAGE = "kwire/servicelb:latest"
SVCNAME = "svccontroller.k3s.cattle.io/svcname"
SVCNAMESPACE = "svccontroller.k3s.cattle.io/svcnamespace"
ENABLELB = "svccontroller.k3s.cattle.io/enablelb"
LBPOOL = "svccontroller.k3s.cattle.io/lbpool"
SERVICE_ACCOUNT = "svclb"
HASH_ANNOTATION = "kwire.io/servicelb-hash"


def is_servicelb(svc: Obj | None) -> bool:
    spec = (svc or {}).get("spec") or {}
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def daemonset_name(svc: Obj) -> str:
    m = fields.meta(svc)
    suffix = "-" + str(m.get("uid", ""))[:8]
    return ("svclb-" + str(m.get("name", "")))[: 63 - len(suffix)] + suffix


def daemonset(svc: Obj, nodes: list[Obj]) -> Obj:
    """The svclb DaemonSet for a LoadBalancer Service, as K3s's ServiceLB makes it."""
    m, spec = fields.meta(svc), svc.get("spec") or {}
    name = daemonset_name(svc)
    labels = {"app": name, SVCNAME: str(m.get("name")), SVCNAMESPACE: str(m.get("namespace"))}
    ranges = ",".join(spec.get("loadBalancerSourceRanges") or ["0.0.0.0/0"])
    containers = []
    for p in spec.get("ports") or []:
        proto = str(p.get("protocol") or "TCP")
        port = int(p["port"])
        containers.append(
            {
                "name": f"lb-{proto.lower()}-{port}",
                "image": IMAGE,
                "env": [
                    {"name": "SRC_PORT", "value": str(port)},
                    {"name": "SRC_RANGES", "value": ranges},
                    {"name": "DEST_PROTO", "value": proto},
                    {"name": "DEST_PORT", "value": str(port)},
                    {"name": "DEST_IPS", "value": " ".join(spec.get("clusterIPs") or [spec.get("clusterIP", "")])},
                ],
                "ports": [
                    {"name": f"lb-{proto.lower()}-{port}", "containerPort": port, "hostPort": port, "protocol": proto}
                ],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
            }
        )
    node_selector: dict[str, str] = {}
    if any((fields.meta(n).get("labels") or {}).get(ENABLELB) == "true" for n in nodes):
        node_selector[ENABLELB] = "true"
    pool = (m.get("labels") or {}).get(LBPOOL)
    if pool:
        node_selector[LBPOOL] = str(pool)
    pod_spec: Obj = {
        "containers": containers,
        "serviceAccountName": SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        # as K3s's ServiceLB: forwarding in the pod's namespace is a sandbox sysctl (/proc/sys is read-only inside)
        "securityContext": {"sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}]},
        "priorityClassName": "system-node-critical",
        "tolerations": [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
        ],
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    ds: Obj = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    digest = hashlib.sha256(json.dumps(ds["spec"], sort_keys=True).encode()).hexdigest()[:16]
    ds["metadata"]["annotations"] = {HASH_ANNOTATION: digest}
    return ds


def ingress(ds_name: str, pods: list[Obj], nodes: dict[str, Obj]) -> list[Obj]:
    """status.loadBalancer.ingress: the IPs of the nodes whose svclb pod is Ready, ExternalIP before InternalIP."""
    ips = set()
    for pod in pods:
        if (fields.meta(pod).get("labels") or {}).get("app") != ds_name or not pod_ready(pod):
            continue
        node = nodes.get(str((pod.get("spec") or {}).get("nodeName")))
        addrs = ((node or {}).get("status") or {}).get("addresses") or []
        by_type = {a.get("type"): a.get("address") for a in addrs}
        ip = by_type.get("ExternalIP") or by_type.get("InternalIP")
        if ip:
            ips.add(str(ip))
    return [{"ip": ip} for ip in sorted(ips)]


class ServiceLB(Controller):
    name = "servicelb"
    component = "service-controller"  # kube's service controller; `lb_events` are K3s's servicelb's

    def __init__(self, client: ApiClient, informers: Informers) -> None:
        super().__init__(client, informers)
        self.lb_events = EventRecorder(client, component="service-lb-controller")  # K3s's servicelb
        self.services = self.informer(SERVICES)
        self.nodes = self.informer(NODES)
        self.daemonsets = self.informer(DAEMONSETS)
        self.pods = self.informer(PODS)
        self.on_change(self.services, self._on_service)
        self.on_change(self.daemonsets, self._on_svclb)
        self.on_change(self.pods, self._on_svclb)
        self.on_change(self.nodes, self._on_node)

    async def _on_service(self, svc: Obj) -> None:
        m = fields.meta(svc)
        self.enqueue(f"{m.get('namespace')}/{m.get('name')}")

    async def _on_svclb(self, obj: Obj) -> None:
        labels = fields.meta(obj).get("labels") or {}
        if fields.meta(obj).get("namespace") == NS and SVCNAME in labels:
            self.enqueue(f"{labels.get(SVCNAMESPACE)}/{labels[SVCNAME]}")

    async def _on_node(self, _node: Obj) -> None:
        for svc in self.services.items():
            if is_servicelb(svc):
                await self._on_service(svc)

    async def prepare(self) -> None:
        for svc in self.services.items():
            await self._on_service(svc)
        for ds in self.daemonsets.items():
            await self._on_svclb(ds)

    async def _ensure_service_account(self) -> None:
        try:
            await self.client.get(SERVICEACCOUNTS, SERVICE_ACCOUNT, NS)
        except NotFound:
            try:
                await self.client.create(SERVICEACCOUNTS, {"metadata": {"name": SERVICE_ACCOUNT}}, NS)
            except AlreadyExists:
                pass

    async def sync(self, key: str) -> float | None:
        ns, _, name = key.partition("/")
        svc = self.services.get(ns, name)
        want = daemonset(svc, self.nodes.items()) if svc is not None and is_servicelb(svc) else None
        for ds in self.daemonsets.items():
            labels = fields.meta(ds).get("labels") or {}
            if fields.meta(ds).get("namespace") != NS or (labels.get(SVCNAMESPACE), labels.get(SVCNAME)) != (ns, name):
                continue
            if want is None or fields.meta(ds).get("name") != want["metadata"]["name"]:
                # no longer a LoadBalancer (a deleted Service gets no events)
                gone = _as_service(svc) if svc is not None and want is None else None
                if gone is not None:
                    await self.recorder.event(gone, "Normal", "DeletingLoadBalancer", "Deleting load balancer")
                try:
                    await self.client.delete(DAEMONSETS, str(fields.meta(ds).get("name")), NS)
                    self.log.info("servicelb: deleted DaemonSet %s/%s", NS, fields.meta(ds).get("name"))
                except NotFound:
                    pass
                if gone is not None:
                    await self.recorder.event(gone, "Normal", "DeletedLoadBalancer", "Deleted load balancer")
        if want is None or svc is None:
            return None
        ds_name = want["metadata"]["name"]
        cur = self.daemonsets.get(NS, ds_name)
        changed = (
            cur is None
            or (fields.meta(cur).get("annotations") or {}).get(HASH_ANNOTATION)
            != want["metadata"]["annotations"][HASH_ANNOTATION]
        )
        if changed:
            await self.recorder.event(_as_service(svc), "Normal", "EnsuringLoadBalancer", "Ensuring load balancer")
        if cur is None:
            await self._ensure_service_account()
            await self.client.create(DAEMONSETS, want, NS)
            self.log.info("servicelb: created DaemonSet %s/%s for %s", NS, ds_name, key)
        elif changed:
            await self._ensure_service_account()
            new = {**cur, "spec": want["spec"]}
            new["metadata"] = {
                **fields.meta(cur),
                "labels": want["metadata"]["labels"],
                "annotations": {**(fields.meta(cur).get("annotations") or {}), **want["metadata"]["annotations"]},
            }
            await self.client.update(DAEMONSETS, new)
        if changed:
            await self.lb_events.event(
                _as_service(svc), "Normal", "AppliedDaemonSet", f"Applied LoadBalancer DaemonSet {NS}/{ds_name}"
            )
        nodes = {str(fields.meta(n).get("name")): n for n in self.nodes.items()}
        pods = [p for p in self.pods.items() if fields.meta(p).get("namespace") == NS]
        ing = ingress(ds_name, pods, nodes)
        lb: Obj = {"ingress": ing} if ing else {}
        status = svc.get("status") or {}
        old = status.get("loadBalancer") or {}
        if old != lb:
            await self.client.update_status(SERVICES, {**svc, "status": {**status, "loadBalancer": lb}})
            self.log.info("servicelb: %s ingress %s", key, [i["ip"] for i in ing] or "<pending>")
            before = " ".join(str(i.get("ip") or i.get("hostname") or "") for i in old.get("ingress") or [])
            after = " ".join(str(i.get("ip") or "") for i in ing)
            await self.lb_events.event(
                _as_service(svc),
                "Normal",
                "UpdatedLoadBalancer",
                f"Updated LoadBalancer with new IPs: [{before}] -> [{after}]",
            )
            if ing:
                await self.recorder.event(_as_service(svc), "Normal", "EnsuredLoadBalancer", "Ensured load balancer")
        return None


def _as_service(svc: Obj) -> Obj:
    """The Service as an event's involved object (informer items may lack kind and apiVersion)."""
    return {**svc, "kind": "Service", "apiVersion": "v1"}
