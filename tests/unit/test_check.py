"""`kwire check`'s check functions on crafted inputs (no privileges): each names the cause and the fix, and a
healthy input gives nothing. The nft rulesets are real `nft -j list ruleset` output (tests/unit/data/check/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kwire.check import (
    cni,
    dns,
    firewall,
    flannel,
    hairpin,
    kernel,
    loadbalancers,
    mtu,
    offload,
    services,
    sysctls,
    vethpods,
)
from kwire.check.finding import Finding, exit_status, ordered
from kwire.check.render import to_json, to_text

DATA = Path(__file__).parent / "data" / "check"


def nft(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / name).read_text())
    return doc


# --- findings and rendering -------------------------------------------------------------------------------------


def test_exit_status_is_one_only_with_an_error() -> None:
    assert exit_status([]) == 0
    assert exit_status([Finding("warning", "x", "s", "m"), Finding("info", "x", "s", "m")]) == 0
    assert exit_status([Finding("info", "x", "s", "m"), Finding("error", "x", "s", "m")]) == 1


def test_ordered_puts_errors_first_and_drops_duplicates() -> None:
    a, b = Finding("info", "k", "n1", "m"), Finding("error", "z", "n2", "m")
    assert ordered([a, b, a]) == [b, a]


def test_renderers() -> None:
    f = Finding("error", "mtu", "node2/eth0", "the cause", "the fix")
    text = to_text([f], checked="lab x")
    assert "ERROR" in text and "node2/eth0" in text and "the cause" in text and "fix: the fix" in text
    assert "1 error, 0 warnings, 0 info (lab x)" in text
    assert to_text([]) == "no problems found\n"
    assert json.loads(to_json([f])) == [
        {"severity": "error", "check": "mtu", "subject": "node2/eth0", "message": "the cause", "fix": "the fix"}
    ]
    assert Finding.from_json(f.to_json()) == f


# --- kernel -----------------------------------------------------------------------------------------------------

ALL_Y = {f.option: "y" for f in kernel.FEATURES}


def test_kernel_with_everything_built_in_is_fine() -> None:
    facts = kernel.KernelFacts(config=ALL_Y, loaded=frozenset(), available=frozenset())
    assert kernel.check(facts, node="n1") == []


def test_kernel_missing_vxlan_breaks_the_overlay_but_not_host_gw() -> None:
    cfg = {**ALL_Y, "CONFIG_VXLAN": ""}
    facts = kernel.KernelFacts(config=cfg, loaded=frozenset(), available=frozenset())
    [f] = kernel.check(facts, node="n1")
    assert (f.severity, f.subject) == ("error", "n1/vxlan")
    assert "CONFIG_VXLAN is not set" in f.message and "host-gw" in f.fix
    [f] = kernel.check(facts, node="n1", flannel_backend="host-gw")
    assert f.severity == "info"


def test_kernel_module_loadable_loaded_or_not_installed() -> None:
    cfg = {**ALL_Y, "CONFIG_BRIDGE_NETFILTER": "m"}
    loadable = kernel.KernelFacts(config=cfg, loaded=frozenset(), available=frozenset({"br_netfilter"}))
    [f] = kernel.check(loadable, node="n1")
    assert f.severity == "info" and f.fix == "modprobe br_netfilter"
    loaded = kernel.KernelFacts(config=cfg, loaded=frozenset({"br_netfilter"}), available=frozenset())
    assert kernel.check(loaded, node="n1") == []
    absent = kernel.KernelFacts(config=cfg, loaded=frozenset(), available=frozenset())
    [f] = kernel.check(absent, node="n1")
    assert f.severity == "error" and "not installed" in f.message and "NetworkPolicy" in f.message


def test_kernel_without_config_and_wireguard_go() -> None:
    facts = kernel.KernelFacts(
        config=None,
        loaded=frozenset({"vxlan", "br_netfilter", "nf_conntrack", "nf_tables", "tun"}),
        available=frozenset(),
        wireguard_go=True,
    )
    assert kernel.check(facts, node="n1") == []
    facts = kernel.KernelFacts(config=None, loaded=frozenset(), available=frozenset())
    sev = {f.subject: f.severity for f in kernel.check(facts, node="n1")}
    assert sev["n1/nf_tables"] == "warning" and sev["n1/wireguard"] == "info"


def test_kernel_parsers() -> None:
    assert kernel.parse_config('# c\nCONFIG_VXLAN=m\nCONFIG_X="s"\n# CONFIG_Y is not set\n') == {
        "CONFIG_VXLAN": "m",
        "CONFIG_X": "s",
    }
    dep = "kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko\nkernel/net/bridge/br-netfilter.ko:\n"
    assert kernel.module_names(dep) == {"vxlan", "br_netfilter"}


# --- sysctls ----------------------------------------------------------------------------------------------------

HEALTHY_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.flannel.1.rp_filter": "0",
    "net.ipv4.conf.cni0.rp_filter": "2",
}


def test_sysctls_healthy() -> None:
    assert sysctls.check(HEALTHY_SYSCTLS, node="n1") == []


def test_sysctls_forwarding_and_bridge_netfilter_off() -> None:
    values = {**HEALTHY_SYSCTLS, "net.ipv4.ip_forward": "0", "net.bridge.bridge-nf-call-iptables": "0"}
    found = {f.subject: f for f in sysctls.check(values, node="n1")}
    assert found["n1/net.ipv4.ip_forward"].severity == "error"
    assert found["n1/net.ipv4.ip_forward"].fix.startswith("sysctl -w net.ipv4.ip_forward=1")
    assert found["n1/net.bridge.bridge-nf-call-iptables"].severity == "error"


def test_sysctls_strict_rp_filter_through_conf_all() -> None:
    values = {**HEALTHY_SYSCTLS, "net.ipv4.conf.all.rp_filter": "1", "net.ipv4.conf.cni0.rp_filter": None}
    [f] = sysctls.check(values, node="n1")
    assert (f.severity, f.subject) == ("warning", "n1/flannel.1")
    assert "net.ipv4.conf.flannel/1.rp_filter=2" in f.fix


def test_conntrack_table_filling_up() -> None:
    assert sysctls.check({**HEALTHY_SYSCTLS, sysctls.CT_COUNT: "100", sysctls.CT_MAX: "262144"}, node="n1") == []
    [f] = sysctls.check({**HEALTHY_SYSCTLS, sysctls.CT_COUNT: "240000", sysctls.CT_MAX: "262144"}, node="n1")
    assert f.severity == "warning" and "240000 of 262144" in f.message and "nf_conntrack_max=524288" in f.fix
    [f] = sysctls.check({**HEALTHY_SYSCTLS, sysctls.CT_COUNT: "262144", sysctls.CT_MAX: "262144"}, node="n1")
    assert f.severity == "error"


def test_sysctl_paths() -> None:
    assert sysctls._path("net.ipv4.conf.flannel.1.rp_filter") == Path("/proc/sys/net/ipv4/conf/flannel.1/rp_filter")
    assert sysctls._path("net.ipv4.ip_forward") == Path("/proc/sys/net/ipv4/ip_forward")


# --- MTU --------------------------------------------------------------------------------------------------------

HEALTHY_LINKS = mtu.Links(
    uplink="eth0", uplink_mtu=1500, flannel_mtu=1450, bridge_mtu=1450, ports={"veth1": 1450}, subnet_env_mtu=1450
)


def test_mtu_healthy() -> None:
    assert mtu.check(HEALTHY_LINKS, node="n1") == []
    assert mtu.check_across({"n1": HEALTHY_LINKS, "n2": HEALTHY_LINKS}) == []


def test_mtu_uplink_lowered_under_flannel() -> None:
    links = mtu.Links(uplink="eth0", uplink_mtu=1400, flannel_mtu=1450, bridge_mtu=1450, ports={}, subnet_env_mtu=1450)
    [f] = mtu.check(links, node="n2")
    assert (f.severity, f.subject) == ("error", "n2/flannel.1")
    assert "1450 is larger than eth0 MTU 1400 - 50" in f.message and "ip link set flannel.1 mtu 1350" in f.fix


def test_mtu_pods_larger_than_the_tunnel() -> None:
    links = mtu.Links(
        uplink="eth0",
        uplink_mtu=1400,
        flannel_mtu=1350,
        bridge_mtu=1450,
        ports={"va": 1450, "vb": 1350},
        subnet_env_mtu=1450,
    )
    found = mtu.check(links, node="n2")
    errors = [f for f in found if f.severity == "error"]
    assert len(errors) == 1 and "cni0 1450, va 1450" in errors[0].message and "flannel.1's 1350" in errors[0].message
    assert any(f.subject == "n2/subnet.env" and f.severity == "warning" for f in found)


def test_mtu_flannel_smaller_than_needed_and_host_gw() -> None:
    [f] = mtu.check(mtu.Links("eth0", 1500, 1400, 1400, {}, 1400), node="n1")
    assert f.severity == "warning" and "1450" in f.message
    assert mtu.check(mtu.Links("eth0", 1500, None, 1500, {"v": 1500}), node="n1") == []
    [f] = mtu.check(mtu.Links("eth0", 1500, None, 9000, {}), node="n1")
    assert f.severity == "error" and "eth0's 1500" in f.message


def test_mtu_across_nodes_names_the_odd_one() -> None:
    low = mtu.Links("eth0", 1400, 1350, 1350, {}, 1350)
    found = mtu.check_across({"n1": HEALTHY_LINKS, "n2": low, "n3": HEALTHY_LINKS})
    assert {f.subject for f in found} == {"n2/eth0", "n2/flannel.1"}
    msgs = {f.subject: f.message for f in found if f.severity == "error"}
    assert "uplink MTU is 1400 but 1500 on n1, n3" in msgs["n2/eth0"]
    assert "flannel.1 MTU is 1350 but 1450 on n1, n3" in msgs["n2/flannel.1"]
    assert mtu.Links.from_json(low.to_json()) == low


# --- offload ----------------------------------------------------------------------------------------------------


def test_offload_bug_on_old_kernels_and_vmxnet3() -> None:
    [f] = offload.check(offload.OffloadFacts(True, "5.4.0-150-generic"), node="n1")
    assert f.severity == "warning" and f.fix == "ethtool -K flannel.1 tx-checksum-ip-generic off"
    [f] = offload.check(offload.OffloadFacts(True, "6.1.0", uplink_driver="vmxnet3"), node="n1")
    assert "vmxnet3" in f.message
    assert offload.check(offload.OffloadFacts(True, "6.1.0", uplink_driver="virtio_net"), node="n1") == []
    assert offload.check(offload.OffloadFacts(False, "5.4.0"), node="n1") == []
    assert offload.check(offload.OffloadFacts(None, "5.4.0"), node="n1") == []


# --- firewall ---------------------------------------------------------------------------------------------------


def test_foreign_nft_table_dropping_vxlan_and_the_kubelet() -> None:
    doc = nft("nft_foreign.json")  # table inet kwire-test-fw (see the file): drops 8472/udp, rejects @ports
    by_probe = {
        p.dport: firewall.check_nft(doc, node="n2", probes=[p])
        for p in (firewall.VXLAN, firewall.API, firewall.KUBELET, firewall.FORWARD)
    }
    [f] = by_probe[8472]
    assert (f.severity, f.subject) == ("error", "n2 inet kwire-test-fw/input")
    assert "rule handle 7 drops VXLAN (8472/udp)" in f.message
    assert f.fix.startswith("nft delete rule inet kwire-test-fw input handle 7")
    assert [f.severity for f in by_probe[6443]] == ["error"] and "handle 8 rejects" in by_probe[6443][0].message
    assert [f.severity for f in by_probe[10250]] == ["error"]
    [f] = by_probe[80]
    assert f.severity == "error" and "policy drops forwarded pod traffic" in f.message
    [f] = firewall.check_nft(doc, node="n2", probes=[firewall.forward_probe("10.52.0.0/16")])
    assert f.severity == "error"  # a plain nft table: the fix is nft's, the CIDR is in ufw's and firewalld's
    assert "10.52.0.0/16" in firewall.forward_probe("10.52.0.0/16").ufw


def test_uncertain_matches_are_warnings_and_other_ports_pass() -> None:
    doc = nft("nft_foreign.json")
    probe = firewall.Probe("input", "udp", 4500, "x", "y", "", "")  # `ip saddr 10.0.0.0/8 udp dport 4000-5000 drop`
    [f] = firewall.check_nft(doc, node="n", probes=[probe])
    assert f.severity == "warning" and "when its other matches hold" in f.message
    probe = firewall.Probe("input", "udp", 9, "x", "y", "", "")  # `iifname "eth0" jump sub` -> `th dport 9 drop`
    [f] = firewall.check_nft(doc, node="n", probes=[probe])
    assert f.severity == "warning" and "chain sub" in f.message
    ok = firewall.Probe("input", "tcp", 80, "x", "y", "", "")  # accepted by `tcp dport { 22, 80 } accept`
    assert firewall.check_nft(doc, node="n", probes=[ok]) == []


def test_ufw_policy_drop_is_named_with_ufw_commands() -> None:
    doc = nft("nft_ufw.json")  # iptables-nft: INPUT/FORWARD policy drop, ufw-before-input accepts 22 and ct state
    [f] = firewall.check_nft(doc, node="n1", probes=[firewall.VXLAN])
    assert f.severity == "error" and f.message.startswith("ufw (table ip filter, chain INPUT)")
    assert f.fix == "ufw allow 8472/udp"
    assert firewall.check_nft(doc, node="n1", probes=[firewall.Probe("input", "tcp", 22, "x", "y", "", "")]) == []


def chain(name: str, hook: str = "", policy: str = "accept") -> dict[str, Any]:
    c: dict[str, Any] = {"family": "ip", "table": "filter", "name": name}
    if hook:
        c.update(type="filter", hook=hook, prio=0, policy=policy)
    return {"chain": c}


def rule(chain_name: str, handle: int, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"rule": {"family": "ip", "table": "filter", "chain": chain_name, "handle": handle, "expr": list(expr)}}


SADDR_PODS = {
    "match": {
        "op": "==",
        "left": {"payload": {"protocol": "ip", "field": "saddr"}},
        "right": {"prefix": {"addr": "10.42.0.0", "len": 16}},
    }
}


def test_an_accept_that_depends_on_addresses_makes_a_later_drop_uncertain() -> None:
    """Docker's FORWARD policy drop with flannel's `-s 10.42.0.0/16 -j ACCEPT` before it: not a certain drop."""
    doc = {"nftables": [chain("FORWARD", "forward", "drop"), rule("FORWARD", 3, SADDR_PODS, {"accept": None})]}
    [f] = firewall.check_nft(doc, node="n1", probes=[firewall.FORWARD])
    assert f.severity == "warning" and "unless a rule before its end accepts it" in f.message
    # The same accept behind an uncertain jump: the chain it jumps to may accept, so the drop stays uncertain.
    doc = {
        "nftables": [
            chain("FORWARD", "forward", "drop"),
            chain("FLANNEL-FWD"),
            rule("FORWARD", 3, SADDR_PODS, {"jump": {"target": "FLANNEL-FWD"}}),
            rule("FLANNEL-FWD", 4, {"accept": None}),
        ]
    }
    [f] = firewall.check_nft(doc, node="n1", probes=[firewall.FORWARD])
    assert f.severity == "warning"
    # A jump to a chain that only drops something else cannot accept: the policy drop is certain.
    doc["nftables"][-1] = rule(
        "FLANNEL-FWD",
        4,
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}},
        {"drop": None},
    )
    [f] = firewall.check_nft(doc, node="n1", probes=[firewall.FORWARD])
    assert f.severity == "error" and "its policy drops forwarded pod traffic" in f.message


def test_kwire_own_tables_are_not_foreign() -> None:
    doc = {
        "nftables": [
            {
                "chain": {
                    "family": "ip",
                    "table": t,
                    "name": "c",
                    "type": "filter",
                    "hook": "input",
                    "prio": 0,
                    "policy": "drop",
                }
            }
            for t in ("kwire-proxy", "kwire-netpol", "kwire-flannel", "kwire-lb-tcp-80")
        ]
    }
    assert firewall.check_nft(doc, node="n", probes=[firewall.VXLAN]) == []
    doc["nftables"].append(
        {
            "chain": {
                "family": "ip",
                "table": "kwire-test",
                "name": "c",
                "type": "filter",
                "hook": "input",
                "prio": 0,
                "policy": "drop",
            }
        }
    )
    assert len(firewall.check_nft(doc, node="n", probes=[firewall.VXLAN])) == 1


def test_iptables_legacy_beside_nft() -> None:
    save = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n-A INPUT -p udp -m udp --dport 8472 -j DROP\n-A INPUT -p tcp --dport 22 -j DROP\nCOMMIT\n"
    found = firewall.check_legacy(save, node="n1", probes=[firewall.VXLAN, firewall.FORWARD])
    kinds = sorted((f.severity, f.subject) for f in found)
    assert kinds == [
        ("error", "n1 iptables-legacy/FORWARD"),
        ("error", "n1 iptables-legacy/INPUT"),
        ("warning", "n1 iptables-legacy"),
    ]
    assert any("--dport 8472 -j DROP" in f.message for f in found)
    assert firewall.check_legacy("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", node="n1", probes=[firewall.VXLAN]) == []


# --- DNS and hairpin --------------------------------------------------------------------------------------------


def test_dns_pod_forwarding_into_loopback() -> None:
    [f] = dns.check_dns_pod_resolv(
        "search x\nnameserver 127.0.0.53\noptions edns0\n", pod="kube-system/coredns-a", node="n1"
    )
    assert f.severity == "error" and "127.0.0.53" in f.message and "--resolv-conf" in f.fix
    assert dns.check_dns_pod_resolv("nameserver 10.0.0.2\n", pod="p", node="n1") == []
    [f] = dns.check_dns_pod_resolv("search x\n", pod="p", node="n1")
    assert f.severity == "warning"


def test_node_resolv_with_only_a_stub() -> None:
    [f] = dns.check_node_resolv("nameserver 127.0.0.53\n", node="n1")
    assert f.severity == "info"
    assert dns.check_node_resolv("nameserver 127.0.0.53\nnameserver 1.1.1.1\n", node="n1") == []


def test_dns_answer() -> None:
    assert dns.check_answer("", node="n1", server="10.43.0.10", name="kubernetes.default.svc.cluster.local.") == []
    [f] = dns.check_answer("no answer (timed out)", node="n1", server="10.43.0.10", name="k.")
    assert f.severity == "error" and "k8s-app=kube-dns" in f.fix


def test_veth_to_pod_from_the_cni_cache(tmp_path: Path) -> None:
    doc = {
        "kind": "cniCacheV1",
        "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", "default"], ["K8S_POD_NAME", "web-1"]],
        "result": {
            "interfaces": [
                {"name": "cni0", "mac": "x"},
                {"name": "veth853e7149", "mac": "y"},
                {"name": "eth0", "mac": "z", "sandbox": "/run/netns/p"},
            ]
        },
    }
    results = tmp_path / "cni" / "cache" / "results"
    results.mkdir(parents=True)
    (results / "cbr0-uid-eth0").write_text(json.dumps(doc))
    (results / "broken").write_text("{")
    pods = vethpods.gather(tmp_path)
    assert pods == {"veth853e7149": "default/web-1"}
    [f] = hairpin.check({"veth853e7149": False}, node="n1", pods=pods)
    assert "veth853e7149 (pod default/web-1)" in f.message
    [f] = mtu.check(mtu.Links("eth0", 1500, 1450, 1450, {"veth853e7149": 9000}), node="n1", pods=pods)
    assert "veth853e7149 (a pod veth of pod default/web-1) MTU 9000" in f.message


def test_cni_conflist() -> None:
    good = {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "plugins": [{"type": "flannel", "delegate": {"hairpinMode": True}}, {"type": "portmap"}, {"type": "bandwidth"}],
    }
    assert cni.check(json.dumps(good), node="n1", path="p") == []
    [f] = cni.check(None, node="n1", path="/x/10-flannel.conflist")
    assert f.severity == "error" and "/x/10-flannel.conflist does not exist" in f.message
    [f] = cni.check("{", node="n1", path="p")
    assert f.severity == "error"
    no_hairpin = {**good, "plugins": [{"type": "flannel", "delegate": {"hairpinMode": False}}, {"type": "portmap"}]}
    [f] = cni.check(json.dumps(no_hairpin), node="n1", path="p")
    assert f.severity == "warning" and "hairpinMode" in f.message
    [a, b] = cni.check(json.dumps({"plugins": [{"type": "bridge"}]}), node="n1", path="p")
    assert (a.severity, b.severity) == ("error", "warning") and "not flannel" in a.message and "portmap" in b.message


def test_hairpin(tmp_path: Path) -> None:
    for port, mode in (("veth1", "1"), ("veth2", "0")):
        (tmp_path / port).mkdir()
        (tmp_path / port / "hairpin_mode").write_text(mode + "\n")
    ports = hairpin.gather(tmp_path)
    assert ports == {"veth1": True, "veth2": False}
    [f] = hairpin.check(ports, node="n1")
    assert f.severity == "warning" and "veth2" in f.message and f.fix == "bridge link set dev veth2 hairpin on"
    assert hairpin.check({"veth1": True}, node="n1") == []


# --- nodes and flannel ------------------------------------------------------------------------------------------


def node(
    name: str, ip: str, cidr: str, *, public_ip: str | None = None, ready: str = "True", mac: str = ""
) -> dict[str, Any]:
    ann = {flannel.PUBLIC_IP: public_ip if public_ip is not None else ip}
    ann[flannel.BACKEND_DATA] = json.dumps({"VNI": 1, "VtepMAC": mac or f"aa:bb:cc:00:00:{ip[-2:]}"})
    return {
        "metadata": {"name": name, "annotations": ann},
        "spec": {"podCIDR": cidr} if cidr else {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": ready, "message": "kubelet stopped posting node status"}],
        },
    }


def test_flannel_healthy_nodes() -> None:
    nodes = [node("n1", "192.168.77.11", "10.42.0.0/24"), node("n2", "192.168.77.12", "10.42.1.0/24")]
    assert flannel.check(nodes) == []


def test_two_nodes_with_the_same_public_ip() -> None:
    nodes = [
        node("n1", "192.168.77.11", "10.42.0.0/24"),
        node("n2", "192.168.77.12", "10.42.1.0/24", public_ip="192.168.77.11"),
    ]
    [f] = flannel.check(nodes)
    assert (f.severity, f.subject) == ("error", "n2")
    assert (
        "n1, n2 all announce flannel public-ip 192.168.77.11" in f.message
        and "InternalIP is 192.168.77.12" in f.message
    )
    assert "--flannel-iface" in f.fix and "192.168.77.12" in f.fix


def test_nodes_not_ready_without_lease_overlapping_or_cloned() -> None:
    nodes = [
        node("n1", "192.168.77.11", "10.42.0.0/24", ready="Unknown"),
        node("n2", "192.168.77.12", ""),
        node("n3", "192.168.77.13", "10.42.0.0/23", mac="aa:aa:aa:aa:aa:aa"),
        node("n4", "192.168.77.14", "10.42.4.0/24", mac="AA:AA:AA:AA:AA:AA"),
    ]
    found = {(f.check, f.subject): f for f in flannel.check(nodes)}
    assert "not Ready (Unknown): kubelet stopped posting" in found[("nodes", "n1")].message
    assert "no subnet lease" in found[("flannel", "n2")].message
    assert "overlapping pod subnets" in found[("flannel", "n1, n3")].message
    assert "share VtepMAC" in found[("flannel", "n3, n4")].message


# --- Services ---------------------------------------------------------------------------------------------------


def svc(name: str, selector: dict[str, str] | None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default"}, "spec": {"selector": selector, **spec}}


def pod(
    name: str, labels: dict[str, str], *, phase: str = "Running", ns: str = "default", **spec: Any
) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec, "status": {"phase": phase}}


def test_service_selector_with_the_nearest_label_mismatch() -> None:
    pods = [pod("webapp-1", {"app": "webapp", "tier": "fe"}), pod("db-0", {"role": "db"})]
    [f] = services.check([svc("web", {"app": "web", "tier": "fe"})], pods)
    assert (f.severity, f.subject) == ("error", "default/web")
    assert "nearest are webapp-1 with app=webapp, not app=web" in f.message
    [f] = services.check([svc("web", {"appp": "webapp"})], pods)
    assert "app=webapp, not appp=webapp" in f.message


def test_services_that_match_or_have_no_selector() -> None:
    pods = [pod("web-1", {"app": "web"}), pod("old", {"app": "gone"}, phase="Succeeded")]
    assert (
        services.check(
            [svc("web", {"app": "web"}), svc("manual", None), svc("ext", {"a": "b"}, type="ExternalName")], pods
        )
        == []
    )
    [f] = services.check([svc("gone", {"app": "gone"})], pods)  # only a finished pod has it
    assert f.severity == "error" and "web-1 with app=web, not app=gone" in f.message
    [f] = services.check([svc("x", {"k8s-app": "nothing"})], [pod("a", {"zzz": "1"})])
    assert f.severity == "warning" and "no pod in namespace default has labels like these" in f.message


# --- LoadBalancers ----------------------------------------------------------------------------------------------


def lb(
    name: str, port: int, *, ingress: bool, created: str = "2026-01-01T00:00:00Z", ns: str = "default"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
        "spec": {"type": "LoadBalancer", "ports": [{"port": port, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.77.11"}]} if ingress else {}},
    }


def svclb_pod(svc_name: str, port: int, *, node_name: str = "", ns: str = "default") -> dict[str, Any]:
    labels = {loadbalancers.SVCNAME: svc_name, loadbalancers.SVCNAMESPACE: ns}
    containers = [{"name": "lb", "ports": [{"containerPort": port, "hostPort": port, "protocol": "TCP"}]}]
    spec: dict[str, Any] = {"containers": containers}
    if node_name:
        spec["nodeName"] = node_name
    return pod(f"svclb-{svc_name}-x", labels, phase="Running" if node_name else "Pending", ns="kube-system", **spec)


def test_loadbalancer_port_taken_by_another_service() -> None:
    traefik = lb("traefik", 80, ingress=True, ns="kube-system")
    web = lb("web", 80, ingress=False, created="2026-01-02T00:00:00Z")
    pods = [svclb_pod("traefik", 80, node_name="n1", ns="kube-system"), svclb_pod("web", 80)]
    state = loadbalancers.LbState(services=[traefik, web], pods=pods, servicelb=True, metallb=False)
    [f] = loadbalancers.check(state)
    assert (f.severity, f.subject) == ("error", "default/web")
    assert "port 80/TCP is already taken by LoadBalancer Service kube-system/traefik" in f.message
    assert "lbpool" in f.fix


def test_loadbalancer_port_taken_by_a_host_port() -> None:
    web = lb("web", 8080, ingress=False)
    pods = [
        pod("proxy", {}, ns="default", nodeName="n1", containers=[{"ports": [{"hostPort": 8080}]}]),
        svclb_pod("web", 8080),
    ]
    [f] = loadbalancers.check(loadbalancers.LbState(services=[web], pods=pods, servicelb=True, metallb=False))
    assert "pod default/proxy's hostPort on n1" in f.message


def test_loadbalancers_assigned_or_of_another_class_are_fine() -> None:
    other = lb("x", 80, ingress=False)
    other["spec"]["loadBalancerClass"] = "example.com/lb"
    state = loadbalancers.LbState(services=[lb("a", 80, ingress=True), other], pods=[], servicelb=True, metallb=False)
    assert loadbalancers.check(state) == []


def test_metallb_reasons_and_both_active() -> None:
    web = lb("web", 80, ingress=False)
    [f] = loadbalancers.check(loadbalancers.LbState(services=[web], pods=[], servicelb=False, metallb=True))
    assert f.severity == "error" and "no IPAddressPool" in f.message
    event = {
        "reason": "AllocationFailed",
        "message": 'Failed to allocate IP for "default/web": no available IPs',
        "involvedObject": {"kind": "Service", "name": "web", "namespace": "default"},
    }
    pool = {"metadata": {"name": "lab"}}
    state = loadbalancers.LbState(services=[web], pods=[], servicelb=False, metallb=True, pools=[pool], events=[event])
    [f] = loadbalancers.check(state)
    assert "MetalLB says Failed to allocate IP" in f.message
    both = loadbalancers.LbState(services=[lb("a", 80, ingress=True)], pods=[], servicelb=True, metallb=True)
    [f] = loadbalancers.check(both)
    assert f.severity == "warning" and "disable: [servicelb]" in f.fix
    [f] = loadbalancers.check(loadbalancers.LbState(services=[web], pods=[], servicelb=False, metallb=False))
    assert f.severity == "error" and "nothing assigns it an address" in f.message


def test_links_from_an_empty_report() -> None:
    assert mtu.check(mtu.Links.from_json({}), node="n") == []
