"""What a pod means on a kwire node, as pure functions: its sandbox name, resolv.conf and hosts files, what the
runtime runs for it, CNI arguments, and the pod status the kubelet reports.

What runs in a pod is decided by its image (DESIGN.md "Pods"): `kwire/host` runs the container's command/args
from the machine's filesystem; other `kwire/*` images are kwire's built-in programs (an unknown one is reported
as an image error); any other image gets a responder on every declared containerPort, except a *tool container*:
one that declares no ports and whose command (or first argument) is a program this node has, such as
`busybox -- wget ...`, `kubectl run dnsutils --image=tutum/dnsutils -- nslookup x` or `sleep 3600`. Those run
that command from the machine's filesystem, as kwire/host would: debug pods do what their manifests say.
Images whose role kwire implements (ROLE_IMAGES: `quay.io/metallb/controller` and `quay.io/metallb/speaker`, tag
v0.13 or later; K3s's `rancher/mirrored-metrics-server` and upstream's metrics-server image, v0.6 or later) run
kwire's implementation of that role (`kwire.metallb`, `kwire.metricsserver`) with the pod's ServiceAccount.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kwire.agent.kubelet.security import runtime_security
from kwire.agent.svclb import servicelb_argv
from kwire.base.fields import meta, spec

Obj = dict[str, Any]

HOST_IMAGE = "kwire/host"
# Built-in images: image name (without tag) -> the Python module its container runs (`python -m MODULE ARGS...`);
# "" means the responder (the same as any non-kwire image).
BUILTIN_IMAGES: dict[str, str] = {
    "kwire/responder": "",
    "kwire/coredns": "kwire.dns",
    "kwire/ingress": "kwire.ingress",  # the traefik add-on: ingress controller driving nginx in the pod
}
# Third-party images whose role kwire implements (as kwire/coredns is CoreDNS's): image name -> (module, the
# oldest tag kwire's implementation speaks for). MetalLB v0.13 introduced the CRD configuration kwire reads.
ROLE_IMAGES: dict[str, tuple[str, tuple[int, int]]] = {
    "quay.io/metallb/controller": ("kwire.metallb.controller", (0, 13)),
    "quay.io/metallb/speaker": ("kwire.metallb.speaker", (0, 13)),
    # K3s's packaged metrics-server and upstream's image; v0.6 is the first to scrape /metrics/resource
    "rancher/mirrored-metrics-server": ("kwire.metricsserver", (0, 6)),
    "registry.k8s.io/metrics-server/metrics-server": ("kwire.metricsserver", (0, 6)),
}
SERVICELB_IMAGE = "kwire/servicelb"  # ServiceLB's svclb pods (klipper-lb's role); see kwire/agent/svclb.py
KWIRE_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding this `kwire` package
SA_ENV = "KWIRE_SERVICEACCOUNT_DIR"  # overrides the standard path for kwire's in-cluster clients run by hand


def image_name(image: str) -> str:
    """`docker.io/kwire/host:latest` -> `kwire/host`."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name.rsplit(":", 1)[0]
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def image_tag(image: str) -> str:
    """`quay.io/metallb/speaker:v0.14.9` -> `v0.14.9`; "" when the image names no tag."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else ""


def role_image_error(image: str) -> str:
    """Why a role image (ROLE_IMAGES) cannot run, or "" when it can: its tag must be `latest`, `main` or a
    version at least the oldest one kwire implements."""
    module_min = ROLE_IMAGES.get(image_name(image))
    if module_min is None:
        return ""
    tag = image_tag(image)
    if tag in ("", "latest", "main"):
        return ""
    parts = tag.lstrip("v").split(".")
    try:
        version = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    except ValueError:
        return f"kwire cannot tell the version of {image}"
    want = module_min[1]
    if version < want:
        return f"kwire implements {image_name(image)} from v{want[0]}.{want[1]} on, not {tag}"
    return ""


def netns_name(prefix: str, uid: str) -> str:
    return f"{prefix}{uid.replace('-', '')[:12]}"


def host_network(pod: Obj) -> bool:
    return bool(spec(pod).get("hostNetwork"))


MAX_NAMESERVERS = 3  # kubelet's validation.MaxDNSNameservers
MAX_SEARCH_PATHS = 32  # validation.MaxDNSSearchPaths
MAX_SEARCH_CHARS = 2048  # validation.MaxDNSSearchListChars


def resolv_conf(pod: Obj, *, cluster_dns: str, cluster_domain: str, host_resolv: str) -> str:
    """The pod's /etc/resolv.conf per dnsPolicy (kubelet's dns.Configurer)."""
    nameservers, searches, options = _dns_parts(
        pod, cluster_dns=cluster_dns, cluster_domain=cluster_domain, host_resolv=host_resolv
    )
    lines = [f"nameserver {n}" for n in nameservers[:MAX_NAMESERVERS]]
    if searches:
        lines.append("search " + " ".join(_applied_searches(searches)))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def _applied_searches(searches: list[str]) -> list[str]:
    """kubelet's search-line trimming: at most 32 paths and 2048 characters."""
    out: list[str] = []
    chars = 0
    for s in searches[:MAX_SEARCH_PATHS]:
        chars += len(s) + (1 if out else 0)
        if chars > MAX_SEARCH_CHARS:
            break
        out.append(s)
    return out


