"""Validation of policy-like kinds: PriorityClass, LimitRange, ResourceQuota, HorizontalPodAutoscaler,
CertificateSigningRequest and the admission webhook configurations.

Mirrors `pkg/apis/scheduling/validation`, `pkg/apis/core/validation` (LimitRange, ResourceQuota),
`pkg/apis/autoscaling/validation`, `pkg/apis/certificates/validation` and `pkg/apis/admissionregistration/
validation` for the fields that matter to manifests, with kube-apiserver's field paths and messages.
"""

from __future__ import annotations

import base64
from typing import Any

from kwire.api import matchconditions
from kwire.api.errors import FieldError, duplicate, forbidden, invalid, not_supported, required
from kwire.api.validation import dns1123_subdomain, validate_label_selector
from kwire.base import quantity
from kwire.base.fields import as_dict

Obj = dict[str, Any]
Errs = list[FieldError]

HIGHEST_USER_PRIORITY = 1_000_000_000
SYSTEM_CLASSES = {"system-cluster-critical": 2_000_000_000, "system-node-critical": 2_000_001_000}
PREEMPTION = ("Never", "PreemptLowerPriority")


# -- scheduling.k8s.io ---------------------------------------------------------------------------------------
def priority_class(obj: Obj, old: Obj | None) -> Errs:
    errs: Errs = []
    name = str(as_dict(obj.get("metadata")).get("name") or "")
    value = obj.get("value", 0)
    if not isinstance(value, int) or isinstance(value, bool):
        errs.append(invalid("value", value, "must be an integer"))
        value = 0
    if name in SYSTEM_CLASSES:
        if value != SYSTEM_CLASSES[name]:
            errs.append(
                forbidden("metadata.name", f"{name!r} is a system priority class with value {SYSTEM_CLASSES[name]}")
            )
    elif name.startswith("system-"):
        errs.append(forbidden("metadata.name", "priority class names with 'system-' prefix are reserved"))
    elif value > HIGHEST_USER_PRIORITY:
        errs.append(forbidden("value", f"maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"))
    policy = obj.get("preemptionPolicy")
    if policy not in PREEMPTION:
        errs.append(not_supported("preemptionPolicy", policy or "", PREEMPTION))
    if old is not None:
        if old.get("value") != obj.get("value"):
            errs.append(forbidden("value", "may not be changed in an update."))
        if old.get("preemptionPolicy") != obj.get("preemptionPolicy"):
            errs.append(invalid("preemptionPolicy", policy, "field is immutable"))
    return errs


# -- core: LimitRange, ResourceQuota --------------------------------------------------------------------------
LIMIT_TYPES = ("Container", "PersistentVolumeClaim", "Pod")


def limit_range(obj: Obj, old: Obj | None) -> Errs:
    errs: Errs = []
    seen: set[str] = set()
    for i, item in enumerate(as_dict(obj.get("spec")).get("limits") or []):
        path = f"spec.limits[{i}]"
        item = as_dict(item)
        typ = item.get("type")
        if typ not in LIMIT_TYPES:
            errs.append(not_supported(f"{path}.type", typ or "", LIMIT_TYPES))
        elif typ in seen:
            errs.append(duplicate(f"{path}.type", typ))
        seen.add(str(typ))
        parsed: dict[str, dict[str, Any]] = {}
        for field in ("max", "min", "default", "defaultRequest", "maxLimitRequestRatio"):
            parsed[field] = {}
            for res, raw in as_dict(item.get(field)).items():
                q = quantity.parse(raw)
                if q is None:
                    errs.append(invalid(f"{path}.{field}[{res}]", raw, quantity.MSG))
                elif q < 0:
                    errs.append(invalid(f"{path}.{field}[{res}]", raw, "must be greater than or equal to 0"))
                else:
                    parsed[field][res] = (q, raw)
        if typ == "Pod":
            for field in ("default", "defaultRequest"):
                for res in parsed[field]:
                    errs.append(forbidden(f"{path}.{field}[{res}]", "may not be specified when `type` is 'Pod'"))
        mx, mn = parsed["max"], parsed["min"]
        for res, (q, raw) in mn.items():
            if res in mx and q > mx[res][0]:
                errs.append(
                    invalid(f"{path}.min[{res}]", raw, f"min value {raw} is greater than max value {mx[res][1]}")
                )
        for field in ("default", "defaultRequest"):
            for res, (q, raw) in parsed[field].items():
                if res in mn and q < mn[res][0]:
                    errs.append(
                        invalid(
                            f"{path}.{field}[{res}]", raw, f"min value {mn[res][1]} is greater than {field} value {raw}"
                        )
                    )
                if res in mx and q > mx[res][0]:
                    errs.append(
                        invalid(
                            f"{path}.{field}[{res}]", raw, f"{field} value {raw} is greater than max value {mx[res][1]}"
                        )
                    )
        for res, (q, raw) in parsed["defaultRequest"].items():
            dflt = parsed["default"].get(res)
            if dflt is not None and q > dflt[0]:
                errs.append(
                    invalid(
                        f"{path}.defaultRequest[{res}]",
                        raw,
                        f"default request value {raw} is greater than default limit value {dflt[1]}",
                    )
                )
    return errs


