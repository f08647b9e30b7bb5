"""Kernel features the K3s networking stack needs, as K3s's `check-config` reports them: vxlan, br_netfilter,
nf_conntrack, nf_tables, tun and wireguard, each built in, a loaded or loadable module, or missing (with what it
breaks). Read from the kernel's config (/proc/config.gz or /boot/config-<release>), /proc/modules, /sys/module and
/lib/modules/<release>/modules.{dep,builtin}; `wireguard-go` in PATH stands in for the wireguard module."""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kwire.check.finding import Finding, Severity


@dataclass(frozen=True)
class Feature:
    name: str  # the module's name
    option: str  # its kernel config option
    breaks: str  # what does not work without it
    fix: str
    severity: Severity  # when it is missing


FEATURES = (
    Feature(
        "vxlan",
        "CONFIG_VXLAN",
        "flannel's VXLAN backend cannot create flannel.1: pods on different nodes cannot reach each other",
        "load the vxlan module (modprobe vxlan) or use --flannel-backend=host-gw",
        "error",
    ),
    Feature(
        "br_netfilter",
        "CONFIG_BRIDGE_NETFILTER",
        "traffic between pods of one node bypasses netfilter: Service replies are not un-NATed, NetworkPolicy "
        "does not see it",
        "modprobe br_netfilter, and list it in /etc/modules-load.d/ (K3s loads it too)",
        "error",
    ),
    Feature(
        "nf_conntrack",
        "CONFIG_NF_CONNTRACK",
        "no Service NAT, no masquerade, no established/related for NetworkPolicy",
        "a kernel with CONFIG_NF_CONNTRACK (modprobe nf_conntrack)",
        "error",
    ),
    Feature(
        "nf_tables",
        "CONFIG_NF_TABLES",
        "the service proxy, NetworkPolicy and flannel masquerade tables cannot be loaded",
        "a kernel with CONFIG_NF_TABLES (modprobe nf_tables)",
        "error",
    ),
    Feature(
        "tun",
        "CONFIG_TUN",
        "userspace tunnels (wireguard-go) cannot run",
        "modprobe tun",
        "info",
    ),
    Feature(
        "wireguard",
        "CONFIG_WIREGUARD",
        "flannel's wireguard-native backend is unavailable (kwire offers vxlan, host-gw and none)",
        "modprobe wireguard, or install wireguard-go",
        "info",
    ),
)


@dataclass(frozen=True)
class KernelFacts:
    config: dict[str, str] | None  # CONFIG_X -> y/m; None when the kernel's config cannot be read
    loaded: frozenset[str]  # modules loaded or built in (/proc/modules, /sys/module, modules.builtin)
    available: frozenset[str]  # loadable modules in /lib/modules/<release>/modules.dep
    wireguard_go: bool = False


def parse_config(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value.strip().strip('"')
    return out


def module_names(modules_dep: str) -> set[str]:
    """`kernel/drivers/net/vxlan/vxlan.ko.xz: deps` lines -> {"vxlan"}; `-` and `_` are the same to modprobe."""
    names = set()
    for line in modules_dep.splitlines():
        path = line.split(":", 1)[0].strip()
        if not path:
            continue
        base = os.path.basename(path)
        base = base.split(".ko", 1)[0]
        names.add(base.replace("-", "_"))
    return names


def check(facts: KernelFacts, *, node: str, flannel_backend: str = "vxlan") -> list[Finding]:
    findings = []
    for feat in FEATURES:
        severity = feat.severity
        if feat.name == "vxlan" and flannel_backend != "vxlan":
            severity = "info"
        if feat.name == "wireguard" and facts.wireguard_go:
            continue
        value = (facts.config or {}).get(feat.option, "")
        loaded = feat.name in facts.loaded
        available = feat.name in facts.available
        subject = f"{node}/{feat.name}"
        if value == "y" or loaded:
            continue
        if value == "m" or available:
            if available or facts.config is None:
                if feat.severity == "error":
                    findings.append(
                        Finding(
                            "info",
                            "kernel",
                            subject,
                            f"{feat.name} is a module that is not loaded yet (modprobe loads it when kwire needs it)",
                            f"modprobe {feat.name}",
                        )
                    )
                continue
            message = f"{feat.name} is configured as a module ({feat.option}=m) but the module is not installed: "
        elif facts.config is None:
            message = f"{feat.name} is not loaded and no kernel config could be read to tell whether it exists: "
            severity = "warning" if severity == "error" else severity
        else:
            message = f"{feat.name} is missing from this kernel ({feat.option} is not set): "
        findings.append(Finding(severity, "kernel", subject, message + feat.breaks, feat.fix))
    return findings


def _read_config(release: str) -> dict[str, str] | None:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return parse_config(f.read())
    except OSError:
        pass
    try:
        return parse_config(Path(f"/boot/config-{release}").read_text())
    except OSError:
        return None


def gather() -> KernelFacts:
    release = os.uname().release
    loaded: set[str] = set()
    try:
        loaded |= {line.split()[0] for line in Path("/proc/modules").read_text().splitlines() if line.strip()}
    except OSError:
        pass
    try:
        loaded |= set(os.listdir("/sys/module"))
    except OSError:
        pass
    available: set[str] = set()
    for name, into in (("modules.dep", available), ("modules.builtin", loaded)):  # built in = always there
        try:
            into |= module_names(Path(f"/lib/modules/{release}/{name}").read_text())
        except OSError:
            pass
    return KernelFacts(
        config=_read_config(release),
        loaded=frozenset(loaded),
        available=frozenset(available),
        wireguard_go=shutil.which("wireguard-go") is not None,
    )
