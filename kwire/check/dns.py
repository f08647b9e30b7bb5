"""DNS: loopback upstreams in resolv.conf and cluster DNS answering.

CoreDNS as K3s deploys it (`forward . /etc/resolv.conf`, dnsPolicy Default) forwards to the nameservers of the
resolv.conf its pod gets from the node. A loopback one there (systemd-resolved's 127.0.0.53, a dnsmasq on
127.0.0.1) is, inside the pod's namespace, the DNS server itself (CoreDNS's `loop` plugin then stops it) or
nothing: every name outside the cluster fails. K3s checks the host's resolv.conf for this and offers
`--resolv-conf`; kwire's kubelet, like K3s, falls back to systemd-resolved's upstreams only when *every*
nameserver is loopback, and kwire's DNS refuses loopback upstreams with an error line. Here the resolv.conf of
each cluster DNS pod (`/etc/netns/<pod netns>/resolv.conf`, what `ip netns exec` shows the pod) and the node's own
are read, and `kubernetes.default.svc.<domain>` is asked at the cluster DNS IP from the node (dnspython), as the
K3s guides' `nslookup kubernetes.default` does from a pod.
"""

from __future__ import annotations

import ipaddress

from kwire.check.finding import Finding


def nameservers(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1])
    return out


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_dns_pod_resolv(text: str, *, pod: str, node: str) -> list[Finding]:
    """The resolv.conf a cluster DNS pod forwards to."""
    servers = nameservers(text)
    loop = [s for s in servers if is_loopback(s)]
    if loop:
        return [
            Finding(
                "error",
                "dns",
                f"{pod} on {node}",
                f"the cluster DNS pod forwards to loopback {', '.join(loop)} from its resolv.conf: inside the pod "
                "that is the DNS server itself (a loop) or nothing, so names outside the cluster fail",
                "list only real nameservers in the node's /etc/resolv.conf (K3s users pass --resolv-conf; kwire's "
                "kubelet takes systemd-resolved's upstreams when every nameserver is loopback), then "
                "kubectl -n kube-system delete pod -l k8s-app=kube-dns",
            )
        ]
    if not servers:
        return [
            Finding(
                "warning",
                "dns",
                f"{pod} on {node}",
                "the cluster DNS pod's resolv.conf has no nameserver: names outside the cluster fail",
                "give the node an /etc/resolv.conf with a reachable nameserver, then delete the DNS pods",
            )
        ]
    return []


def check_node_resolv(text: str, *, node: str) -> list[Finding]:
    """The node's own /etc/resolv.conf: only loopback stubs means pods with dnsPolicy Default (and cluster DNS)
    get systemd-resolved's upstreams or 8.8.8.8 instead (K3s's behaviour): worth knowing, not an error."""
    servers = nameservers(text)
    if servers and all(is_loopback(s) for s in servers):
        return [
            Finding(
                "info",
                "dns",
                f"{node}/etc/resolv.conf",
                f"the node's resolv.conf has only loopback nameservers ({', '.join(servers)}): pods with dnsPolicy "
                "Default and cluster DNS use /run/systemd/resolve/resolv.conf's upstreams, or 8.8.8.8 without it",
                "nothing to do if those upstreams are right; otherwise list real nameservers in /etc/resolv.conf",
            )
        ]
    return []


def query(server: str, name: str, *, timeout: float = 2.0, attempts: int = 3) -> str:
    """Ask `server`:53 for `name` A over UDP from the calling process's namespace: "" on an answer, else why."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    why = ""
    for _ in range(attempts):
        try:
            r = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=timeout)
        except dns.exception.Timeout:
            why = "no answer (timed out)"
            continue
        except OSError as exc:
            why = f"no answer ({exc.strerror or exc})"
            continue
        if r.rcode() == dns.rcode.NOERROR and r.answer:
            return ""
        why = f"answered {dns.rcode.to_text(r.rcode())} without an address"
    return why


def check_answer(why: str, *, node: str, server: str, name: str) -> list[Finding]:
    if not why:
        return []
    return [
        Finding(
            "error",
            "dns",
            f"{node} -> {server}",
            f"cluster DNS {server} does not answer {name} from {node}: {why}",
            "kubectl -n kube-system get pods,endpoints -l k8s-app=kube-dns; kubectl -n kube-system logs -l "
            "k8s-app=kube-dns",
        )
    ]


def local_resolv() -> str:
    try:
        with open("/etc/resolv.conf") as f:
            return f.read()
    except OSError:
        return ""