QUOTA_SCOPES = (
    "BestEffort",
    "CrossNamespacePodAffinity",
    "NotBestEffort",
    "NotTerminating",
    "PriorityClass",
    "Terminating",
)


def resource_quota(obj: Obj, old: Obj | None) -> Errs:
    errs: Errs = []
    spec = as_dict(obj.get("spec"))
    for path, values in (("spec.hard", spec.get("hard")), ("status.hard", as_dict(obj.get("status")).get("hard"))):
        for res, raw in as_dict(values).items():
            q = quantity.parse(raw)
            if q is None:
                errs.append(invalid(f"{path}[{res}]", raw, quantity.MSG))
            elif q < 0:
                errs.append(invalid(f"{path}[{res}]", raw, "must be greater than or equal to 0"))
    for i, scope in enumerate(spec.get("scopes") or []):
        if scope not in QUOTA_SCOPES:
            errs.append(not_supported(f"spec.scopes[{i}]", scope, QUOTA_SCOPES))
    return errs


# -- autoscaling ------------------------------------------------------------------------------------------------
METRIC_TYPES = ("ContainerResource", "External", "Object", "Pods", "Resource")


def hpa(obj: Obj, old: Obj | None) -> Errs:
    errs: Errs = []
    spec = as_dict(obj.get("spec"))
    ref = as_dict(spec.get("scaleTargetRef"))
    if not ref.get("kind"):
        errs.append(required("spec.scaleTargetRef.kind"))
    if not ref.get("name"):
        errs.append(required("spec.scaleTargetRef.name"))
    else:
        errs += [invalid("spec.scaleTargetRef.name", ref["name"], m) for m in dns1123_subdomain(str(ref["name"]))]
    mn, mx = spec.get("minReplicas"), spec.get("maxReplicas")
    if isinstance(mn, int) and mn < 1:
        errs.append(invalid("spec.minReplicas", mn, "must be greater than or equal to 1"))
    if not isinstance(mx, int) or mx < 1:
        errs.append(invalid("spec.maxReplicas", mx if mx is not None else 0, "must be greater than or equal to 1"))
    elif isinstance(mn, int) and mx < mn:
        errs.append(invalid("spec.maxReplicas", mx, "must be greater than or equal to `minReplicas`"))
    for i, m in enumerate(spec.get("metrics") or []):
        typ = as_dict(m).get("type")
        if typ not in METRIC_TYPES:
            errs.append(not_supported(f"spec.metrics[{i}].type", typ or "", METRIC_TYPES))
            continue
        key = typ[0].lower() + typ[1:]
        if not isinstance(as_dict(m).get(key), dict):
            errs.append(required(f"spec.metrics[{i}].{key}", "must populate information for the given metric source"))
    return errs


# -- certificates.k8s.io ------------------------------------------------------------------------------------------
USAGES = (
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
)


def csr(obj: Obj, old: Obj | None) -> Errs:
    errs: Errs = []
    spec = as_dict(obj.get("spec"))
    raw = spec.get("request")
    try:
        pem = base64.b64decode(str(raw or ""), validate=True)
    except ValueError:
        pem = b""
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in pem:
        errs.append(invalid("spec.request", "<redacted>", "PEM block type must be CERTIFICATE REQUEST"))
    if not spec.get("signerName"):
        errs.append(required("spec.signerName"))
    for i, usage in enumerate(spec.get("usages") or []):
        if usage not in USAGES:
            errs.append(not_supported(f"spec.usages[{i}]", usage, USAGES))
    types = [str(as_dict(c).get("type")) for c in as_dict(obj.get("status")).get("conditions") or []]
    if "Approved" in types and "Denied" in types:
        errs.append(
            invalid(
                f"status.conditions[{types.index('Denied')}].type",
                "Denied",
                "Approved and Denied conditions are mutually exclusive",
            )
        )
    for i, t in enumerate(types):
        if types.index(t) != i and t in ("Approved", "Denied", "Failed"):
            errs.append(duplicate(f"status.conditions[{i}].type", t))
    if old is not None and old.get("spec") != obj.get("spec"):
        errs.append(invalid("spec", "<redacted>", "field is immutable"))
    return errs


