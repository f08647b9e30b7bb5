"""Validation in kube-apiserver's words: field paths and messages as `pkg/apis/*/validation` produce them.

`validate_create` / `validate_update` return every bad field; the caller turns them into one 422 `Status`.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable
from typing import Any

import orjson

from kwire.api.errors import TOO_LONG, FieldError, duplicate, forbidden, invalid, not_supported, required
from kwire.api.registry import Kind

Obj = dict[str, Any]
Errs = list[FieldError]

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_IANA_SVC_NAME = re.compile(r"^[-a-z0-9]+$")

MSG_DNS1123_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end "
    "with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
MSG_DNS1123_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start "
    "and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
MSG_DNS1035_LABEL = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation "
    "is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
MSG_QUALIFIED_NAME = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
MSG_LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start "
    "and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
    "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
MSG_CONFIG_KEY = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
    "'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
)
MSG_PORT = "must be between 1 and 65535, inclusive"
PROTOCOLS = ("SCTP", "TCP", "UDP")


def _format_errors(value: str, *, max_len: int, pattern: re.Pattern[str], message: str) -> list[str]:
    """apimachinery's MaxLenError and RegexError for one string format (both when both apply)."""
    out = []
    if len(value) > max_len:
        out.append(f"must be no more than {max_len} characters")
    if not pattern.match(value):
        out.append(message)
    return out


def dns1123_label(value: str) -> list[str]:
    return _format_errors(value, max_len=63, pattern=_DNS1123_LABEL, message=MSG_DNS1123_LABEL)


def dns1123_subdomain(value: str) -> list[str]:
    return _format_errors(value, max_len=253, pattern=_DNS1123_SUBDOMAIN, message=MSG_DNS1123_SUBDOMAIN)


def dns1035_label(value: str) -> list[str]:
    return _format_errors(value, max_len=63, pattern=_DNS1035_LABEL, message=MSG_DNS1035_LABEL)


def qualified_name(value: str) -> list[str]:
    """IsQualifiedName: an optional DNS-subdomain prefix and a name part."""
    if not isinstance(value, str) or not value:
        return ["name part " + "must be non-empty"]
    parts = value.split("/")
    if len(parts) > 2:
        return ["a qualified name " + MSG_QUALIFIED_NAME.replace("name part ", "")]
    name = parts[-1]
    out = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            out.append("prefix part must be non-empty")
        else:
            out.extend("prefix part " + m for m in dns1123_subdomain(prefix))
    if not name:
        out.append("name part must be non-empty")
    elif len(name) > 63:
        out.append("name part must be no more than 63 characters")
    elif not _QUALIFIED_NAME.match(name):
        out.append(MSG_QUALIFIED_NAME)
    return out


def _key_errors(key: Any, path: str) -> Errs:
    """A label's, an annotation's or a selector's key must be a qualified name (ValidateLabelName)."""
    return [invalid(path, key, msg) for msg in qualified_name(str(key))]


def validate_labels(labels: Any, path: str) -> Errs:
    errs: Errs = []
    if labels is None:
        return errs
    if not isinstance(labels, dict):
        return [invalid(path, str(labels), "must be a map of string keys to string values")]
    for k, v in labels.items():
        errs += _key_errors(k, path)
        if not isinstance(v, str):
            errs.append(invalid(f"{path}", v, "label values must be strings"))
            continue
        for msg in _format_errors(v, max_len=63, pattern=_LABEL_VALUE, message=MSG_LABEL_VALUE):
            errs.append(invalid(path, v, msg))
    return errs


def validate_annotations(ann: Any, path: str) -> Errs:
    if ann is None:
        return []
    if not isinstance(ann, dict):
        return [invalid(path, str(ann), "must be a map of string keys to string values")]
    errs: Errs = []
    total = 0
    for k, v in ann.items():
        errs += _key_errors(k, path)
        total += len(str(k)) + len(str(v))
    if total > 256 * 1024:
        errs.append(FieldError("FieldValueTooLong", path, "may not be more than 262144 bytes"))
    return errs


