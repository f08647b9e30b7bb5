"""The real kubectl against a real `kwire server`: apply, re-apply, get, describe, delete, watch, dry-run, errors."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests import UPSTREAM
from tests.integration.apiserver import KUBECTL, ServerProcess

pytestmark = pytest.mark.kubectl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_bootstrap_objects(server: ServerProcess) -> None:
    out = server.kubectl("get", "ns").stdout
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        assert ns in out
    svc = json.loads(server.kubectl("get", "svc", "kubernetes", "-o", "json").stdout)
    assert svc["spec"]["clusterIP"] == "10.43.0.1"
    assert svc["spec"]["ports"][0]["port"] == 443
    ep = json.loads(server.kubectl("get", "endpoints", "kubernetes", "-o", "json").stdout)
    assert ep["subsets"][0]["ports"][0]["port"] == server.port


def test_apply_examples_and_table_columns(server: ServerProcess) -> None:
    # MetalLB's kinds come from its CRDs (applied unchanged from the upstream manifest), as on a real cluster.
    upstream = UPSTREAM / "metallb-native-v0.14.9.yaml"
    crds = [d for d in yaml.safe_load_all(upstream.read_text()) if d and d["kind"] == "CustomResourceDefinition"]
    server.apply(yaml.safe_dump_all(crds))
    for name in (
        "services.yaml",
        "deployment.yaml",
        "ingress.yaml",
        "networkpolicies.yaml",
        "configmap.yaml",
        "metallb.yaml",
    ):
        res = server.kubectl("apply", "-f", str(EXAMPLES / name))
        assert "created" in res.stdout or "unchanged" in res.stdout, res.stdout
    out = server.kubectl("get", "svc", "-A").stdout.splitlines()
    assert out[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    rows = {line.split()[1]: line.split() for line in out[1:]}
    assert rows["kubernetes"][2:6] == ["ClusterIP", "10.43.0.1", "<none>", "443/TCP"]
    assert rows["my-nodeport"][2] == "NodePort" and rows["my-nodeport"][5] == "80:30080/TCP"
    assert rows["my-lb"][2] == "LoadBalancer" and rows["my-lb"][4] == "<pending>"
    assert rows["my-database"][2:5] == ["ExternalName", "<none>", "db.example.com"]
    assert rows["my-service"][3].startswith("10.43.")
    pol = server.kubectl("get", "networkpolicy").stdout
    assert "default-deny-ingress" in pol and "app=api" in pol
    assert "picluster-pool" in server.kubectl("get", "ipaddresspools", "-n", "metallb-system").stdout
    assert "myapp.example.com" in server.kubectl("get", "ingress").stdout


def test_reapply_changed_manifest_updates(server: ServerProcess) -> None:
    manifest = (EXAMPLES / "deployment.yaml").read_text()
    server.apply(manifest)
    before = json.loads(server.kubectl("get", "deploy", "my-app", "-o", "json").stdout)
    changed = manifest.replace("replicas: 3", "replicas: 5").replace("nginx:1.27", "nginx:1.28")
    res = server.kubectl("apply", "-f", "-", input=changed)
    assert "configured" in res.stdout
    after = json.loads(server.kubectl("get", "deploy", "my-app", "-o", "json").stdout)
    assert after["spec"]["replicas"] == 5
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.28"
    assert after["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 8080
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    # Unchanged re-apply changes nothing.
    assert "unchanged" in server.kubectl("apply", "-f", "-", input=changed).stdout


def test_reapply_service_removing_a_port(server: ServerProcess) -> None:
    two = """
apiVersion: v1
kind: Service
metadata: {name: twoports}
spec:
  selector: {app: x}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
