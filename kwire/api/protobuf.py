"""Decoding of Kubernetes protobuf request bodies into the JSON form the API stores.

kubectl's typed `create` subcommands (`create namespace|configmap|secret|service|deployment|serviceaccount|ingress`)
send `application/vnd.kubernetes.protobuf` and do not fall back to JSON on 415, so the API must read that encoding.
The envelope is the 4-byte magic `k8s\\0` followed by a `runtime.Unknown` message
{1: typeMeta{1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding, 4: contentType}; `raw` is the object in the
field numbering of k8s.io/api's generated.proto files.

We decode the wire format by hand (it is four wire types) against a table of the field numbers of the messages those
commands send, rather than depending on generated Python classes for all of k8s.io/api. Go marshals every non-pointer
field, so zero values (empty strings, 0, empty messages) are dropped, which is what the JSON encoder's `omitempty`
does; pointer fields whose zero is meaningful (e.g. `replicas: 0`) are listed as `keep_zero`.
Responses are always JSON: kubectl accepts it alongside protobuf.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from kwire.api.errors import ApiError

log = logging.getLogger(__name__)

MAGIC = b"k8s\x00"

# Field kinds: s string, i integer, b bool, y bytes (base64 in JSON), m message, ms map<string,string>,
# my map<string,bytes>, mq map<string,Quantity>, q Quantity, ios IntOrString, t metav1.Time.


@dataclass(frozen=True)
class F:
    name: str
    kind: str
    msg: str = ""
    repeated: bool = False
    keep_zero: bool = False
    inline: bool = False  # JSON inlines the sub-message's fields (e.g. IngressRule.ingressRuleValue)


def _m(**fields: F) -> dict[int, F]:
    return {int(k[1:]): v for k, v in fields.items()}


META = F("metadata", "m", "ObjectMeta")


def _object(spec: str) -> dict[int, F]:
    """A top-level object of the usual shape: {1: metadata, 2: spec} (the spec message named)."""
    return {1: META, 2: F("spec", "m", spec)}


SCHEMAS: dict[str, dict[int, F]] = {
    "ObjectMeta": _m(
        f1=F("name", "s"),
        f2=F("generateName", "s"),
        f3=F("namespace", "s"),
        f5=F("uid", "s"),
        f6=F("resourceVersion", "s"),
        f11=F("labels", "ms"),
        f12=F("annotations", "ms"),
        f13=F("ownerReferences", "m", "OwnerReference", repeated=True),
        f14=F("finalizers", "s", repeated=True),
    ),
    "OwnerReference": _m(
        f1=F("kind", "s"),
        f3=F("name", "s"),
        f4=F("uid", "s"),
        f5=F("apiVersion", "s"),
        f6=F("controller", "b", keep_zero=True),
        f7=F("blockOwnerDeletion", "b", keep_zero=True),
    ),
    "LabelSelector": _m(
        f1=F("matchLabels", "ms"), f2=F("matchExpressions", "m", "LabelSelectorRequirement", repeated=True)
    ),
    "LabelSelectorRequirement": _m(f1=F("key", "s"), f2=F("operator", "s"), f3=F("values", "s", repeated=True)),
    # core/v1
    "Namespace": _object("NamespaceSpec"),
    "NamespaceSpec": _m(f1=F("finalizers", "s", repeated=True)),
    "ConfigMap": _m(
        f1=META,
        f2=F("data", "ms"),
        f3=F("binaryData", "my"),
        f4=F("immutable", "b", keep_zero=True),
    ),
    "Secret": _m(
        f1=META,
        f2=F("data", "my"),
        f3=F("type", "s"),
        f4=F("stringData", "ms"),
        f5=F("immutable", "b", keep_zero=True),
    ),
    "ServiceAccount": _m(
        f1=META,
        f2=F("secrets", "m", "ObjectReference", repeated=True),
        f3=F("imagePullSecrets", "m", "LocalObjectReference", repeated=True),
        f4=F("automountServiceAccountToken", "b", keep_zero=True),
    ),
    "ObjectReference": _m(f1=F("kind", "s"), f2=F("namespace", "s"), f3=F("name", "s"), f4=F("uid", "s")),
    "LocalObjectReference": _m(f1=F("name", "s")),
    "Service": _object("ServiceSpec"),
    "ServiceSpec": _m(
        f1=F("ports", "m", "ServicePort", repeated=True),
        f2=F("selector", "ms"),
        f3=F("clusterIP", "s"),
        f4=F("type", "s"),
        f5=F("externalIPs", "s", repeated=True),
        f7=F("sessionAffinity", "s"),
        f8=F("loadBalancerIP", "s"),
        f9=F("loadBalancerSourceRanges", "s", repeated=True),
        f10=F("externalName", "s"),
        f11=F("externalTrafficPolicy", "s"),
        f12=F("healthCheckNodePort", "i"),
        f13=F("publishNotReadyAddresses", "b"),
    ),
    "ServicePort": _m(
        f1=F("name", "s"),
        f2=F("protocol", "s"),
        f3=F("port", "i"),
        f4=F("targetPort", "ios"),
        f5=F("nodePort", "i"),
        f6=F("appProtocol", "s"),
    ),
    "PodTemplateSpec": _object("PodSpec"),
    "PodSpec": _m(
        f1=F("volumes", "m", "Volume", repeated=True),
        f2=F("containers", "m", "Container", repeated=True),
        f3=F("restartPolicy", "s"),
        f4=F("terminationGracePeriodSeconds", "i", keep_zero=True),
        f5=F("activeDeadlineSeconds", "i", keep_zero=True),
        f6=F("dnsPolicy", "s"),
        f7=F("nodeSelector", "ms"),
        f8=F("serviceAccountName", "s"),
        f10=F("nodeName", "s"),
        f11=F("hostNetwork", "b"),
        f12=F("hostPID", "b"),
        f13=F("hostIPC", "b"),
        f15=F("imagePullSecrets", "m", "LocalObjectReference", repeated=True),
        f16=F("hostname", "s"),
        f17=F("subdomain", "s"),
        f19=F("schedulerName", "s"),
        f20=F("initContainers", "m", "Container", repeated=True),
        f21=F("automountServiceAccountToken", "b", keep_zero=True),
        f22=F("tolerations", "m", "Toleration", repeated=True),
        f24=F("priorityClassName", "s"),
        f25=F("priority", "i", keep_zero=True),
        f27=F("shareProcessNamespace", "b", keep_zero=True),
        f30=F("enableServiceLinks", "b", keep_zero=True),
        f31=F("preemptionPolicy", "s"),
    ),
    "Container": _m(
        f1=F("name", "s"),
        f2=F("image", "s"),
        f3=F("command", "s", repeated=True),
        f4=F("args", "s", repeated=True),
        f5=F("workingDir", "s"),
        f6=F("ports", "m", "ContainerPort", repeated=True),
        f7=F("env", "m", "EnvVar", repeated=True),
        f8=F("resources", "m", "ResourceRequirements"),
        f9=F("volumeMounts", "m", "VolumeMount", repeated=True),
        f10=F("livenessProbe", "m", "Probe"),
        f11=F("readinessProbe", "m", "Probe"),
        f13=F("terminationMessagePath", "s"),
        f14=F("imagePullPolicy", "s"),
        f15=F("securityContext", "m", "SecurityContext"),
        f16=F("stdin", "b"),
        f17=F("stdinOnce", "b"),
        f18=F("tty", "b"),
        f19=F("envFrom", "m", "EnvFromSource", repeated=True),
        f20=F("terminationMessagePolicy", "s"),
        f22=F("startupProbe", "m", "Probe"),
    ),
    "Probe": _m(
        f1=F("handler", "m", "ProbeHandler", inline=True),
        f2=F("initialDelaySeconds", "i"),
        f3=F("timeoutSeconds", "i"),
        f4=F("periodSeconds", "i"),
        f5=F("successThreshold", "i"),
        f6=F("failureThreshold", "i"),
        f7=F("terminationGracePeriodSeconds", "i", keep_zero=True),
    ),
    "ProbeHandler": _m(
        f1=F("exec", "m", "ExecAction"),
        f2=F("httpGet", "m", "HTTPGetAction"),
        f3=F("tcpSocket", "m", "TCPSocketAction"),
    ),
    "ExecAction": _m(f1=F("command", "s", repeated=True)),
    "HTTPGetAction": _m(
        f1=F("path", "s"),
        f2=F("port", "ios", keep_zero=True),
        f3=F("host", "s"),
        f4=F("scheme", "s"),
        f5=F("httpHeaders", "m", "HTTPHeader", repeated=True),
    ),
    "HTTPHeader": _m(f1=F("name", "s"), f2=F("value", "s")),
    "TCPSocketAction": _m(f1=F("port", "ios", keep_zero=True), f2=F("host", "s")),
    "EnvFromSource": _m(
        f1=F("prefix", "s"),
        f2=F("configMapRef", "m", "ConfigMapEnvSource"),
        f3=F("secretRef", "m", "ConfigMapEnvSource"),
    ),
    "ConfigMapEnvSource": _m(
        f1=F("ref", "m", "LocalObjectReference", inline=True), f2=F("optional", "b", keep_zero=True)
    ),
    "EnvVarSource": _m(
        f1=F("fieldRef", "m", "ObjectFieldSelector"),
        f2=F("resourceFieldRef", "m", "ResourceFieldSelector"),
        f3=F("configMapKeyRef", "m", "KeySelector"),
        f4=F("secretKeyRef", "m", "KeySelector"),
    ),
    "ObjectFieldSelector": _m(f1=F("apiVersion", "s"), f2=F("fieldPath", "s")),
    "ResourceFieldSelector": _m(f1=F("containerName", "s"), f2=F("resource", "s"), f3=F("divisor", "q")),
    "KeySelector": _m(
        f1=F("ref", "m", "LocalObjectReference", inline=True), f2=F("key", "s"), f3=F("optional", "b", keep_zero=True)
    ),
    "SecurityContext": _m(
        f2=F("privileged", "b", keep_zero=True),
        f4=F("runAsUser", "i", keep_zero=True),
        f5=F("runAsNonRoot", "b", keep_zero=True),
        f6=F("readOnlyRootFilesystem", "b", keep_zero=True),
        f7=F("allowPrivilegeEscalation", "b", keep_zero=True),
        f8=F("runAsGroup", "i", keep_zero=True),
    ),
    "VolumeMount": _m(
        f1=F("name", "s"),
        f2=F("readOnly", "b"),
        f3=F("mountPath", "s"),
        f4=F("subPath", "s"),
        f5=F("mountPropagation", "s"),
        f6=F("subPathExpr", "s"),
    ),
    "Volume": _m(f1=F("name", "s"), f2=F("source", "m", "VolumeSource", inline=True)),
    "VolumeSource": _m(
        f1=F("hostPath", "m", "HostPathVolumeSource"),
        f2=F("emptyDir", "m", "EmptyDirVolumeSource", keep_zero=True),
        f6=F("secret", "m", "SecretVolumeSource"),
        f10=F("persistentVolumeClaim", "m", "PersistentVolumeClaimVolumeSource"),
        f19=F("configMap", "m", "ConfigMapVolumeSource"),
    ),
    "HostPathVolumeSource": _m(f1=F("path", "s"), f2=F("type", "s")),
    "EmptyDirVolumeSource": _m(f1=F("medium", "s"), f2=F("sizeLimit", "q")),
    "SecretVolumeSource": _m(f1=F("secretName", "s"), f3=F("defaultMode", "i", keep_zero=True), f4=F("optional", "b")),
    "PersistentVolumeClaimVolumeSource": _m(f1=F("claimName", "s"), f2=F("readOnly", "b")),
    "ConfigMapVolumeSource": _m(
        f1=F("ref", "m", "LocalObjectReference", inline=True),
        f3=F("defaultMode", "i", keep_zero=True),
        f4=F("optional", "b"),
    ),
    "Toleration": _m(
        f1=F("key", "s"),
        f2=F("operator", "s"),
        f3=F("value", "s"),
        f4=F("effect", "s"),
        f5=F("tolerationSeconds", "i", keep_zero=True),
    ),
    "Pod": _object("PodSpec"),
    "ContainerPort": _m(
        f1=F("name", "s"), f2=F("hostPort", "i"), f3=F("containerPort", "i"), f4=F("protocol", "s"), f5=F("hostIP", "s")
    ),
    "EnvVar": _m(f1=F("name", "s"), f2=F("value", "s"), f3=F("valueFrom", "m", "EnvVarSource")),
    "ResourceRequirements": _m(f1=F("limits", "mq"), f2=F("requests", "mq")),
    # apps/v1
    "Deployment": _object("DeploymentSpec"),
    "DeploymentSpec": _m(
        f1=F("replicas", "i", keep_zero=True),
        f2=F("selector", "m", "LabelSelector"),
        f3=F("template", "m", "PodTemplateSpec"),
        f4=F("strategy", "m", "DeploymentStrategy"),
        f5=F("minReadySeconds", "i"),
        f6=F("revisionHistoryLimit", "i", keep_zero=True),
        f7=F("paused", "b"),
        f9=F("progressDeadlineSeconds", "i", keep_zero=True),
    ),
    "DeploymentStrategy": _m(f1=F("type", "s"), f2=F("rollingUpdate", "m", "RollingUpdateDeployment")),
    "RollingUpdateDeployment": _m(f1=F("maxUnavailable", "ios"), f2=F("maxSurge", "ios")),
    # batch/v1 (kubectl create job / cronjob / job --from=cronjob)
    "Job": _object("JobSpec"),
    "JobSpec": _m(
        f1=F("parallelism", "i", keep_zero=True),
        f2=F("completions", "i", keep_zero=True),
        f3=F("activeDeadlineSeconds", "i"),
        f4=F("selector", "m", "LabelSelector"),
        f5=F("manualSelector", "b"),
        f6=F("template", "m", "PodTemplateSpec"),
        f7=F("backoffLimit", "i", keep_zero=True),
        f8=F("ttlSecondsAfterFinished", "i", keep_zero=True),
        f9=F("completionMode", "s"),
        f10=F("suspend", "b"),
        f14=F("podReplacementPolicy", "s"),
    ),
    "CronJob": _object("CronJobSpec"),
    "CronJobSpec": _m(
        f1=F("schedule", "s"),
        f2=F("startingDeadlineSeconds", "i", keep_zero=True),
        f3=F("concurrencyPolicy", "s"),
        f4=F("suspend", "b"),
        f5=F("jobTemplate", "m", "JobTemplateSpec"),
        f6=F("successfulJobsHistoryLimit", "i", keep_zero=True),
        f7=F("failedJobsHistoryLimit", "i", keep_zero=True),
        f8=F("timeZone", "s"),
    ),
    "JobTemplateSpec": _object("JobSpec"),
    # policy/v1 (kubectl drain)
    "Eviction": _m(f1=META, f2=F("deleteOptions", "m", "DeleteOptions")),
    "DeleteOptions": _m(
        f1=F("gracePeriodSeconds", "i", keep_zero=True),
        f2=F("preconditions", "m", "Preconditions"),
        f3=F("orphanDependents", "b"),
        f4=F("propagationPolicy", "s"),
        f5=F("dryRun", "s", repeated=True),
    ),
    "Preconditions": _m(f1=F("uid", "s"), f2=F("resourceVersion", "s")),
    "PodDisruptionBudget": _object("PodDisruptionBudgetSpec"),
    "PodDisruptionBudgetSpec": _m(
        f1=F("minAvailable", "ios"),
        f2=F("selector", "m", "LabelSelector"),
        f3=F("maxUnavailable", "ios"),
        f4=F("unhealthyPodEvictionPolicy", "s"),
    ),
    # networking.k8s.io/v1
    "Ingress": _object("IngressSpec"),
    "IngressSpec": _m(
        f1=F("defaultBackend", "m", "IngressBackend"),
        f2=F("tls", "m", "IngressTLS", repeated=True),
        f3=F("rules", "m", "IngressRule", repeated=True),
        f4=F("ingressClassName", "s"),
    ),
    "IngressBackend": _m(f4=F("service", "m", "IngressServiceBackend")),
    "IngressServiceBackend": _m(f1=F("name", "s"), f2=F("port", "m", "ServiceBackendPort")),
    "ServiceBackendPort": _m(f1=F("name", "s"), f2=F("number", "i")),
    "IngressTLS": _m(f1=F("hosts", "s", repeated=True), f2=F("secretName", "s")),
    "IngressRule": _m(f1=F("host", "s"), f2=F("value", "m", "IngressRuleValue", inline=True)),
    "IngressRuleValue": _m(f1=F("http", "m", "HTTPIngressRuleValue")),
    "HTTPIngressRuleValue": _m(f1=F("paths", "m", "HTTPIngressPath", repeated=True)),
    "HTTPIngressPath": _m(f1=F("path", "s"), f2=F("backend", "m", "IngressBackend"), f3=F("pathType", "s")),
    # rbac.authorization.k8s.io/v1
    "PolicyRule": _m(
        f1=F("verbs", "s", repeated=True),
        f2=F("apiGroups", "s", repeated=True),
        f3=F("resources", "s", repeated=True),
        f4=F("resourceNames", "s", repeated=True),
        f5=F("nonResourceURLs", "s", repeated=True),
    ),
    "Role": _m(f1=META, f2=F("rules", "m", "PolicyRule", repeated=True)),
    "ClusterRole": _m(
        f1=META,
        f2=F("rules", "m", "PolicyRule", repeated=True),
        f3=F("aggregationRule", "m", "AggregationRule"),
    ),
    "AggregationRule": _m(f1=F("clusterRoleSelectors", "m", "LabelSelector", repeated=True)),
    "Subject": _m(f1=F("kind", "s"), f2=F("apiGroup", "s"), f3=F("name", "s"), f4=F("namespace", "s")),
    "RoleRef": _m(f1=F("apiGroup", "s"), f2=F("kind", "s"), f3=F("name", "s")),
    "RoleBinding": _m(
        f1=META,
        f2=F("subjects", "m", "Subject", repeated=True),
        f3=F("roleRef", "m", "RoleRef"),
    ),
    # authorization.k8s.io/v1 (kubectl auth can-i sends its reviews as protobuf)
    "ResourceAttributes": _m(
        f1=F("namespace", "s"),
        f2=F("verb", "s"),
        f3=F("group", "s"),
        f4=F("version", "s"),
        f5=F("resource", "s"),
        f6=F("subresource", "s"),
        f7=F("name", "s"),
    ),
    "NonResourceAttributes": _m(f1=F("path", "s"), f2=F("verb", "s")),
    "SelfSubjectAccessReviewSpec": _m(
        f1=F("resourceAttributes", "m", "ResourceAttributes"),
        f2=F("nonResourceAttributes", "m", "NonResourceAttributes"),
    ),
    "SubjectAccessReviewSpec": _m(
        f1=F("resourceAttributes", "m", "ResourceAttributes"),
        f2=F("nonResourceAttributes", "m", "NonResourceAttributes"),
        f3=F("user", "s"),
        f4=F("groups", "s", repeated=True),
        f6=F("uid", "s"),
    ),
    "SelfSubjectRulesReviewSpec": _m(f1=F("namespace", "s")),
    "SelfSubjectAccessReview": _object("SelfSubjectAccessReviewSpec"),
    "SubjectAccessReview": _object("SubjectAccessReviewSpec"),
    "SelfSubjectRulesReview": _object("SelfSubjectRulesReviewSpec"),
    # scheduling.k8s.io/v1
    "PriorityClass": _m(
        f1=META,
        f2=F("value", "i", keep_zero=True),
        f3=F("globalDefault", "b"),
        f4=F("description", "s"),
        f5=F("preemptionPolicy", "s"),
    ),
    # core/v1 ResourceQuota
    "ResourceQuota": _object("ResourceQuotaSpec"),
    "ResourceQuotaSpec": _m(
        f1=F("hard", "mq"), f2=F("scopes", "s", repeated=True), f3=F("scopeSelector", "m", "ScopeSelector")
    ),
    "ScopeSelector": _m(f1=F("matchExpressions", "m", "ScopedResourceSelectorRequirement", repeated=True)),
    "ScopedResourceSelectorRequirement": _m(
        f1=F("scopeName", "s"), f2=F("operator", "s"), f3=F("values", "s", repeated=True)
    ),
    # autoscaling/v1 (kubectl autoscale)
    "HorizontalPodAutoscaler": _object("HorizontalPodAutoscalerSpec"),
    "HorizontalPodAutoscalerSpec": _m(
        f1=F("scaleTargetRef", "m", "CrossVersionObjectReference"),
        f2=F("minReplicas", "i", keep_zero=True),
        f3=F("maxReplicas", "i", keep_zero=True),
        f4=F("targetCPUUtilizationPercentage", "i", keep_zero=True),
    ),
    "CrossVersionObjectReference": _m(f1=F("kind", "s"), f2=F("name", "s"), f3=F("apiVersion", "s")),
    # certificates.k8s.io/v1 (kubectl certificate approve|deny send the whole object)
    "CertificateSigningRequest": _m(
        f1=META,
        f2=F("spec", "m", "CertificateSigningRequestSpec"),
        f3=F("status", "m", "CertificateSigningRequestStatus"),
    ),
    "CertificateSigningRequestSpec": _m(
        f1=F("request", "y"),
        f2=F("username", "s"),
        f3=F("uid", "s"),
        f4=F("groups", "s", repeated=True),
        f5=F("usages", "s", repeated=True),
        f7=F("signerName", "s"),
        f8=F("expirationSeconds", "i", keep_zero=True),
    ),
    "CertificateSigningRequestStatus": _m(
        f1=F("conditions", "m", "CertificateSigningRequestCondition", repeated=True), f2=F("certificate", "y")
    ),
    "CertificateSigningRequestCondition": _m(
        f1=F("type", "s"),
        f2=F("reason", "s"),
        f3=F("message", "s"),
        f4=F("lastUpdateTime", "t"),
        f5=F("lastTransitionTime", "t"),
        f6=F("status", "s"),
    ),
    # authentication.k8s.io/v1: `kubectl create token` and `kubectl auth whoami`
    "TokenRequest": _object("TokenRequestSpec"),
    "TokenRequestSpec": _m(
        f1=F("audiences", "s", repeated=True),
        f3=F("boundObjectRef", "m", "BoundObjectReference"),
        f4=F("expirationSeconds", "i", keep_zero=True),
    ),
    "BoundObjectReference": _m(f1=F("kind", "s"), f2=F("apiVersion", "s"), f3=F("name", "s"), f4=F("uid", "s")),
    "TokenReview": _object("TokenReviewSpec"),
    "TokenReviewSpec": _m(f1=F("token", "s"), f2=F("audiences", "s", repeated=True)),
    "SelfSubjectReview": _m(f1=META),
}

# The top-level kinds whose bodies we accept, by group version; each is decoded with the schema of its own name.
_ACCEPTED: dict[str, tuple[str, ...]] = {
    # Pod: kubectl debug node/... and --copy-to; DeleteOptions: client-go sends it in the version of the resource
    "v1": ("Namespace", "ConfigMap", "Secret", "ServiceAccount", "Service", "ResourceQuota", "Pod", "DeleteOptions"),
    "meta.k8s.io/v1": ("DeleteOptions",),
    "apps/v1": ("Deployment",),
    "batch/v1": ("Job", "CronJob"),
    "networking.k8s.io/v1": ("Ingress",),
    "rbac.authorization.k8s.io/v1": ("Role", "ClusterRole", "RoleBinding"),
    "authorization.k8s.io/v1": ("SelfSubjectAccessReview", "SelfSubjectRulesReview", "SubjectAccessReview"),
    "authentication.k8s.io/v1": ("TokenRequest", "TokenReview", "SelfSubjectReview"),
    "scheduling.k8s.io/v1": ("PriorityClass",),
    "policy/v1": ("PodDisruptionBudget", "Eviction"),
    "autoscaling/v1": ("HorizontalPodAutoscaler",),
    "certificates.k8s.io/v1": ("CertificateSigningRequest",),
}
TOP_LEVEL: dict[tuple[str, str], str] = {
    **{(gv, kind): kind for gv, kinds in _ACCEPTED.items() for kind in kinds},
    # kinds with the same fields as another's
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "RoleBinding",
    ("authorization.k8s.io/v1", "LocalSubjectAccessReview"): "SubjectAccessReview",
}


class DecodeError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(buf):
            raise DecodeError("truncated varint")
        c = buf[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def fields_of(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for every field in a message, in order."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
            out.append((num, wt, v))
        elif wt == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise DecodeError("truncated length-delimited field")
            out.append((num, wt, buf[i : i + n]))
            i += n
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise DecodeError(f"unsupported wire type {wt}")
        if i > len(buf):
            raise DecodeError("truncated fixed-width field")
    return out


def _signed(v: int) -> int:
    # int32/int64 are encoded as two's complement 64-bit varints.
    return v - (1 << 64) if v >= 1 << 63 else v


def _str(v: int | bytes) -> str:
    if not isinstance(v, bytes):
        raise DecodeError("expected a length-delimited string")
    return v.decode("utf-8")


def _map_entry(v: int | bytes) -> tuple[str, bytes]:
    if not isinstance(v, bytes):
        raise DecodeError("expected a map entry")
    key, val = "", b""
    for num, _wt, x in fields_of(v):
        if num == 1:
            key = _str(x)
        elif num == 2 and isinstance(x, bytes):
            val = x
    return key, val


def _scalar(f: F, v: int | bytes) -> Any:
    if f.kind == "s":
        return _str(v)
    if f.kind == "i":
        if not isinstance(v, int):
            raise DecodeError(f"{f.name}: expected an integer")
        return _signed(v)
    if f.kind == "b":
        return bool(v)
    if f.kind == "y":
        if not isinstance(v, bytes):
            raise DecodeError(f"{f.name}: expected bytes")
        return base64.b64encode(v).decode()
    if f.kind == "ios":
        if not isinstance(v, bytes):
            raise DecodeError(f"{f.name}: expected IntOrString")
        typ, ival, sval = 0, 0, ""
        for num, _wt, x in fields_of(v):
            if num == 1 and isinstance(x, int):
                typ = x
            elif num == 2 and isinstance(x, int):
                ival = _signed(x)
            elif num == 3:
                sval = _str(x)
        return sval if typ == 1 else ival
    if f.kind == "m":
        if not isinstance(v, bytes):
            raise DecodeError(f"{f.name}: expected a message")
        return decode_message(f.msg, v)
    if f.kind == "q":
        # resource.Quantity is {1: string}.
        if not isinstance(v, bytes):
            raise DecodeError(f"{f.name}: expected a Quantity")
        return next((_str(x) for n, _w, x in fields_of(v) if n == 1), "")
    if f.kind == "t":
        # metav1.Time is {1: seconds, 2: nanos}; JSON has it as RFC 3339 in whole seconds.
        if not isinstance(v, bytes):
            raise DecodeError(f"{f.name}: expected a Time")
        seconds = next((_signed(x) for n, _w, x in fields_of(v) if n == 1 and isinstance(x, int)), None)
        if seconds is None:
            return None  # a zero Time is marshalled as an empty message: JSON null, dropped
        try:
            when = dt.datetime.fromtimestamp(seconds, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise DecodeError(f"{f.name}: time out of range") from None
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    raise DecodeError(f"unknown field kind {f.kind}")


def _is_zero(v: Any) -> bool:
    return v in ("", 0, False, None) or v == {} or v == []


def decode_message(name: str, buf: bytes) -> dict[str, Any]:
    schema = SCHEMAS[name]
    out: dict[str, Any] = {}
    for num, _wt, v in fields_of(buf):
        f = schema.get(num)
        if f is None:
            log.debug("protobuf %s: ignoring field %d", name, num)
            continue
        if f.kind in ("ms", "my", "mq"):
            k, raw = _map_entry(v)
            if f.kind == "my":
                val: Any = base64.b64encode(raw).decode()
            elif f.kind == "mq":
                # resource.Quantity is {1: string}.
                val = next((_str(x) for n, _w, x in fields_of(raw) if n == 1), "")
            else:
                val = raw.decode("utf-8")
            out.setdefault(f.name, {})[k] = val
            continue
        value = _scalar(f, v)
        if f.inline and isinstance(value, dict):
            out.update(value)
        elif f.repeated:
            out.setdefault(f.name, []).append(value)
        elif f.keep_zero or not _is_zero(value):
            out[f.name] = value
    return out


def decode(body: bytes) -> dict[str, Any]:
    """Decode a `k8s\\0`-framed protobuf request body into a JSON-shaped object, or raise ApiError 415/400."""
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "the body of the request was not a Kubernetes protobuf envelope")
    try:
        api_version = kind = ""
        raw = b""
        for num, _wt, v in fields_of(body[len(MAGIC) :]):
            if num == 1 and isinstance(v, bytes):
                for n2, _w2, x in fields_of(v):
                    if n2 == 1:
                        api_version = _str(x)
                    elif n2 == 2:
                        kind = _str(x)
            elif num == 2 and isinstance(v, bytes):
                raw = v
        msg = TOP_LEVEL.get((api_version, kind))
        if msg is None:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"protobuf bodies for {kind or 'this kind'} ({api_version}) are not supported; send application/json",
            )
        obj = decode_message(msg, raw)
    except (DecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "BadRequest", f"the body of the request could not be decoded: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}