def validate_label_selector(sel: Any, path: str) -> Errs:
    if sel is None:
        return []
    if not isinstance(sel, dict):
        return [invalid(path, str(sel), "must be a label selector object")]
    errs = validate_labels(sel.get("matchLabels"), f"{path}.matchLabels")
    for i, e in enumerate(sel.get("matchExpressions") or []):
        p = f"{path}.matchExpressions[{i}]"
        op = e.get("operator")
        vals = e.get("values") or []
        if op in ("In", "NotIn"):
            if not vals:
                errs.append(required(f"{p}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif op in ("Exists", "DoesNotExist"):
            if vals:
                errs.append(
                    forbidden(f"{p}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
                )
        else:
            errs.append(invalid(f"{p}.operator", op, "not a valid selector operator"))
        errs += _key_errors(e.get("key", ""), f"{p}.key")
    return errs


def _selector_matches(sel: Obj, labels: dict[str, str]) -> bool:
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        key, op, vals = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and key in labels and labels[key] in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _port(value: Any, path: str) -> Errs:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        return [invalid(path, value, MSG_PORT)]
    return []


def _int_or_name_port(value: Any, path: str) -> Errs:
    if isinstance(value, str):
        if value.isdigit():
            return _port(int(value), path)
        errs = []
        if len(value) > 15:
            errs.append(invalid(path, value, "must be no more than 15 characters"))
        if not _IANA_SVC_NAME.match(value):
            errs.append(invalid(path, value, "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"))
        elif not re.search(r"[a-z]", value):
            errs.append(invalid(path, value, "must contain at least one letter (a-z)"))
        return errs
    return _port(value, path)


def _protocol(value: Any, path: str) -> Errs:
    if value not in PROTOCOLS:
        return [not_supported(path, value, PROTOCOLS)]
    return []


def _ip(value: Any, path: str) -> Errs:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return [invalid(path, value, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")]
    return []


# -- object meta ----------------------------------------------------------------------------------------------
def path_segment(value: str) -> list[str]:
    """path.IsValidPathSegmentName (RBAC object names)."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{c}'" for c in ("/", "%") if c in value]


_NAME_RULES: dict[str, Callable[[str], list[str]]] = {
    "Namespace": dns1123_label,
    "Service": dns1035_label,
    "Role": path_segment,
    "ClusterRole": path_segment,
    "RoleBinding": path_segment,
    "ClusterRoleBinding": path_segment,
}


def validate_meta(kind: Kind, obj: Obj) -> Errs:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [required("metadata")]
    errs: Errs = []
    name = meta.get("name")
    if not name:
        errs.append(required("metadata.name", "name or generateName is required"))
    elif not isinstance(name, str):
        errs.append(invalid("metadata.name", name, "must be a string"))
    else:
        rule = _NAME_RULES.get(kind.kind, dns1123_subdomain)
        for msg in rule(name):
            errs.append(invalid("metadata.name", name, msg))
    if kind.namespaced:
        ns = meta.get("namespace")
        if not ns:
            errs.append(required("metadata.namespace"))
        else:
            for msg in dns1123_label(str(ns)):
                errs.append(invalid("metadata.namespace", ns, msg))
    errs += validate_labels(meta.get("labels"), "metadata.labels")
    errs += validate_annotations(meta.get("annotations"), "metadata.annotations")
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        p = f"metadata.ownerReferences[{i}]"
        for f in ("apiVersion", "kind", "name", "uid"):
            if not (isinstance(ref, dict) and ref.get(f)):
                errs.append(invalid(f"{p}.{f}", "", f"{f} must not be empty"))
    return errs


def validate_meta_update(new: Obj, old: Obj) -> Errs:
    errs: Errs = []
    nm, om = new.get("metadata") or {}, old.get("metadata") or {}
    for field in ("namespace", "uid", "creationTimestamp"):
        if om.get(field) and nm.get(field) != om.get(field):
            errs.append(invalid(f"metadata.{field}", nm.get(field), "field is immutable"))
    return errs


# -- pods -----------------------------------------------------------------------------------------------------
def _container(c: Any, path: str, names: set[str]) -> Errs:
    if not isinstance(c, dict):
        return [invalid(path, str(c), "must be an object")]
    errs: Errs = []
    name = c.get("name")
    if not name:
        errs.append(required(f"{path}.name"))
    else:
        for msg in dns1123_label(str(name)):
            errs.append(invalid(f"{path}.name", name, msg))
        if name in names:
            errs.append(duplicate(f"{path}.name", name))
        names.add(name)
    if not c.get("image"):
        errs.append(required(f"{path}.image"))
    port_names: set[str] = set()
    for j, p in enumerate(c.get("ports") or []):
        pp = f"{path}.ports[{j}]"
        if not isinstance(p, dict):
            errs.append(invalid(pp, str(p), "must be an object"))
            continue
        errs += _port(p.get("containerPort"), f"{pp}.containerPort")
        if p.get("hostPort") not in (None, 0):
            errs += _port(p.get("hostPort"), f"{pp}.hostPort")
        errs += _protocol(p.get("protocol", "TCP"), f"{pp}.protocol")
        if p.get("name"):
            errs += (
                _int_or_name_port(str(p["name"]), f"{pp}.name")
                if not str(p["name"]).isdigit()
                else [invalid(f"{pp}.name", p["name"], "must contain at least one letter (a-z)")]
            )
            if p["name"] in port_names:
                errs.append(duplicate(f"{pp}.name", p["name"]))
            port_names.add(p["name"])
    for j, e in enumerate(c.get("env") or []):
        if not (isinstance(e, dict) and e.get("name")):
            errs.append(required(f"{path}.env[{j}].name"))
    if isinstance(c.get("securityContext"), dict):
        errs += _security_context(c["securityContext"], f"{path}.securityContext")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        pr = c.get(probe)
        if isinstance(pr, dict):
            handlers = [h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in pr]
            if not handlers:
                errs.append(required(f"{path}.{probe}", "must specify a handler type"))
            elif len(handlers) > 1:
                errs.append(forbidden(f"{path}.{probe}.{handlers[1]}", "may not specify more than 1 handler type"))
            for h in ("httpGet", "tcpSocket"):
                if isinstance(pr.get(h), dict):
                    errs += _int_or_name_port(pr[h].get("port"), f"{path}.{probe}.{h}.port")
    return errs


def _security_context(sc: Obj, path: str) -> Errs:
    """ValidateSecurityContext: ids in range, and no_new_privs that privileged or CAP_SYS_ADMIN would defeat."""
    errs: Errs = []
    for f in ("runAsUser", "runAsGroup"):
        v = sc.get(f)
        if v is not None and (not isinstance(v, int) or not 0 <= v <= 2147483647):
            errs.append(invalid(f"{path}.{f}", v, "must be between 0 and 2147483647, inclusive"))
    if sc.get("allowPrivilegeEscalation") is False:
        if sc.get("privileged") is True:
            errs.append(invalid(path, sc, "cannot set `allowPrivilegeEscalation` to false and `privileged` to true"))
        if "CAP_SYS_ADMIN" in ((sc.get("capabilities") or {}).get("add") or []):
            errs.append(
                invalid(path, sc, "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN")
            )
    return errs


def validate_pod_spec(spec: Any, path: str) -> Errs:
    if not isinstance(spec, dict):
        return [required(path)]
    errs: Errs = []
    containers = spec.get("containers")
    names: set[str] = set()
    if not containers:
        errs.append(required(f"{path}.containers"))
    else:
        for i, c in enumerate(containers):
            errs += _container(c, f"{path}.containers[{i}]", names)
    for i, c in enumerate(spec.get("initContainers") or []):
        errs += _container(c, f"{path}.initContainers[{i}]", names)
    rp = spec.get("restartPolicy", "Always")
    if rp not in ("Always", "OnFailure", "Never"):
        errs.append(not_supported(f"{path}.restartPolicy", rp, ("Always", "Never", "OnFailure")))
    dp = spec.get("dnsPolicy", "ClusterFirst")
    if dp not in ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"):
        errs.append(
            not_supported(f"{path}.dnsPolicy", dp, ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"))
        )
    if dp == "None" and not (spec.get("dnsConfig") or {}).get("nameservers"):
        errs.append(
            required(
                f"{path}.dnsConfig.nameservers", "must provide at least one DNS nameserver when `dnsPolicy` is None"
            )
        )
    for i, v in enumerate(spec.get("volumes") or []):
        if not (isinstance(v, dict) and v.get("name")):
            errs.append(required(f"{path}.volumes[{i}].name"))
    if spec.get("nodeSelector") is not None:
        errs += validate_labels(spec.get("nodeSelector"), f"{path}.nodeSelector")
    return errs


def _pod(obj: Obj, old: Obj | None) -> Errs:
    errs = validate_pod_spec(obj.get("spec"), "spec")
    if old is not None and not errs:
        new_spec, old_spec = dict(obj.get("spec") or {}), dict(old.get("spec") or {})
        # Mutable pod fields (pkg/apis/core/validation ValidatePodUpdate): images, activeDeadlineSeconds,
        # tolerations (additions), and nodeName only while unset (the binding).
        errs += _ephemeral_update(new_spec, old_spec)
        for s in (new_spec, old_spec):
            s.pop("ephemeralContainers", None)  # changed only through pods/ephemeralcontainers (checked above)
            s.pop("activeDeadlineSeconds", None)
            s.pop("tolerations", None)
            s["containers"] = [
                {k: v for k, v in c.items() if k != "image"} for c in s.get("containers") or [] if isinstance(c, dict)
            ]
            s["initContainers"] = [
                {k: v for k, v in c.items() if k != "image"}
                for c in s.get("initContainers") or []
                if isinstance(c, dict)
            ]
        if not old_spec.get("nodeName"):
            new_spec.pop("nodeName", None)
            old_spec.pop("nodeName", None)
        if new_spec != old_spec:
            errs.append(
                forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,"
                    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
                    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                )
            )
    return errs


EPHEMERAL_FORBIDDEN = ("ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "resources")


def _ephemeral_update(new_spec: Obj, old_spec: Obj) -> Errs:
    """ValidatePodEphemeralContainersUpdate: existing ephemeral containers stay as they are; new ones need a
    unique name and an image, and may not declare ports, probes, lifecycle hooks or resources."""
    errs: Errs = []
    new = [c for c in new_spec.get("ephemeralContainers") or [] if isinstance(c, dict)]
    old = {str(c.get("name")): c for c in old_spec.get("ephemeralContainers") or [] if isinstance(c, dict)}
    by_name = {str(c.get("name")): c for c in new}
    for name, c in old.items():
        if by_name.get(name) != c:
            errs.append(
                forbidden("spec.ephemeralContainers", f'existing ephemeral containers "{name}" may not be changed')
            )
    taken = {
        str(c.get("name"))
        for k in ("containers", "initContainers")
        for c in new_spec.get(k) or []
        if isinstance(c, dict)
    }
    seen: set[str] = set()
    for i, c in enumerate(new):
        path = f"spec.ephemeralContainers[{i}]"
        name = str(c.get("name") or "")
        if name in old:
            seen.add(name)
            continue
        if not name:
            errs.append(required(f"{path}.name"))
        elif name in taken or name in seen:
            errs.append(duplicate(f"{path}.name", name))
        seen.add(name)
        if not c.get("image"):
            errs.append(required(f"{path}.image"))
        for f in EPHEMERAL_FORBIDDEN:
            if c.get(f):
                errs.append(forbidden(f"{path}.{f}", "cannot be set for an Ephemeral Container"))
    return errs


# -- services -------------------------------------------------------------------------------------------------
SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")


def _service(obj: Obj, old: Obj | None) -> Errs:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    errs: Errs = []
    stype = spec.get("type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        errs.append(not_supported("spec.type", stype, SERVICE_TYPES))
    cip = spec.get("clusterIP")
    if cip not in (None, "", "None"):
        errs += (
            [invalid("spec.clusterIP", cip, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")]
            if _ip(cip, "x")
            else []
        )
    ports = spec.get("ports") or []
    headless = cip == "None"
    if stype == "ExternalName":
        en = spec.get("externalName")
        if not en:
            errs.append(required("spec.externalName"))
        else:
            for msg in dns1123_subdomain(str(en).rstrip(".")):
                errs.append(invalid("spec.externalName", en, msg))
    elif not ports and not headless:
        errs.append(required("spec.ports"))
    seen_names: set[str] = set()
    seen_pp: set[tuple[Any, Any]] = set()
    for i, p in enumerate(ports):
        pp = f"spec.ports[{i}]"
        if not isinstance(p, dict):
            errs.append(invalid(pp, str(p), "must be an object"))
            continue
        name = p.get("name")
        if len(ports) > 1 and not name:
            errs.append(required(f"{pp}.name"))
        if name:
            for msg in dns1123_label(str(name)):
                errs.append(invalid(f"{pp}.name", name, msg))
            if name in seen_names:
                errs.append(duplicate(f"{pp}.name", name))
            seen_names.add(name)
        errs += _port(p.get("port"), f"{pp}.port")
        errs += _protocol(p.get("protocol", "TCP"), f"{pp}.protocol")
        if (p.get("port"), p.get("protocol", "TCP")) in seen_pp:
            errs.append(duplicate(pp, {"port": p.get("port"), "protocol": p.get("protocol", "TCP")}))
        seen_pp.add((p.get("port"), p.get("protocol", "TCP")))
        if "targetPort" in p:
            errs += _int_or_name_port(p.get("targetPort"), f"{pp}.targetPort")
        np = p.get("nodePort")
        if np not in (None, 0):
            if stype == "ClusterIP":
                errs.append(forbidden(f"{pp}.nodePort", "may not be used when `type` is 'ClusterIP'"))
            elif not isinstance(np, int) or not 0 <= np <= 65535:
                errs.append(invalid(f"{pp}.nodePort", np, MSG_PORT))
    sa = spec.get("sessionAffinity", "None")
    if sa not in ("ClientIP", "None"):
        errs.append(not_supported("spec.sessionAffinity", sa, ("ClientIP", "None")))
    if sa == "ClientIP":
        t = (((spec.get("sessionAffinityConfig") or {}).get("clientIP")) or {}).get("timeoutSeconds", 10800)
        if not isinstance(t, int) or not 0 < t <= 86400:
            errs.append(
                invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t,
                    "must be greater than 0 and less than 86400",
                )
            )
    etp = spec.get("externalTrafficPolicy")
    if etp is not None:
        if stype not in ("NodePort", "LoadBalancer") and etp:
            errs.append(
                invalid(
                    "spec.externalTrafficPolicy", etp, "may only be set when `type` is 'NodePort' or 'LoadBalancer'"
                )
            )
        elif etp not in ("Cluster", "Local"):
            errs.append(not_supported("spec.externalTrafficPolicy", etp, ("Cluster", "Local")))
    itp = spec.get("internalTrafficPolicy")
    if itp is not None and itp not in ("Cluster", "Local"):
        errs.append(not_supported("spec.internalTrafficPolicy", itp, ("Cluster", "Local")))
    if spec.get("selector") is not None:
        errs += validate_labels(spec.get("selector"), "spec.selector")
    for i, ip in enumerate(spec.get("externalIPs") or []):
        errs += _ip(ip, f"spec.externalIPs[{i}]")
    if old is not None:
        ospec = old.get("spec") or {}
        ocip = ospec.get("clusterIP")
        if (
            ocip
            and ocip != cip
            and ospec.get("type") != "ExternalName"
            and stype != "ExternalName"
            and cip not in (None, "")
        ):
            errs.append(invalid("spec.clusterIP", cip, "field is immutable"))
    return errs


# -- config, secrets, namespaces, nodes -----------------------------------------------------------------------
def _data_keys(obj: Obj, fields: tuple[str, ...]) -> Errs:
    errs: Errs = []
    seen: set[str] = set()
    for f in fields:
        data = obj.get(f)
        if data is None:
            continue
        if not isinstance(data, dict):
            errs.append(invalid(f, str(data), "must be a map"))
            continue
        for k in data:
            if not _CONFIG_KEY.match(k) or len(k) > 253:
                errs.append(invalid(f, k, MSG_CONFIG_KEY))
            if k in seen:
                errs.append(invalid(f, k, "duplicate of key present in other map"))
            seen.add(k)
    return errs


MAX_SECRET_SIZE = 1024 * 1024  # core.MaxSecretSize: the data of a ConfigMap or Secret


def _data_size(values: Any, *, base64_encoded: bool) -> int:
    if not isinstance(values, dict):
        return 0
    total = 0
    for v in values.values():
        if isinstance(v, str):
            # stored base64 (Secret data, binaryData): the decoded length is what kube counts
            total += len(v) * 3 // 4 - v[-2:].count("=") if base64_encoded else len(v.encode())
    return total


def _too_big(path: str) -> FieldError:
    return FieldError(TOO_LONG, path, f"must have at most {MAX_SECRET_SIZE} bytes")


def _configmap(obj: Obj, old: Obj | None) -> Errs:
    errs = _data_keys(obj, ("data", "binaryData"))
    size = _data_size(obj.get("data"), base64_encoded=False) + _data_size(obj.get("binaryData"), base64_encoded=True)
    if size > MAX_SECRET_SIZE:
        errs.append(_too_big("[]"))  # kube: the error refers to the whole object
    if (
        old is not None
        and old.get("immutable")
        and (obj.get("data") != old.get("data") or obj.get("binaryData") != old.get("binaryData"))
    ):
        errs.append(forbidden("data", "field is immutable when `immutable` is set"))
    return errs


def _secret_value(data: Obj, key: str) -> bytes | None:
    raw = data.get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(str(raw), validate=True)
    except ValueError:
        return b""


def _secret(obj: Obj, old: Obj | None) -> Errs:
    """ValidateSecret: keys, total size, the keys each type requires, immutability."""
    errs = _data_keys(obj, ("data",))
    data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
    assert isinstance(data, dict)
    size = sum(len(_secret_value(data, k) or b"") for k in data)
    if size > MAX_SECRET_SIZE:
        errs.append(_too_big("data"))
    typ = obj.get("type")
    anns = (obj.get("metadata") or {}).get("annotations") or {}
    if typ == "kubernetes.io/service-account-token":
        if not anns.get("kubernetes.io/service-account.name"):
            errs.append(required("metadata.annotations[kubernetes.io/service-account.name]"))
    elif typ in ("kubernetes.io/dockercfg", "kubernetes.io/dockerconfigjson"):
        key = ".dockercfg" if typ == "kubernetes.io/dockercfg" else ".dockerconfigjson"
        value = _secret_value(data, key)
        if not value:
            errs.append(required(f"data[{key}]"))
        else:
            try:
                orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                errs.append(invalid(f"data[{key}]", "<secret contents redacted>", str(exc)))
    elif typ == "kubernetes.io/basic-auth":
        if "username" not in data and "password" not in data:
            errs += [required("data[username]"), required("data[password]")]
    elif typ == "kubernetes.io/ssh-auth":
        if not _secret_value(data, "ssh-privatekey"):
            errs.append(required("data[ssh-privatekey]"))
    elif typ == "kubernetes.io/tls":
        errs += [required(f"data[{k}]") for k in ("tls.crt", "tls.key") if k not in data]
    if old is not None:
        if old.get("type") != obj.get("type"):
            errs.append(invalid("type", obj.get("type"), "field is immutable"))
        if old.get("immutable"):
            if not obj.get("immutable"):
                errs.append(forbidden("immutable", "field is immutable when `immutable` is set"))
            if obj.get("data") != old.get("data"):
                errs.append(forbidden("data", "field is immutable when `immutable` is set"))
    return errs


def _node(obj: Obj, old: Obj | None) -> Errs:
    errs: Errs = []
    spec = obj.get("spec") or {}
    if spec.get("podCIDR"):
        try:
            ipaddress.ip_network(spec["podCIDR"])
        except ValueError:
            errs.append(
                invalid(
                    "spec.podCIDR", spec["podCIDR"], "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
                )
            )
    if old is not None:
        opc = (old.get("spec") or {}).get("podCIDR")
        if opc and spec.get("podCIDR") != opc:
            errs.append(forbidden("spec.podCIDRs", 'node updates may not change podCIDR except from "" to valid'))
    return errs


# -- workloads ------------------------------------------------------------------------------------------------
def _workload(obj: Obj, old: Obj | None, *, replicas: bool) -> Errs:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    errs: Errs = []
    sel = spec.get("selector")
    if not sel or not ((sel.get("matchLabels") or sel.get("matchExpressions")) if isinstance(sel, dict) else False):
        errs.append(required("spec.selector"))
    else:
        errs += validate_label_selector(sel, "spec.selector")
    if replicas and "replicas" in spec:
        r = spec.get("replicas")
        if not isinstance(r, int) or r < 0:
            errs.append(invalid("spec.replicas", r, "must be greater than or equal to 0"))
    tmpl = spec.get("template")
    if not isinstance(tmpl, dict):
        errs.append(required("spec.template"))
        return errs
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    errs += validate_labels(labels, "spec.template.metadata.labels")
    if (
        isinstance(sel, dict)
        and (sel.get("matchLabels") or sel.get("matchExpressions"))
        and not _selector_matches(sel, labels)
    ):
        rendered = "map[string]string{" + ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items())) + "}"
        from kwire.api.errors import RawValue

        errs.append(
            invalid("spec.template.metadata.labels", RawValue(rendered), "`selector` does not match template `labels`")
        )
    errs += validate_pod_spec(tmpl.get("spec"), "spec.template.spec")
    if old is not None:
        osel = (old.get("spec") or {}).get("selector")
        if osel != sel:
            errs.append(invalid("spec.selector", _render_selector(sel), "field is immutable"))
    return errs


_STS_MUTABLE = (
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
    "revisionHistoryLimit",
)


def _statefulset(obj: Obj, old: Obj | None) -> Errs:
    """ValidateStatefulSet / ValidateStatefulSetUpdate (apps/validation)."""
    errs = _workload(obj, old, replicas=True)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return errs
    policy = spec.get("podManagementPolicy")
    if policy not in ("OrderedReady", "Parallel"):
        errs.append(not_supported("spec.podManagementPolicy", policy, ("OrderedReady", "Parallel")))
    strategy = spec.get("updateStrategy") or {}
    stype = strategy.get("type") if isinstance(strategy, dict) else None
    if stype not in ("RollingUpdate", "OnDelete"):
        errs.append(not_supported("spec.updateStrategy.type", stype, ("OnDelete", "RollingUpdate")))
    elif stype == "OnDelete" and strategy.get("rollingUpdate"):
        errs.append(
            invalid(
                "spec.updateStrategy.rollingUpdate",
                strategy["rollingUpdate"],
                "only allowed for updateStrategy 'RollingUpdate'",
            )
        )
    elif stype == "RollingUpdate":
        partition = (strategy.get("rollingUpdate") or {}).get("partition", 0)
        if not isinstance(partition, int) or partition < 0:
            errs.append(
                invalid("spec.updateStrategy.rollingUpdate.partition", partition, "must be greater than or equal to 0")
            )
    policy_restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
    if isinstance(spec.get("template"), dict) and policy_restart != "Always":
        errs.append(not_supported("spec.template.spec.restartPolicy", policy_restart, ("Always",)))
    for i, tpl in enumerate(spec.get("volumeClaimTemplates") or []):
        name = ((tpl or {}).get("metadata") or {}).get("name") if isinstance(tpl, dict) else None
        if not name:
            errs.append(required(f"spec.volumeClaimTemplates[{i}].metadata.name", "name or generateName is required"))
    if old is not None:
        ospec = old.get("spec") or {}
        if any(spec.get(k) != ospec.get(k) for k in spec.keys() | ospec.keys() if k not in _STS_MUTABLE):
            errs.append(
                forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', "
                    "'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                )
            )
    return errs


def _job_spec(spec: Any, path: str) -> Errs:
    """ValidateJobSpec: counts, modes and the template's restartPolicy."""
    if not isinstance(spec, dict):
        return [required(path)]
    errs: Errs = []
    for f in ("parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished"):
        v = spec.get(f)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            errs.append(invalid(f"{path}.{f}", v, "must be greater than or equal to 0"))
    ads = spec.get("activeDeadlineSeconds")
    if isinstance(ads, int) and ads == 0:
        errs.append(invalid(f"{path}.activeDeadlineSeconds", ads, "must be greater than 0"))
    mode = spec.get("completionMode")
    if mode not in (None, "NonIndexed", "Indexed"):
        errs.append(not_supported(f"{path}.completionMode", mode, ("NonIndexed", "Indexed")))
    if mode == "Indexed" and spec.get("completions") is None:
        errs.append(required(f"{path}.completions", "when completion mode is Indexed"))
    tmpl = spec.get("template")
    if not isinstance(tmpl, dict):
        errs.append(required(f"{path}.template"))
        return errs
    errs += validate_labels((tmpl.get("metadata") or {}).get("labels") or {}, f"{path}.template.metadata.labels")
    errs += validate_pod_spec(tmpl.get("spec"), f"{path}.template.spec")
    restart = (tmpl.get("spec") or {}).get("restartPolicy")
    if restart not in ("OnFailure", "Never"):
        errs.append(not_supported(f"{path}.template.spec.restartPolicy", restart, ("OnFailure", "Never")))
    return errs


def _job(obj: Obj, old: Obj | None) -> Errs:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    errs = _job_spec(spec, "spec")
    sel = spec.get("selector")
    if not isinstance(sel, dict) or not (sel.get("matchLabels") or sel.get("matchExpressions")):
        errs.append(required("spec.selector"))
    else:
        errs += validate_label_selector(sel, "spec.selector")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if isinstance(labels, dict) and not _selector_matches(sel, labels):
            errs.append(invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`"))
    if old is not None:
        ospec = old.get("spec") or {}
        for f in ("selector", "template", "completionMode"):
            if f in ospec and spec.get(f) != ospec.get(f):
                errs.append(invalid(f"spec.{f}", spec.get(f), "field is immutable"))
    return errs


def cron_error(schedule: str) -> str | None:
    """Why `schedule` is not a standard 5-field cron expression or @descriptor (as robfig/cron's standard
    parser kube uses says it), or None when it parses. croniter does the parsing."""
    from croniter import croniter

    text = schedule.strip()
    if "TZ=" in text:
        return "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
    if text.startswith("@"):
        if text not in ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"):
            return f"unrecognized descriptor: {text}"
        return None
    fields = text.split()
    if len(fields) != 5:
        return f"expected exactly 5 fields, found {len(fields)}: [{' '.join(fields)}]"
    if not croniter.is_valid(text):
        return f"failed to parse cron expression: {text}"
    return None


def _cronjob(obj: Obj, old: Obj | None) -> Errs:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    errs: Errs = []
    name = str((obj.get("metadata") or {}).get("name") or "")
    if len(name) > 52:
        errs.append(invalid("metadata.name", name, "must be no more than 52 characters"))
    schedule = spec.get("schedule")
    if not isinstance(schedule, str) or not schedule:
        errs.append(required("spec.schedule"))
    elif (why := cron_error(schedule)) is not None:
        errs.append(invalid("spec.schedule", schedule, why))
    tz = spec.get("timeZone")
    if tz is not None:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(str(tz))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            errs.append(invalid("spec.timeZone", tz, f"unknown time zone {tz}"))
    policy = spec.get("concurrencyPolicy")
    if policy not in ("Allow", "Forbid", "Replace"):
        errs.append(not_supported("spec.concurrencyPolicy", policy, ("Allow", "Forbid", "Replace")))
    for f in ("startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
        v = spec.get(f)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            errs.append(invalid(f"spec.{f}", v, "must be greater than or equal to 0"))
    jt = spec.get("jobTemplate")
    if not isinstance(jt, dict):
        errs.append(required("spec.jobTemplate"))
    else:
        errs += _job_spec(jt.get("spec"), "spec.jobTemplate.spec")
    return errs


def _int_or_percent(value: Any, path: str) -> Errs:
    """ValidatePositiveIntOrPercent / IsValidPercent for PDB fields."""
    if isinstance(value, bool) or value is None:
        return [invalid(path, value, "must be an integer or percentage (e.g '5%')")]
    if isinstance(value, int):
        return [] if value >= 0 else [invalid(path, value, "must be greater than or equal to 0")]
    if isinstance(value, str) and re.fullmatch(r"[0-9]+%", value):
        return [] if int(value[:-1]) <= 100 else [invalid(path, value, "must not be greater than 100%")]
    return [
        invalid(
            path,
            value,
            "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
        )
    ]


def _pdb(obj: Obj, old: Obj | None) -> Errs:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    errs: Errs = []
    if "minAvailable" in spec and "maxUnavailable" in spec:
        errs.append(invalid("spec", spec, "minAvailable and maxUnavailable cannot be both set"))
    for f in ("minAvailable", "maxUnavailable"):
        if f in spec:
            errs += _int_or_percent(spec[f], f"spec.{f}")
    if spec.get("selector") is not None:
        errs += validate_label_selector(spec["selector"], "spec.selector")
    policy = spec.get("unhealthyPodEvictionPolicy")
    if policy is not None and policy not in ("IfHealthyBudget", "AlwaysAllow"):
        errs.append(not_supported("spec.unhealthyPodEvictionPolicy", policy, ("AlwaysAllow", "IfHealthyBudget")))
    return errs


def _render_selector(sel: Any) -> Any:
    from kwire.api.errors import RawValue

    if not isinstance(sel, dict):
        return sel
    ml = ", ".join(f'"{k}":"{v}"' for k, v in sorted((sel.get("matchLabels") or {}).items()))
    return RawValue(
        "v1.LabelSelector{MatchLabels:map[string]string{"
        + ml
        + "}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"
    )


# -- discovery / networking -----------------------------------------------------------------------------------
def _endpoints(obj: Obj, old: Obj | None) -> Errs:
    errs: Errs = []
    for i, ss in enumerate(obj.get("subsets") or []):
        for field in ("addresses", "notReadyAddresses"):
            for j, a in enumerate(ss.get(field) or []):
                errs += _ip((a or {}).get("ip"), f"subsets[{i}].{field}[{j}].ip")
        for j, p in enumerate(ss.get("ports") or []):
            errs += _port((p or {}).get("port"), f"subsets[{i}].ports[{j}].port")
            errs += _protocol((p or {}).get("protocol", "TCP"), f"subsets[{i}].ports[{j}].protocol")
    return errs


def _endpointslice(obj: Obj, old: Obj | None) -> Errs:
    errs: Errs = []
    at = obj.get("addressType")
    if at not in ("IPv4", "IPv6", "FQDN"):
        errs.append(not_supported("addressType", at, ("FQDN", "IPv4", "IPv6")))
    for i, ep in enumerate(obj.get("endpoints") or []):
        addrs = (ep or {}).get("addresses") or []
        if not addrs:
            errs.append(required(f"endpoints[{i}].addresses", "must contain at least 1 address"))
        for j, a in enumerate(addrs):
            if at in ("IPv4", "IPv6"):
                errs += _ip(a, f"endpoints[{i}].addresses[{j}]")
    for i, p in enumerate(obj.get("ports") or []):
        if (p or {}).get("port") is not None:
            errs += _port(p.get("port"), f"ports[{i}].port")
        errs += _protocol((p or {}).get("protocol", "TCP"), f"ports[{i}].protocol")
    if old is not None and old.get("addressType") != at:
        errs.append(invalid("addressType", at, "field is immutable"))
    return errs


def _ingress(obj: Obj, old: Obj | None) -> Errs:
    spec = obj.get("spec") or {}
    errs: Errs = []

    def backend(b: Any, path: str) -> Errs:
        if not isinstance(b, dict) or not (b.get("service") or b.get("resource")):
            return [invalid(path, "", "one backend (service or resource) must be specified")]
        svc = b.get("service")
        out: Errs = []
        if svc:
            if not svc.get("name"):
                out.append(required(f"{path}.service.name"))
            port = svc.get("port") or {}
            if port.get("name") and port.get("number"):
                out.append(invalid(f"{path}.service.port", "", "cannot set both port name & port number"))
            elif port.get("number") is not None:
                out += _port(port.get("number"), f"{path}.service.port.number")
            elif not port.get("name"):
                out.append(required(f"{path}.service.port", "port name or number is required"))
        return out

    if spec.get("defaultBackend") is not None:
        errs += backend(spec["defaultBackend"], "spec.defaultBackend")
    elif not spec.get("rules"):
        errs.append(invalid("spec", "", "either `defaultBackend` or `rules` must be specified"))
    for i, r in enumerate(spec.get("rules") or []):
        p = f"spec.rules[{i}]"
        host = (r or {}).get("host")
        if host:
            try:
                ipaddress.ip_address(host)
                errs.append(invalid(f"{p}.host", host, "must be a DNS name, not an IP address"))
            except ValueError:
                h = host[2:] if host.startswith("*.") else host
                if "*" in h:
                    errs.append(
                        invalid(
                            f"{p}.host",
                            host,
                            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                        )
                    )
                else:
                    for msg in dns1123_subdomain(h):
                        errs.append(invalid(f"{p}.host", host, msg))
        http = (r or {}).get("http")
        if http is not None:
            paths = http.get("paths") or []
            if not paths:
                errs.append(required(f"{p}.http.paths"))
            for j, pa in enumerate(paths):
                pp = f"{p}.http.paths[{j}]"
                pt = (pa or {}).get("pathType")
                if pt not in ("Exact", "Prefix", "ImplementationSpecific"):
                    errs.append(
                        not_supported(f"{pp}.pathType", pt, ("Exact", "ImplementationSpecific", "Prefix"))
                        if pt
                        else required(f"{pp}.pathType", "pathType must be specified")
                    )
                path_s = (pa or {}).get("path")
                if pt in ("Exact", "Prefix") and (not path_s or not str(path_s).startswith("/")):
                    errs.append(invalid(f"{pp}.path", path_s, "must be an absolute path"))
                errs += backend((pa or {}).get("backend"), f"{pp}.backend")
    return errs


def _ingressclass(obj: Obj, old: Obj | None) -> Errs:
    ctrl = (obj.get("spec") or {}).get("controller")
    errs: Errs = []
    if not ctrl:
        errs.append(required("spec.controller"))
    if old is not None and (old.get("spec") or {}).get("controller") != ctrl:
        errs.append(invalid("spec.controller", ctrl, "field is immutable"))
    return errs


def _netpol(obj: Obj, old: Obj | None) -> Errs:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    errs = validate_label_selector(spec.get("podSelector") if "podSelector" in spec else {}, "spec.podSelector")
    for i, t in enumerate(spec.get("policyTypes") or []):
        if t not in ("Ingress", "Egress"):
            errs.append(not_supported(f"spec.policyTypes[{i}]", t, ("Egress", "Ingress")))

    def peers(items: Any, path: str) -> Errs:
        out: Errs = []
        for j, peer in enumerate(items or []):
            pp = f"{path}[{j}]"
            if not isinstance(peer, dict) or not any(
                k in peer for k in ("podSelector", "namespaceSelector", "ipBlock")
            ):
                out.append(required(pp, "must specify a peer"))
                continue
            if "ipBlock" in peer and ("podSelector" in peer or "namespaceSelector" in peer):
                out.append(forbidden(pp, "may not specify both ipBlock and another peer"))
            out += validate_label_selector(peer.get("podSelector"), f"{pp}.podSelector")
            out += validate_label_selector(peer.get("namespaceSelector"), f"{pp}.namespaceSelector")
            blk = peer.get("ipBlock")
            if blk is not None:
                try:
                    net = ipaddress.ip_network(str(blk.get("cidr")), strict=False)
                except ValueError:
                    out.append(
                        invalid(
                            f"{pp}.ipBlock.cidr",
                            blk.get("cidr"),
                            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                        )
                    )
                    continue
                for k, ex in enumerate(blk.get("except") or []):
                    try:
                        exn = ipaddress.ip_network(str(ex), strict=False)
                    except ValueError:
                        out.append(
                            invalid(
                                f"{pp}.ipBlock.except[{k}]",
                                ex,
                                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                            )
                        )
                        continue
                    if exn.version != net.version or not exn.subnet_of(net) or exn == net:  # type: ignore[arg-type]
                        out.append(invalid(f"{pp}.ipBlock.except[{k}]", ex, "must be a strict subset of `cidr`"))
        return out

    def ports(items: Any, path: str) -> Errs:
        out: Errs = []
        for j, p in enumerate(items or []):
            pp = f"{path}[{j}]"
            out += _protocol((p or {}).get("protocol", "TCP"), f"{pp}.protocol")
            port = (p or {}).get("port")
            if port is not None:
                out += _int_or_name_port(port, f"{pp}.port")
            end = (p or {}).get("endPort")
            if end is not None:
                if not isinstance(port, int):
                    out.append(
                        required(f"{pp}.port", "must be specified when endPort is specified")
                        if port is None
                        else forbidden(f"{pp}.endPort", "may not be specified when `port` is non-numeric")
                    )
                elif not isinstance(end, int) or end < port:
                    out.append(invalid(f"{pp}.endPort", end, "must be greater than or equal to `port`"))
        return out

    for i, r in enumerate(spec.get("ingress") or []):
        errs += ports((r or {}).get("ports"), f"spec.ingress[{i}].ports")
        errs += peers((r or {}).get("from"), f"spec.ingress[{i}].from")
    for i, r in enumerate(spec.get("egress") or []):
        errs += ports((r or {}).get("ports"), f"spec.egress[{i}].ports")
        errs += peers((r or {}).get("to"), f"spec.egress[{i}].to")
    return errs


def _event(obj: Obj, old: Obj | None) -> Errs:
    inv = obj.get("involvedObject") or {}
    ns = (obj.get("metadata") or {}).get("namespace")
    if inv.get("namespace") and ns and inv["namespace"] != ns:
        return [invalid("involvedObject.namespace", inv["namespace"], "does not match event.namespace")]
    return []


def validate_events_v1_create(obj: Obj) -> Errs:
    """ValidateEventCreate's strict part for events.k8s.io/v1 (paths in that version's field names)."""
    errs: Errs = []
    if not obj.get("eventTime"):
        errs.append(required("eventTime"))
    if obj.get("type") not in ("Normal", "Warning"):
        errs.append(invalid("type", "", f"has invalid value: {obj.get('type') or ''}"))
    for field in ("deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedCount", "deprecatedSource"):
        if obj.get(field):
            errs.append(invalid(field, "", "needs to be unset"))
    if obj.get("eventTime"):
        for field in ("reportingController", "reportingInstance", "action", "reason"):
            if not obj.get(field):
                errs.append(required(field))
        if obj.get("reportingController"):
            errs += [
                invalid("reportingController", obj["reportingController"], m)
                for m in qualified_name(str(obj["reportingController"]))
            ]
        for field, limit in (("reportingInstance", 128), ("action", 128), ("reason", 128), ("note", 1024)):
            if len(str(obj.get(field) or "")) > limit:
                errs.append(invalid(field, "", f"can have at most {limit} characters"))
    return errs


_VALIDATORS: dict[str, Callable[[Obj, Obj | None], Errs]] = {
    "Pod": _pod,
    "Service": _service,
    "ConfigMap": _configmap,
    "Secret": _secret,
    "Node": _node,
    "Deployment": lambda o, old: _workload(o, old, replicas=True),
    "ReplicaSet": lambda o, old: _workload(o, old, replicas=True),
    "DaemonSet": lambda o, old: _workload(o, old, replicas=False),
    "StatefulSet": _statefulset,
    "Job": _job,
    "CronJob": _cronjob,
    "PodDisruptionBudget": _pdb,
    "Endpoints": _endpoints,
    "EndpointSlice": _endpointslice,
    "Ingress": _ingress,
    "IngressClass": _ingressclass,
    "NetworkPolicy": _netpol,
    "Event": _event,
}


def _validator(kind: Kind) -> Callable[[Obj, Obj | None], Errs] | None:
    fn = _VALIDATORS.get(kind.kind)
    if fn is None:
        # The per-group modules import this one's helpers, so they are looked up here, not imported at the top.
        from kwire.api import validation_policy, validation_rbac, validation_storage

        fn = {
            "Role": validation_rbac.role,
            "ClusterRole": validation_rbac.cluster_role,
            "RoleBinding": validation_rbac.role_binding,
            "ClusterRoleBinding": validation_rbac.cluster_role_binding,
            "StorageClass": validation_storage.storage_class,
            "PersistentVolume": validation_storage.persistent_volume,
            "PersistentVolumeClaim": validation_storage.persistent_volume_claim,
            "PriorityClass": validation_policy.priority_class,
            "LimitRange": validation_policy.limit_range,
            "ResourceQuota": validation_policy.resource_quota,
            "HorizontalPodAutoscaler": validation_policy.hpa,
            "CertificateSigningRequest": validation_policy.csr,
            "ValidatingWebhookConfiguration": validation_policy.validating_webhooks,
            "MutatingWebhookConfiguration": validation_policy.mutating_webhooks,
        }.get(kind.kind)
    return fn


def validate_create(kind: Kind, obj: Obj) -> Errs:
    errs = validate_meta(kind, obj)
    fn = _validator(kind)
    if fn is not None:
        errs += fn(obj, None)
    return errs


def validate_update(kind: Kind, new: Obj, old: Obj) -> Errs:
    errs = validate_meta(kind, new) + validate_meta_update(new, old)
    fn = _validator(kind)
    if fn is not None:
        errs += fn(new, old)
    return errs
