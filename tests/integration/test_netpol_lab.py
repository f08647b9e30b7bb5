"""NetworkPolicy enforcement on a real 3-node lab, with the upstream e2e netpol model: namespaces x, y, z, each with
pods a, b, c (label pod=a/b/c) serving TCP and UDP on ports 80 and 81 (plus UDP 53), placed so that same-node and
cross-node pairs occur within and across namespaces. Each case applies policies, waits until the full 9x9
reachability matrix (probed in parallel from inside every pod) equals the hand-written truth table, and deletes its
policies. Case names follow test/e2e/network/netpol/network_policy.go."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kwire.kernel import netns
from tests.integration.labkit import Lab, wait_for

pytestmark = pytest.mark.lab

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PLACEMENT = {"x": ("node1", "node1", "node2"), "y": ("node2", "node3", "node3"), "z": ("node3", "node1", "node2")}
ALL = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]
TCP80, TCP81, UDP80, UDP81, UDP53 = ("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81), ("udp", 53)
PROBE_TIMEOUT = 1.0
ENFORCE_WITHIN = 3.0


def _pod_manifest(ns: str, name: str, node: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: '{ns}', labels: {{pod: {name}}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers:
  - name: cont-80-81
    image: registry.k8s.io/e2e-test-images/agnhost:2.47
    ports:
    - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}
    - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}
    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
    - {{name: dns, containerPort: 53, protocol: UDP}}
"""


MODEL = "\n---\n".join(
    [f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: '{ns}', labels: {{ns: '{ns}'}}}}" for ns in NAMESPACES]
    + [_pod_manifest(ns, p, node) for ns in NAMESPACES for p, node in zip(PODS, PLACEMENT[ns], strict=True)]
    + [
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{p}, namespace: z}}\n"
        f"spec: {{selector: {{pod: {p}}}, ports: [{{port: 80, targetPort: 80}}]}}"
        for p in ("b", "c")
    ]
)


@dataclass(frozen=True)
class PodRef:
    key: str
    ip: str
    netns: str
    node: str


@dataclass
class NetpolLab:
    lab: Lab
    pods: dict[str, PodRef]
    enforce_seconds: list[float]


@pytest.fixture(scope="module")
def np_lab() -> Iterator[NetpolLab]:
    with Lab("kwt-np", 3, "vxlan") as lab_:
        lab_.apply(MODEL)
        pods: dict[str, PodRef] = {}
        for ns in NAMESPACES:
            for p in lab_.wait_pods_ready("", 3, namespace=ns, timeout=60):
                m = p["metadata"]
                uid = str(m["uid"]).replace("-", "")[:12]
                key = f"{ns}/{m['name']}"
                pods[key] = PodRef(key, p["status"]["podIP"], f"kwire-{lab_.name}-pod-{uid}", p["spec"]["nodeName"])
        for key, ref in pods.items():
            assert ref.node == PLACEMENT[key[0]][PODS.index(key[2])]
        env = NetpolLab(lab_, pods, [])
        yield env
        if env.enforce_seconds:
            s = sorted(env.enforce_seconds)
            print(
                f"\nnetpol: {len(s)} policy changes enforced (matrix correct) within {s[len(s) // 2]:.2f} s median, max {s[-1]:.2f} s"
            )


# -- probing --------------------------------------------------------------------------------------------------


async def _probe(src: PodRef, dst_ip: str, proto: str, port: int) -> bool:
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = netns.open_socket(src.netns, socket.AF_INET, kind, reuse=False)
    s.setblocking(False)
    try:
        if proto == "tcp":
            await asyncio.wait_for(loop.sock_connect(s, (dst_ip, port)), PROBE_TIMEOUT)
            return True
        s.connect((dst_ip, port))
        await loop.sock_sendall(s, b"netpol-probe")
        data = await asyncio.wait_for(loop.sock_recv(s, 64), PROBE_TIMEOUT)
        return data == b"netpol-probe"
    except (OSError, TimeoutError):
        return False
    finally:
        s.close()


