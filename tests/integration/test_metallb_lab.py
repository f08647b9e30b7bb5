"""MetalLB layer 2 in a 3-node lab, the seed's flow: MetalLB's own manifest applied unchanged, the example pool
and advertisement, a LoadBalancer Service gets the first pool IP, the client host on the LAN reaches it and its
neighbour table holds the leader's MAC; a requested IP is honoured, one outside every pool stays pending with an
AllocationFailed event; IPs are shared by key, an ETP Local Service is announced from a node with an endpoint,
nodeSelectors hold, deleting a pool withdraws its IPs, MetalLB's webhook refuses bad pools, IPs survive a
controller restart, and when the leader's node stops, the IP moves to another node."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kwire.lab import lab as labmod
from tests import UPSTREAM
from tests.integration.labkit import Lab, wait_for

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = UPSTREAM / "metallb-native-v0.14.9.yaml"

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: asked}
spec:
  type: LoadBalancer
  loadBalancerIP: 192.168.77.110
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: outside}
spec:
  type: LoadBalancer
  loadBalancerIP: 10.9.9.9
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


@pytest.fixture(scope="module")
def mlb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    cfg = tmp_path_factory.mktemp("metallb") / "config.yaml"
    cfg.write_text("disable:\n  - servicelb\n")
    with Lab("mlb", nodes=3, backend="vxlan", config_file=str(cfg)) as lab:
        # MetalLB's published manifest, unchanged and in full (CRDs, RBAC, Secret, webhook configuration, workloads).
        lab.kubectl("apply", "-f", str(MANIFEST))
        lab.wait_pods_ready("component=controller", 1, namespace="metallb-system", timeout=90)
        lab.wait_pods_ready("component=speaker", 3, namespace="metallb-system", timeout=90)
        wait_for(lambda: lab.kubectl("apply", "-f", str(ROOT / "examples/metallb.yaml")), timeout=60, what="pool")
        # The traefik add-on's LoadBalancer exists before the pool: it gets the first IP, as in the seed.
        wait_for(lambda: ingress_ip(lab, "traefik", "kube-system"), timeout=60, what="traefik's IP")
        lab.apply(APP)
        lab.wait_pods_ready("app=web", 3, timeout=60)
        yield lab


def ingress_ip(lab: Lab, name: str, namespace: str = "default") -> str:
    svc = lab.get("svc", name, "-n", namespace)
    ing = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    assert ing, f"{name} has no IP yet"
    return str(ing[0]["ip"])


def mac_of(lab: Lab, node: str) -> str:
    out = lab.run(node, "cat", "/sys/class/net/eth0/address")
    return out.strip()


def leader(ip: str, nodes: list[str]) -> str:
    return sorted(nodes, key=lambda n: hashlib.sha256(f"{n}#{ip}".encode()).digest())[0]


def client_neigh_mac(lab: Lab, ip: str) -> str:
    out = lab.run("client", "ip", "neigh", "show", ip)
    m = re.search(r"lladdr ([0-9a-f:]{17})", out)
    assert m, out
    return m.group(1)


def curl_ok(lab: Lab, ip: str) -> dict[str, object]:
    return lab.curl_json("client", f"http://{ip}/")


def test_seed_flow_first_pool_ip_reached_from_client_through_leader(mlb: Lab) -> None:
    first = ingress_ip(mlb, "traefik", "kube-system")
    assert first == "192.168.77.100"
    assert first in mlb.kubectl("get", "svc", "-n", "kube-system", "traefik").stdout
    code = wait_for(
        lambda: (
            mlb.run("client", "curl", "-s", "-o", "/dev/null", "-m", "3", "-w", "%{http_code}", f"http://{first}/")
            .strip()
            .strip("0")
            or None
        ),
        timeout=30,
        what="traefik answers on the first pool IP",
    )
    assert code  # an HTTP answer (404: no Ingress yet), not a timeout
    assert client_neigh_mac(mlb, first) == mac_of(mlb, leader(first, ["node1", "node2", "node3"]))
    ip = wait_for(lambda: ingress_ip(mlb, "web"), timeout=30, what="web gets an IP")
    assert ip == "192.168.77.101"
    svc = mlb.get("svc", "web")
    assert svc["metadata"]["annotations"]["metallb.io/ip-allocated-from-pool"] == "picluster-pool"
    assert ip in mlb.kubectl("get", "svc", "web").stdout
    wait_for(lambda: curl_ok(mlb, ip), timeout=30, what="client reaches the LB IP")
    assert client_neigh_mac(mlb, ip) == mac_of(mlb, leader(ip, ["node1", "node2", "node3"]))
    events = mlb.kubectl("describe", "svc", "web").stdout
    assert "IPAllocated" in events and "nodeAssigned" in events
    logs = mlb.kubectl("logs", "-n", "metallb-system", "ds/speaker").stdout
    assert "heartbeats authenticated with the memberlist key" in logs  # the Secret the controller made, mounted
    # MetalLB's metrics with upstream's names: the pool counters (v0.14's pool status is empty) and announcements.
    ctl_ip = mlb.kubectl(
        "get", "pods", "-n", "metallb-system", "-l", "component=controller", "-o", "jsonpath={.items[0].status.podIP}"
    ).stdout.strip()
    text = mlb.run("node1", "curl", "-s", "-m", "5", f"http://{ctl_ip}:7472/metrics")
    svcs = json.loads(mlb.kubectl("get", "svc", "-A", "-o", "json").stdout)["items"]
    in_pool = {
        ing["ip"]
        for s in svcs
        if (s["metadata"].get("annotations") or {}).get("metallb.io/ip-allocated-from-pool") == "picluster-pool"
        for ing in s["status"]["loadBalancer"].get("ingress") or []
    }
    assert f'metallb_allocator_addresses_in_use_total{{pool="picluster-pool"}} {float(len(in_pool))}' in text, text
    assert 'metallb_allocator_addresses_total{pool="picluster-pool"}' in text
    text = mlb.run(leader(ip, ["node1", "node2", "node3"]), "curl", "-s", "-m", "5", "http://127.0.0.1:7472/metrics")
    assert (
        f'metallb_speaker_announced{{ip="{ip}",node="{leader(ip, ["node1", "node2", "node3"])}",protocol="layer2",service="default/web"}} 1.0'
        in text
    ), text
    assert f'metallb_layer2_responses_sent{{ip="{ip}"}}' in text


def test_requested_ip_honoured_and_outside_ip_pending_with_event(mlb: Lab) -> None:
    assert wait_for(lambda: ingress_ip(mlb, "asked"), timeout=30, what="asked IP") == "192.168.77.110"
    wait_for(lambda: curl_ok(mlb, "192.168.77.110"), timeout=30, what="client reaches the asked IP")

    def failed() -> str:
        out = mlb.kubectl("describe", "svc", "outside").stdout
        assert "AllocationFailed" in out, out
        return out

    out = wait_for(failed, timeout=30, what="AllocationFailed event")
    assert '"10.9.9.9" is not allowed in config' in out.replace("'", '"')
    assert "<pending>" in mlb.kubectl("get", "svc", "outside").stdout


SHARED = """
apiVersion: v1
kind: Service
metadata: {name: share-a, annotations: {metallb.io/allow-shared-ip: k}}
spec:
  type: LoadBalancer
  loadBalancerIP: 192.168.77.115
  selector: {app: web}
  ports: [{port: 81, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: share-b, annotations: {metallb.universe.tf/allow-shared-ip: k}}
spec:
  type: LoadBalancer
  loadBalancerIP: 192.168.77.115
  selector: {app: web}
  ports: [{port: 82, targetPort: 8080}]
"""


def test_ip_sharing_with_the_same_key(mlb: Lab) -> None:
    mlb.apply(SHARED)
    assert wait_for(lambda: ingress_ip(mlb, "share-a"), timeout=30, what="share-a") == "192.168.77.115"
    assert wait_for(lambda: ingress_ip(mlb, "share-b"), timeout=30, what="share-b") == "192.168.77.115"
    wait_for(lambda: mlb.curl_json("client", "http://192.168.77.115:81/"), timeout=30, what="port 81")
    wait_for(lambda: mlb.curl_json("client", "http://192.168.77.115:82/"), timeout=30, what="port 82")


LOCAL = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: one}
spec:
  replicas: 1
  selector: {matchLabels: {app: one}}
  template:
    metadata: {labels: {app: one}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node2}
      containers: [{name: c, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  loadBalancerIP: 192.168.77.%d
  selector: {app: one}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_etp_local_leader_is_a_node_with_an_endpoint(mlb: Lab) -> None:
    # An IP that node2 would not lead by hash among all nodes, so only the endpoint rule puts it there.
    last = next(i for i in range(111, 121) if leader(f"192.168.77.{i}", ["node1", "node2", "node3"]) != "node2")
    ip = f"192.168.77.{last}"
    mlb.apply(LOCAL % last)
    mlb.wait_pods_ready("app=one", 1, timeout=60)
    assert wait_for(lambda: ingress_ip(mlb, "local"), timeout=30, what="local IP") == ip
    wait_for(lambda: curl_ok(mlb, ip), timeout=30, what="client reaches the Local service")
    assert client_neigh_mac(mlb, ip) == mac_of(mlb, "node2")


PINNED = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: pinned, namespace: metallb-system}
spec:
  addresses: [192.168.77.130/31]
  autoAssign: false
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: pinned, namespace: metallb-system}
spec:
  ipAddressPools: [pinned]
  nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node3}}]
---
apiVersion: v1
kind: Service
metadata: {name: pinned, annotations: {metallb.io/address-pool: pinned}}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_node_selectors_respected_and_pool_deletion_withdraws(mlb: Lab) -> None:
    mlb.apply(PINNED)
    ip = wait_for(lambda: ingress_ip(mlb, "pinned"), timeout=30, what="pinned IP")
    assert ip == "192.168.77.130"
    wait_for(lambda: curl_ok(mlb, ip), timeout=30, what="client reaches the pinned IP")
    assert client_neigh_mac(mlb, ip) == mac_of(mlb, "node3")
    mlb.kubectl("delete", "ipaddresspool", "pinned", "-n", "metallb-system")

    def withdrawn() -> bool:
        svc = mlb.get("svc", "pinned")
        assert not ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress"), svc["status"]
        return True

    wait_for(withdrawn, timeout=30, what="the IP withdrawn")
    out = mlb.kubectl("describe", "svc", "pinned").stdout
    assert "ClearAssignment" in out and "AllocationFailed" in out
    mlb.run("client", "ip", "neigh", "flush", "dev", "eth0")
    res = subprocess.run(
        ["ip", "netns", "exec", mlb.netns_of("client"), "curl", "-s", "-m", "2", f"http://{ip}/"],
        capture_output=True,
        timeout=10,
    )
    assert res.returncode != 0  # nobody answers ARP for it any more


OVERLAP = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: overlapping, namespace: metallb-system}
spec:
  addresses: [192.168.77.96/28]
"""


def test_webhook_refuses_an_overlapping_pool(mlb: Lab) -> None:
    cfg = mlb.get("validatingwebhookconfiguration", "metallb-webhook-configuration")
    assert all(h["clientConfig"].get("caBundle") for h in cfg["webhooks"])  # patched by the controller
    res = mlb.kubectl("apply", "-f", "-", input=OVERLAP, check=False)
    assert res.returncode != 0
    assert 'admission webhook "ipaddresspoolvalidationwebhook.metallb.io" denied the request' in res.stderr
    assert "overlaps with already defined CIDR 192.168.77.100-192.168.77.120 (pool picluster-pool)" in res.stderr
    bad = mlb.kubectl(
        "apply", "-f", "-", input=OVERLAP.replace("192.168.77.96/28", "192.168.77.9-192.168.77.1"), check=False
    )
    assert "is after end" in bad.stderr
    adv = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: x, namespace: metallb-system}\nspec: {ipAddressPools: [nope]}\n"
    ref = mlb.kubectl("apply", "-f", "-", input=adv, check=False)
    assert "invalid pool reference 'nope'" in ref.stderr


