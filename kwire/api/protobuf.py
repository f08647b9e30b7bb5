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
import logging
from dataclasses import dataclass
from typing import Any

from kwire.api.errors import ApiError

log = logging.getLogger(__name__)

MAGIC = b"k8s\x00"

# Field kinds: s string, i integer, b bool, y bytes (base64 in JSON), m message, ms map<string,string>,
# my map<string,bytes>, mq map<string,Quantity>, ios IntOrString.


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
    "Namespace": _m(f1=F("metadata", "m", "ObjectMeta"), f2=F("spec", "m", "NamespaceSpec")),
    "NamespaceSpec": _m(f1=F("finalizers", "s", repeated=True)),
    "ConfigMap": _m(
        f1=F("metadata", "m", "ObjectMeta"),
        f2=F("data", "ms"),
        f3=F("binaryData", "my"),
        f4=F("immutable", "b", keep_zero=True),
    ),
    "Secret": _m(
        f1=F("metadata", "m", "ObjectMeta"),
        f2=F("data", "my"),
        f3=F("type", "s"),
        f4=F("stringData", "ms"),
        f5=F("immutable", "b", keep_zero=True),
    ),
    "ServiceAccount": _m(
        f1=F("metadata", "m", "ObjectMeta"),
        f2=F("secrets", "m", "ObjectReference", repeated=True),
        f3=F("imagePullSecrets", "m", "LocalObjectReference", repeated=True),
        f4=F("automountServiceAccountToken", "b", keep_zero=True),
    ),
    "ObjectReference": _m(f1=F("kind", "s"), f2=F("namespace", "s"), f3=F("name", "s"), f4=F("uid", "s")),
    "LocalObjectReference": _m(f1=F("name", "s")),
    "Service": _m(f1=F("metadata", "m", "ObjectMeta"), f2=F("spec", "m", "ServiceSpec")),
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
    "PodTemplateSpec": _m(f1=F("metadata", "m", "ObjectMeta"), f2=F("spec", "m", "PodSpec")),
    "PodSpec": _m(
        f2=F("containers", "m", "Container", repeated=True),
        f3=F("restartPolicy", "s"),
        f4=F("terminationGracePeriodSeconds", "i", keep_zero=True),
        f6=F("dnsPolicy", "s"),
        f7=F("nodeSelector", "ms"),
        f8=F("serviceAccountName", "s"),
        f10=F("nodeName", "s"),
        f11=F("hostNetwork", "b"),
        f16=F("hostname", "s"),
        f17=F("subdomain", "s"),
        f20=F("initContainers", "m", "Container", repeated=True),
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
        f14=F("imagePullPolicy", "s"),
    ),
    "ContainerPort": _m(
        f1=F("name", "s"), f2=F("hostPort", "i"), f3=F("containerPort", "i"), f4=F("protocol", "s"), f5=F("hostIP", "s")
    ),
    "EnvVar": _m(f1=F("name", "s"), f2=F("value", "s")),
    "ResourceRequirements": _m(f1=F("limits", "mq"), f2=F("requests", "mq")),
    # apps/v1
    "Deployment": _m(f1=F("metadata", "m", "ObjectMeta"), f2=F("spec", "m", "DeploymentSpec")),
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
    "Job": _m(f1=F("metadata", "m", "ObjectMeta"), f2=F("spec", "m", "JobSpec")),
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
    "CronJob": _m(f1=F("metadata", "m", "ObjectMeta"), f2=F("spec", "m", "CronJobSpec")),
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
    "JobTemplateSpec": _m(f1=F("metadata", "m", "ObjectMeta"), f2=F("spec", "m", "JobSpec")),
    # policy/v1 (kubectl drain)
    "Eviction": _m(f1=F("metadata", "m", "ObjectMeta"), f2=F("deleteOptions", "m", "DeleteOptions")),
    "DeleteOptions": _m(
        f1=F("gracePeriodSeconds", "i", keep_zero=True),
        f2=F("preconditions", "m", "Preconditions"),
        f3=F("orphanDependents", "b"),
        f4=F("propagationPolicy", "s"),
        f5=F("dryRun", "s", repeated=True),
    ),
    "Preconditions": _m(f1=F("uid", "s"), f2=F("resourceVersion", "s")),
    "PodDisruptionBudget": _m(f1=F("metadata", "m", "ObjectMeta"), f2=F("spec", "m", "PodDisruptionBudgetSpec")),
    "PodDisruptionBudgetSpec": _m(
        f1=F("minAvailable", "ios"),
        f2=F("selector", "m", "LabelSelector"),
        f3=F("maxUnavailable", "ios"),
        f4=F("unhealthyPodEvictionPolicy", "s"),
    ),
    # networking.k8s.io/v1
    "Ingress": _m(f1=F("metadata", "m", "ObjectMeta"), f2=F("spec", "m", "IngressSpec")),
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
}

# The top-level kinds whose bodies we accept, by (apiVersion, kind).
TOP_LEVEL: dict[tuple[str, str], str] = {
    ("v1", "Namespace"): "Namespace",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Secret"): "Secret",
    ("v1", "ServiceAccount"): "ServiceAccount",
    ("v1", "Service"): "Service",
    ("apps/v1", "Deployment"): "Deployment",
    ("networking.k8s.io/v1", "Ingress"): "Ingress",
    ("batch/v1", "Job"): "Job",
    ("batch/v1", "CronJob"): "CronJob",
    ("policy/v1", "Eviction"): "Eviction",
    ("policy/v1", "PodDisruptionBudget"): "PodDisruptionBudget",
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
