"""NetworkPolicy benchmark: 1,000 policies selecting among 1,000 pods on one node (synthetic objects, no lab).

    .venv/bin/python bench/netpol.py [--pods 1000] [--policies 1000] [--changes 50]

Runs the agent's real sync loop (`NetworkPolicyController`, fed by in-memory informers) inside a scratch network
namespace, `kwire-bench-netpol`, created and removed here; nft transactions go through libnftables as in the agent.

- full sync: from start() until the first transaction (the whole table) is committed: compile + render + apply;
- policy change -> enforcement: from handing one changed NetworkPolicy to the loop (the informer's update
  handler) until the transaction carrying it is committed, over `--changes` changes spaced 60 ms apart (more than
  the 30 ms minimum sync period, so no change waits for the rate limit); likewise for pod label changes.

Each pod is `app=app-<i mod 100>`; policy j selects `app=app-<j mod 100>` (10 pods each, so every pod is isolated
by 10 policies) and allows, by j mod 4: TCP 80 from the next app's pods; UDP 53 from a namespace selector; the named
port `http` from an ipBlock + pods; egress to an ipBlock with an except.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The checkout first, and not bench/ itself: bench/dns.py would shadow dnspython's `dns` package.
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]
from kwire.agent.netpol import ruleset  # noqa: E402
from kwire.agent.netpol.controller import NetworkPolicyController  # noqa: E402
from kwire.client.fake import FakeInformer  # noqa: E402
from kwire.kernel import netns, nft  # noqa: E402

NS = "kwire-bench-netpol"
NODE = "node1"
Obj = dict[str, Any]

# Published figures found with the search tool (see docs/architecture.md, NetworkPolicy):
KUBE_ROUTER = (
    "kube-router: full policy sync < 1 s at ~300 pods / ~60 policies after moving to iptables-restore "
    "(was 30-60 s; cloudnativelabs/kube-router#1039); maintainers: policy set up 'below 5 seconds even for "
    "large clusters' (kube-router 1.2, #873)"
)
CILIUM = "Cilium: no comparable published policy-change-to-enforcement latency found"


def _pod(i: int) -> Obj:
    return {
        "metadata": {"namespace": "bench", "name": f"pod-{i}", "labels": {"app": f"app-{i % 100}", "idx": str(i)}},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080 + i % 7}]}],
        },
        "status": {"podIP": f"10.42.{i // 250}.{i % 250 + 2}", "phase": "Running"},
    }


def _policy(j: int, port: int = 80) -> Obj:
    sel = {"matchLabels": {"app": f"app-{j % 100}"}}
    kind = j % 4
    spec: Obj
    if kind == 0:
        spec = {
            "podSelector": sel,
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": f"app-{(j + 1) % 100}"}}}], "ports": [{"port": port}]}
            ],
        }
    elif kind == 1:
        spec = {
            "podSelector": sel,
            "ingress": [
                {
                    "from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}],
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": port}],
                }
            ],
        }
    elif kind == 2:
        spec = {
            "podSelector": sel,
            "ingress": [
                {
                    "from": [
                        {"ipBlock": {"cidr": "192.168.0.0/16"}},
                        {"podSelector": {"matchLabels": {"app": f"app-{(j + 7) % 100}"}}},
                    ],
                    "ports": [{"port": "http"}, {"port": port}],
                }
            ],
        }
    else:
        spec = {
            "podSelector": sel,
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [f"10.{j % 200}.0.0/16"]}}],
                    "ports": [{"port": port}],
                }
            ],
        }
    return {"metadata": {"namespace": "bench", "name": f"pol-{j}"}, "spec": spec}


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    pods, namespaces, policies = FakeInformer(), FakeInformer(), FakeInformer()
    namespaces.put({"metadata": {"name": "bench", "labels": {"team": "ops"}}})
    for i in range(args.pods):
        pods.put(_pod(i))
    for j in range(args.policies):
        policies.put(_policy(j))
    ctrl = NetworkPolicyController(
        pods=pods,  # type: ignore[arg-type]
        namespaces=namespaces,  # type: ignore[arg-type]
        policies=policies,  # type: ignore[arg-type]
        node=NODE,
        node_ips=("192.168.77.11",),
    )
    out: dict[str, Any] = {}
    # Full sync, and its parts measured once more outside the loop.
    t0 = time.perf_counter()
    ctrl.start()
    await ctrl.committed.wait()
    out["full"] = time.perf_counter() - t0
    rs = ctrl.current
    out["size"] = (
        len(rs.chains),
        sum(len(c.rules) for c in rs.chains.values()),
        len(rs.sets),
        sum(len(s.elements) for s in rs.sets.values()),
        len(rs.ingress_pods) + len(rs.egress_pods),
    )
    c0 = time.perf_counter()
    new = ctrl.compute(set(), resync=True)
    c1 = time.perf_counter()
    script = nft.replace(new).render()
    c2 = time.perf_counter()
    out["compile"], out["render"], out["script_kb"] = c1 - c0, c2 - c1, len(script) / 1024
    await asyncio.sleep(0.1)

    async def changes(make: Callable[[int], None], n: int) -> tuple[list[float], list[float]]:
        ext: list[float] = []
        for k in range(n):
            await asyncio.sleep(0.06)
            ctrl.committed.clear()
            before = len(ctrl.stats.latencies)
            t = time.perf_counter()
            make(k)
            await ctrl.committed.wait()
            ext.append(time.perf_counter() - t)
            assert len(ctrl.stats.latencies) == before + 1
        return ext, list(ctrl.stats.latencies)[-n:]

    ext, internal = await changes(lambda k: policies.put(_policy(k * 20, port=1000 + k)), args.changes)
    out["policy_ext"], out["policy_int"] = ext, internal
    last = args.changes - 1
    chain = ruleset.policy_chain(f"bench/pol-{last * 20}", "ingress")
    out["check"] = (chain, f"dport {1000 + last}")

    def relabel(k: int) -> None:
        obj = _pod(k * 13)
        obj["metadata"]["labels"]["app"] = f"app-{(k * 13 + 1) % 100}"
        pods.put(obj)

    out["pod_ext"], _ = await changes(relabel, args.changes)
    out["stats"] = (ctrl.stats.full, ctrl.stats.partial, ctrl.stats.failed)
    await ctrl.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=50)
    args = ap.parse_args()
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    netns.create(NS)
    try:
        # The main thread enters the namespace before any worker thread exists: the loop's worker threads (and the
        # libnftables context they create) are born inside it.
        with netns.inside(NS):
            out = asyncio.run(_run(args))
            chain, want = out["check"]
            listed = subprocess.run(
                ["nft", "list", "chain", "ip", ruleset.TABLE, chain], capture_output=True, text=True
            )
            assert want in listed.stdout, listed.stdout + listed.stderr  # the last change is in the kernel
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    chains, rules, sets, elems, map_elems = out["size"]
    print(
        f"netpol bench ({args.policies} NetworkPolicies x {args.pods} pods on one node, one nft transaction per sync)"
    )
    print(
        f"  ruleset                    {chains} chains, {rules} rules, {sets} sets ({elems} elements), {map_elems} pod map elements"
    )
    print(
        f"  full sync (compile+apply)  {out['full'] * 1e3:8.0f} ms   (goal < 1000 ms; compile {out['compile'] * 1e3:.0f} ms, "
        f"render {out['render'] * 1e3:.0f} ms, {out['script_kb']:.0f} KiB script)"
    )
    pe, pi = out["policy_ext"], out["policy_int"]
    print(
        f"  policy change -> enforced  p50 {_pct(pe, 50) * 1e3:6.1f} ms  p99 {_pct(pe, 99) * 1e3:6.1f} ms  max {max(pe) * 1e3:6.1f} ms"
        f"   (goal p99 < 100 ms; loop's own view p50 {statistics.median(pi) * 1e3:.1f} ms)"
    )
    po = out["pod_ext"]
    print(
        f"  pod label change -> enf.   p50 {_pct(po, 50) * 1e3:6.1f} ms  p99 {_pct(po, 99) * 1e3:6.1f} ms  max {max(po) * 1e3:6.1f} ms"
    )
    print(f"  syncs: {out['stats'][0]} full, {out['stats'][1]} partial, {out['stats'][2]} failed")
    print(f"  published: {KUBE_ROUTER}")
    print(f"  published: {CILIUM}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