Matrix = dict[tuple[str, str], bool]


def probe(env: NetpolLab, targets: list[tuple[str, int]]) -> dict[tuple[str, int], Matrix]:
    """The full matrix for every (protocol, port), all probes in parallel."""

    async def run() -> dict[tuple[str, int], Matrix]:
        jobs = [(t, s, d) for t in targets for s in ALL for d in ALL]
        res = await asyncio.gather(*(_probe(env.pods[s], env.pods[d].ip, t[0], t[1]) for t, s, d in jobs))
        out: dict[tuple[str, int], Matrix] = {t: {} for t in targets}
        for (t, s, d), ok in zip(jobs, res, strict=True):
            out[t][(s, d)] = ok
        return out

    return asyncio.run(run())


class Reach:
    """An expected truth table (upstream's Reachability): default for all pairs, a pod always reaches itself."""

    def __init__(self, default: bool = True) -> None:
        self.m: Matrix = {(s, d): default or s == d for s in ALL for d in ALL}

    def to(self, dst: list[str], value: bool, src: list[str] | None = None) -> Reach:
        for s in src if src is not None else ALL:
            for d in dst:
                if s != d:
                    self.m[(s, d)] = value
        return self

    def frm(self, src: list[str], value: bool, dst: list[str] | None = None) -> Reach:
        return self.to(dst if dst is not None else ALL, value, src)


def ns(name: str) -> list[str]:
    return [f"{name}/{p}" for p in PODS]


def _grid(want: Matrix, got: Matrix) -> str:
    """Rows are sources, columns destinations: '.' reachable, 'x' blocked as expected; 'A' reachable but expected
    blocked, 'B' blocked but expected reachable."""
    head = "      " + " ".join(f"{d:>3}" for d in ALL)
    lines = [head]
    for s in ALL:
        cells = []
        for d in ALL:
            w, g = want[(s, d)], got[(s, d)]
            cells.append("  ." if w and g else "  x" if not w and not g else "  A" if g else "  B")
        lines.append(f"{s:>5} " + " ".join(cells))
    return "\n".join(lines)


def expect(env: NetpolLab, cases: dict[tuple[str, int], Reach], *, within: float = ENFORCE_WITHIN) -> float:
    """Probe until every matrix equals its truth table (seconds it took), or fail with a readable diff."""
    t0 = time.monotonic()
    time.sleep(0.15)  # the agents need a sync period and a transaction after the API write
    while True:
        got = probe(env, list(cases))
        bad = {t: m for t, m in got.items() if m != cases[t].m}
        elapsed = time.monotonic() - t0
        if not bad:
            return elapsed
        if elapsed > within:
            report = []
            for t, m in bad.items():
                wrong = [f"{s} -> {d}" for (s, d), ok in m.items() if ok != cases[t].m[(s, d)]]
                report.append(f"{t[0].upper()}/{t[1]}: {len(wrong)} wrong ({', '.join(wrong)})\n{_grid(cases[t].m, m)}")
            raise AssertionError(
                f"reachability differs from the truth table after {elapsed:.1f} s\n" + "\n\n".join(report)
            )


def apply(env: NetpolLab, manifest: str) -> None:
    env.lab.apply(manifest)


def netpol(ns_: str, name: str, spec: str) -> str:
    return f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: '{ns_}'}}\nspec: {spec}\n"


def case(env: NetpolLab, manifest: str, cases: dict[tuple[str, int], Reach]) -> None:
    """Apply the policies, check the matrices, delete the policies."""
    try:
        apply(env, manifest)
        env.enforce_seconds.append(expect(env, cases))
    finally:
        env.lab.kubectl("delete", "-f", "-", "--ignore-not-found", input=manifest)


def _all_allowed(env: NetpolLab) -> None:
    expect(env, {TCP80: Reach()})


# -- cases ----------------------------------------------------------------------------------------------------


