"""Add-ons deployed as pods, as K3s deploys its packaged manifests: cluster DNS (the CoreDNS role) and the
ingress controller (the Traefik role).

Unless `disable: [coredns]`: ConfigMap kube-system/coredns (a Corefile describing the configuration, K3s's, and
`NodeHosts`: `<InternalIP> <nodeName>` per node, kept current as nodes come and go), Service kube-system/kube-dns
with clusterIP = cluster-dns (10.43.0.10) and ports 53/UDP, 53/TCP, 9153/TCP, and Deployment kube-system/coredns
(image `kwire/coredns`, pods labelled k8s-app=kube-dns, probes on :8181/ready and :8080/health). Objects carry
the label `kwire.io/addon` and an annotation with a hash of what kwire wrote: a changed manifest (e.g. a new
cluster-domain) is re-applied; with the add-on disabled, the labelled objects are removed, as K3s removes a
disabled packaged component. The optional ConfigMap `coredns-custom` belongs to the user and is never touched.

Cluster DNS is not a single point of failure (K3s runs one CoreDNS replica): the replica count follows the nodes
as kube's dns-horizontal-autoscaler (cluster-proportional-autoscaler, linear mode: one replica per 16 schedulable
nodes or 256 cores, at least one, and with `preventSinglePointFailure` at least two once there are two nodes), and
a topology spread constraint (maxSkew 1 over `kubernetes.io/hostname`, as K3s's coredns manifest has) puts the
replicas on different nodes, so losing any one node leaves cluster DNS answering.

Unless `disable: [traefik]`: Deployment kube-system/traefik (image `kwire/ingress`, readiness GET :9000/ping, which
answers 200 once the controller has listed the cluster and nginx serves its first configuration), Service
kube-system/traefik of type LoadBalancer with ports `web` 80 and `websecure` 443 (ServiceLB gives it the node
IPs), IngressClass `traefik` (controller `traefik.io/ingress-controller`, the default class), as K3s's traefik
chart installs them.

Unless `disable: [metrics-server]`: what K3s's metrics-server manifests install: ServiceAccount, Deployment and
Service `kube-system/metrics-server` (image `rancher/mirrored-metrics-server`, which kwire runs as its own
`kwire.metricsserver`; container port 10250 `https`, Service port 443), APIService `v1beta1.metrics.k8s.io`
(insecureSkipTLSVerify, as K3s's), and the ClusterRoles `system:metrics-server` (which also grants `nodes/proxy`:
kwire's metrics-server reads kubelets through the API server) and `system:aggregated-metrics-reader` with the
binding. With the manifest's securityContext (uid 1000, runAsNonRoot, read-only root, no privilege escalation):
the container writes its serving certificate into its emptyDir /tmp and reads the service-account files, which
the kubelet writes 0644 as kube's kube-api-access volume.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import math
from dataclasses import dataclass

import yaml

from kwire.client import ApiClient, Informers, Invalid, NotFound
from kwire.client.client import (
    APISERVICES,
    CLUSTERROLEBINDINGS,
    CLUSTERROLES,
    CONFIGMAPS,
    CRDS,
    DEPLOYMENTS,
    INGRESSCLASSES,
    NODES,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SERVICES,
    Resource,
)
from kwire.controllers.common import Obj
from kwire.controllers.queue import Controller

NS = "kube-system"
ADDON_LABEL = "kwire.io/addon"
HASH_ANNOTATION = "kwire.io/addon-hash"
COREDNS = "coredns"
TRAEFIK = "traefik"
METRICS_SERVER = "metrics-server"
METRICS_SERVER_IMAGE = "rancher/mirrored-metrics-server:v0.7.2"  # what K3s 1.32 deploys

COREFILE = """.:53 {{
    errors
    health
    ready
    kubernetes {domain} in-addr.arpa ip6.arpa {{
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }}
    hosts /etc/coredns/NodeHosts {{
      ttl 60
      reload 15s
      fallthrough
    }}
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    import /etc/coredns/custom/*.override
}}
import /etc/coredns/custom/*.server
"""


@dataclass(frozen=True)
class AddonSettings:
    cluster_dns: str = "10.43.0.10"
    cluster_domain: str = "cluster.local"
    disable: tuple[str, ...] = ()


def _addon_tolerations() -> list[Obj]:
    """The tolerations every K3s add-on manifest gives its pods (they run on a control-plane-only cluster too)."""
    return [
        {"key": "CriticalAddonsOnly", "operator": "Exists"},
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
    ]


def _http_probe(
    path: str, port: int | str, *, period: int, failures: int = 3, delay: int = 0, https: bool = False
) -> Obj:
    """An httpGet probe as the add-on manifests write theirs (initialDelaySeconds only when there is one)."""
    get: Obj = {"path": path, "port": port, **({"scheme": "HTTPS"} if https else {})}
    probe: Obj = {"httpGet": get, "periodSeconds": period, "failureThreshold": failures}
    if delay:
        probe["initialDelaySeconds"] = delay
    return probe


def _hash(obj: Obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _meta(name: str, extra_labels: dict[str, str] | None = None, *, addon: str = COREDNS) -> Obj:
    return {"name": name, "namespace": NS, "labels": {ADDON_LABEL: addon, **(extra_labels or {})}}


RBAC_GROUP = "rbac.authorization.k8s.io"


def _cluster_meta(name: str, addon: str, extra_labels: dict[str, str] | None = None) -> Obj:
    return {"name": name, "labels": {ADDON_LABEL: addon, **(extra_labels or {})}}


def _rule(groups: list[str], resources: list[str], verbs: list[str], names: list[str] | None = None) -> Obj:
    out: Obj = {"apiGroups": groups, "resources": resources, "verbs": verbs}
    if names:
        out["resourceNames"] = names
    return out


def service_account_rbac(
    addon: str,
    *,
    account: str,
    cluster_role: str,
    rules: list[Obj],
    role_labels: dict[str, str] | None = None,
    namespaced_rules: list[Obj] | None = None,
) -> list[tuple[Resource, Obj]]:
    """A ServiceAccount in kube-system, a ClusterRole with `rules` bound to it (and a Role in kube-system with
    `namespaced_rules`, when given), as the add-ons' upstream manifests declare their RBAC."""
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": NS}]
    out: list[tuple[Resource, Obj]] = [
        (SERVICEACCOUNTS, {"metadata": _meta(account, addon=addon)}),
        (CLUSTERROLES, {"metadata": _cluster_meta(cluster_role, addon, role_labels), "rules": rules}),
        (
            CLUSTERROLEBINDINGS,
            {
                "metadata": _cluster_meta(cluster_role, addon, role_labels),
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": cluster_role},
                "subjects": subject,
            },
        ),
    ]
    if namespaced_rules:
        name = f"{account}-config"
        out.append((ROLES, {"metadata": _meta(name, addon=addon), "rules": namespaced_rules}))
        out.append(
            (
                ROLEBINDINGS,
                {
                    "metadata": _meta(name, addon=addon),
                    "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": name},
                    "subjects": subject,
                },
            )
        )
    return out


def coredns_rbac() -> list[tuple[Resource, Obj]]:
    """K3s's coredns manifest: ServiceAccount coredns and ClusterRole/ClusterRoleBinding `system:coredns` (list and
    watch of endpoints, services, pods, namespaces and endpointslices). kwire's DNS reads the `coredns` and
    `coredns-custom` ConfigMaps through the API where CoreDNS mounts them, so a Role in kube-system adds reading
    those two, by name."""
    return service_account_rbac(
        COREDNS,
        account="coredns",
        cluster_role="system:coredns",
        role_labels={"kubernetes.io/bootstrapping": "rbac-defaults"},
        rules=[
            _rule([""], ["endpoints", "services", "pods", "namespaces"], ["list", "watch"]),
            _rule(["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]),
        ],
        namespaced_rules=[_rule([""], ["configmaps"], ["get", "list", "watch"], ["coredns", "coredns-custom"])],
    )


TRAEFIK_CRDS = [
    "ingressroutes",
    "ingressroutetcps",
    "ingressrouteudps",
    "middlewares",
    "middlewaretcps",
    "serverstransports",
    "serverstransporttcps",
    "tlsoptions",
    "tlsstores",
    "traefikservices",
]


def traefik_rbac() -> list[tuple[Resource, Obj]]:
    """K3s's traefik chart (release traefik in kube-system): ServiceAccount traefik, ClusterRole and binding
    `traefik-kube-system` reading nodes, services, endpointslices, secrets, ingresses and ingress classes, the
    traefik.io kinds, and updating ingresses/status. kwire's controller also records Events about Ingresses it
    cannot serve, so events create/patch is added."""
    return service_account_rbac(
        TRAEFIK,
        account=TRAEFIK,
        cluster_role="traefik-kube-system",
        rules=[
            _rule([""], ["nodes", "services", "secrets"], ["get", "list", "watch"]),
            _rule(["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]),
            _rule(["extensions", "networking.k8s.io"], ["ingressclasses", "ingresses"], ["get", "list", "watch"]),
            _rule(["extensions", "networking.k8s.io"], ["ingresses/status"], ["update"]),
            _rule(["traefik.io"], TRAEFIK_CRDS, ["get", "list", "watch"]),
            _rule([""], ["events"], ["create", "patch"]),
        ],
    )


NODES_PER_REPLICA = 16
CORES_PER_REPLICA = 256


def dns_replicas(nodes: list[Obj]) -> int:
    """cluster-proportional-autoscaler's linear mode with preventSinglePointFailure, over schedulable nodes."""
    schedulable = [n for n in nodes if not (n.get("spec") or {}).get("unschedulable")]
    cores = 0
    for n in schedulable:
        try:
            cores += int(str(((n.get("status") or {}).get("capacity") or {}).get("cpu") or 0))
        except ValueError:
            pass
    replicas = max(1, math.ceil(cores / CORES_PER_REPLICA), math.ceil(len(schedulable) / NODES_PER_REPLICA))
    return max(replicas, 2) if len(schedulable) > 1 else replicas


def coredns_objects(s: AddonSettings, node_hosts: str, *, replicas: int = 1) -> list[tuple[Resource, Obj]]:
    labels = {"k8s-app": "kube-dns"}
    service = {
        "metadata": _meta(
            "kube-dns", {**labels, "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"}
        ),
        "spec": {
            "selector": labels,
            "clusterIP": s.cluster_dns,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
            ],
        },
    }
    container = {
        "name": "coredns",
        "image": "kwire/coredns:latest",
        "args": ["--cluster-domain", s.cluster_domain, "--resolv-conf", "/etc/resolv.conf"],
        "ports": [
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
        ],
        # K3s's coredns.yaml: only the capability to bind :53, a read-only root, no privilege escalation
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["all"]},
            "readOnlyRootFilesystem": True,
        },
        "readinessProbe": _http_probe("/ready", 8181, period=2),
        "livenessProbe": _http_probe("/health", 8080, period=10, delay=60),
    }
    deployment = {
        "metadata": _meta(COREDNS, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "serviceAccountName": "coredns",
                    "dnsPolicy": "Default",
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": _addon_tolerations(),
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": labels},
                        }
                    ],
                    "containers": [container],
                },
            },
        },
    }
    configmap = {
        "metadata": _meta(COREDNS),
        "data": {"Corefile": COREFILE.format(domain=s.cluster_domain), "NodeHosts": node_hosts},
    }
    return [*coredns_rbac(), (CONFIGMAPS, configmap), (SERVICES, service), (DEPLOYMENTS, deployment)]


@functools.cache
def _traefik_crd_manifests() -> tuple[str, ...]:
    files = importlib.resources.files("kwire.controllers.traefik_crds")
    return tuple(f.read_text() for f in sorted(files.iterdir(), key=lambda f: f.name) if f.name.endswith(".yaml"))


def traefik_crds() -> list[tuple[Resource, Obj]]:
    """The CRDs of K3s's traefik-crd chart (Traefik's chart v34.5.0), labelled as this add-on's."""
    out: list[tuple[Resource, Obj]] = []
    for text in _traefik_crd_manifests():
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            meta = doc["metadata"]
            meta["labels"] = {**(meta.get("labels") or {}), ADDON_LABEL: TRAEFIK}
            out.append((CRDS, {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "status")}))
    return out


def traefik_objects() -> list[tuple[Resource, Obj]]:
    """What K3s's traefik-crd and traefik charts install (the parts kwire serves): the CRDs, IngressClass, Service,
    Deployment."""
    labels = {"app.kubernetes.io/name": TRAEFIK, "app.kubernetes.io/instance": "traefik-kube-system"}
    ingress_class = {
        "metadata": {
            "name": TRAEFIK,
            "labels": {ADDON_LABEL: TRAEFIK, **labels},
            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"},
        },
        "spec": {"controller": "traefik.io/ingress-controller"},
    }
    service = {
        "metadata": _meta(TRAEFIK, labels, addon=TRAEFIK),
        "spec": {
            "type": "LoadBalancer",
            "selector": labels,
            "ports": [
                {"name": "web", "port": 80, "protocol": "TCP", "targetPort": "web"},
                {"name": "websecure", "port": 443, "protocol": "TCP", "targetPort": "websecure"},
            ],
        },
    }
    container = {
        "name": TRAEFIK,
        "image": "kwire/ingress:latest",
        "args": ["--service", f"{NS}/{TRAEFIK}"],
        "ports": [
            {"name": "web", "containerPort": 80, "protocol": "TCP"},
            {"name": "websecure", "containerPort": 443, "protocol": "TCP"},
            {"name": "traefik", "containerPort": 9000, "protocol": "TCP"},
        ],
        # the traefik chart's: no privilege escalation, a read-only root with emptyDirs at /data and /tmp, every
        # capability dropped but (kwire's data plane is nginx, root master and workers listening on :80 and :443
        # themselves, where traefik as uid 65532 listens on :8000/:8443) binding low ports and switching the
        # workers' user
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
        "readinessProbe": _http_probe("/ping", 9000, period=2, failures=1),
        "livenessProbe": _http_probe("/ping", 9000, period=10, delay=60),
    }
    deployment = {
        "metadata": _meta(TRAEFIK, labels, addon=TRAEFIK),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "serviceAccountName": TRAEFIK,
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": _addon_tolerations(),
                    "containers": [container],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    return [
        *traefik_crds(),
        *traefik_rbac(),
        (INGRESSCLASSES, ingress_class),
        (SERVICES, service),
        (DEPLOYMENTS, deployment),
    ]


def metrics_server_objects() -> list[tuple[Resource, Obj]]:
    """K3s's manifests/metrics-server: ServiceAccount, RBAC, Deployment, Service, APIService."""
    labels = {"k8s-app": METRICS_SERVER}

    def cluster_meta(name: str, extra: dict[str, str] | None = None) -> Obj:
        return {"name": name, "labels": {ADDON_LABEL: METRICS_SERVER, **(extra or {})}}

    reader = {
        "metadata": cluster_meta(
            "system:aggregated-metrics-reader",
            {
                "rbac.authorization.k8s.io/aggregate-to-view": "true",
                "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                "rbac.authorization.k8s.io/aggregate-to-admin": "true",
            },
        ),
        "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}],
    }
    role = {
        "metadata": cluster_meta("system:metrics-server"),
        "rules": [
            {"apiGroups": [""], "resources": ["nodes/metrics", "nodes/proxy"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
        ],
    }
    binding = {
        "metadata": cluster_meta("system:metrics-server"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:metrics-server"},
        "subjects": [{"kind": "ServiceAccount", "name": METRICS_SERVER, "namespace": NS}],
    }
    account = {"metadata": _meta(METRICS_SERVER, labels, addon=METRICS_SERVER)}
    container = {
        "name": METRICS_SERVER,
        "image": METRICS_SERVER_IMAGE,
        "args": [
            "--cert-dir=/tmp",
            "--secure-port=10250",
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
            "--kubelet-use-node-status-port",
            "--metric-resolution=15s",
        ],
        "ports": [{"name": "https", "containerPort": 10250, "protocol": "TCP"}],
        "readinessProbe": _http_probe("/readyz", "https", period=2, delay=2, https=True),
        "livenessProbe": _http_probe("/livez", "https", period=10, delay=60, https=True),
        "volumeMounts": [{"name": "tmp-dir", "mountPath": "/tmp"}],
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
        },
    }
    deployment = {
        "metadata": _meta(METRICS_SERVER, labels, addon=METRICS_SERVER),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels, "name": METRICS_SERVER},
                "spec": {
                    "priorityClassName": "system-node-critical",
                    "serviceAccountName": METRICS_SERVER,
                    "tolerations": _addon_tolerations(),
                    "volumes": [{"name": "tmp-dir", "emptyDir": {}}],
                    "containers": [container],
                },
            },
        },
    }
    service = {
        "metadata": _meta(
            METRICS_SERVER,
            {"kubernetes.io/cluster-service": "true", "kubernetes.io/name": "Metrics-server"},
            addon=METRICS_SERVER,
        ),
        "spec": {
            "selector": labels,
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": "https"}],
        },
    }
    apiservice = {
        "metadata": cluster_meta("v1beta1.metrics.k8s.io", labels),
        "spec": {
            "service": {"name": METRICS_SERVER, "namespace": NS, "port": 443},
            "group": "metrics.k8s.io",
            "version": "v1beta1",
            "insecureSkipTLSVerify": True,
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    # As K3s's manifest: the metrics-server authenticates the API server's front proxy from the ConfigMap this
    # Role reads, and authorizes each request with SubjectAccessReviews (system:auth-delegator).
    sa_subject = [{"kind": "ServiceAccount", "name": METRICS_SERVER, "namespace": NS}]
    auth_reader = {
        "metadata": _meta("metrics-server-auth-reader", labels, addon=METRICS_SERVER),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "extension-apiserver-authentication-reader",
        },
        "subjects": sa_subject,
    }
    delegator = {
        "metadata": cluster_meta("metrics-server:system:auth-delegator"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": sa_subject,
    }
    return [
        (CLUSTERROLES, reader),
        (CLUSTERROLES, role),
        (CLUSTERROLEBINDINGS, binding),
        (CLUSTERROLEBINDINGS, delegator),
        (ROLEBINDINGS, auth_reader),
        (SERVICEACCOUNTS, account),
        (DEPLOYMENTS, deployment),
        (SERVICES, service),
        (APISERVICES, apiservice),
    ]


def node_hosts(nodes: list[Obj]) -> str:
    lines = []
    for n in sorted(nodes, key=lambda o: str((o.get("metadata") or {}).get("name"))):
        addrs = (n.get("status") or {}).get("addresses") or []
        ip = next((a.get("address") for a in addrs if a.get("type") == "InternalIP"), None)
        if ip:
            lines.append(f"{ip} {n['metadata']['name']}")
    return "\n".join(lines) + ("\n" if lines else "")


class AddonController(Controller):
    name = "addons"

    def __init__(self, client: ApiClient, informers: Informers, *, settings: AddonSettings) -> None:
        super().__init__(client, informers)
        self.settings = settings
        self.nodes = self.informer(NODES)
        self.on_change(self.nodes, lambda _node: self.enqueue(COREDNS))  # NodeHosts and the replica count follow nodes

    async def prepare(self) -> None:
        self.enqueue(COREDNS)
        self.enqueue(TRAEFIK)
        self.enqueue(METRICS_SERVER)

    async def sync(self, key: str) -> float | None:
        if key == COREDNS:
            nodes = self.nodes.items()
            objs = coredns_objects(self.settings, node_hosts(nodes), replicas=dns_replicas(nodes))
        elif key == TRAEFIK:
            objs = traefik_objects()
        elif key == METRICS_SERVER:
            objs = metrics_server_objects()
        else:
            return None
        if key in self.settings.disable:
            for res, obj in objs:
                await self._remove(res, obj["metadata"]["name"], key)
            return None
        for res, obj in objs:
            await self._ensure(res, obj)
        return None

    async def _remove(self, res: Resource, name: str, addon: str) -> None:
        try:
            cur = await self.client.get(res, name, NS)
        except NotFound:
            return
        if ((cur.get("metadata") or {}).get("labels") or {}).get(ADDON_LABEL) == addon:
            await self.client.delete(res, name, NS, propagation_policy="Background")
            self.log.info("addons: removed disabled %s %s/%s", res.kind, NS, name)

    async def _ensure(self, res: Resource, desired: Obj) -> None:
        name = desired["metadata"]["name"]
        # NodeHosts changes with the nodes; it is applied as data, not as a new manifest version.
        manifest = {k: v for k, v in desired.items() if k != "data"} | (
            {"data": {"Corefile": desired["data"]["Corefile"]}} if "data" in desired else {}
        )
        h = _hash(manifest)
        desired["metadata"]["annotations"] = {**(desired["metadata"].get("annotations") or {}), HASH_ANNOTATION: h}
        try:
            cur = await self.client.get(res, name, NS)
        except NotFound:
            await self.client.create(res, desired, NS)
            self.log.info("addons: created %s %s/%s", res.kind, NS, name)
            return
        meta = cur.get("metadata") or {}
        changed = (meta.get("annotations") or {}).get(HASH_ANNOTATION) != h
        if res is CONFIGMAPS and (cur.get("data") or {}).get("NodeHosts") != desired["data"]["NodeHosts"]:
            cur["data"] = {**(cur.get("data") or {}), "NodeHosts": desired["data"]["NodeHosts"]}
            if not changed:
                await self.client.update(res, cur)
                return
        if not changed:
            return
        new = {**cur, **{k: v for k, v in desired.items() if k != "metadata"}}
        new["metadata"] = {
            **meta,
            "labels": {**(meta.get("labels") or {}), **desired["metadata"]["labels"]},
            "annotations": {**(meta.get("annotations") or {}), **desired["metadata"]["annotations"]},
        }
        if res is SERVICES:
            # Allocated fields (clusterIPs, ipFamilies...) stay as the API set them.
            new["spec"] = {**(cur.get("spec") or {}), **desired["spec"]}
        try:
            await self.client.update(res, new)
        except Invalid:
            if res is not SERVICES:
                raise
            # spec.clusterIP is immutable: a changed cluster-dns means a new kube-dns Service.
            await self.client.delete(res, name, NS)
            await self.client.create(res, desired, NS)
        self.log.info("addons: updated %s %s/%s", res.kind, NS, name)