def test_ips_kept_across_controller_restart(mlb: Lab) -> None:
    before = {n: wait_for(lambda n=n: ingress_ip(mlb, n), timeout=30, what=n) for n in ("web", "asked")}
    mlb.kubectl("delete", "pod", "-n", "metallb-system", "-l", "component=controller", "--wait=false")
    mlb.kubectl("delete", "svc", "share-b")  # frees nothing the others hold
    late = "apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}\n"
    mlb.apply(late)
    mlb.wait_pods_ready("component=controller", 1, namespace="metallb-system", timeout=90)
    got = wait_for(lambda: ingress_ip(mlb, "late"), timeout=60, what="late gets an IP from the new controller")
    assert got not in before.values()
    assert {n: ingress_ip(mlb, n) for n in before} == before


def test_leader_stopped_ip_moves(mlb: Lab) -> None:
    ip = wait_for(lambda: ingress_ip(mlb, "web"), timeout=30, what="web IP")
    wait_for(lambda: curl_ok(mlb, ip), timeout=30, what="client reaches the LB IP")
    old = leader(ip, ["node1", "node2", "node3"])
    if old == "node1":
        pytest.fail("the server's node leads this IP in the 3-node lab; stopping it would stop the API")
    survivors = [n for n in ("node1", "node2", "node3") if n != old]
    new = leader(ip, survivors)
    labmod.node_stop(mlb.name, old)  # what `kwire lab node stop` does: agent killed, LAN cable unplugged
    start = time.monotonic()
    try:
        wait_for(lambda: curl_ok(mlb, ip), timeout=20, interval=0.2, what="client reaches the IP via the new leader")
        took = time.monotonic() - start
        assert client_neigh_mac(mlb, ip) == mac_of(mlb, new)
        assert took < 10, took
    finally:
        labmod.node_start(mlb.name, old, timeout=90)