def test_no_policy_everything_reachable_over_tcp_and_udp(np_lab: NetpolLab) -> None:
    expect(np_lab, {TCP80: Reach(), TCP81: Reach(), UDP80: Reach(), UDP81: Reach()}, within=0.5)


def test_default_deny_ingress(np_lab: NetpolLab) -> None:
    """should support a 'default-deny-ingress' policy"""
    want = Reach().to(ns("x"), False)
    case(np_lab, netpol("x", "deny-ingress", "{podSelector: {}, policyTypes: [Ingress]}"), {TCP80: want, UDP81: want})


def test_default_deny_egress(np_lab: NetpolLab) -> None:
    """should deny egress from all pods in a namespace"""
    want = Reach().frm(ns("x"), False)
    case(np_lab, netpol("x", "deny-egress", "{podSelector: {}, policyTypes: [Egress]}"), {TCP80: want, UDP80: want})


def test_allow_all_ingress(np_lab: NetpolLab) -> None:
    """should support allow-all policy (a default deny next to it: the union allows everything)"""
    m = (
        netpol("x", "deny", "{podSelector: {}}")
        + "---\n"
        + netpol("x", "allow-all", "{podSelector: {}, ingress: [{}]}")
    )
    case(np_lab, m, {TCP80: Reach(), TCP81: Reach()})


def test_allow_from_same_namespace(np_lab: NetpolLab) -> None:
    """should enforce policy to allow traffic from pods within server namespace based on PodSelector"""
    want = Reach().to(ns("x"), False).to(ns("x"), True, ns("x"))
    case(np_lab, netpol("x", "same-ns", "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}"), {TCP80: want})


def test_allow_from_other_namespace_by_namespace_selector(np_lab: NetpolLab) -> None:
    """should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector"""
    want = Reach().to(["x/a"], False).to(["x/a"], True, ns("y"))
    spec = "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]}"
    case(np_lab, netpol("x", "from-y", spec), {TCP80: want})


def test_allow_from_pod_in_namespace_and(np_lab: NetpolLab) -> None:
    """should enforce policy based on PodSelector and NamespaceSelector"""
    want = Reach().to(["x/a"], False).to(["x/a"], True, ["y/b"])
    spec = "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}, podSelector: {matchLabels: {pod: b}}}]}]}"
    case(np_lab, netpol("x", "and", spec), {TCP80: want})


def test_or_of_pod_selector_and_namespace_selector(np_lab: NetpolLab) -> None:
    """should enforce policy based on PodSelector or NamespaceSelector"""
    want = Reach().to(["x/a"], False).to(["x/a"], True, [*ns("y"), "x/b"])
    spec = "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}, {podSelector: {matchLabels: {pod: b}}}]}]}"
    case(np_lab, netpol("x", "or", spec), {TCP80: want})


def test_allow_from_kubernetes_io_metadata_name(np_lab: NetpolLab) -> None:
    """should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label"""
    want = Reach().to(["x/a"], False).to(["x/a"], True, ns("z"))
    spec = "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]}"
    case(np_lab, netpol("x", "from-z", spec), {TCP80: want})


def test_namespace_selector_match_expressions(np_lab: NetpolLab) -> None:
    """should enforce policy based on NamespaceSelector with MatchExpressions"""
    want = Reach().to(["x/a"], False).to(["x/a"], True, [*ns("y"), *ns("z")])
    spec = "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]}]}"
    case(np_lab, netpol("x", "not-x", spec), {TCP80: want})


def test_allow_ingress_from_pods_in_all_namespaces(np_lab: NetpolLab) -> None:
    """should enforce policy to allow ingress traffic from pods in all namespaces (81 stays closed)"""
    spec = "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80}]}]}"
    case(np_lab, netpol("x", "all-ns", spec), {TCP80: Reach(), TCP81: Reach().to(["x/a"], False)})


