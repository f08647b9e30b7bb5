"""The K3s conflist (kwire's flannel -> Debian's bridge + host-local, portmap, bandwidth) in real namespaces.

A "node" namespace and two "pod" namespaces, all named `kwire-cnitest-*`. Every CNI invocation runs inside the
node namespace (`ip netns exec kwire-cnitest-node python -m kwire.cni.invoke ...`), so the bridge, veths,
iptables/nftables rules and sysctls the plugins touch are all the node namespace's; the machine's own
namespace is never changed. Deleting the namespaces in the fixture removes everything the test made.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import kwire
from kwire.cni import invoke

pytestmark = pytest.mark.lab

ROOT = str(Path(kwire.__file__).resolve().parents[1])
PREFIX = f"kwire-cnitest{os.environ.get('KWIRE_TEST_ID', '')}-"
NODE, POD1, POD2 = f"{PREFIX}node", f"{PREFIX}pod1", f"{PREFIX}pod2"
IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
TC = shutil.which("tc") or "/usr/sbin/tc"
SUBNET_ENV = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def ip_json(ns: str, *argv: str) -> Any:
    return json.loads(run(IP, "-j", "-n", ns, *argv).stdout or "[]")


def our_namespaces() -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


@dataclass
class Lab:
    tmp: Path
    conflist: Path
    data_dir: Path
    cache_dir: Path
    cni_path: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cni(self, command: str, container_id: str, pod_ns: str, caps: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Run `python -m kwire.cni.invoke` inside the node namespace, as the node's kubelet would."""
        argv = [
            IP, "netns", "exec", NODE, sys.executable, "-m", "kwire.cni.invoke", command,
            "--conflist", str(self.conflist), "--container-id", container_id,
            "--netns", f"/run/netns/{pod_ns}", "--cni-path", self.cni_path, "--cache-dir", str(self.cache_dir),
            "--args", f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id}",
        ]  # fmt: skip
        if caps is not None:
            argv += ["--capability-args", json.dumps(caps)]
        env = {**os.environ, "PYTHONPATH": ROOT}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None

    def ipam_ips(self) -> set[str]:
        d = self.data_dir / "ipam" / "cbr0"
        return {p.name for p in d.iterdir() if p.name.startswith("10.")} if d.exists() else set()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if not os.access("/usr/lib/cni/bridge", os.X_OK):
        pytest.skip("Debian's containernetworking-plugins is not installed")
    for ns in our_namespaces():  # left over by an interrupted run
        run(IP, "netns", "del", ns, check=False)
    lab = Lab(
        tmp=tmp_path,
        conflist=tmp_path / "net.d" / "10-flannel.conflist",
        data_dir=tmp_path / "flannel",
        cache_dir=tmp_path / "cache",
        cni_path=f"{tmp_path / 'bin'}:/usr/lib/cni",
    )
    try:
        for ns in (NODE, POD1, POD2):
            run(IP, "netns", "add", ns)
            run(IP, "-n", ns, "link", "set", "lo", "up")
        (tmp_path / "subnet.env").write_text(SUBNET_ENV)
        invoke.write_conflist(lab.conflist, subnet_file=tmp_path / "subnet.env", data_dir=lab.data_dir)
        invoke.install_plugin_shim(tmp_path / "bin")
        yield lab
    finally:
        for p in lab.procs:
            p.kill()
            p.wait()
        for ns in (NODE, POD1, POD2):
            run(IP, "netns", "del", ns, check=False)
    assert not set(our_namespaces()) & {NODE, POD1, POD2}


def pod_ip(result: dict[str, Any]) -> str:
    (ip,) = result["ips"]
    return str(ip["address"]).split("/")[0]


def host_veth(result: dict[str, Any]) -> str:
    # the bridge plugin names the host end veth<hash>; bandwidth adds its ifb device (bwp<hash>) to the list
    (name,) = [i["name"] for i in result["interfaces"] if "sandbox" not in i and i["name"].startswith("veth")]
    return str(name)


def tcp_exchange(lab: Lab, server_ns: str, port: int, client_ns: str, dst: str, dst_port: int) -> str:
    """Serve one TCP connection in server_ns; connect from client_ns to dst:dst_port; return what it read."""
    server = (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {port})); s.listen(); s.settimeout(20)\n"
        "c, a = s.accept(); c.sendall(('from %s' % a[0]).encode()); c.close()\n"
    )
    lab.procs.append(subprocess.Popen([IP, "netns", "exec", server_ns, sys.executable, "-S", "-c", server]))
    client = (
        "import socket, time, sys\n"
        "end = time.time() + 10\n"
        "while True:\n"
        "    try:\n"
        f"        s = socket.create_connection(({dst!r}, {dst_port}), timeout=2); break\n"
        "    except OSError:\n"
        "        if time.time() > end: raise\n"
        "        time.sleep(0.1)\n"
        "sys.stdout.write(s.recv(100).decode())\n"
    )
    return run(IP, "netns", "exec", client_ns, sys.executable, "-S", "-c", client).stdout


