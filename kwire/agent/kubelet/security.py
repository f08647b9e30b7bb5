"""A container's securityContext as the container runtime applies it, as pure functions: its uid, gid and groups,
its capability set, no_new_privs, privileged, readOnlyRootFilesystem, and kubelet's runAsNonRoot refusal.

Mirrors kubelet's `determineEffectiveSecurityContext` (the container's securityContext over the pod's) and
containerd's CRI defaults: a container gets containerd's default capability set (`defaultCapabilities` in
containerd's oci spec opts) plus `capabilities.add` minus `capabilities.drop`, where `ALL` in drop starts from
nothing and `ALL` in add means every capability; `privileged: true` keeps them all. no_new_privs is set exactly
when `allowPrivilegeEscalation: false` (kubelet's `AddNoNewPrivileges`: an unset field means no flag). kwire has no
image, so "the image's user" is the node's root (uid 0, gid 0), as an image without a USER line.

The result is the `security` object of a runtime process entry, which contain.py applies before exec.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

# linux/capability.h, in bit order: what `capabilities.add`/`drop` name (with or without the CAP_ prefix)
CAPABILITIES: tuple[str, ...] = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
# containerd's default set (pkg/oci/spec.go defaultUnixCapabilities ... as the CRI plugin gives every container)
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)


def _cap_name(name: object) -> str:
    n = str(name).upper()
    return n[4:] if n.startswith("CAP_") else n


def effective(pod: Obj, container: Obj) -> Obj:
    """The container's securityContext with the pod's fields it does not set (kubelet's effective context)."""
    psc = (pod.get("spec") or {}).get("securityContext") or {}
    csc = dict(container.get("securityContext") or {})
    for key in ("runAsUser", "runAsGroup", "runAsNonRoot", "seLinuxOptions", "seccompProfile"):
        if key not in csc and key in psc:
            csc[key] = psc[key]
    return csc


def capabilities(sc: Obj) -> list[str]:
    """The capability names the container keeps, in bit order (containerd's add/drop over its default set)."""
    if sc.get("privileged"):
        return list(CAPABILITIES)
    caps = sc.get("capabilities") or {}
    add = {_cap_name(c) for c in caps.get("add") or []}
    drop = {_cap_name(c) for c in caps.get("drop") or []}
    if "ALL" in add:
        keep = set(CAPABILITIES)
    elif "ALL" in drop:
        keep = set()
    else:
        keep = set(DEFAULT_CAPABILITIES)
    keep |= add & set(CAPABILITIES)
    if "ALL" not in drop:
        keep -= drop
    return [c for c in CAPABILITIES if c in keep]


def nonroot_error(pod: Obj, container: Obj) -> str:
    """kubelet's CreateContainerConfigError message when runAsNonRoot forbids the uid the container would run as,
    else "" (kuberuntime's verifyRunAsNonRoot; the image's user is root here)."""
    sc = effective(pod, container)
    if not sc.get("runAsNonRoot"):
        return ""
    m = pod.get("metadata") or {}
    ref = f"{m.get('name', '')}_{m.get('namespace', '')}({m.get('uid', '')})"
    name = container.get("name", "")
    if "runAsUser" in sc:
        if int(sc["runAsUser"]) == 0:
            return f'container\'s runAsUser breaks non-root policy (pod: "{ref}", container: {name})'
        return ""
    return f'container has runAsNonRoot and image will run as root (pod: "{ref}", container: {name})'


def runtime_security(pod: Obj, container: Obj) -> Obj:
    """What contain.py applies: uid/gid/groups, the capability numbers kept, no_new_privs, privileged,
    readOnlyRootFilesystem, and whether the pod shares the node's PID namespace."""
    sc = effective(pod, container)
    psc = (pod.get("spec") or {}).get("securityContext") or {}
    groups = [int(g) for g in psc.get("supplementalGroups") or []]
    if psc.get("fsGroup") is not None and int(psc["fsGroup"]) not in groups:
        groups.append(int(psc["fsGroup"]))
    caps = capabilities(sc)
    return {
        "uid": int(sc.get("runAsUser") or 0),
        "gid": int(sc.get("runAsGroup") or 0),
        "groups": groups,
        "caps": [CAPABILITIES.index(c) for c in caps],
        "noNewPrivs": sc.get("allowPrivilegeEscalation") is False,
        "privileged": bool(sc.get("privileged")),
        "readOnlyRoot": bool(sc.get("readOnlyRootFilesystem")),
    }