def test_deny_to_a_single_pod(np_lab: NetpolLab) -> None:
    """should deny ingress access to a single pod (the others of its namespace stay open)"""
    want = Reach().to(["y/b"], False)
    case(
        np_lab, netpol("y", "deny-b", "{podSelector: {matchLabels: {pod: b}}, ingress: []}"), {TCP80: want, UDP80: want}
    )


def test_ip_block_allow_egress(np_lab: NetpolLab) -> None:
    """should allow egress access to server in CIDR block"""
    ip = np_lab.pods["y/b"].ip
    want = Reach().frm(["x/a"], False).frm(["x/a"], True, ["y/b"])
    spec = f"{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {ip}/32}}}}]}}]}}"
    case(np_lab, netpol("x", "cidr", spec), {TCP80: want})


def test_ip_block_with_except(np_lab: NetpolLab) -> None:
    """should enforce except clause while egress access to server in CIDR block (node3's subnet but y/b)"""
    ip = np_lab.pods["y/b"].ip
    subnet = ".".join(ip.split(".")[:3]) + ".0/24"
    on_node3 = [k for k, p in np_lab.pods.items() if p.node == "node3"]
    assert sorted(on_node3) == ["y/b", "y/c", "z/a"]
    want = Reach().frm(["x/a"], False).frm(["x/a"], True, ["y/c", "z/a"])
    spec = f"{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {subnet}, except: [{ip}/32]}}}}]}}]}}"
    case(np_lab, netpol("x", "cidr-except", spec), {TCP80: want})


def test_ip_overlapping_cidr_and_except_is_allowed_by_another_rule(np_lab: NetpolLab) -> None:
    """should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed"""
    ip = np_lab.pods["y/b"].ip
    subnet = ".".join(ip.split(".")[:3]) + ".0/24"
    want = Reach().frm(["x/a"], False).frm(["x/a"], True, ["y/b", "y/c", "z/a"])
    spec = (
        f"{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: ["
        f"{{to: [{{ipBlock: {{cidr: {subnet}, except: [{ip}/32]}}}}]}}, {{to: [{{ipBlock: {{cidr: {ip}/32}}}}]}}]}}"
    )
    case(np_lab, netpol("x", "cidr-overlap", spec), {TCP80: want})


def test_named_port_ingress(np_lab: NetpolLab) -> None:
    """should allow ingress access on one named port"""
    spec = "{podSelector: {}, ingress: [{ports: [{port: serve-81-tcp}]}]}"
    case(
        np_lab,
        netpol("x", "named-81", spec),
        {TCP80: Reach().to(ns("x"), False), TCP81: Reach(), UDP81: Reach().to(ns("x"), False)},
    )


def test_named_port_egress(np_lab: NetpolLab) -> None:
    """should allow egress access on one named port"""
    spec = "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: serve-80-tcp}]}]}"
    case(np_lab, netpol("x", "named-eg", spec), {TCP80: Reach(), TCP81: Reach().frm(ns("x"), False)})


def test_port_80_only(np_lab: NetpolLab) -> None:
    """should enforce policy based on Ports (81 is denied)"""
    spec = "{podSelector: {}, ingress: [{ports: [{port: 80, protocol: TCP}]}]}"
    case(np_lab, netpol("x", "port-80", spec), {TCP80: Reach(), TCP81: Reach().to(ns("x"), False)})


def test_end_port_range(np_lab: NetpolLab) -> None:
    """should support a port range with endPort (75-80 takes 80, not 81)"""
    spec = "{podSelector: {}, ingress: [{ports: [{port: 75, endPort: 80, protocol: TCP}]}]}"
    case(np_lab, netpol("y", "range", spec), {TCP80: Reach(), TCP81: Reach().to(ns("y"), False)})


def test_udp_only(np_lab: NetpolLab) -> None:
    """should not allow access by TCP when a policy specifies only UDP"""
    spec = "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 81, protocol: UDP}]}]}"
    case(np_lab, netpol("x", "udp-81", spec), {TCP81: Reach().to(["x/a"], False), UDP81: Reach()})


