"""Pod sandboxes: what the pause container and the CNI give a Kubernetes pod, on a kwire node.

A sandbox is a network namespace `<prefix><uid12>` wired by CNI ADD through the node's conflist, a UTS namespace
whose hostname is the pod's (kubelet's GeneratePodHostNameAndDomain: `spec.hostname`, else the pod name cut to 63
characters), and the pod's /etc/netns/<ns>/{resolv.conf,hosts,hostname} (what `ip netns exec` shows the pod's
processes as /etc/resolv.conf, /etc/hosts and /etc/hostname). hostNetwork pods get none of these: they share the node's, as in Kubernetes.

Each sandbox is recorded in `<data-dir>/pods/<uid>.json`, so a restarted agent adopts its pods (namespaces, IPs and
processes are left alone) and tears down those deleted while it was away. Removal is CNI DEL (retried by the caller
until it succeeds, or the IP would stay allocated, as kubelet does), then the namespaces and files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kwire.agent.kubelet import podspec
from kwire.base.files import atomic_write, write_if_changed
from kwire.base.timefmt import now_rfc3339
from kwire.cni import invoke as cni
from kwire.kernel import netns, utsns

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ETC_NETNS = Path("/etc/netns")
CNI_PLUGIN_DIR = "/usr/lib/cni"
MAX_HOSTNAME = 63
SYSCTL_NET = re.compile(r"net(\.[A-Za-z0-9_-]+)+")  # a network-namespace sysctl (kube accepts / for . too)


class SandboxError(Exception):
    """The sandbox could not be created; the message is kubelet's FailedCreatePodSandBox text."""


def pod_hostname(pod: Obj) -> str:
    """The pod's hostname as kubelet sets it: `spec.hostname`, else the pod's name cut to 63 characters (and
    then without trailing '-' or '.')."""
    sp, m = podspec.spec(pod), podspec.meta(pod)
    if sp.get("hostname"):
        return str(sp["hostname"])
    name = str(m.get("name") or "")
    if len(name) > MAX_HOSTNAME:
        name = name[:MAX_HOSTNAME].rstrip("-.")
    return name


def pod_sysctls(pod: Obj) -> dict[str, str]:
    """The pod's `securityContext.sysctls` that belong to its network namespace (net.*), as the runtime sets them
    in the sandbox; others would change the node's kernel, and are logged and left alone."""
    out: dict[str, str] = {}
    for s in (podspec.spec(pod).get("securityContext") or {}).get("sysctls") or []:
        name, value = str(s.get("name") or "").replace("/", "."), str(s.get("value") or "")
        if SYSCTL_NET.fullmatch(name):
            out[name] = value
        else:
            log.warning("kubelet: pod sysctl %s is not namespaced here; not set", name)
    return out


def apply_sysctls(sysctls: dict[str, str]) -> None:
    """Write each sysctl under /proc/sys (from a thread inside the pod's network namespace)."""
    for name, value in sysctls.items():
        Path("/proc/sys", *name.split(".")).write_text(value)


@dataclass
class Sandbox:
    uid: str
    namespace: str
    name: str
    netns: str  # "" for hostNetwork pods
    pod_ip: str
    started_at: str
    host_network: bool = False
    uts: str = ""  # the UTS namespace file ("" for hostNetwork pods)
    # restarts the runtime does not count itself (a liveness kill, a replaced runtime), per container
    restarts: dict[str, int] = field(default_factory=dict)

    def record(self) -> Obj:
        return {
            "uid": self.uid,
            "namespace": self.namespace,
            "name": self.name,
            "netns": self.netns,
            "podIP": self.pod_ip,
            "startedAt": self.started_at,
            "hostNetwork": self.host_network,
            "uts": self.uts,
            "restarts": self.restarts,
        }

    @classmethod
    def from_record(cls, r: Obj) -> Sandbox:
        return cls(
            uid=str(r["uid"]),
            namespace=str(r["namespace"]),
            name=str(r["name"]),
            netns=str(r["netns"]),
            pod_ip=str(r["podIP"]),
            started_at=str(r["startedAt"]),
            host_network=bool(r.get("hostNetwork")),
            uts=str(r.get("uts") or ""),
            restarts={str(k): int(v) for k, v in (r.get("restarts") or {}).items()},
        )


