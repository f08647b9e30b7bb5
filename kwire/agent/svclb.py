"""The svclb pod's table (klipper-lb's entry script, K3s ServiceLB), as an `nft.Table`.

Inside the svclb pod's own network namespace: DNAT what arrives on SRC_PORT (from SRC_RANGES) to each of DEST_IPS
at DEST_PORT, and masquerade it so replies come back through the pod. klipper-lb writes iptables rules from the same
environment variables; here the table is computed like every other kwire table and rendered by the one
replace path (`nft.replace`). The pod runs it once with `nft -f -` (it lives as long as the pod's namespace) and then
holds the pod open, so no reconciler is involved: the pod is recreated, not resynced, when the Service changes.
Each container (one per Service port) owns its own table, `kwire-lb-<proto>-<port>`: the containers of one pod
share its namespace, and replacing one shared table would leave only the last container's port.
"""

from __future__ import annotations

import ipaddress

from kwire.kernel import nft

TABLE = "kwire-lb"


def servicelb_table(env: dict[str, str]) -> nft.Table:
    """The table for the svclb container's environment. Raises ValueError on malformed values."""
    proto = env.get("DEST_PROTO", "TCP").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"DEST_PROTO {proto!r}")
    src_port, dest_port = int(env.get("SRC_PORT", "")), int(env.get("DEST_PORT", ""))
    ranges = [str(ipaddress.ip_network(r.strip(), strict=False)) for r in env.get("SRC_RANGES", "0.0.0.0/0").split(",")]
    v4_ranges = [r for r in ranges if ":" not in r] or ["0.0.0.0/0"]
    dests = [str(ipaddress.ip_address(d)) for d in env.get("DEST_IPS", "").split() if d]
    pre: list[nft.Text] = []
    post: list[nft.Text] = []
    for d in dests:
        if ":" in d:
            continue  # IPv6 ClusterIPs: the lab's pod network is IPv4
        pre.append(
            nft.Text(
                f"ip saddr != {d} ip saddr {{ {', '.join(v4_ranges)} }} {proto} dport {src_port} dnat to {d}:{dest_port}"
            )
        )
        post.append(nft.Text(f"ip daddr {d} {proto} dport {dest_port} masquerade"))
    return nft.table(
        "ip",
        f"{TABLE}-{proto}-{src_port}",
        chains=[
            nft.Chain("prerouting", tuple(pre), nft.Hook("nat", "prerouting", "dstnat")),
            nft.Chain("postrouting", tuple(post), nft.Hook("nat", "postrouting", "srcnat")),
        ],
    )


def servicelb_argv(env: dict[str, str]) -> list[str]:
    """The svclb container's command: check forwarding is on (the pod's net.ipv4.ip_forward sysctl, as klipper-lb's
    entry checks it: /proc/sys is read-only in a container), apply the table in one transaction, hold the pod open."""
    script = nft.replace(servicelb_table(env)).render()
    shell = (
        "[ \"$(cat /proc/sys/net/ipv4/ip_forward)\" = 1 ] || { echo 'ip_forward is not 1' >&2; exit 1; }\n"
        "nft -f - <<'KWIRE_EOF'\n" + script + "KWIRE_EOF\n" + "exec sleep infinity\n"
    )
    return ["sh", "-c", shell]
