"""NetworkPolicy compilation checked with the tracer, no kernel: the upstream e2e model (namespaces x, y, z with pods
a, b, c on three nodes) and representative policies; the truth tables are written out by hand, the tracer walks each
node's ruleset as the kernel would."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kwire.agent.netpol import ruleset, tracer
from kwire.agent.netpol.compiler import Compiler
from kwire.agent.netpol.model import namespace_labels, parse_policy, pod_info
from kwire.agent.netpol.stats import policy_counters
from kwire.kernel import nft
from tests.unit import golden

Obj = dict[str, Any]
NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
# Same-node and cross-node pairs both occur, inside a namespace and across namespaces.
PLACEMENT = {"x": ("n1", "n1", "n2"), "y": ("n2", "n3", "n3"), "z": ("n3", "n1", "n2")}
NODE_SUBNET = {"n1": 0, "n2": 1, "n3": 2}
NODE_IPS = {"n1": "192.168.77.11", "n2": "192.168.77.12", "n3": "192.168.77.13"}
ALL = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]


def _ports() -> list[Obj]:
    out = []
    for port in (80, 81):
        for proto in ("TCP", "UDP", "SCTP"):
            out.append({"name": f"serve-{port}-{proto.lower()}", "containerPort": port, "protocol": proto})
    return out


def pod_obj(ns: str, name: str, ip: str, node: str, labels: dict[str, str], **spec: Any) -> Obj:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost", "ports": _ports()}], **spec},
        "status": {"podIP": ip, "phase": "Running"},
    }


def policy(ns: str, name: str, spec: Obj) -> Obj:
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


class World:
    """Pods, namespaces and policies of the model, compiled per node."""

    def __init__(self) -> None:
        self.pods: dict[str, Obj] = {}
        self.ips: dict[str, str] = {}
        self.namespaces: dict[str, Obj] = {}
        self.policies: dict[str, Obj] = {}
        seq = {n: 10 for n in NODE_SUBNET}
        for ns in NAMESPACES:
            self.namespaces[ns] = {"metadata": {"name": ns, "labels": {"ns": ns}}}
            for name, node in zip(PODS, PLACEMENT[ns], strict=True):
                ip = f"10.42.{NODE_SUBNET[node]}.{seq[node]}"
                seq[node] += 1
                self.add_pod(pod_obj(ns, name, ip, node, {"pod": name}))

    def add_pod(self, obj: Obj) -> None:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        self.pods[key] = obj
        self.ips[key] = obj["status"]["podIP"]

    def add(self, *objs: Obj) -> None:
        for o in objs:
            self.policies[f"{o['metadata']['namespace']}/{o['metadata']['name']}"] = o

    def compile(self, node: str) -> Compiler:
        c = Compiler(node, node_ips=(NODE_IPS[node],))
        for name, ns in self.namespaces.items():
            c.set_namespace(name, namespace_labels(ns))
        for key, p in self.pods.items():
            c.set_pod(key, pod_info(p))
        for key, p in self.policies.items():
            c.set_policy(key, parse_policy(p))
        return c

    def rulesets(self) -> list[ruleset.Ruleset]:
        return [self.compile(n).build() for n in NODE_SUBNET]

    def matrix(self, proto: str = "tcp", port: int = 80) -> dict[tuple[str, str], bool]:
        rss = self.rulesets()
        out = {}
        for s in ALL:
            for d in ALL:
                out[(s, d)] = s == d or tracer.allowed(rss, src=self.ips[s], dst=self.ips[d], proto=proto, port=port)
        return out


def expect(default: bool = True) -> dict[tuple[str, str], bool]:
    return {(s, d): default or s == d for s in ALL for d in ALL}


def set_to(m: dict[tuple[str, str], bool], dst: list[str], value: bool, src: list[str] | None = None) -> None:
    for s in src or ALL:
        for d in dst:
            if s != d:
                m[(s, d)] = value


def set_from(m: dict[tuple[str, str], bool], src: list[str], value: bool, dst: list[str] | None = None) -> None:
    set_to(m, dst or ALL, value, src)


def ns_pods(ns: str) -> list[str]:
    return [f"{ns}/{p}" for p in PODS]


def check(world: World, want: dict[tuple[str, str], bool], proto: str = "tcp", port: int = 80) -> None:
    got = world.matrix(proto, port)
    wrong = [
        f"{s} -> {d}: want {want[(s, d)]}, got {got[(s, d)]}" for s in ALL for d in ALL if got[(s, d)] != want[(s, d)]
    ]
    assert not wrong, f"{proto}/{port}:\n" + "\n".join(wrong)


# -- cases ------------------------------------------------------------------------------------------------------


def test_no_policies_everything_allowed_and_no_rules() -> None:
    w = World()
    check(w, expect(True))
    rs = w.compile("n1").build()
    assert not rs.chains and not rs.ingress_pods and not rs.egress_pods


def test_default_deny_ingress() -> None:
    w = World()
    w.add(policy("x", "deny", {"podSelector": {}}))
    want = expect()
    set_to(want, ns_pods("x"), False)
    check(w, want)
    check(w, want, "udp", 81)


def test_default_deny_egress_only_isolates_egress() -> None:
    w = World()
    w.add(policy("x", "deny-eg", {"podSelector": {}, "policyTypes": ["Egress"]}))
    want = expect()
    set_from(want, ns_pods("x"), False)
    check(w, want)


def test_allow_all_ingress_after_default_deny_union() -> None:
    w = World()
    w.add(policy("x", "deny", {"podSelector": {}}), policy("x", "allow-all", {"podSelector": {}, "ingress": [{}]}))
    check(w, expect())


def test_allow_from_same_namespace() -> None:
    w = World()
    w.add(policy("x", "same-ns", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))
    want = expect()
    set_to(want, ns_pods("x"), False)
    set_to(want, ns_pods("x"), True, ns_pods("x"))
    check(w, want)


def test_allow_from_namespace_by_label_and_by_metadata_name() -> None:
    for sel in ({"matchLabels": {"ns": "y"}}, {"matchLabels": {"kubernetes.io/metadata.name": "y"}}):
        w = World()
        w.add(
            policy(
                "x",
                "from-y",
                {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": sel}]}]},
            )
        )
        want = expect()
        set_to(want, ["x/a"], False)
        set_to(want, ["x/a"], True, ns_pods("y"))
        check(w, want)


def test_and_versus_or_peers() -> None:
    both = {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}
    w = World()
    w.add(policy("x", "and", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [both]}))
    want = expect()
    set_to(want, ["x/a"], False)
    set_to(want, ["x/a"], True, ["y/b"])
    check(w, want)

    either = {
        "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]
    }
    w = World()
    w.add(policy("x", "or", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [either]}))
    want = expect()
    set_to(want, ["x/a"], False)
    set_to(want, ["x/a"], True, [*ns_pods("y"), "x/b"])  # podSelector alone: the policy's own namespace
    check(w, want)


def test_match_expressions_select_pods() -> None:
    w = World()
    sel = {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a", "b"]}]}
    w.add(policy("y", "deny-c", {"podSelector": sel, "ingress": []}))
    want = expect()
    set_to(want, ["y/c"], False)
    check(w, want)


def test_ip_block_with_except() -> None:
    w = World()
    # From the whole pod network except node n3's subnet: pods on n3 (y/b, y/c, z/a) are refused.
    w.add(
        policy(
            "x",
            "cidr",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.42.0.0/16", "except": ["10.42.2.0/24"]}}]}],
            },
        )
    )
    want = expect()
    set_to(want, ["x/a"], False, ["y/b", "y/c", "z/a"])
    check(w, want)
    rs = w.compile("n1").build()
    (peer_set,) = [s for s in rs.sets.values() if "interval" in s.flags]
    assert peer_set.elements == {
        "10.42.0.0/23",
        "10.42.3.0/24",
        "10.42.4.0/22",
        "10.42.8.0/21",
        "10.42.16.0/20",
        "10.42.32.0/19",
        "10.42.64.0/18",
        "10.42.128.0/17",
    }


def test_ip_block_egress_to_a_single_pod() -> None:
    w = World()
    w.add(
        policy(
            "x",
            "eg",
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": f"{World().ips['z/c']}/32"}}]}],
            },
        )
    )
    want = expect()
    set_from(want, ns_pods("x"), False)
    set_from(want, ns_pods("x"), True, ["z/c"])
    check(w, want)


def test_named_port_ingress_resolved_on_the_destination() -> None:
    w = World()
    w.add(policy("x", "np", {"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}))
    want_80 = expect()
    set_to(want_80, ns_pods("x"), False)
    check(w, want_80, "tcp", 80)
    check(w, expect(), "tcp", 81)
    check(w, want_80, "udp", 81)  # the name's protocol is TCP


def test_named_port_egress_resolved_per_peer_pod() -> None:
    w = World()
    # z/b serves "special" on 8080; other pods do not have that name.
    obj = w.pods["z/b"]
    obj["spec"]["containers"][0]["ports"].append({"name": "special", "containerPort": 8080})
    w.add(
        policy(
            "x",
            "np-eg",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "special"}]}],
            },
        )
    )
    want = expect()
    set_from(want, ["x/a"], False)
    check(w, want, "tcp", 80)
    want_8080 = expect()
    set_from(want_8080, ["x/a"], False)
    set_from(want_8080, ["x/a"], True, ["z/b"])
    check(w, want_8080, "tcp", 8080)


def test_port_and_end_port_and_protocol() -> None:
    w = World()
    w.add(
        policy(
            "x", "range", {"podSelector": {}, "ingress": [{"ports": [{"port": 81, "endPort": 90, "protocol": "UDP"}]}]}
        )
    )
    deny_x = expect()
    set_to(deny_x, ns_pods("x"), False)
    check(w, deny_x, "udp", 80)
    check(w, expect(), "udp", 81)
    check(w, expect(), "udp", 90)
    check(w, deny_x, "udp", 91)
    check(w, deny_x, "tcp", 85)


def test_protocol_only_and_sctp() -> None:
    w = World()
    w.add(policy("x", "sctp", {"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP"}]}]}))
    deny_x = expect()
    set_to(deny_x, ns_pods("x"), False)
    check(w, expect(), "sctp", 80)
    check(w, expect(), "sctp", 9999)
    check(w, deny_x, "tcp", 80)
    assert any(
        "meta l4proto sctp counter accept" in r.render()
        for c in w.compile("n1").build().chains.values()
        for r in c.rules
    )


def test_egress_and_ingress_together_same_node_pair_is_checked_twice() -> None:
    w = World()
    # x/a may only send to x/b; x/b only accepts from y. Same node (n1): both must allow.
    w.add(
        policy(
            "x",
            "a-eg",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
            },
        ),
        policy(
            "x",
            "b-in",
            {
                "podSelector": {"matchLabels": {"pod": "b"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
            },
        ),
    )
    want = expect()
    set_from(want, ["x/a"], False)
    set_to(want, ["x/b"], False)
    set_to(want, ["x/b"], True, ns_pods("y"))
    check(w, want)
    t = tracer.trace(w.compile("n1").build(), src=w.ips["x/a"], dst=w.ips["x/b"])
    assert not t.allowed and t.dropped_by.startswith("pod-in-") and t.allowed_by == ["x/a-eg egress 0"]


def test_multiple_policies_union() -> None:
    w = World()
    w.add(
        policy(
            "y",
            "from-x",
            {
                "podSelector": {},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}], "ports": [{"port": 80}]}],
            },
        ),
        policy(
            "y",
            "from-z-a",
            {
                "podSelector": {},
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"ns": "z"}},
                                "podSelector": {"matchLabels": {"pod": "a"}},
                            }
                        ]
                    }
                ],
            },
        ),
    )
    want = expect()
    set_to(want, ns_pods("y"), False)
    set_to(want, ns_pods("y"), True, [*ns_pods("x"), "z/a"])
    check(w, want, "tcp", 80)
    want81 = expect()
    set_to(want81, ns_pods("y"), False)
    set_to(want81, ns_pods("y"), True, ["z/a"])
    check(w, want81, "tcp", 81)


def test_host_network_pods_are_never_selected_nor_peers() -> None:
    w = World()
    w.add_pod(pod_obj("x", "host", NODE_IPS["n1"], "n1", {"pod": "a"}, hostNetwork=True))
    w.add(
        policy(
            "x",
            "deny",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}],
            },
        )
    )
    rs = w.compile("n1").build()
    assert set(rs.ingress_pods) == {w.ips["x/a"]}  # not the node address of the hostNetwork pod
    peer_sets = [s for s in rs.sets.values() if "interval" in s.flags]
    assert [s.elements for s in peer_sets] == [frozenset({w.ips["x/a"]})]


def test_pods_without_ip_or_finished_are_skipped() -> None:
    w = World()
    w.pods["x/a"]["status"] = {"phase": "Pending"}
    w.pods["x/b"]["status"]["phase"] = "Succeeded"
    w.add(policy("x", "deny", {"podSelector": {}}))
    rs = w.compile("n1").build()
    assert rs.ingress_pods == {}  # x/a and x/b are n1's x pods; neither is actionable


def test_node_traffic_is_always_allowed() -> None:
    w = World()
    w.add(policy("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    rs = w.compile("n1").build()
    assert tracer.trace(rs, src=NODE_IPS["n1"], dst=w.ips["x/a"]).allowed
    assert not tracer.trace(rs, src=w.ips["x/a"], dst=NODE_IPS["n1"]).allowed  # pod egress to the node: input hook
    assert not tracer.trace(rs, src=NODE_IPS["n2"], dst=w.ips["x/a"]).allowed  # another node is no exception


def test_policy_types_default() -> None:
    p = parse_policy(policy("x", "p", {"podSelector": {}, "egress": [{}]}))
    assert p.types == {"ingress", "egress"} and p.ingress == ()
    p = parse_policy(policy("x", "p", {"podSelector": {}, "egress": []}))
    assert p.types == {"ingress"}


def test_rendering_shape() -> None:
    w = World()
    w.add(
        policy(
            "x",
            "web",
            {
                "podSelector": {},
                "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}, {"port": "serve-81-tcp"}]}],
            },
        )
    )
    golden.check("netpol-full-web", nft.replace(w.compile("n1").build().table()))


# -- incremental compilation ----------------------------------------------------------------------------------


def _same(a: ruleset.Ruleset, b: ruleset.Ruleset) -> None:
    assert a.chains == b.chains
    assert a.sets == b.sets
    assert a.ingress_pods == b.ingress_pods
    assert a.egress_pods == b.egress_pods


POLICIES = [
    policy("x", "deny", {"podSelector": {}}),
    policy(
        "x",
        "from-y",
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}],
        },
    ),
    policy(
        "y",
        "and",
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": "serve-80-tcp"}],
                }
            ],
        },
    ),
    policy(
        "z",
        "eg",
        {
            "podSelector": {"matchLabels": {"pod": "b"}},
            "egress": [
                {"to": [{"podSelector": {"matchLabels": {"pod": "c"}}}], "ports": [{"port": "serve-81-udp"}]},
                {"to": [{"ipBlock": {"cidr": "10.42.0.0/16", "except": ["10.42.1.0/24"]}}]},
            ],
        },
    ),
    policy(
        "z",
        "eg-any-named",
        {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve-81-tcp"}]}]},
    ),
]


@pytest.mark.parametrize("seed", range(8))
def test_incremental_updates_equal_a_fresh_compile(seed: int) -> None:
    """Random changes to pods, namespace labels and policies: the incrementally maintained ruleset of each node is
    always the one compiled from scratch, and the partial render is empty exactly when nothing changed."""
    rnd = random.Random(seed)
    w = World()
    compilers = {n: w.compile(n) for n in NODE_SUBNET}
    current = {n: c.build() for n, c in compilers.items()}
    for step in range(60):
        kind = rnd.choice(["label", "ns", "policy", "delete-policy", "pod-ip", "pod-node", "delete-pod", "ports"])
        changed_pods: list[str] = []
        changed_ns: list[str] = []
        changed_pol: list[str] = []
        if kind == "label":
            key = rnd.choice(sorted(w.pods))
            w.pods[key]["metadata"]["labels"] = {"pod": rnd.choice(PODS), "role": rnd.choice(["client", "server"])}
            changed_pods.append(key)
        elif kind == "ns":
            ns = rnd.choice(NAMESPACES)
            w.namespaces[ns]["metadata"]["labels"] = {"ns": ns, "team": rnd.choice(["blue", "red"])}
            changed_ns.append(ns)
        elif kind == "policy":
            p = rnd.choice(POLICIES)
            w.add(p)
            changed_pol.append(f"{p['metadata']['namespace']}/{p['metadata']['name']}")
        elif kind == "delete-policy" and w.policies:
            key = rnd.choice(sorted(w.policies))
            del w.policies[key]
            changed_pol.append(key)
        elif kind == "pod-ip":
            key = rnd.choice(sorted(w.pods))
            node = w.pods[key]["spec"]["nodeName"]
            w.pods[key]["status"]["podIP"] = f"10.42.{NODE_SUBNET[node]}.{100 + step}"
            changed_pods.append(key)
        elif kind == "pod-node":
            key = rnd.choice(sorted(w.pods))
            node = rnd.choice(sorted(NODE_SUBNET))
            w.pods[key]["spec"]["nodeName"] = node
            w.pods[key]["status"]["podIP"] = f"10.42.{NODE_SUBNET[node]}.{150 + step}"
            changed_pods.append(key)
        elif kind == "ports":
            key = rnd.choice(sorted(w.pods))
            for p in w.pods[key]["spec"]["containers"][0]["ports"]:
                if p["name"] in ("serve-80-tcp", "serve-81-udp", "serve-81-tcp"):
                    p["containerPort"] = rnd.choice([80, 81, 8000 + step])
            changed_pods.append(key)
        elif kind == "delete-pod" and len(w.pods) > 3:
            key = rnd.choice(sorted(w.pods))
            del w.pods[key]
            changed_pods.append(key)
        for n, c in compilers.items():
            for ns in changed_ns:
                c.set_namespace(ns, namespace_labels(w.namespaces[ns]))
            for key in changed_pods:
                c.set_pod(key, pod_info(w.pods.get(key)))
            for key in changed_pol:
                p = w.policies.get(key)
                c.set_policy(key, parse_policy(p) if p else None)
            new = c.build()
            fresh = w.compile(n).build()
            _same(new, fresh)
            partial = nft.diff(current[n].table(), new.table())
            assert partial.kind == "update"
            assert partial.empty == (
                current[n].chains == new.chains
                and current[n].sets == new.sets
                and current[n].ingress_pods == new.ingress_pods
                and current[n].egress_pods == new.egress_pods
            )
            current[n] = new


def test_partial_render_orders_references_safely() -> None:
    w = World()
    c = w.compile("n1")
    old = c.build()
    p = policy(
        "x", "deny", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    )
    c.set_policy("x/deny", parse_policy(p))
    mid = c.build()
    add = nft.diff(old.table(), mid.table()).lines
    set_add = next(i for i, ln in enumerate(add) if ln.startswith("add set"))
    rule_use = next(i for i, ln in enumerate(add) if "@peers-" in ln)
    elem = next(i for i, ln in enumerate(add) if ln.startswith("add element ip kwire-netpol ingress-pods"))
    last_rule = max(i for i, ln in enumerate(add) if ln.startswith("add rule"))
    assert set_add < rule_use < elem and last_rule < elem
    c.set_policy("x/deny", None)
    gone = nft.diff(mid.table(), c.build().table()).lines
    assert gone[0].startswith("delete element ip kwire-netpol ingress-pods")
    first_delete_chain = next(i for i, ln in enumerate(gone) if ln.startswith("delete chain"))
    assert all(ln.startswith("flush chain") for ln in gone[1:first_delete_chain])
    assert gone[-1].startswith("delete set")


# -- counters -------------------------------------------------------------------------------------------------


def test_policy_counters_from_nft_json() -> None:
    def rule(chain: str, expr: list[Any], comment: str = "") -> Obj:
        r: Obj = {"family": "ip", "table": "kwire-netpol", "chain": chain, "handle": 1, "expr": expr}
        if comment:
            r["comment"] = comment
        return {"rule": r}

    counter = [{"counter": {"packets": 7, "bytes": 420}}, {"accept": None}]
    table = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "kwire-netpol"}},
            rule("pol-in-aaaa-x_web", [{"match": {}}, *counter], "x/web ingress 0"),
            rule("pol-in-aaaa-x_web", [{"counter": {"packets": 3, "bytes": 1}}, {"accept": None}], "x/web ingress 1"),
            rule("pol-in-bbbb-x_deny", []),
            rule("pod-in-cccc-x_a", [{"jump": {"target": "pol-in-aaaa-x_web"}}], "x/web"),
            rule("pod-in-cccc-x_a", [{"jump": {"target": "pol-in-bbbb-x_deny"}}], "x/deny"),
            rule("pod-in-cccc-x_a", [{"limit": {}}, {"log": {"prefix": "kwire-netpol-deny "}}]),
            rule("pod-in-cccc-x_a", [{"counter": {"packets": 5, "bytes": 300}}, {"drop": None}], "x/a ingress"),
            rule("pod-in-dddd-x_b", [{"jump": {"target": "pol-in-bbbb-x_deny"}}], "x/deny"),
            rule("pod-in-dddd-x_b", [{"counter": {"packets": 2, "bytes": 120}}, {"drop": None}], "x/b ingress"),
            rule("ingress", [{"counter": {"packets": 99, "bytes": 1}}, {"accept": None}]),
        ]
    }
    assert policy_counters(table) == {
        "x/web": {"allowed_packets": 10, "denied_packets": 5},
        "x/deny": {"allowed_packets": 0, "denied_packets": 7},
    }


def test_rules_with_the_same_peers_share_one_set() -> None:
    w = World()
    from_y = [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]
    from_b = [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]
    w.add(
        policy("x", "one", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": from_y}),
        policy("x", "two", {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": from_y + from_b}),
        policy("y", "three", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": from_b}),
    )
    rs = w.compile("n1").build()
    peer_sets = sorted(sorted(s.elements, key=_ip) for s in rs.sets.values() if "interval" in s.flags)
    # from_y once (x/one and x/two); pod=b in namespace x (x/two); pod=b of y is not needed on n1 (y/a runs on n2).
    assert peer_sets == sorted([sorted((w.ips[k] for k in ns_pods("y")), key=_ip), [w.ips["x/b"]]])
    rs2 = w.compile("n2").build()
    assert [sorted(s.elements) for s in rs2.sets.values() if "interval" in s.flags] == [[w.ips["y/b"]]]


def _ip(ip: str) -> tuple[int, ...]:
    return tuple(int(x) for x in ip.split("."))


# -- whole transactions ---------------------------------------------------------------------------------------


def test_upstream_model_transactions_golden() -> None:
    """The transactions node n1 is given for upstream model cases (deny all, allow from a namespace, ipBlock with
    except, named ports, egress), each as the difference from the previous step, from an empty table."""
    w = World()
    c = w.compile("n1")
    steps: list[tuple[str, Obj]] = [
        ("deny-all-ingress", policy("x", "deny", {"podSelector": {}})),
        (
            "allow-from-namespace-y",
            policy(
                "x",
                "from-y",
                {
                    "podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
                },
            ),
        ),
        (
            "ip-block-except-named-port",
            policy(
                "x",
                "cidr",
                {
                    "podSelector": {"matchLabels": {"pod": "b"}},
                    "ingress": [
                        {
                            "from": [{"ipBlock": {"cidr": "10.42.0.0/16", "except": ["10.42.2.0/24"]}}],
                            "ports": [{"port": "serve-81-tcp"}, {"protocol": "UDP", "port": 53, "endPort": 60}],
                        }
                    ],
                },
            ),
        ),
        (
            "egress-to-pods",
            policy(
                "z",
                "eg",
                {
                    "podSelector": {"matchLabels": {"pod": "b"}},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "c"}}}], "ports": [{"port": 81}]}],
                },
            ),
        ),
    ]
    applied = c.build().table()
    golden.check("netpol-empty", nft.replace(applied))
    for name, p in steps:
        c.set_policy(f"{p['metadata']['namespace']}/{p['metadata']['name']}", parse_policy(p))
        desired = c.build().table()
        golden.check(f"netpol-{name}", nft.diff(applied, desired))
        applied = desired
    c.set_policy("x/deny", None)
    desired = c.build().table()
    golden.check("netpol-delete-deny-all", nft.diff(applied, desired))