"""
    server.apply(two)
    ip = json.loads(server.kubectl("get", "svc", "twoports", "-o", "json").stdout)["spec"]["clusterIP"]
    one = two.replace("  - {name: https, port: 443, targetPort: 8443}\n", "")
    server.apply(one)
    svc = json.loads(server.kubectl("get", "svc", "twoports", "-o", "json").stdout)
    assert [p["port"] for p in svc["spec"]["ports"]] == [80]
    assert svc["spec"]["clusterIP"] == ip


def test_describe_and_label_selectors(server: ServerProcess) -> None:
    server.kubectl("create", "configmap", "sel-a", "--from-literal=k=v")
    server.kubectl("label", "configmap", "sel-a", "tier=web", "env=prod")
    server.kubectl("create", "configmap", "sel-b", "--from-literal=k=v")
    server.kubectl("label", "configmap", "sel-b", "tier=db")
    names = lambda sel: server.kubectl("get", "cm", "-l", sel, "-o", "name").stdout.split()  # noqa: E731
    assert names("tier=web") == ["configmap/sel-a"]
    assert names("tier!=web") and "configmap/sel-a" not in names("tier!=web")
    assert set(names("tier in (web,db)")) == {"configmap/sel-a", "configmap/sel-b"}
    assert names("tier notin (web),tier") == ["configmap/sel-b"]
    assert names("env") == ["configmap/sel-a"]
    assert "configmap/sel-a" not in names("!env")
    out = server.kubectl("describe", "svc", "my-nodeport").stdout
    assert "Type:" in out and "NodePort" in out and "30080/TCP" in out


def test_delete_collection_deletes_what_the_selector_matches(server: ServerProcess) -> None:
    for name, tier in (("dc-a", "gone"), ("dc-b", "gone"), ("dc-c", "kept")):
        server.kubectl("create", "configmap", name, "--from-literal=k=v")
        server.kubectl("label", "configmap", name, f"dctier={tier}")
    res = server.kubectl("delete", "--raw", "/api/v1/namespaces/default/configmaps?labelSelector=dctier%3Dgone")
    gone = json.loads(res.stdout)
    assert gone["kind"] == "ConfigMapList"
    assert sorted(o["metadata"]["name"] for o in gone["items"]) == ["dc-a", "dc-b"]
    assert server.kubectl("get", "cm", "-l", "dctier", "-o", "name").stdout.split() == ["configmap/dc-c"]


def test_dry_run_server_stores_nothing(server: ServerProcess) -> None:
    res = server.kubectl("create", "configmap", "dry", "--from-literal=a=b", "--dry-run=server", "-o", "json")
    assert json.loads(res.stdout)["metadata"]["name"] == "dry"
    got = server.kubectl("get", "cm", "dry", check=False)
    assert got.returncode != 0 and 'configmaps "dry" not found' in got.stderr


def test_bad_manifests_get_kubectl_errors_and_store_nothing(server: ServerProcess) -> None:
    bad_port = """
apiVersion: v1
kind: Service
metadata: {name: badport}
spec:
  ports: [{port: 0}]
"""
    res = server.kubectl("apply", "-f", "-", input=bad_port, check=False)
    assert res.returncode != 0
    assert 'The Service "badport" is invalid' in res.stderr
    assert "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive" in res.stderr
    bad_name = bad_port.replace("badport", "Bad_Name").replace("port: 0", "port: 80")
    res = server.kubectl("apply", "-f", "-", input=bad_name, check=False)
    assert res.returncode != 0 and "metadata.name: Invalid value" in res.stderr
    taken = """
apiVersion: v1
kind: Service
metadata: {name: taken}
spec:
  type: NodePort
  ports: [{port: 80, nodePort: 30080}]
