"""A container's environment as kubelet builds it (kubelet_pods.go makeEnvironmentVariables).

`envFrom` first (ConfigMaps and Secrets, with `prefix`), then `env` in order: literal values with `$(VAR)`
references to variables defined before (and `$$` as an escaped `$`), `fieldRef`, `configMapKeyRef` and
`secretKeyRef` (Secret values are base64-decoded). A missing object or key that is not `optional` is a
ConfigError carrying kubelet's message (`configmap "x" not found`, `couldn't find key k in ConfigMap ns/x`); the
container then waits with reason CreateContainerConfigError until it can be resolved.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from typing import Any

from kwire.agent.kubelet import podspec

Obj = dict[str, Any]
# get(kind, namespace, name) -> the object, or None when it does not exist; kind is "configmap" or "secret"
Getter = Callable[[str, str, str], Awaitable[Obj | None]]
CONFIG_ERROR = "CreateContainerConfigError"
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ConfigError(Exception):
    """The container's configuration cannot be resolved (its message is kubelet's)."""


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`, and references to
    undefined variables stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _REF.sub(sub, value)


def _data(kind: str, obj: Obj) -> dict[str, str]:
    raw = obj.get("data") or {}
    if kind == "configmap":
        return {str(k): str(v) for k, v in raw.items()}
    out = {}
    for k, v in raw.items():
        try:
            out[str(k)] = base64.b64decode(str(v)).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            continue
    return out


def field_values(pod: Obj, *, pod_ip: str, host_ip: str) -> dict[str, str]:
    m, sp = podspec.meta(pod), podspec.spec(pod)
    out = {
        "metadata.name": str(m.get("name") or ""),
        "metadata.namespace": str(m.get("namespace") or ""),
        "metadata.uid": str(m.get("uid") or ""),
        "spec.nodeName": str(sp.get("nodeName") or ""),
        "spec.serviceAccountName": str(sp.get("serviceAccountName") or "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    for what in ("labels", "annotations"):
        for k, v in (m.get(what) or {}).items():
            out[f"metadata.{what}['{k}']"] = str(v)
    return out


async def container_env(
    c: Obj, pod: Obj, *, get: Getter, pod_ip: str, host_ip: str, service_host: str = "10.43.0.1"
) -> dict[str, str]:
    """The container's environment, or ConfigError."""
    ns = str(podspec.meta(pod).get("namespace") or "default")
    env: dict[str, str] = {
        "KUBERNETES_SERVICE_HOST": service_host,
        "KUBERNETES_SERVICE_PORT": "443",
        "HOSTNAME": str(podspec.meta(pod).get("name") or ""),
    }
    cache: dict[tuple[str, str], Obj | None] = {}

    async def lookup(kind: str, name: str) -> Obj | None:
        if (kind, name) not in cache:
            cache[(kind, name)] = await get(kind, ns, name)
        return cache[(kind, name)]

    for src in c.get("envFrom") or []:
        prefix = str(src.get("prefix") or "")
        for key, kind in (("configMapRef", "configmap"), ("secretRef", "secret")):
            ref = src.get(key)
            if not isinstance(ref, dict):
                continue
            name = str(ref.get("name") or "")
            obj = await lookup(kind, name)
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind} "{name}" not found')
            for k, v in _data(kind, obj).items():
                env[prefix + k] = v

    fields = field_values(pod, pod_ip=pod_ip, host_ip=host_ip)
    for e in c.get("env") or []:
        name = str(e.get("name", ""))
        vf = e.get("valueFrom") or {}
        if "value" in e or not vf:
            env[name] = expand(str(e.get("value") or ""), env)
        elif vf.get("fieldRef"):
            env[name] = fields.get(str(vf["fieldRef"].get("fieldPath", "")), "")
        elif vf.get("resourceFieldRef"):
            env[name] = "0"  # kwire sets no resource limits: kubelet reports node allocatable; none here
        else:
            for key, kind, label in (
                ("configMapKeyRef", "configmap", "ConfigMap"),
                ("secretKeyRef", "secret", "Secret"),
            ):
                ref = vf.get(key)
                if not isinstance(ref, dict):
                    continue
                oname, okey = str(ref.get("name") or ""), str(ref.get("key") or "")
                obj = await lookup(kind, oname)
                if obj is None:
                    if ref.get("optional"):
                        break
                    raise ConfigError(f'{kind} "{oname}" not found')
                data = _data(kind, obj)
                if okey not in data:
                    if ref.get("optional"):
                        break
                    raise ConfigError(f"couldn't find key {okey} in {label} {ns}/{oname}")
                env[name] = data[okey]
                break
    return env