def test_egress_to_a_service_ip_is_judged_on_the_backing_pod(np_lab: NetpolLab) -> None:
    """should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and
    NamespaceSelector, reached through a Service (judged after DNAT)"""
    lab = np_lab.lab
    vip_c = lab.get("svc", "svc-c", "-n", "z")["spec"]["clusterIP"]
    vip_b = lab.get("svc", "svc-b", "-n", "z")["spec"]["clusterIP"]
    spec = "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]}]}"
    m = netpol("x", "to-zc", spec)
    want = Reach().frm(["x/a"], False).frm(["x/a"], True, ["z/c"])
    src, other = np_lab.pods["x/a"], np_lab.pods["x/b"]

    def via_service() -> tuple[bool, bool, bool]:
        async def run() -> tuple[bool, bool, bool]:
            r = await asyncio.gather(
                _probe(src, vip_c, "tcp", 80), _probe(src, vip_b, "tcp", 80), _probe(other, vip_b, "tcp", 80)
            )
            return r[0], r[1], r[2]

        return asyncio.run(run())

    try:
        apply(np_lab, m)
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: want}))
        assert via_service() == (True, False, True)
    finally:
        lab.kubectl("delete", "-f", "-", input=m)


def test_egress_deny_all_but_dns_like_udp(np_lab: NetpolLab) -> None:
    """should allow egress access on port 53 only (DNS): everything else from x is cut"""
    spec = "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{protocol: UDP, port: 53}]}]}"
    case(
        np_lab,
        netpol("x", "dns-only", spec),
        {TCP80: Reach().frm(ns("x"), False), UDP80: Reach().frm(ns("x"), False), UDP53: Reach()},
    )


def test_policy_updated_in_place(np_lab: NetpolLab) -> None:
    """should enforce updated policy"""
    first = netpol("x", "upd", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]}")
    second = netpol("x", "upd", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}")
    try:
        apply(np_lab, first)
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(ns("x"), False).to(ns("x"), True, ns("y"))}))
        apply(np_lab, second)
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(ns("x"), False).to(ns("x"), True, ns("z"))}))
    finally:
        np_lab.lab.kubectl("delete", "-f", "-", input=second)


def test_pod_label_changes_move_pods_in_and_out_of_selectors(np_lab: NetpolLab) -> None:
    """should allow ingress access from updated pod / should deny ingress access to updated pod"""
    lab = np_lab.lab
    m = netpol(
        "x",
        "by-label",
        "{podSelector: {matchLabels: {guarded: 'yes'}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]}",
    )
    try:
        apply(np_lab, m)
        expect(np_lab, {TCP80: Reach()})  # selects nobody yet
        lab.kubectl("label", "pod", "b", "-n", "x", "guarded=yes")
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(["x/b"], False)}))
        lab.kubectl("label", "pod", "c", "-n", "z", "role=client")
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(["x/b"], False).to(["x/b"], True, ["z/c"])}))
        lab.kubectl("label", "pod", "c", "-n", "z", "role-")
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(["x/b"], False)}))
        lab.kubectl("label", "pod", "b", "-n", "x", "guarded-")
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach()}))
    finally:
        lab.kubectl("label", "pod", "b", "-n", "x", "guarded-", check=False)
        lab.kubectl("label", "pod", "c", "-n", "z", "role-", check=False)
        lab.kubectl("delete", "-f", "-", input=m)


def test_namespace_label_change(np_lab: NetpolLab) -> None:
    """should allow ingress access from updated namespace"""
    lab = np_lab.lab
    m = netpol(
        "x",
        "from-ops",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: ops}}}]}]}",
    )
    try:
        apply(np_lab, m)
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(["x/a"], False)}))
        lab.kubectl("label", "namespace", "y", "team=ops")
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(["x/a"], False).to(["x/a"], True, ns("y"))}))
        lab.kubectl("label", "namespace", "y", "team-")
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(["x/a"], False)}))
    finally:
        lab.kubectl("label", "namespace", "y", "team-", check=False)
        lab.kubectl("delete", "-f", "-", input=m)