def dns_config_warnings(pod: Obj, *, cluster_dns: str, cluster_domain: str, host_resolv: str) -> list[str]:
    """kubelet's DNSConfigForming event messages for what resolv.conf had to leave out."""
    nameservers, searches, _ = _dns_parts(
        pod, cluster_dns=cluster_dns, cluster_domain=cluster_domain, host_resolv=host_resolv
    )
    out = []
    if len(nameservers) > MAX_NAMESERVERS:
        out.append(
            "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: "
            + " ".join(nameservers[:MAX_NAMESERVERS])
        )
    applied = _applied_searches(searches)
    if len(applied) < len(searches):
        out.append(
            "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: "
            + " ".join(applied)
        )
    return out


def _dns_parts(
    pod: Obj, *, cluster_dns: str, cluster_domain: str, host_resolv: str
) -> tuple[list[str], list[str], list[str]]:
    """nameservers, search paths and options before kubelet's limits."""
    sp = spec(pod)
    policy = sp.get("dnsPolicy") or "ClusterFirst"
    if policy == "ClusterFirst" and host_network(pod):
        policy = "Default"  # kubelet: hostNetwork pods with ClusterFirst use the node's resolv.conf
    if policy == "ClusterFirstWithHostNet":
        policy = "ClusterFirst"
    nameservers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    if policy == "ClusterFirst":
        ns = meta(pod).get("namespace") or "default"
        nameservers = [cluster_dns]
        searches = [f"{ns}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
        options = ["ndots:5"]
    elif policy == "Default":
        for line in host_resolv.splitlines():
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if parts[0] == "nameserver" and len(parts) > 1:
                nameservers.append(parts[1])
            elif parts[0] in ("search", "domain"):
                searches.extend(parts[1:])
            elif parts[0] == "options":
                options.extend(parts[1:])
    cfg = sp.get("dnsConfig") or {}
    nameservers += [str(x) for x in cfg.get("nameservers") or [] if str(x) not in nameservers]
    searches += [str(x) for x in cfg.get("searches") or [] if str(x) not in searches]
    for opt in cfg.get("options") or []:
        name = str(opt.get("name", ""))
        if not name:
            continue
        options = [o for o in options if o.split(":", 1)[0] != name]
        options.append(f"{name}:{opt['value']}" if opt.get("value") is not None else name)
    return nameservers, searches, options


def hosts_file(pod: Obj, *, pod_ip: str, cluster_domain: str) -> str:
    """The pod's /etc/hosts (kubelet's managed hosts file)."""
    m, sp = meta(pod), spec(pod)
    hostname = sp.get("hostname") or m.get("name", "")
    lines = [
        "# Kubernetes-managed hosts file (kwire).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if sp.get("subdomain"):
        fqdn = f"{hostname}.{sp['subdomain']}.{m.get('namespace', 'default')}.svc.{cluster_domain}"
        lines.append(f"{pod_ip}\t{fqdn}\t{hostname}")
    else:
        lines.append(f"{pod_ip}\t{hostname}")
    for alias in sp.get("hostAliases") or []:
        names = " ".join(str(h) for h in alias.get("hostnames") or [])
        if alias.get("ip") and names:
            lines.append(f"# Entries added by HostAliases.\n{alias['ip']}\t{names}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    image: str
    kind: str  # "responder" | "process" | "error"
    error: str = ""


HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the runtime's PATH for containers


DEBUG_SHELL = ["sh"]  # what a terminal container without a command runs (the debug images' entrypoint)


def _host_argv(c: Obj) -> list[str]:
    """The container's command and args; a container that asks for a terminal (stdin or tty, as `kubectl debug
    -it` and `kubectl run -it` make) and names no command gets the node's shell, as busybox's image would run."""
    argv = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
    if not argv and (c.get("stdin") or c.get("tty")) and not c.get("ports"):
        return list(DEBUG_SHELL)
    return argv


def is_tool_container(c: Obj, *, which: Callable[..., str | None] = shutil.which) -> bool:
    """A container of a non-kwire image that kwire runs as a host command (see the module docstring)."""
    argv = _host_argv(c)
    if not argv or c.get("ports"):
        return False
    prog = argv[0]
    if "/" in prog:
        return os.path.isfile(prog) and os.access(prog, os.X_OK)
    return which(prog, path=HOST_PATH) is not None


def plan(pod: Obj, containers: list[Obj] | None = None) -> list[ContainerPlan]:
    """What runs for each container (of `containers`, by default the pod's regular ones)."""
    out = []
    for c in (spec(pod).get("containers") or []) if containers is None else containers:
        name, image = str(c.get("name", "")), str(c.get("image", ""))
        img = image_name(image)
        if img == HOST_IMAGE:
            if not (c.get("command") or c.get("args")):
                out.append(ContainerPlan(name, image, "error", "kwire/host needs a command"))
            else:
                out.append(ContainerPlan(name, image, "process"))
        elif img == SERVICELB_IMAGE:
            out.append(ContainerPlan(name, image, "process"))
        elif img in ROLE_IMAGES:
            err = role_image_error(image)
            out.append(ContainerPlan(name, image, "error", err) if err else ContainerPlan(name, image, "process"))
        elif img.startswith("kwire/") and img not in BUILTIN_IMAGES:
            out.append(ContainerPlan(name, image, "error", f"kwire has no built-in image {img}"))
        elif img.startswith("kwire/") and BUILTIN_IMAGES[img]:
            out.append(ContainerPlan(name, image, "process"))
        elif not img.startswith("kwire/") and is_tool_container(c):
            out.append(ContainerPlan(name, image, "process"))
        else:
            out.append(ContainerPlan(name, image, "responder"))
    return out


def _env(c: Obj, pod: Obj, *, pod_ip: str, host_ip: str) -> dict[str, str]:
    m, sp = meta(pod), spec(pod)
    fields = {
        "metadata.name": m.get("name", ""),
        "metadata.namespace": m.get("namespace", ""),
        "metadata.uid": m.get("uid", ""),
        "spec.nodeName": sp.get("nodeName", ""),
        "spec.serviceAccountName": sp.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.hostIP": host_ip,
    }
    env = {"KUBERNETES_SERVICE_HOST": "10.43.0.1", "KUBERNETES_SERVICE_PORT": "443", "HOSTNAME": m.get("name", "")}
    for e in c.get("env") or []:
        name = str(e.get("name", ""))
        if "value" in e:
            env[name] = str(e["value"])
        elif (e.get("valueFrom") or {}).get("fieldRef"):
            env[name] = str(fields.get(e["valueFrom"]["fieldRef"].get("fieldPath", ""), ""))
    return env


def runtime_spec(
    pod: Obj,
    *,
    node: str,
    pod_ip: str,
    host_ip: str,
    netns: str,
    uts: str = "",
    envs: dict[str, dict[str, str]] | None = None,
    skip: frozenset[str] = frozenset(),
    mounts: dict[str, list[list[Any]]] | None = None,
    stage: str = "",
    masks: list[str] | None = None,
    containers: list[Obj] | None = None,
    restart_policies: dict[str, str] | None = None,
) -> Obj:
    """The body of the runtime's PUT /pods/{uid}. `envs` holds each container's resolved environment (see
    envconfig.py; the literal and fieldRef part is computed here when it is missing); containers in `skip` (their
    configuration is not resolvable yet) are not run. `mounts` holds each container's [source, mountPath, readOnly]
    binds (see mounts.py), made in the mount namespace under `stage`, where `masks` are hidden (contain.py). `containers` are those to run now (by default
    the regular ones; the kubelet passes the init containers it has reached first), `restart_policies` a
    container's own policy (init containers: OnFailure or Never; sidecars: Always)."""
    m, sp = meta(pod), spec(pod)
    ports: list[list[Any]] = []
    processes: list[Obj] = []
    run = (sp.get("containers") or []) if containers is None else containers
    by_name = {str(c.get("name", "")): c for c in run}
    for p in plan(pod, run):
        c = by_name[p.name]
        if p.kind == "responder":
            for port in c.get("ports") or []:
                proto = str(port.get("protocol") or "TCP")
                entry = [int(port["containerPort"]), proto]
                if entry not in ports:
                    ports.append(entry)
        elif p.kind == "process" and p.name not in skip:
            img = image_name(p.image)
            env = dict((envs or {}).get(p.name) or _env(c, pod, pod_ip=pod_ip, host_ip=host_ip))
            if img in ROLE_IMAGES:
                argv = [sys.executable, "-m", ROLE_IMAGES[img][0], *[str(x) for x in c.get("args") or []]]
            elif img == HOST_IMAGE or not img.startswith("kwire/"):
                argv = _host_argv(c)
            elif img == SERVICELB_IMAGE:
                try:
                    argv = servicelb_argv(env)
                except ValueError as exc:
                    argv = ["sh", "-c", f"echo 'servicelb: bad environment: {exc}' | tr -d \"'\" >&2; exit 1"]
            else:
                argv = [sys.executable, "-m", BUILTIN_IMAGES[img], *[str(x) for x in c.get("args") or []]]
            if argv[:2] == [sys.executable, "-m"]:
                # a built-in or role image runs this node's kwire (the checkout the agent runs from, not whatever
                # `kwire` the interpreter would find first)
                env.setdefault("PYTHONPATH", KWIRE_ROOT)
            # the service-account files are mounted at the standard path (kubelet.py), where in-cluster clients
            # look: nothing points into the node's own directories
            proc_entry: Obj = {"name": p.name, "argv": argv, "env": env, "security": runtime_security(pod, c)}
            if (restart_policies or {}).get(p.name):
                proc_entry["restartPolicy"] = (restart_policies or {})[p.name]
            if (mounts or {}).get(p.name):
                proc_entry["mounts"] = (mounts or {})[p.name]
            if c.get("targetContainerName"):
                proc_entry["target"] = str(c["targetContainerName"])  # `kubectl debug --target`: its PID namespace
            if c.get("stdin"):
                proc_entry["stdin"] = True
            if c.get("tty"):
                proc_entry["tty"] = True
            processes.append(proc_entry)
    return {
        "pod": {
            "name": m.get("name"),
            "namespace": m.get("namespace"),
            "node": node,
            "podIP": pod_ip,
            "netns": netns,
            "uts": uts,
            "stage": stage,
            "masks": list(masks or []),
            "hostPID": bool(sp.get("hostPID")),
            "sharePid": bool(sp.get("shareProcessNamespace")),
        },
        "ports": ports,
        "processes": processes,
        "restartPolicy": sp.get("restartPolicy") or "Always",
    }


def port_mappings(pod: Obj) -> list[Obj]:
    """hostPort declarations as the portmap plugin's `portMappings` capability."""
    out = []
    for c in spec(pod).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                entry: Obj = {
                    "hostPort": int(p["hostPort"]),
                    "containerPort": int(p["containerPort"]),
                    "protocol": str(p.get("protocol") or "TCP").lower(),
                }
                if p.get("hostIP"):
                    entry["hostIP"] = p["hostIP"]
                out.append(entry)
    return out


MAX_BURST = 2**31 - 1  # kubelet passes math.MaxInt32 as the burst for both directions


def _rate(value: str) -> int:
    """A Kubernetes quantity of bits per second (`10M`, `1Gi`...) as an integer."""
    units = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * units[suffix])
    return int(float(value))


def bandwidth(pod: Obj) -> Obj:
    """kubernetes.io/ingress-bandwidth and egress-bandwidth annotations as the bandwidth plugin's capability."""
    ann = meta(pod).get("annotations") or {}
    out: Obj = {}
    try:
        if ann.get("kubernetes.io/ingress-bandwidth"):
            rate = _rate(str(ann["kubernetes.io/ingress-bandwidth"]))
            out.update({"ingressRate": rate, "ingressBurst": MAX_BURST})
        if ann.get("kubernetes.io/egress-bandwidth"):
            rate = _rate(str(ann["kubernetes.io/egress-bandwidth"]))
            out.update({"egressRate": rate, "egressBurst": MAX_BURST})
    except ValueError:
        return {}
    return out


SYSTEMD_RESOLV = Path("/run/systemd/resolve/resolv.conf")


def _has_usable_nameserver(text: str) -> bool:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                if not ipaddress.ip_address(parts[1].split("%")[0]).is_loopback:
                    return True
            except ValueError:
                continue
    return False


def node_resolv_conf(etc: Path = Path("/etc/resolv.conf"), systemd: Path = SYSTEMD_RESOLV) -> str:
    """The resolv.conf pods with dnsPolicy Default get (and so cluster DNS's upstreams), as K3s picks it: the node's
    /etc/resolv.conf unless all its nameservers are loopback (a local stub such as systemd-resolved, unreachable
    from a pod's namespace, and a DNS loop for CoreDNS); then systemd-resolved's real upstreams; else 8.8.8.8."""
    for path in (etc, systemd):
        try:
            text = path.read_text()
        except OSError:
            continue
        if _has_usable_nameserver(text):
            return text
    return "nameserver 8.8.8.8\n"