class Sandboxes:
    """Creates, adopts and removes the node's pod sandboxes."""

    def __init__(
        self,
        *,
        state_dir: Path,
        netns_prefix: str,
        node_ip: str,
        conflist: Path,
        cni_bin_dir: Path,
        cni_cache: Path,
        cluster_dns: str,
        cluster_domain: str,
    ) -> None:
        self.state_dir = state_dir
        self.netns_prefix = netns_prefix
        self.node_ip = node_ip
        self.conflist_path = conflist
        self.cni = cni.CniConfig([str(cni_bin_dir), CNI_PLUGIN_DIR], cache_dir=cni_cache)
        self.cluster_dns = cluster_dns
        self.cluster_domain = cluster_domain

    def load(self) -> dict[str, Sandbox]:
        """The sandboxes recorded by this or a previous agent."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        out: dict[str, Sandbox] = {}
        for p in self.state_dir.glob("*.json"):
            try:
                sb = Sandbox.from_record(json.loads(p.read_text()))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("kubelet: ignoring unreadable pod record %s: %s", p, exc)
                continue
            out[sb.uid] = sb
        return out

    def save(self, sb: Sandbox) -> None:
        atomic_write(self.state_dir / f"{sb.uid}.json", json.dumps(sb.record()))

    def pod_dir(self, uid: str) -> Path:
        """The pod's own directory on the node (volumes, service-account files)."""
        return self.state_dir / uid

    async def create(self, pod: Obj) -> Sandbox:
        m, sp = podspec.meta(pod), podspec.spec(pod)
        uid = str(m["uid"])
        if sp.get("hostNetwork"):
            sb = Sandbox(uid, m["namespace"], m["name"], "", self.node_ip, now_rfc3339(), host_network=True)
            self.save(sb)
            return sb
        name = podspec.netns_name(self.netns_prefix, uid)
        await asyncio.to_thread(netns.create, name)
        if sysctls := pod_sysctls(pod):
            await asyncio.to_thread(netns.run_in, name, lambda: apply_sysctls(sysctls))
        try:
            uts = await asyncio.to_thread(utsns.create, name, pod_hostname(pod))
        except OSError as exc:
            await asyncio.to_thread(netns.remove, name)
            raise SandboxError(f"Failed to create pod sandbox: {exc}") from exc
        args = {
            "IgnoreUnknown": "1",
            "K8S_POD_NAMESPACE": m["namespace"],
            "K8S_POD_NAME": m["name"],
            "K8S_POD_INFRA_CONTAINER_ID": uid,
            "K8S_POD_UID": uid,
        }
        caps: Obj = {}
        if pm := podspec.port_mappings(pod):
            caps["portMappings"] = pm
        if bw := podspec.bandwidth(pod):
            caps["bandwidth"] = bw
        try:
            conflist = await asyncio.to_thread(cni.load_conflist, self.conflist_path)
            rt = cni.RuntimeConf(uid, netns.path(name), args=args, capability_args=caps)
            result = await asyncio.to_thread(self.cni.add_network, conflist, rt)
        except (cni.CniError, OSError) as exc:
            await asyncio.to_thread(utsns.remove, name)
            await asyncio.to_thread(netns.remove, name)
            raise SandboxError(f'Failed to create pod sandbox: plugin type="flannel" failed (add): {exc}') from exc
        ips = [str(ip.get("address", "")).split("/")[0] for ip in result.get("ips") or []]
        if not ips:
            raise SandboxError("Failed to create pod sandbox: the CNI result has no IP address")
        sb = Sandbox(uid, m["namespace"], m["name"], name, ips[0], now_rfc3339(), uts=str(uts))
        self.save(sb)
        log.info("kubelet: pod %s/%s sandbox ready (%s)", sb.namespace, sb.name, sb.pod_ip)
        return sb

    def dns_warnings(self, pod: Obj) -> list[str]:
        """What kubelet reports as DNSConfigForming for this pod (limits its resolv.conf had to apply)."""
        if podspec.host_network(pod):
            return []
        return podspec.dns_config_warnings(
            pod,
            cluster_dns=self.cluster_dns,
            cluster_domain=self.cluster_domain,
            host_resolv=podspec.node_resolv_conf(),
        )

    def write_files(self, pod: Obj, sb: Sandbox) -> None:
        """The pod's resolv.conf and hosts (rewritten only when they change)."""
        if sb.host_network:
            return
        d = ETC_NETNS / sb.netns
        d.mkdir(parents=True, exist_ok=True)
        resolv = podspec.resolv_conf(
            pod,
            cluster_dns=self.cluster_dns,
            cluster_domain=self.cluster_domain,
            host_resolv=podspec.node_resolv_conf(),
        )
        write_if_changed(d / "resolv.conf", resolv)
        write_if_changed(d / "hosts", podspec.hosts_file(pod, pod_ip=sb.pod_ip, cluster_domain=self.cluster_domain))
        write_if_changed(d / "hostname", pod_hostname(pod) + "\n")  # kubelet's /etc/hostname

    async def remove(self, sb: Sandbox) -> None:
        """CNI DEL, then the namespaces, files and record. Raises RuntimeError when CNI DEL fails (retry it)."""
        if not sb.host_network:
            try:
                conflist = await asyncio.to_thread(cni.load_conflist, self.conflist_path)
                args = {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": sb.namespace, "K8S_POD_NAME": sb.name}
                rt = cni.RuntimeConf(sb.uid, netns.path(sb.netns), args=args)
                await asyncio.to_thread(self.cni.del_network, conflist, rt)
            except (cni.CniError, OSError) as exc:
                raise RuntimeError(f"CNI DEL failed: {exc}") from exc
            await asyncio.to_thread(netns.remove, sb.netns)
            await asyncio.to_thread(utsns.remove, sb.netns)
            shutil.rmtree(ETC_NETNS / sb.netns, ignore_errors=True)
        await asyncio.to_thread(shutil.rmtree, self.pod_dir(sb.uid), True)
        (self.state_dir / f"{sb.uid}.json").unlink(missing_ok=True)
        log.info("kubelet: pod %s/%s torn down", sb.namespace, sb.name)
