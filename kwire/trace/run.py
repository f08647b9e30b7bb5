"""`kwire trace` end to end: where it runs, resolving FROM/TO (a DNS name through cluster DNS, asked from inside
FROM's network namespace as a pod would ask), reading what only the kernel knows (the MTU of each node's
flannel.1), predicting the path and, with `--probe`, checking it with a real packet.

Two places to run it:
- a lab (`kwire trace --lab NAME` or `kwire lab trace --name NAME`): the lab's kubeconfig; pods, nodes and the
  client are the lab's namespaces (`kwire-<lab>-pod-<uid12>`, `kwire-<lab>-nodeN`, `kwire-<lab>-client`); a probe
  traces in every node namespace the flow may cross.
- a node (`kwire trace --kubeconfig FILE`, default /etc/kwire/kwire.yaml): pods' namespaces are the agent's
  `--pod-netns-prefix` (default `kwire-pod-`); this node is `--node` (default: the host name) and its namespace
  is the one kwire runs in. A probe can only start on and trace this node.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

from kwire.client import ApiClient, load_kubeconfig
from kwire.kernel import netns
from kwire.lab import lab as lab_mod
from kwire.lab import topology
from kwire.trace import path, probe, readback, render, state, targets
from kwire.trace.targets import Place, TargetError

DEFAULT_KUBECONFIG = "/etc/kwire/kwire.yaml"


class TraceError(RuntimeError):
    pass


@dataclass
class Where:
    """Where `kwire trace` runs: a lab, or a node with a kubeconfig."""

    lab: str = ""
    kubeconfig: str = ""
    node: str = ""  # node mode: this node's name
    pod_netns_prefix: str = "kwire-pod-"

    def _topo(self) -> topology.Topology:
        st = lab_mod.LabState.load(self.lab)
        if st is None:
            raise TraceError(f"lab {self.lab} is not up")
        return topology.build(self.lab, nodes=st.nodes)

    @property
    def kubeconfig_path(self) -> str:
        return str(self._topo().kubeconfig) if self.lab else (self.kubeconfig or DEFAULT_KUBECONFIG)

    @property
    def client_ip(self) -> str:
        return self._topo().client.ip if self.lab else ""

    def node_ns(self, node: str) -> str | None:
        """The network namespace of a node ("" = this process's own; None = not reachable from here)."""
        if self.lab:
            host = self._topo().host(node)
            return host.netns if host is not None else None
        return "" if node == (self.node or socket.gethostname()) else None

    def source_ns(self, place: Place) -> str | None:
        if place.kind == "client":
            return self._topo().client.netns if self.lab else None
        if place.kind == "pod" and not place.host_network:
            prefix = f"kwire-{self.lab}-pod-" if self.lab else self.pod_netns_prefix
            ns = prefix + place.uid.replace("-", "")[:12]
            if self.node_ns(place.node) is None or not netns.exists(ns):
                return None
            return ns
        return self.node_ns(place.node) if place.node else None


def _mtu(ns: str) -> int:
    """flannel.1's MTU (VXLAN) in a node namespace, else the first non-loopback, non-bridge link's."""
    from kwire.kernel.pyroute import IPRoute

    with IPRoute() as ipr:
        links = {str(link.get_attr("IFLA_IFNAME")): int(link.get_attr("IFLA_MTU")) for link in ipr.get_links()}
    return links.get("flannel.1") or next((v for k, v in links.items() if k not in ("lo", "cni0")), 0)


def mtus(where: Where, nodes: list[str]) -> dict[str, int]:
    out = {}
    for n in nodes:
        ns = where.node_ns(n)
        if ns is None:
            continue
        try:
            out[n] = netns.run_in(ns, lambda: _mtu("")) if ns else _mtu("")
        except OSError:
            continue
    return out


def resolve_dns(name: str, *, server: str, domain: str, namespace: str, from_ns: str) -> tuple[str, list[str]]:
    """A name as a pod in `namespace` resolves it (its resolv.conf's search list, ndots 5), asked of cluster DNS
    from inside `from_ns`: (the name that answered, its A records)."""
    if name.endswith("." + domain) or name.count(".") >= 5:
        candidates = [name]
    else:
        candidates = [f"{name}.{namespace}.svc.{domain}", f"{name}.svc.{domain}", f"{name}.{domain}", name]
    for qname in candidates:
        sock = netns.open_socket(from_ns, socket.AF_INET, socket.SOCK_DGRAM, reuse=False)
        try:
            sock.setblocking(False)
            answer = dns.query.udp(dns.message.make_query(qname, dns.rdatatype.A), server, timeout=3, sock=sock)
        except (OSError, dns.exception.DNSException) as exc:
            raise TraceError(f"cluster DNS {server} did not answer {qname}: {exc}") from None
        finally:
            sock.close()
        ips = [str(rr) for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset]
        if ips:
            return qname, ips
    return name, []


@dataclass
class Result:
    prediction: path.Prediction
    observation: probe.Observation | None = None
    kernel: dict[str, list[str]] = field(default_factory=dict)  # node -> differences from the computed tables

    def kernel_lines(self) -> list[str]:
        out = []
        for node, diffs in sorted(self.kernel.items()):
            if not diffs:
                out.append(f"kernel {node}: kwire's tables hold what its agent computes for this path")
            out += [f"kernel {node}: DIFFERS: {d}" for d in diffs]
        return out

    @property
    def exit_code(self) -> int:
        return 2 if self.observation is not None and self.observation.bugs else 0

    def text(self) -> str:
        out = "\n".join([render.text(self.prediction), *self.kernel_lines()])
        if self.observation is not None:
            out += "\n" + probe.text(self.observation)
        return out

    def as_json(self) -> dict[str, Any]:
        out = render.as_json(self.prediction)
        out["kernel"] = {node: {"inSync": not diffs, "differences": diffs} for node, diffs in self.kernel.items()}
        if self.observation is not None:
            o = self.observation
            out["probe"] = {
                "outcome": o.outcome,
                "verdict": o.verdict,
                "endpoint": o.endpoint,
                "dropped": o.dropped.text() if o.dropped is not None else "",
                "rules": [h.text() for h in o.hits if h.table.startswith("kwire-")],
                "bugs": o.bugs,
                "agrees": not o.bugs,
            }
        return out


async def _snapshot(where: Where) -> state.ClusterState:
    async with ApiClient(load_kubeconfig(where.kubeconfig_path), timeout=10) as client:
        return await state.fetch(client)


def trace(where: Where, src_text: str, dst_text: str, *, do_probe: bool = False, timeout: float = 2.0) -> Result:
    try:
        snap = asyncio.run(_snapshot(where))
    except (OSError, ValueError) as exc:
        raise TraceError(f"cannot read the cluster through {where.kubeconfig_path}: {exc}") from None
    try:
        src_spec, dst_spec = targets.parse(src_text), targets.parse(dst_text)
        if src_spec.kind == "dns":
            raise TargetError("FROM cannot be a DNS name")
        client_ip = where.client_ip
        src = targets.resolve(snap, src_spec, client_ip=client_ip)
        if src.kind == "service":
            src = _a_pod_of(snap, src)
        dns_answer = None
        if dst_spec.kind == "dns":
            from_ns = where.source_ns(src)
            if from_ns is None or src.kind == "client":
                first = sorted(where_nodes(snap))[0]
                from_ns = where.node_ns(first)
            if from_ns is None:
                raise TraceError(f"cannot reach cluster DNS from here to resolve {dst_spec.name}")
            ns = src.key.split("/")[0] if src.kind == "pod" else "default"
            dns_answer = resolve_dns(
                dst_spec.name,
                server=snap.settings.cluster_dns,
                domain=snap.settings.cluster_domain,
                namespace=ns,
                from_ns=from_ns,
            )
            ip = dns_answer[1][0] if dns_answer[1] else "0.0.0.0"
            dst = targets.by_ip(snap, ip, client_ip=client_ip)
            dst_ip = ip
        else:
            dst = targets.resolve(snap, dst_spec, client_ip=client_ip)
            dst_ip = dst.ip
            if dst.kind == "service" and src.kind == "client":
                dst_ip, port_override = _external_address(snap, dst, dst_spec.proto, dst_spec.port)
                dst_spec = targets.Spec(
                    dst_spec.kind, dst_spec.namespace, dst_spec.name, port_override, dst_spec.proto, dst_spec.text
                )
        port = dst_spec.port or targets.default_port(snap, dst, dst_spec.proto)
        if not port:
            raise TargetError(f"{dst_text}: give a port (TO:PORT); {dst.label} declares none for {dst_spec.proto}")
    except TargetError as exc:
        raise TraceError(str(exc)) from None
    model = path.Model(snap, mtu=mtus(where, where_nodes(snap)))
    kernel = read_kernel(where, where_nodes(snap), with_netpol=not snap.settings.disable_network_policy)
    pred = path.predict(
        model,
        src,
        dst,
        dst_ip=dst_ip,
        port=port,
        proto=dst_spec.proto,
        dns=dns_answer,
        client_ip=where.client_ip,
        affinity={n: readback.affinity(k.get("kwire-proxy")) for n, k in kernel.items()},
    )
    result = Result(pred)
    for n in sorted({*pred.nodes, pred.entry_node} & set(kernel)):
        tables = {"kwire-proxy": model.proxy_table(n)}
        if not snap.settings.disable_network_policy:
            tables["kwire-netpol"] = model.netpol(n).table()
        result.kernel[n] = readback.node_report(tables, kernel[n])
    if do_probe:
        src_ns = where.source_ns(src)
        if src_ns is None:
            raise TraceError(f"--probe: {src.label} has no network namespace reachable from here")
        spaces: dict[str, str] = {}
        for n in pred.nodes or [pred.entry_node]:
            node_ns = where.node_ns(n) if n else None
            if node_ns is not None:
                spaces[n] = node_ns
        try:
            result.observation = probe.run(pred, src_ns=src_ns, namespaces=spaces, timeout=timeout)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            raise TraceError(f"--probe: {exc}") from None
    return result


def read_kernel(
    where: Where, nodes: list[str], *, with_netpol: bool
) -> dict[str, dict[str, readback.KernelTable | None]]:
    """kwire's tables as each reachable node's kernel holds them."""
    out: dict[str, dict[str, readback.KernelTable | None]] = {}
    for n in nodes:
        ns = where.node_ns(n)
        if ns is None:
            continue
        names = ["kwire-proxy", *(["kwire-netpol"] if with_netpol else [])]
        try:
            out[n] = {t: readback.read(ns, t) for t in names}
        except (OSError, ValueError, subprocess.SubprocessError):
            continue
    return out


def where_nodes(snap: state.ClusterState) -> list[str]:
    return [str((n.get("metadata") or {}).get("name")) for n in snap.nodes]


def _a_pod_of(snap: state.ClusterState, svc: Place) -> Place:
    """FROM a Service: its first ready endpoint pod (the backend that would make the connection)."""
    ns = svc.key.split("/")[0]
    for sl in snap.slices:
        meta = sl.get("metadata") or {}
        if (
            meta.get("namespace") != ns
            or (meta.get("labels") or {}).get("kubernetes.io/service-name") != svc.key.split("/")[1]
        ):
            continue
        for e in sl.get("endpoints") or []:
            ref = e.get("targetRef") or {}
            if ref.get("kind") == "Pod" and (e.get("conditions") or {}).get("ready", True):
                return targets.resolve(snap, targets.Spec("pod", ns, str(ref.get("name"))))
    raise TargetError(f"{svc.label} has no ready endpoint pod to start from")


def _external_address(snap: state.ClusterState, svc: Place, proto: str, port: int) -> tuple[str, int]:
    """From the client a Service is reached at a load-balancer IP, else at its NodePort on the first node."""
    obj = targets.service_obj(snap, svc.key) or {}
    spec = obj.get("spec") or {}
    sports = [p for p in spec.get("ports") or [] if str(p.get("protocol") or "TCP").lower() == proto]
    sp = next((p for p in sports if not port or p.get("port") == port), None)
    if sp is None:
        raise TargetError(f"{svc.label} has no {proto} port {port or ''}")
    lb = [
        i.get("ip") for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [] if i.get("ip")
    ]
    if lb:
        return str(lb[0]), int(sp["port"])
    if sp.get("nodePort"):
        first = sorted(snap.nodes, key=lambda n: str((n.get("metadata") or {}).get("name")))[0]
        return targets.node_ip(first), int(sp["nodePort"])
    raise TargetError(f"{svc.label} is type {spec.get('type', 'ClusterIP')}: the client cannot reach a ClusterIP")