"""
    res = server.kubectl("apply", "-f", "-", input=taken, check=False)
    assert "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated" in res.stderr
    out_of_range = taken.replace("30080", "40000").replace("taken", "outofrange")
    res = server.kubectl("apply", "-f", "-", input=out_of_range, check=False)
    assert "provided port is not in the valid range. The range of valid ports is 30000-32767" in res.stderr
    for name in ("badport", "taken", "outofrange"):
        assert server.kubectl("get", "svc", name, check=False).returncode != 0
    res = server.kubectl("create", "configmap", "sel-a", check=False)
    assert 'configmaps "sel-a" already exists' in res.stderr


def test_cluster_ip_immutable(server: ServerProcess) -> None:
    res = server.kubectl("patch", "svc", "my-service", "-p", '{"spec":{"clusterIP":"10.43.99.99"}}', check=False)
    assert res.returncode != 0 and "spec.clusterIP" in res.stderr and "field is immutable" in res.stderr


def test_get_watch_receives_change(server: ServerProcess) -> None:
    server.kubectl("create", "configmap", "watched", "--from-literal=a=1")
    env = {"KUBECONFIG": str(server.kubeconfig), "HOME": str(server.data_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [
            KUBECTL,
            "--cache-dir",
            str(server.data_dir / "kubecache"),
            "get",
            "cm",
            "watched",
            "-w",
            "-o",
            'jsonpath={.data.a}{"\\n"}',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        time.sleep(1.0)
        server.kubectl("patch", "cm", "watched", "-p", '{"data":{"a":"2"}}')
        assert proc.stdout is not None
        seen = [proc.stdout.readline().strip() for _ in range(2)]
        assert seen == ["1", "2"]
    finally:
        proc.terminate()
        proc.wait(5)


def test_get_watch_table_output(server: ServerProcess) -> None:
    env = {"KUBECONFIG": str(server.kubeconfig), "HOME": str(server.data_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [KUBECTL, "--cache-dir", str(server.data_dir / "kubecache"), "get", "svc", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        header = proc.stdout.readline().split()
        assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
        server.kubectl("create", "service", "clusterip", "watchsvc", "--tcp=8080:80")
        for _ in range(50):
            line = proc.stdout.readline()
            if line.startswith("watchsvc"):
                assert "ClusterIP" in line and "8080/TCP" in line
                break
        else:
            pytest.fail("watch never showed watchsvc")
    finally:
        proc.terminate()
        proc.wait(5)


def test_delete_deployment_collects_dependents(server: ServerProcess) -> None:
    server.kubectl("create", "deployment", "gc-owner", "--image=nginx")
    owner = json.loads(server.kubectl("get", "deploy", "gc-owner", "-o", "json").stdout)
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "gc-owner-abc",
            "labels": {"app": "gc-owner"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": "gc-owner",
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "gc-owner"}},
            "template": {
                "metadata": {"labels": {"app": "gc-owner"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    }
    server.kubectl("create", "-f", "-", input=json.dumps(rs))
    rs_obj = json.loads(server.kubectl("get", "rs", "gc-owner-abc", "-o", "json").stdout)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "gc-owner-abc-xyz",
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "gc-owner-abc",
                    "uid": rs_obj["metadata"]["uid"],
                }
            ],
        },
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }
    server.kubectl("create", "-f", "-", input=json.dumps(pod))
    out = server.kubectl("delete", "deploy", "gc-owner").stdout
    assert 'deployment.apps "gc-owner" deleted' in out
    for _ in range(50):
        rs_gone = server.kubectl("get", "rs", "gc-owner-abc", check=False).returncode != 0
        pod_gone = server.kubectl("get", "pod", "gc-owner-abc-xyz", check=False).returncode != 0
        if rs_gone and pod_gone:
            break
        time.sleep(0.1)
    else:
        pytest.fail("dependents of the deleted Deployment were not collected")


def test_namespace_deletion_removes_its_objects(server: ServerProcess) -> None:
    server.kubectl("create", "namespace", "doomed")
    server.kubectl("create", "configmap", "c1", "-n", "doomed", "--from-literal=a=b")
    server.kubectl("create", "service", "clusterip", "s1", "-n", "doomed", "--tcp=80:80")
    ip = json.loads(server.kubectl("get", "svc", "s1", "-n", "doomed", "-o", "json").stdout)["spec"]["clusterIP"]
    server.kubectl("delete", "namespace", "doomed", timeout=60)
    assert server.kubectl("get", "ns", "doomed", check=False).returncode != 0
    assert server.kubectl("get", "cm", "c1", "-n", "doomed", check=False).returncode != 0
    # The deleted Service's ClusterIP is free again: it can be requested explicitly.
    reuse = f'{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"reuse"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":80}}]}}}}'
    server.kubectl("create", "-f", "-", input=reuse)


def test_unauthenticated_requests_are_refused(server: ServerProcess) -> None:
    res = subprocess.run(
        [KUBECTL, "--server", server.url, "--insecure-skip-tls-verify", "--token", "wrong", "get", "ns"],
        capture_output=True,
        text=True,
        env={"HOME": str(server.data_dir), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert res.returncode != 0
    assert "Unauthorized" in res.stderr or "provide credentials" in res.stderr


def test_typed_create_subcommands_scale_and_expose(server: ServerProcess) -> None:
    # kubectl's typed `create` subcommands send protobuf bodies; `scale` uses the scale subresource.
    server.kubectl("create", "namespace", "typed")
    server.kubectl("-n", "typed", "create", "deployment", "web", "--image=nginx", "--replicas=3", "--port=80")
    server.kubectl("-n", "typed", "create", "configmap", "cfg", "--from-literal=a=b")
    server.kubectl("-n", "typed", "create", "secret", "generic", "sec", "--from-literal=x=y")
    server.kubectl("-n", "typed", "create", "service", "nodeport", "np", "--tcp=80:8080", "--node-port=30990")
    server.kubectl("-n", "typed", "create", "service", "externalname", "ext", "--external-name=example.com")
    server.kubectl("-n", "typed", "create", "ingress", "ing", "--rule=foo.com/bar=np:80", "--class=traefik")
    dup = server.kubectl(
        "-n", "typed", "create", "service", "nodeport", "np2", "--tcp=80:8080", "--node-port=30990", check=False
    )
    assert dup.returncode != 0
    assert "spec.ports[0].nodePort: Invalid value: 30990: provided port is already allocated" in dup.stderr
    server.kubectl("-n", "typed", "scale", "deployment", "web", "--replicas=1")
    dep = json.loads(server.kubectl("-n", "typed", "get", "deploy", "web", "-o", "json").stdout)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    stale = server.kubectl(
        "-n", "typed", "scale", "deployment", "web", "--current-replicas=3", "--replicas=2", check=False
    )
    assert stale.returncode != 0 and "Expected replicas to be 3, was 1" in stale.stderr
    server.kubectl("-n", "typed", "expose", "deployment", "web", "--port=8080", "--target-port=80", "--name=web")
    svc = json.loads(server.kubectl("-n", "typed", "get", "svc", "web", "-o", "json").stdout)
    assert svc["spec"]["selector"] == {"app": "web"} and svc["spec"]["clusterIP"].startswith("10.43.")
    assert json.loads(server.kubectl("-n", "typed", "get", "secret", "sec", "-o", "json").stdout)["data"] == {
        "x": "eQ=="
    }
    ext = json.loads(server.kubectl("-n", "typed", "get", "svc", "ext", "-o", "json").stdout)
    assert "clusterIP" not in ext["spec"] and ext["spec"]["externalName"] == "example.com"
    ing = json.loads(server.kubectl("-n", "typed", "get", "ingress", "ing", "-o", "json").stdout)
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {"name": "np", "port": {"number": 80}}
