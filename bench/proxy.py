"""Service proxy benchmark: full sync and one-more-Service sync at 10,000 Services x 2 endpoints, and first-packet
latency to a Service at 100 vs 10,000 Services.

    .venv/bin/python bench/proxy.py [--services 10000]

Runs in a scratch network namespace (`kwire-bench-proxy`, removed at the end). A sync is measured from the service
model to rules committed in the kernel: compute the ruleset, render it, and apply it as one nftables transaction (through libnftables, as the agent does).
First-packet latency is the time of a TCP connect() to a ClusterIP whose endpoint is a listener in the same
namespace, i.e. the nat lookup of a new connection; with verdict maps it should not depend on the number of
Services. kube-proxy's nftables mode is reported (KEP-3866 / the kube-proxy nftables blog post, 2025) at 141 ms to
add one Service when 10,000 exist.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The checkout first, and not bench/ itself: bench/dns.py would shadow dnspython's `dns` package.
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]
from kwire.agent.proxy import ruleset  # noqa: E402
from kwire.agent.proxy.model import Endpoint, ServicePort, ServiceView  # noqa: E402
from kwire.kernel import netns, nft  # noqa: E402

NS = "kwire-bench-proxy"
KUBE_PROXY_NFT_ADD_ONE_MS = 141.0
ENDPOINT_IP = "10.42.0.2"


def _sp(i: int, *, local: bool = False) -> ServicePort:
    vip = f"10.43.{i // 250}.{i % 250 + 2}"
    eps = (
        (Endpoint(ENDPOINT_IP, 8080, "node1"),)
        if local
        else (
            Endpoint(f"10.42.{i % 200}.{i % 250 + 2}", 8080, "node2"),
            Endpoint(f"10.42.{i % 200 + 1}.9", 8080, "node3"),
        )
    )
    return ServicePort(ServiceView("bench", f"svc-{i}", cluster_ip=vip), "http", "TCP", 80, endpoints=eps)


def _apply(script: str) -> None:
    """Apply as the agent does (one long-lived libnftables context), from a thread inside the namespace."""
    netns.run_in(NS, lambda: nft.apply(script, use_library=True))


def _build(ports: list[ServicePort]) -> ruleset.ProxyTable:
    return ruleset.build(
        ports, node="node1", node_ips=("192.168.77.11",), cluster_cidr="10.42.0.0/16", service_cidr="10.43.0.0/16"
    )


def _connect_latency(vip: str, n: int = 300) -> float:
    """Median seconds of a TCP connect() to vip:80 (DNATed to the local listener) from inside the namespace."""
    times = []
    for _ in range(n):
        s = netns.open_socket(NS, socket.AF_INET, socket.SOCK_STREAM, reuse=False)
        s.settimeout(2)
        t0 = time.perf_counter()
        s.connect((vip, 80))
        times.append(time.perf_counter() - t0)
        s.close()
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    args = ap.parse_args()
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    netns.create(NS)
    try:
        for cmd in (
            ["ip", "addr", "add", f"{ENDPOINT_IP}/32", "dev", "lo"],
            # Something to route the service CIDR to (this kernel has no dummy driver): a veth pair.
            ["ip", "link", "add", "kwire-v0", "type", "veth", "peer", "name", "kwire-v1"],
            ["ip", "link", "set", "kwire-v0", "up"],
            ["ip", "link", "set", "kwire-v1", "up"],
            ["ip", "route", "add", "10.43.0.0/16", "dev", "kwire-v0"],
        ):
            subprocess.run(["ip", "netns", "exec", NS, *cmd], check=True)
        listener = netns.open_socket(NS, socket.AF_INET, socket.SOCK_STREAM, bind=(ENDPOINT_IP, 8080))
        listener.listen(4096)
        import threading

        def accept() -> None:
            while True:
                try:
                    c, _ = listener.accept()
                    c.close()
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()

        # 100 services: first-packet latency.
        ports = [_sp(0, local=True)] + [_sp(i) for i in range(1, 100)]
        _apply(nft.replace(_build(ports).table()).render())
        lat_small = _connect_latency(ports[0].service.cluster_ip)

        # 10,000 services: full sync.
        ports = [_sp(0, local=True)] + [_sp(i) for i in range(1, args.services)]
        t0 = time.perf_counter()
        pt = _build(ports)
        applied = pt.table()
        script = nft.replace(applied).render()
        t_render = time.perf_counter() - t0
        _apply(script)
        t_full = time.perf_counter() - t0
        lat_big = _connect_latency(ports[0].service.cluster_ip)

        # One more service: partial sync (median of 5 additions).
        adds = []
        for k in range(5):
            sp = _sp(args.services + k)
            t0 = time.perf_counter()
            pt.set(ruleset.service_rules(sp, node="node1", cluster_cidr=pt.cluster_cidr))
            desired = pt.table()
            _apply(nft.diff(applied, desired).render())
            adds.append(time.perf_counter() - t0)
            applied = desired
        visible = subprocess.run(
            ["ip", "netns", "exec", NS, "nft", "list", "map", "ip", "kwire-proxy", "service-ips"],
            capture_output=True,
            text=True,
        ).stdout
        assert _sp(args.services + 4).service.cluster_ip in visible
        listener.close()
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    add_ms = statistics.median(adds) * 1e3
    print(f"proxy bench ({args.services} Services x 2 endpoints, one nft transaction per sync)")
    print(
        f"  full sync                  {t_full * 1e3:8.0f} ms   (compute+render {t_render * 1e3:.0f} ms; goal <= 2000 ms)"
    )
    print(
        f"  one more Service           {add_ms:8.1f} ms   (goal <= 50 ms; kube-proxy nftables: "
        f"{KUBE_PROXY_NFT_ADD_ONE_MS:.0f} ms -> {KUBE_PROXY_NFT_ADD_ONE_MS / add_ms:.1f}x)"
    )
    print(
        f"  first-packet latency       {lat_small * 1e6:8.1f} us at 100 Services, {lat_big * 1e6:.1f} us at "
        f"{args.services} (ratio {lat_big / lat_small:.2f}; flat = 1.0)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