# -- admissionregistration.k8s.io ---------------------------------------------------------------------------------
SIDE_EFFECTS = ("None", "NoneOnDryRun")
FAILURE = ("Fail", "Ignore")
MATCH = ("Equivalent", "Exact")
REVIEW_VERSIONS = ("v1", "v1beta1")
OPERATIONS = ("*", "CONNECT", "CREATE", "DELETE", "UPDATE")


def _webhooks(obj: Obj, old: Obj | None, *, mutating: bool) -> Errs:
    errs: Errs = []
    names: set[str] = set()
    for i, hook in enumerate(obj.get("webhooks") or []):
        path = f"webhooks[{i}]"
        hook = as_dict(hook)
        name = str(hook.get("name") or "")
        if not name:
            errs.append(required(f"{path}.name"))
        else:
            errs += [invalid(f"{path}.name", name, m) for m in dns1123_subdomain(name)]
            if len(name.split(".")) < 3:
                errs.append(
                    invalid(f"{path}.name", name, "should be a domain with at least three segments separated by dots")
                )
            if name in names:
                errs.append(duplicate(f"{path}.name", name))
            names.add(name)
        versions = hook.get("admissionReviewVersions") or []
        if not versions:
            errs.append(required(f"{path}.admissionReviewVersions", "must specify one of v1, v1beta1"))
        elif not any(v in REVIEW_VERSIONS for v in versions):
            errs.append(
                invalid(f"{path}.admissionReviewVersions", versions, "must include at least one of v1, v1beta1")
            )
        side = hook.get("sideEffects")
        if side is None:
            errs.append(required(f"{path}.sideEffects", "must specify one of None, NoneOnDryRun"))
        elif side not in SIDE_EFFECTS:
            errs.append(not_supported(f"{path}.sideEffects", side, SIDE_EFFECTS))
        if hook.get("failurePolicy") not in FAILURE:
            errs.append(not_supported(f"{path}.failurePolicy", hook.get("failurePolicy") or "", FAILURE))
        if hook.get("matchPolicy") not in MATCH:
            errs.append(not_supported(f"{path}.matchPolicy", hook.get("matchPolicy") or "", MATCH))
        timeout = hook.get("timeoutSeconds")
        if isinstance(timeout, int) and not 1 <= timeout <= 30:
            errs.append(
                invalid(f"{path}.timeoutSeconds", timeout, "the timeout value must be between 1 and 30 seconds")
            )
        cc = as_dict(hook.get("clientConfig"))
        if bool(cc.get("url")) == bool(cc.get("service")):
            errs.append(required(f"{path}.clientConfig", "exactly one of url or service is required"))
        elif cc.get("url") and not str(cc["url"]).startswith("https://"):
            errs.append(invalid(f"{path}.clientConfig.url", cc["url"], "'https' is the only allowed URL scheme"))
        svc = as_dict(cc.get("service"))
        if cc.get("service") is not None:
            if not svc.get("name"):
                errs.append(required(f"{path}.clientConfig.service.name", "service name is required"))
            if not svc.get("namespace"):
                errs.append(required(f"{path}.clientConfig.service.namespace", "service namespace is required"))
        for j, rule in enumerate(hook.get("rules") or []):
            for k, op in enumerate(as_dict(rule).get("operations") or []):
                if op not in OPERATIONS:
                    errs.append(not_supported(f"{path}.rules[{j}].operations[{k}]", op, OPERATIONS))
        for sel in ("namespaceSelector", "objectSelector"):
            errs += validate_label_selector(hook.get(sel), f"{path}.{sel}")
        errs += matchconditions.validate(hook.get("matchConditions"), f"{path}.matchConditions")
        if mutating and hook.get("reinvocationPolicy") not in ("IfNeeded", "Never"):
            errs.append(
                not_supported(f"{path}.reinvocationPolicy", hook.get("reinvocationPolicy") or "", ("IfNeeded", "Never"))
            )
    return errs


def validating_webhooks(obj: Obj, old: Obj | None) -> Errs:
    return _webhooks(obj, old, mutating=False)


def mutating_webhooks(obj: Obj, old: Obj | None) -> Errs:
    return _webhooks(obj, old, mutating=True)