def test_policy_deleted_restores_access(np_lab: NetpolLab) -> None:
    """should stop enforcing policies after they are deleted"""
    m = netpol("z", "deny-all", "{podSelector: {}, policyTypes: [Ingress, Egress]}")
    apply(np_lab, m)
    np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(ns("z"), False).frm(ns("z"), False)}))
    np_lab.lab.kubectl("delete", "-f", "-", input=m)
    np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach(), UDP80: Reach()}))


def test_two_policies_union(np_lab: NetpolLab) -> None:
    """should enforce multiple, stacked policies with overlapping podSelectors"""
    m = (
        netpol(
            "x",
            "from-y-80",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}], ports: [{port: 80}]}]}",
        )
        + "---\n"
        + netpol(
            "x",
            "from-z-a",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}",
        )
    )
    want80 = Reach().to(ns("x"), False).to(ns("x"), True, ns("y")).to(["x/a"], True, ns("z"))
    want81 = Reach().to(ns("x"), False).to(["x/a"], True, ns("z"))
    case(np_lab, m, {TCP80: want80, TCP81: want81})


def test_ingress_and_egress_together(np_lab: NetpolLab) -> None:
    """should work with Ingress, Egress specified together"""
    spec = (
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress, Egress], "
        "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}], "
        "egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}"
    )
    want = Reach().to(["x/a"], False).to(["x/a"], True, ns("y")).frm(["x/a"], False).frm(["x/a"], True, ns("z"))
    case(np_lab, netpol("x", "both", spec), {TCP80: want})


def test_client_side_egress_deny_wins_over_server_allow(np_lab: NetpolLab) -> None:
    """should support denying of egress traffic on the client side (even if the server explicitly allows this
    traffic)"""
    m = (
        netpol("x", "deny-eg-a", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}")
        + "---\n"
        + netpol(
            "y", "allow-from-x", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}"
        )
    )
    want = Reach().frm(["x/a"], False).to(ns("y"), False).to(ns("y"), True, ["x/b", "x/c"])
    case(np_lab, m, {TCP80: want})


def test_node_traffic_to_its_pods_passes_other_nodes_do_not(np_lab: NetpolLab) -> None:
    """kubelet probes: the node's own traffic reaches its isolated pods; another node's does not"""
    lab = np_lab.lab
    m = netpol("x", "deny", "{podSelector: {}}")
    xa = np_lab.pods["x/a"]  # on node1
    node1, node2 = lab.topo.host("node1"), lab.topo.host("node2")
    assert node1 and node2

    def from_node(host_ns: str) -> bool:
        host = PodRef("host", "", host_ns, "")
        return asyncio.run(_probe(host, xa.ip, "tcp", 80))

    try:
        apply(np_lab, m)
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(ns("x"), False)}))
        assert from_node(node1.netns)
        assert not from_node(node2.netns)
    finally:
        lab.kubectl("delete", "-f", "-", input=m)


def test_existing_connection_survives_policy_changes(np_lab: NetpolLab) -> None:
    """an established connection is not cut by an unrelated policy change (nor, as in kube-router, by one that
    would refuse it now): conntrack's established state is accepted before any policy"""
    src, dst = np_lab.pods["y/b"], np_lab.pods["x/a"]
    sock = netns.open_socket(src.netns, socket.AF_INET, socket.SOCK_STREAM, reuse=False)
    sock.settimeout(5)
    sock.connect((dst.ip, 80))

    def request(tag: str) -> dict[str, object]:
        sock.sendall(f"GET /{tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"}\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, "connection closed"
            data += chunk
        body: dict[str, object] = json.loads(data.split(b"\r\n\r\n", 1)[1])
        return body

    unrelated = netpol("z", "deny-z", "{podSelector: {}}")
    related = netpol("x", "deny-x", "{podSelector: {}}")
    try:
        assert request("before")["path"] == "/before"
        apply(np_lab, unrelated)
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(ns("z"), False)}))
        assert request("after-unrelated")["path"] == "/after-unrelated"
        apply(np_lab, related)
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(ns("z"), False).to(ns("x"), False)}))
        assert request("after-related")["path"] == "/after-related"
    finally:
        sock.close()
        np_lab.lab.kubectl("delete", "-f", "-", input=unrelated + "---\n" + related)
    _all_allowed(np_lab)


