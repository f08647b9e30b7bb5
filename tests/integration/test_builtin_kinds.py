"""The built-in kinds manifests carry, driven by kubectl 1.32 and the official Python client against a real
`kwire server`: RBAC (create subcommands, tables, roleRef immutability, aggregation), Secrets of every type,
PriorityClass, quota, LimitRange, HPA v2/v1, storage, CSR approval, webhook configurations, events.k8s.io;
--sort-by tables, field selector errors, health checks, /metrics, proxy errors and unknown kinds."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.apiserver import ServerProcess
from tests.integration.labkit import wait_for

pytestmark = pytest.mark.kubectl


def _table(server: ServerProcess, *args: str) -> list[list[str]]:
    out = server.kubectl("get", *args).stdout.splitlines()
    return [line.split() for line in out if line.strip()]


def test_rbac_create_subcommands_tables_and_role_ref(server: ServerProcess) -> None:
    k = server.kubectl
    k("create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods")
    k("create", "rolebinding", "read-pods", "--role=pod-reader", "--user=alice", "--serviceaccount=default:robot")
    k("create", "clusterrole", "node-viewer", "--verb=get,list", "--resource=nodes")
    k("create", "clusterrolebinding", "view-nodes", "--clusterrole=node-viewer", "--group=ops")
    role = json.loads(k("get", "role", "pod-reader", "-o", "json").stdout)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    header, row = _table(server, "rolebinding", "read-pods", "-o", "wide")
    assert header == ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    assert row[:2] == ["read-pods", "Role/pod-reader"] and row[-2:] == ["alice", "default:robot"]
    assert _table(server, "clusterrole", "node-viewer")[0] == ["NAME", "CREATED", "AT"]
    assert _table(server, "clusterrolebinding", "view-nodes")[1][1] == "ClusterRole/node-viewer"
    changed = k(
        "create", "rolebinding", "read-pods", "--clusterrole=view", "--user=alice", "--dry-run=client", "-o", "yaml"
    )
    res = k("replace", "-f", "-", input=changed.stdout, check=False)
    assert res.returncode != 0
    assert "roleRef: Invalid value" in res.stderr and "cannot change roleRef" in res.stderr
    res = k(
        "apply",
        "-f",
        "-",
        input="apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: bad}\n"
        "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: x}\n"
        "subjects: [{kind: ServiceAccount, name: robot}]\n",
        check=False,
    )
    assert 'roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole"' in res.stderr
    assert "subjects[0].namespace: Required value" in res.stderr


def test_clusterrole_aggregation_follows_labelled_roles(server: ServerProcess) -> None:
    server.kubectl("create", "clusterrole", "monitoring", "--aggregation-rule=rbac.example.com/agg=true")
    server.kubectl("create", "clusterrole", "monitoring-pods", "--verb=get", "--resource=pods")
    server.kubectl("label", "clusterrole", "monitoring-pods", "rbac.example.com/agg=true")

    def rules() -> list:
        return json.loads(server.kubectl("get", "clusterrole", "monitoring", "-o", "json").stdout).get("rules") or []

    assert wait_for(rules, timeout=30, what="aggregated rules") == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    ]
    server.kubectl("delete", "clusterrole", "monitoring-pods")
    wait_for(lambda: rules() == [], timeout=30, what="rules of a deleted role removed")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from kwire.base import pki

    key = pki.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web.example.com")])
    cert = pki.issue(subject=name, public_key=key.public_key(), issuer=name, signer=key, days=1, ca=None)
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(pki.cert_pem(cert))
    key_path.write_bytes(pki.key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_secret_types_string_data_and_errors(server: ServerProcess, tmp_path: Path) -> None:
    k = server.kubectl
    k("create", "secret", "generic", "lit", "--from-literal=user=admin")
    assert json.loads(k("get", "secret", "lit", "-o", "json").stdout)["data"] == {"user": "YWRtaW4="}
    cert, key = _self_signed(tmp_path)
    k("create", "secret", "tls", "web-tls", f"--cert={cert}", f"--key={key}")  # a protobuf Secret
    assert _table(server, "secret", "web-tls")[1][1:3] == ["kubernetes.io/tls", "2"]
    res = k(
        "apply",
        "-f",
        "-",
        input="apiVersion: v1\nkind: Secret\nmetadata: {name: half-tls}\ntype: kubernetes.io/tls\n"
        "data: {tls.crt: eA==}\n",
        check=False,
    )
    assert 'The Secret "half-tls" is invalid: data[tls.key]: Required value' in res.stderr
    res = k(
        "apply",
        "-f",
        "-",
        check=False,
        input="apiVersion: v1\nkind: Secret\nmetadata: {name: raw}\ndata: {a: not base64}\n",
    )
    assert 'Secret in version "v1" cannot be handled as a Secret: illegal base64 data at input byte 3' in res.stderr
    k("apply", "-f", "-", input="apiVersion: v1\nkind: Secret\nmetadata: {name: sd}\nstringData: {pw: s3cret}\n")
    got = json.loads(k("get", "secret", "sd", "-o", "json").stdout)
    assert got["data"] == {"pw": "czNjcmV0"} and "stringData" not in got
    k(
        "create",
        "secret",
        "docker-registry",
        "reg",
        "--docker-server=r.io",
        "--docker-username=u",
        "--docker-password=p",
    )
    assert _table(server, "secret", "reg")[1][1] == "kubernetes.io/dockerconfigjson"
    k(
        "apply",
        "-f",
        "-",
        input="apiVersion: v1\nkind: Secret\nmetadata: {name: frozen}\nimmutable: true\ndata: {a: eA==}\n",
    )
    res = k("patch", "secret", "frozen", "-p", '{"data":{"a":"eQ=="}}', check=False)
    assert "data: Forbidden: field is immutable when `immutable` is set" in res.stderr


def test_priorityclass_quota_limitrange(server: ServerProcess) -> None:
    k = server.kubectl
    names = [r[0] for r in _table(server, "priorityclass")[1:]]
    assert {"system-cluster-critical", "system-node-critical"} <= set(names)
    k("create", "priorityclass", "high", "--value=1000", "--description=important", "--preemption-policy=Never")
    header, row = _table(server, "pc", "high")
    assert header == ["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"]
    assert row[:3] + row[4:] == ["high", "1000", "false", "Never"]
    res = k("create", "priorityclass", "too-high", "--value=2000000000", check=False)
    assert "value: Forbidden: maximum allowed value of a user defined priority is 1000000000" in res.stderr
    k("create", "namespace", "quota")
    k("create", "quota", "compute", "-n", "quota", "--hard=pods=2,requests.cpu=2,limits.memory=1Gi,configmaps=3")
    header, row = _table(server, "quota", "compute", "-n", "quota")
    assert header == ["NAME", "AGE", "REQUEST", "LIMIT"]
    assert " ".join(row[2:]) == "configmaps: 0/3, pods: 0/2, requests.cpu: 0/2 limits.memory: 0/1Gi"
    k("create", "configmap", "one", "-n", "quota", "--from-literal=a=b")
    sized = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME, namespace: quota}\nspec:\n  containers:\n"
        "  - {name: c, image: nginx, resources: {requests: {cpu: 250m}, limits: {cpu: 250m, memory: 256Mi}}}\n"
    )
    k("apply", "-f", "-", input=sized.replace("NAME", "sized"))

    def used() -> dict:
        quota = json.loads(k("get", "quota", "compute", "-n", "quota", "-o", "json").stdout)
        return quota.get("status", {}).get("used") or {}

    wait_for(
        lambda: used() == {"configmaps": "1", "pods": "1", "requests.cpu": "250m", "limits.memory": "256Mi"},
        timeout=30,
        what="quota status.used",
    )
    row = _table(server, "quota", "compute", "-n", "quota")[1]
    assert " ".join(row[2:]) == "configmaps: 1/3, pods: 1/2, requests.cpu: 250m/2 limits.memory: 256Mi/1Gi"
    res = k("run", "bare", "-n", "quota", "--image=nginx", check=False)
    assert (
        'pods "bare" is forbidden: failed quota: compute: must specify limits.memory for: bare; requests.cpu for: bare'
        in res.stderr
    )
    k("apply", "-f", "-", input=sized.replace("NAME", "second"))
    res = k("apply", "-f", "-", input=sized.replace("NAME", "third"), check=False)
    assert (
        'pods "third" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2'
        in res.stderr
    )
    k(
        "apply",
        "-f",
        "-",
        input="apiVersion: v1\nkind: LimitRange\nmetadata: {name: lr}\nspec:\n  limits:\n"
        "  - {type: Container, max: {cpu: '1'}}\n",
    )
    lr = json.loads(k("get", "limits", "lr", "-o", "json").stdout)
    assert lr["spec"]["limits"][0]["default"] == {"cpu": "1"}
    assert lr["spec"]["limits"][0]["defaultRequest"] == {"cpu": "1"}


def test_hpa_both_versions_storage_csr_webhooks_events(server: ServerProcess, tmp_path: Path) -> None:
    k = server.kubectl
    k("create", "deployment", "web", "--image=nginx")
    k("autoscale", "deployment", "web", "--min=2", "--max=5", "--cpu-percent=70")
    assert _table(server, "hpa", "web")[1][:6] == ["web", "Deployment/web", "cpu:", "<unknown>/70%", "2", "5"]
    v2 = json.loads(k("get", "--raw", "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web").stdout)
    assert v2["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    v1 = json.loads(k("get", "--raw", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web").stdout)
    assert v1["apiVersion"] == "autoscaling/v1" and v1["spec"]["targetCPUUtilizationPercentage"] == 70
    sc = _table(server, "storageclass")
    assert (
        sc[1][:4] == ["local-path", "(default)", "rancher.io/local-path", "Delete"]
        and sc[1][4] == "WaitForFirstConsumer"
    )
    k(
        "apply",
        "-f",
        "-",
        input="apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n"
        "  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    )
    assert _table(server, "pvc", "data")[1][:3] == ["data", "Pending", "local-path"]
    k(
        "apply",
        "-f",
        "-",
        input="apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv1}\nspec:\n"
        "  capacity: {storage: 5Gi}\n  accessModes: [ReadWriteOnce, ReadOnlyMany]\n  hostPath: {path: /tmp/x}\n",
    )
    assert _table(server, "pv", "pv1")[1][:5] == ["pv1", "5Gi", "RWO,ROX", "Retain", "Pending"]
    csr_pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\nMIHJMHECAQAwDzENMAsGA1UEAwwEamFuZTBZMBMGByqGSM49AgEGCCqGSM49AwEH\n"
        "-----END CERTIFICATE REQUEST-----\n"
    )
    request = base64.b64encode(csr_pem.encode()).decode()
    k(
        "apply",
        "-f",
        "-",
        input=f"apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\n"
        f"metadata: {{name: jane}}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n"
        "  usages: [client auth]\n",
    )
    assert _table(server, "csr", "jane")[1][-1] == "Pending"
    k("certificate", "approve", "jane")  # PUT .../approval with a protobuf body
    assert _table(server, "csr", "jane")[1][-1] == "Approved"
    res = k(
        "apply",
        "-f",
        "-",
        check=False,
        input="apiVersion: admissionregistration.k8s.io/v1\n"
        "kind: ValidatingWebhookConfiguration\nmetadata: {name: vw}\nwebhooks:\n- name: v.example.com\n"
        "  clientConfig: {service: {name: s, namespace: default}}\n  admissionReviewVersions: [v1]\n",
    )
    assert "webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun" in res.stderr
    k(
        "apply",
        "-f",
        "-",
        input="apiVersion: admissionregistration.k8s.io/v1\n"
        "kind: ValidatingWebhookConfiguration\nmetadata: {name: vw}\nwebhooks:\n- name: v.example.com\n"
        "  clientConfig: {service: {name: s, namespace: default}}\n  admissionReviewVersions: [v1]\n  sideEffects: None\n",
    )
    vw = json.loads(k("get", "validatingwebhookconfiguration", "vw", "-o", "json").stdout)["webhooks"][0]
    assert (vw["failurePolicy"], vw["timeoutSeconds"], vw["clientConfig"]["service"]["port"]) == ("Fail", 10, 443)
    k(
        "apply",
        "-f",
        "-",
        input="apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: ev1}\n"
        "eventTime: '2026-01-01T00:00:00.000000Z'\nreportingController: tester\nreportingInstance: t-1\n"
        "action: Test\nreason: Tested\ntype: Normal\nnote: hello\nregarding: {kind: Pod, name: p1, namespace: default}\n",
    )
    core = json.loads(k("get", "--raw", "/api/v1/namespaces/default/events/ev1").stdout)
    assert (core["message"], core["involvedObject"]["name"], core["reportingComponent"]) == ("hello", "p1", "tester")
    assert "ev1" in k("get", "events").stdout
    listed = json.loads(k("get", "--raw", "/apis/events.k8s.io/v1/namespaces/default/events").stdout)["items"]
    (mine,) = [e for e in listed if e["metadata"]["name"] == "ev1"]
    assert (mine["apiVersion"], mine["note"], mine["regarding"]["name"]) == ("events.k8s.io/v1", "hello", "p1")


def test_sort_by_and_field_selectors(server: ServerProcess) -> None:
    k = server.kubectl
    for name in ("zeta", "alpha"):
        k("run", name, "--image=nginx")
    out = k("get", "pods", "--sort-by=.metadata.name", "-o", "name").stdout.split()
    pods = [p for p in out if p in ("pod/alpha", "pod/zeta")]
    assert pods == ["pod/alpha", "pod/zeta"]
    rows = [line.split()[0] for line in k("get", "pods", "--sort-by=.metadata.name").stdout.splitlines()[1:]]
    assert rows.index("alpha") < rows.index("zeta")  # a Table sorted by kubectl from includeObject=Object rows
    # No kubelet runs here: write the startTime a kubelet would (zeta started first).
    for name, started in (("zeta", "2026-01-01T00:00:00Z"), ("alpha", "2026-01-01T00:05:00Z")):
        k(
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"startTime": started}}),
        )
    rows = [line.split()[0] for line in k("get", "pods", "--sort-by=.status.startTime").stdout.splitlines()[1:]]
    assert rows.index("zeta") < rows.index("alpha")
    events = k("get", "events", "--sort-by=.lastTimestamp").stdout
    assert "REASON" in events and "No resources found" not in events
    res = k("get", "pods", "--field-selector=spec.foo=x", check=False)
    assert res.returncode != 0 and "field label not supported: spec.foo" in res.stderr
    assert k("get", "pods", "--field-selector=metadata.name=alpha", "-o", "name").stdout.split() == ["pod/alpha"]
    res = k("get", "events", "--field-selector=involvedObject.name=alpha,involvedObject.kind=Pod", "-o", "name")
    assert res.returncode == 0


def _public_get(server: ServerProcess, path: str) -> tuple[int, str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(server.url + path, context=ctx, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_checks_and_metrics(server: ServerProcess) -> None:
    code, body = _public_get(server, "/readyz?verbose")
    assert code == 200
    lines = body.strip().splitlines()
    assert lines[0] == "[+]ping ok" and "[+]etcd ok" in lines and "[+]shutdown ok" in lines
    assert lines[-1] == "readyz check passed"
    code, body = _public_get(server, "/livez?verbose")
    assert body.strip().splitlines()[-1] == "livez check passed" and "[+]shutdown ok" not in body
    assert _public_get(server, "/readyz/etcd") == (200, "ok")
    assert _public_get(server, "/readyz/nope")[0] == 404
    assert _public_get(server, "/readyz?exclude=etcd&verbose")[1].count("[+]etcd excluded: ok") == 1
    assert _public_get(server, "/metrics")[0] == 401  # authenticated, as kube-apiserver's
    server.kubectl("get", "configmaps")
    metrics = server.kubectl("get", "--raw", "/metrics").stdout
    assert (
        'apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="configmaps",'
        'scope="namespace",subresource="",verb="LIST",version="v1"}' in metrics
    )
    assert 'apiserver_request_duration_seconds_bucket{component="apiserver",dry_run="",group="",le="0.005"' in metrics
    assert 'apiserver_current_inflight_requests{request_kind="readOnly"}' in metrics
    namespaces = len(server.kubectl("get", "namespaces", "-o", "name").stdout.split())
    assert f'apiserver_storage_objects{{resource="namespaces"}} {namespaces}.0' in metrics


def test_proxy_answers_and_unknown_kinds_404(server: ServerProcess) -> None:
    info = server.kubectl("cluster-info").stdout
    assert "/api/v1/namespaces/kube-system/services/kube-dns:dns/proxy" in info
    res = server.kubectl("get", "--raw", "/api/v1/namespaces/kube-system/services/kube-dns:dns/proxy", check=False)
    assert res.returncode != 0 and "ServiceUnavailable" in res.stderr  # no CoreDNS pod runs without nodes
    res = server.kubectl("get", "--raw", "/api/v1/namespaces/default/services/nope:80/proxy/", check=False)
    assert 'services "nope" not found' in res.stderr
    for path in ("/apis/widgets.example.com/v1", "/apis/widgets.example.com/v1/namespaces/default/widgets"):
        res = server.kubectl("get", "--raw", path, check=False)
        assert "NotFound" in res.stderr
    res = server.kubectl("get", "widgets", check=False)
    assert 'the server doesn\'t have a resource type "widgets"' in res.stderr


def test_python_client_rbac_crud(server: ServerProcess) -> None:
    from kubernetes import client, config

    api = client.RbacAuthorizationV1Api(config.new_client_from_config(config_file=str(server.kubeconfig)))
    role = client.V1Role(
        metadata=client.V1ObjectMeta(name="py-role"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get"])],
    )
    api.create_namespaced_role("default", role)
    got = api.read_namespaced_role("py-role", "default")
    assert got.rules[0].resources == ["configmaps"]
    got.rules[0].verbs = ["get", "list"]
    api.replace_namespaced_role("py-role", "default", got)
    binding = client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="py-binding"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="py-role"),
        subjects=[client.RbacV1Subject(kind="User", name="bob", api_group="rbac.authorization.k8s.io")],
    )
    api.create_namespaced_role_binding("default", binding)
    assert [b.metadata.name for b in api.list_namespaced_role_binding("default").items].count("py-binding") == 1
    assert api.read_namespaced_role("py-role", "default").rules[0].verbs == ["get", "list"]
    api.delete_namespaced_role_binding("py-binding", "default")
    api.delete_namespaced_role("py-role", "default")
    with pytest.raises(client.ApiException) as exc:
        api.read_namespaced_role("py-role", "default")
    assert exc.value.status == 404
    crb = api.list_cluster_role_binding()
    assert any(b.metadata.name == "view-nodes" for b in crb.items)
