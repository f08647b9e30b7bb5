"""On a real 2-node lab: the API server's proxy subresources reach pods over the cluster network
(services/proxy, pods/proxy; CoreDNS's DNS port answers kube's 503), and K3s's local-path StorageClass provisions
a PV on the node the scheduler picked for the claim's pod, binds it, and deletes it with the claim."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.labkit import Lab, wait_for, web_app

pytestmark = pytest.mark.lab

APP = (
    web_app(replicas=1)
    + """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 128Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: user, labels: {app: user}}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: c, image: nginx, ports: [{containerPort: 8080}], volumeMounts: [{name: d, mountPath: /data}]}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: data}}]
"""
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("kwt-pxy", 2, "vxlan") as lab_:
        lab_.apply(APP)
        lab_.wait_pods_ready("app=web", 1, timeout=60)
        yield lab_


def test_service_and_pod_proxy_return_the_responders_answer(lab: Lab) -> None:
    (pod,) = lab.pods("app=web")
    body = json.loads(lab.kubectl("get", "--raw", "/api/v1/namespaces/default/services/web:80/proxy/").stdout)
    assert body["pod"] == pod["metadata"]["name"] and body["podIP"] == pod["status"]["podIP"]
    named = json.loads(lab.kubectl("get", "--raw", "/api/v1/namespaces/default/services/web:http/proxy/x").stdout)
    assert named["pod"] == pod["metadata"]["name"]
    via_pod = lab.kubectl("get", "--raw", f"/api/v1/namespaces/default/pods/{pod['metadata']['name']}:8080/proxy/")
    assert json.loads(via_pod.stdout)["node"] == pod["spec"]["nodeName"]
    # nodes/proxy reaches the pod's kubelet (a responder container logs nothing: an empty 200)
    node, name = pod["spec"]["nodeName"], pod["metadata"]["name"]
    logs = lab.kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/containerLogs/default/{name}/c", check=False)
    assert logs.returncode == 0, logs.stderr
    unserved = lab.kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/no-such-kubelet-path", check=False)
    assert unserved.returncode != 0 and "NotFound" in unserved.stderr  # the kubelet's own 404, passed through
    no_node = lab.kubectl("get", "--raw", "/api/v1/nodes/nope/proxy/", check=False)
    assert 'nodes "nope" not found' in no_node.stderr


def test_cluster_info_dns_url_answers_like_kube(lab: Lab) -> None:
    def dns_endpoint() -> bool:
        eps = lab.get("endpoints", "kube-dns", "-n", "kube-system")
        return any(subset.get("addresses") for subset in eps.get("subsets") or [])

    wait_for(dns_endpoint, timeout=60, what="a ready CoreDNS endpoint")
    url = "/api/v1/namespaces/kube-system/services/kube-dns:dns/proxy"
    assert url in lab.kubectl("cluster-info").stdout
    res = lab.kubectl("get", "--raw", url, check=False)
    # CoreDNS's dns port does not speak HTTP: kube-apiserver answers 503 "error trying to reach service"
    assert res.returncode != 0 and "ServiceUnavailable" in res.stderr, res.stderr
    raw = lab.kubectl("get", "--raw", url, "-v=8", check=False).stderr
    assert "error trying to reach service" in raw, raw[-2000:]


def test_local_path_claim_is_provisioned_on_the_pods_node(lab: Lab) -> None:
    lab.wait_pods_ready("app=user", 1, timeout=60)
    claim = wait_for(
        lambda: (c := lab.get("pvc", "data"))["status"].get("phase") == "Bound" and c, timeout=30, what="claim Bound"
    )
    assert claim["spec"]["storageClassName"] == "local-path"  # the default class, given by admission
    assert claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "node2"
    pv_name = f"pvc-{claim['metadata']['uid']}"
    assert claim["spec"]["volumeName"] == pv_name and claim["status"]["capacity"] == {"storage": "128Mi"}
    pv = lab.get("pv", pv_name)
    assert pv["spec"]["hostPath"]["path"] == f"/var/lib/kwire/storage/{pv_name}_default_data"
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node2"]}]}]
    assert pv["status"]["phase"] == "Bound" and pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    table = lab.kubectl("get", "pvc", "data").stdout.splitlines()[1].split()
    assert table[:5] == ["data", "Bound", pv_name, "128Mi", "RWO"]
    lab.kubectl("delete", "pod", "user", "--wait=true", "--timeout=60s")
    lab.kubectl("delete", "pvc", "data")
    wait_for(lambda: lab.kubectl("get", "pv", pv_name, check=False).returncode != 0, timeout=30, what="PV deleted")
