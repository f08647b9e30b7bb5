"""Defaulting, as kube-apiserver's SetDefaults_* functions do it for the kinds we serve.

Run on create and on update (after a patch), before validation, so a re-applied manifest that omits a
defaulted field does not look like a change.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from kwire.api.crd import definition
from kwire.api.registry import Kind
from kwire.api.user import UserInfo, current_user

Obj = dict[str, Any]


def _pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for field in ("containers", "initContainers"):
        for c in spec.get(field) or []:
            if not isinstance(c, dict):
                continue
            image = str(c.get("image", ""))
            tag = image.rsplit("/", 1)[-1]
            latest = ":" not in tag or tag.endswith(":latest")
            c.setdefault("imagePullPolicy", "Always" if latest and "@" not in image else "IfNotPresent")
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
            for p in c.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(probe_name)
                if isinstance(probe, dict):
                    probe.setdefault("timeoutSeconds", 1)
                    probe.setdefault("periodSeconds", 10)
                    probe.setdefault("successThreshold", 1)
                    probe.setdefault("failureThreshold", 3)
                    http = probe.get("httpGet")
                    if isinstance(http, dict):
                        http.setdefault("path", "/")
                        http.setdefault("scheme", "HTTP")


def _pod(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        _pod_spec(spec)
    status = obj.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("phase", "Pending")
        status.setdefault("qosClass", "BestEffort")


def _template(obj: Obj) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    tmpl = spec.get("template")
    if isinstance(tmpl, dict) and isinstance(tmpl.get("spec"), dict):
        _pod_spec(tmpl["spec"])
        tmpl.setdefault("metadata", {})


def _rolling_update(spec: Obj, field: str, **rolling: Any) -> None:
    """`spec.<field>`: type RollingUpdate unless set, and for RollingUpdate the `rollingUpdate` defaults given
    (Deployment's `strategy`, DaemonSet's and StatefulSet's `updateStrategy`)."""
    strategy = spec.setdefault(field, {})
    if not isinstance(strategy, dict):
        return
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        ru = strategy.setdefault("rollingUpdate", {})
        if isinstance(ru, dict):
            for key, value in rolling.items():
                ru.setdefault(key, value)


def _deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    _rolling_update(spec, "strategy", maxUnavailable="25%", maxSurge="25%")
    _template(obj)


def _replicaset(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("replicas", 1)
    _template(obj)


def _daemonset(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("revisionHistoryLimit", 10)
        _rolling_update(spec, "updateStrategy", maxUnavailable=1, maxSurge=0)
    _template(obj)


def _statefulset(obj: Obj) -> None:
    """SetDefaults_StatefulSet (apps/v1)."""
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("replicas", 1)
    spec.setdefault("podManagementPolicy", "OrderedReady")
    spec.setdefault("revisionHistoryLimit", 10)
    _rolling_update(spec, "updateStrategy", partition=0)
    retention = spec.setdefault("persistentVolumeClaimRetentionPolicy", {})
    if isinstance(retention, dict):
        retention.setdefault("whenDeleted", "Retain")
        retention.setdefault("whenScaled", "Retain")
    for pvc in spec.get("volumeClaimTemplates") or []:
        if isinstance(pvc, dict):  # each template is defaulted as a PersistentVolumeClaim (SetObjectDefaults)
            pvc.setdefault("apiVersion", "v1")
            pvc.setdefault("kind", "PersistentVolumeClaim")
            _pvc(pvc)
    _template(obj)


def _job_spec(spec: Obj, *, meta: Obj) -> None:
    """SetDefaults_Job, plus the selector and labels the Job strategy generates (batch/v1 generateSelector) from
    the Job's metadata (it has its uid by the time defaults run)."""
    if "completions" not in spec and "parallelism" not in spec:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 2147483647 if spec.get("backoffLimitPerIndex") is not None else 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
    tmpl = spec.get("template")
    if isinstance(tmpl, dict) and isinstance(tmpl.get("spec"), dict):
        _pod_spec(tmpl["spec"])
        tmpl.setdefault("metadata", {})
    if spec.get("manualSelector") is True or not isinstance(tmpl, dict):
        return
    uid, name = str(meta.get("uid") or ""), str(meta.get("name") or "")
    tmeta = tmpl.setdefault("metadata", {})
    if not isinstance(tmeta, dict) or not uid:
        return
    labels = tmeta.setdefault("labels", {})
    if isinstance(labels, dict):
        labels.setdefault("batch.kubernetes.io/controller-uid", uid)
        labels.setdefault("batch.kubernetes.io/job-name", name)
        labels.setdefault("controller-uid", uid)
        labels.setdefault("job-name", name)
    spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})


def _job(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    meta = obj.setdefault("metadata", {})
    if not isinstance(spec, dict) or not isinstance(meta, dict):
        return
    _job_spec(spec, meta=meta)
    tmpl_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels")
    if not meta.get("labels") and isinstance(tmpl_labels, dict) and tmpl_labels:
        meta["labels"] = dict(tmpl_labels)


def _cronjob(obj: Obj) -> None:
    """SetDefaults_CronJob."""
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("concurrencyPolicy", "Allow")
    spec.setdefault("suspend", False)
    spec.setdefault("successfulJobsHistoryLimit", 3)
    spec.setdefault("failedJobsHistoryLimit", 1)
    jt = spec.get("jobTemplate")
    if isinstance(jt, dict):
        _template({"spec": jt.get("spec")})  # only the pod template is defaulted: SetDefaults_Job is for Jobs


def _service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    stype = spec.setdefault("type", "ClusterIP")
    if stype == "ExternalName":
        return
    spec.setdefault("sessionAffinity", "None")
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = spec.setdefault("sessionAffinityConfig", {})
        if isinstance(cfg, dict):
            cip = cfg.setdefault("clientIP", {})
            if isinstance(cip, dict):
                cip.setdefault("timeoutSeconds", 10800)
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if stype in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if stype == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
            if "targetPort" not in p and "port" in p:
                p["targetPort"] = p["port"]
    if spec.get("clusterIP") != "None":
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    status = obj.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("loadBalancer", {})


def _namespace(obj: Obj) -> None:
    meta = obj.setdefault("metadata", {})
    labels = meta.setdefault("labels", {})
    # kube-apiserver keeps this label equal to the name (NamespaceDefaultLabelName), so namespaceSelectors can use it.
    if isinstance(labels, dict) and meta.get("name"):
        labels["kubernetes.io/metadata.name"] = meta["name"]
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("finalizers", ["kubernetes"])
    status = obj.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("phase", "Active")


def _secret(obj: Obj) -> None:
    """Secret type Opaque; `stringData` is write-only: merged into `data` base64-encoded (its keys win) and
    dropped, as kube's v1 conversion does."""
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict) and string_data:
        data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
        assert isinstance(data, dict)
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data


def _binding(obj: Obj) -> None:
    """SetDefaults_Subject: User and Group subjects are in the RBAC group."""
    for s in obj.get("subjects") or []:
        if isinstance(s, dict) and not s.get("apiGroup") and s.get("kind") in ("User", "Group"):
            s["apiGroup"] = "rbac.authorization.k8s.io"


def _priorityclass(obj: Obj) -> None:
    obj.setdefault("preemptionPolicy", "PreemptLowerPriority")


def _storageclass(obj: Obj) -> None:
    obj.setdefault("reclaimPolicy", "Delete")
    obj.setdefault("volumeBindingMode", "Immediate")


def _pv(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
        spec.setdefault("volumeMode", "Filesystem")
    status = obj.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("phase", "Pending")


def _pvc(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("volumeMode", "Filesystem")
    status = obj.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("phase", "Pending")


def _limitrange(obj: Obj) -> None:
    """SetDefaults_LimitRangeItem: a Container limit's default is its max, its defaultRequest the default."""
    for item in (obj.get("spec") or {}).get("limits") or []:
        if not isinstance(item, dict) or item.get("type") != "Container":
            continue
        dflt = item.setdefault("default", {})
        for res, value in (item.get("max") or {}).items():
            dflt.setdefault(res, value)
        req = item.setdefault("defaultRequest", {})
        for res, value in dflt.items():
            req.setdefault(res, value)
        for field in ("default", "defaultRequest"):
            if not item[field]:
                del item[field]


def _hpa(obj: Obj) -> None:
    """autoscaling/v2 SetDefaults_HorizontalPodAutoscaler: minReplicas 1, an 80% CPU target without metrics."""
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("minReplicas", 1)
    if not spec.get("metrics"):
        spec["metrics"] = [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
            }
        ]


def _webhooks(obj: Obj, *, mutating: bool) -> None:
    for hook in obj.get("webhooks") or []:
        if not isinstance(hook, dict):
            continue
        hook.setdefault("failurePolicy", "Fail")
        hook.setdefault("matchPolicy", "Equivalent")
        hook.setdefault("namespaceSelector", {})
        hook.setdefault("objectSelector", {})
        hook.setdefault("timeoutSeconds", 10)
        if mutating:
            hook.setdefault("reinvocationPolicy", "Never")
        svc = (hook.get("clientConfig") or {}).get("service")
        if isinstance(svc, dict):
            svc.setdefault("port", 443)
        for rule in hook.get("rules") or []:
            if isinstance(rule, dict):
                rule.setdefault("scope", "*")


def _csr(obj: Obj) -> None:
    """The requester fields kube-apiserver fills from the authenticated user (`csr_requester` on create)."""
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict) and "username" not in spec:
        csr_requester(obj, current_user())
    obj.setdefault("status", {})


def csr_requester(obj: Obj, user: UserInfo) -> None:
    """kube's CSR strategy PrepareForCreate: username, uid, groups and extra are the requesting user's, whatever
    the request said."""
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec["username"] = user.name
    spec["groups"] = list(user.groups)
    if user.uid:
        spec["uid"] = user.uid
    else:
        spec.pop("uid", None)
    if user.extra:
        spec["extra"] = {k: list(v) for k, v in user.extra.items()}
    else:
        spec.pop("extra", None)


def _endpointslice(obj: Obj) -> None:
    for p in obj.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")


def _networkpolicy(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    if "policyTypes" not in spec or not spec["policyTypes"]:
        types = ["Ingress"]
        if spec.get("egress"):
            types.append("Egress")
        spec["policyTypes"] = types
    for rules, peer_key in (("ingress", "ports"), ("egress", "ports")):
        for rule in spec.get(rules) or []:
            if isinstance(rule, dict):
                for p in rule.get(peer_key) or []:
                    if isinstance(p, dict):
                        p.setdefault("protocol", "TCP")


def _node(obj: Obj) -> None:
    obj.setdefault("spec", {})
    obj.setdefault("status", {})


_DEFAULTERS: dict[str, Callable[[Obj], None]] = {
    "Pod": _pod,
    "Deployment": _deployment,
    "ReplicaSet": _replicaset,
    "DaemonSet": _daemonset,
    "StatefulSet": _statefulset,
    "Job": _job,
    "CronJob": _cronjob,
    "Service": _service,
    "Namespace": _namespace,
    "Secret": _secret,
    "EndpointSlice": _endpointslice,
    "NetworkPolicy": _networkpolicy,
    "Node": _node,
    "CustomResourceDefinition": definition.apply_defaults,
    "RoleBinding": _binding,
    "ClusterRoleBinding": _binding,
    "PriorityClass": _priorityclass,
    "StorageClass": _storageclass,
    "PersistentVolume": _pv,
    "PersistentVolumeClaim": _pvc,
    "LimitRange": _limitrange,
    "HorizontalPodAutoscaler": _hpa,
    "ValidatingWebhookConfiguration": lambda o: _webhooks(o, mutating=False),
    "MutatingWebhookConfiguration": lambda o: _webhooks(o, mutating=True),
    "CertificateSigningRequest": _csr,
}


def apply_defaults(kind: Kind, obj: Obj) -> None:
    fn = _DEFAULTERS.get(kind.kind)
    if fn is not None:
        fn(obj)