def _node_netpol_counters(env: NetpolLab, node: str) -> dict[str, dict[str, int]]:
    from kwire.agent.netpol.stats import policy_counters

    host = env.lab.topo.host(node)
    assert host
    return netns.run_in(host.netns, policy_counters)


def test_per_policy_counters_from_the_kernel(np_lab: NetpolLab) -> None:
    """allowed/denied packets per policy, read back from the table's counters on the destination's node"""
    m = netpol(
        "x",
        "from-y",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]}",
    )
    try:
        apply(np_lab, m)
        np_lab.enforce_seconds.append(expect(np_lab, {TCP80: Reach().to(["x/a"], False).to(["x/a"], True, ns("y"))}))
        before = _node_netpol_counters(np_lab, "node1").get("x/from-y", {"allowed_packets": 0, "denied_packets": 0})
        probe(np_lab, [TCP80])
        after = _node_netpol_counters(np_lab, "node1")["x/from-y"]
        assert after["allowed_packets"] - before["allowed_packets"] >= 3  # y/a, y/b, y/c: one SYN each
        assert after["denied_packets"] - before["denied_packets"] >= 5  # x/b, x/c, z/*: SYNs (and retransmits)
    finally:
        np_lab.lab.kubectl("delete", "-f", "-", input=m)


def test_disable_network_policy_removes_the_table(np_lab: NetpolLab) -> None:
    """disable-network-policy=true in kube-system/kwire-config: a restarted agent deletes `ip kwire-netpol`, so
    its pods are no longer isolated; setting it back restores enforcement"""
    from kwire.lab import lab as labmod
    from kwire.lab import procs

    lab = np_lab.lab
    node1 = lab.topo.host("node1")
    assert node1
    m = netpol("x", "deny", "{podSelector: {}}")

    def restart_node1() -> None:
        st = labmod.LabState.load(lab.name)
        assert st is not None
        procs.stop([st.pids["node1"]])
        labmod.node_start(lab.name, "node1")

    def has_table() -> bool:
        import subprocess

        from tests.integration.labkit import IP

        res = subprocess.run(
            [IP, "netns", "exec", node1.netns, "nft", "list", "table", "ip", "kwire-netpol"], capture_output=True
        )
        return res.returncode == 0

    def set_disabled(value: str) -> None:
        lab.kubectl(
            "patch",
            "configmap",
            "kwire-config",
            "-n",
            "kube-system",
            "--type=merge",
            "-p",
            json.dumps({"data": {"disable-network-policy": value}}),
        )

    try:
        apply(np_lab, m)
        expect(np_lab, {TCP80: Reach().to(ns("x"), False)})
        assert has_table()
        set_disabled("true")
        restart_node1()
        wait_for(lambda: not has_table(), timeout=30, what="node1 to delete its kwire-netpol table")
        # x/a and x/b run on node1: open now; x/c (node2) is still isolated.
        expect(np_lab, {TCP80: Reach().to(["x/c"], False)}, within=5)
        set_disabled("false")
        restart_node1()
        wait_for(has_table, timeout=30, what="node1 to enforce again")
        expect(np_lab, {TCP80: Reach().to(ns("x"), False)}, within=5)
    finally:
        set_disabled("false")
        lab.kubectl("delete", "-f", "-", input=m)