def test_pods_through_the_k3s_conflist(lab: Lab) -> None:
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    bandwidth = {
        "ingressRate": 10_000_000,
        "ingressBurst": 2**31 - 1,
        "egressRate": 10_000_000,
        "egressBurst": 2**31 - 1,
    }
    rc, r1 = lab.cni("add", "pod1", POD1, {"portMappings": ports})
    assert rc == 0, r1
    rc, r2 = lab.cni("add", "pod2", POD2, {"bandwidth": bandwidth})
    assert rc == 0, r2
    ip1, ip2 = pod_ip(r1), pod_ip(r2)
    assert ip1 != ip2 and ip1.startswith("10.42.7.") and ip2.startswith("10.42.7.")
    assert r1["ips"][0]["gateway"] == "10.42.7.1" and lab.ipam_ips() == {ip1, ip2}

    # the pods: eth0 with the address and the flannel MTU; default route and cluster route via cni0's address
    for ns, ip in ((POD1, ip1), (POD2, ip2)):
        (eth0,) = ip_json(ns, "addr", "show", "dev", "eth0")
        assert eth0["mtu"] == 1450 and "UP" in eth0["flags"]
        assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] == [(ip, 24)]
        (default,) = ip_json(ns, "route", "show", "default")
        assert (default["gateway"], default["dev"]) == ("10.42.7.1", "eth0")
        (cluster,) = ip_json(ns, "route", "show", "10.42.0.0/16")
        assert cluster["gateway"] == "10.42.7.1"
    # the node: cni0 holds the gateway address; the bridge plugin turned forwarding on (node namespace only)
    (cni0,) = ip_json(NODE, "addr", "show", "dev", "cni0")
    assert [(a["local"], a["prefixlen"]) for a in cni0["addr_info"] if a["family"] == "inet"] == [("10.42.7.1", 24)]
    assert cni0["mtu"] == 1450
    fwd = run(IP, "netns", "exec", NODE, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    assert fwd == "1"
    veth1, veth2 = host_veth(r1), host_veth(r2)
    for veth in (veth1, veth2):
        (link,) = ip_json(NODE, "link", "show", "dev", veth)
        assert link["master"] == "cni0"

    # pod to pod across the bridge
    run(IP, "netns", "exec", POD1, "ping", "-c1", "-W1", ip2)
    run(IP, "netns", "exec", POD2, "ping", "-c1", "-W1", ip1)

    # hostPort: Debian's portmap (plugins 1.1.1) writes iptables rules; iptables is iptables-nft, so they are
    # nftables rules in the node namespace's `ip nat` table
    ruleset = run(IP, "netns", "exec", NODE, NFT, "list", "ruleset").stdout
    assert "CNI-HOSTPORT-DNAT" in ruleset and "tcp dport 8080" in ruleset
    assert f"dnat to {ip1}:80" in ruleset
    nat = run(IP, "netns", "exec", NODE, IPTABLES, "-t", "nat", "-S").stdout
    assert f"--to-destination {ip1}:80" in nat
    # ... and they work: pod2 -> node:8080 -> pod1:80, masqueraded to the bridge address (hairpin mark)
    assert tcp_exchange(lab, POD1, 80, POD2, "10.42.7.1", 8080) == "from 10.42.7.1"

    # bandwidth: a token bucket on the pod's host veth (ingress) and on an ifb device (egress)
    qdiscs = run(IP, "netns", "exec", NODE, TC, "qdisc", "show", "dev", veth2).stdout
    assert "tbf" in qdiscs
    assert any(link["ifname"].startswith("bwp") for link in ip_json(NODE, "link", "show"))

    # CHECK passes for both (through kwire's workarounds for Debian's bridge/portmap/bandwidth CHECK bugs)
    assert lab.cni("check", "pod1", POD1) == (0, None)
    assert lab.cni("check", "pod2", POD2) == (0, None)
    # ... and still notices a broken hostPort
    chain = next(w for w in nat.split() if w.startswith("CNI-DN-"))
    run(IP, "netns", "exec", NODE, IPTABLES, "-t", "nat", "-F", chain)
    rc, err = lab.cni("check", "pod1", POD1)
    assert rc == 1 and err["plugin"] == "portmap" and "could not check ipv4 dnat" in err["msg"]

    # DEL pod1: veth pair gone, IP released, flannel's saved config and the result cache gone, hostPort gone
    assert lab.cni("del", "pod1", POD1) == (0, None)
    assert run(IP, "-n", POD1, "link", "show", "eth0", check=False).returncode != 0
    assert run(IP, "-n", NODE, "link", "show", veth1, check=False).returncode != 0
    assert lab.ipam_ips() == {ip2}
    assert not (lab.data_dir / "pod1").exists() and (lab.data_dir / "pod2").exists()
    assert not (lab.cache_dir / "results" / "cbr0-pod1-eth0").exists()
    assert "dport 8080" not in run(IP, "netns", "exec", NODE, NFT, "list", "ruleset").stdout
    # a second DEL succeeds
    assert lab.cni("del", "pod1", POD1) == (0, None)

    assert lab.cni("del", "pod2", POD2) == (0, None)
    assert lab.ipam_ips() == set()
    assert not any(link["ifname"].startswith(("veth", "bwp")) for link in ip_json(NODE, "link", "show"))

    # a new pod reuses the released range
    rc, r3 = lab.cni("add", "pod3", POD1)
    assert rc == 0 and pod_ip(r3).startswith("10.42.7.")
    assert lab.cni("del", "pod3", POD1) == (0, None)


def test_failed_add_is_undone(lab: Lab) -> None:
    """portmap rejects a bad mapping after bridge has set the pod up: the invoker DELs the whole list."""
    rc, err = lab.cni("add", "pod1", POD1, {"portMappings": [{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]})
    assert rc == 1 and err["plugin"] == "portmap" and err["command"] == "ADD"
    assert run(IP, "-n", POD1, "link", "show", "eth0", check=False).returncode != 0
    assert not any(link["ifname"].startswith("veth") for link in ip_json(NODE, "link", "show"))
    assert lab.ipam_ips() == set()
    assert not (lab.data_dir / "pod1").exists()
    assert not (lab.cache_dir / "results" / "cbr0-pod1-eth0").exists()
    # the runtime's own DEL after the failure is still fine
    assert lab.cni("del", "pod1", POD1) == (0, None)
