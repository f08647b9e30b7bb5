"""Authorization as a user sees it, through the real kubectl 1.32 and `--as` impersonation: an RBAC matrix for a
namespaced ServiceAccount, aggregation into view, escalation refused, `kubectl auth can-i [--list]`, a node that
cannot read unrelated Secrets or touch another Node, upstream MetalLB RBAC taking effect, and kube's 403 body."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from tests import UPSTREAM
from tests.integration.apiserver import ServerProcess, running_server

pytestmark = pytest.mark.kubectl

BOT = "system:serviceaccount:team-a:bot"
NODE = ("--as", "system:node:n1", "--as-group", "system:nodes")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("server")) as srv:
        srv.kubectl("create", "namespace", "team-a")
        srv.kubectl("create", "namespace", "team-b")
        srv.kubectl("-n", "team-a", "create", "serviceaccount", "bot")
        yield srv


def can_i(server: ServerProcess, *args: str, who: str = BOT) -> bool:
    res = server.kubectl("auth", "can-i", *args, "--as", who, check=False)
    assert res.stdout.strip() in ("yes", "no"), res.stdout + res.stderr
    assert res.returncode == (0 if res.stdout.strip() == "yes" else 1)
    return res.stdout.strip() == "yes"


def eventually(check: object, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def test_namespaced_service_account_can_do_exactly_what_its_role_grants(server: ServerProcess) -> None:
    server.kubectl("-n", "team-a", "create", "role", "worker", "--verb=get,list,watch", "--resource=pods")
    server.kubectl("-n", "team-a", "create", "role", "cm-writer", "--verb=create,update", "--resource=configmaps")
    server.kubectl("-n", "team-a", "create", "rolebinding", "worker", "--role=worker", "--serviceaccount=team-a:bot")
    server.kubectl("-n", "team-a", "create", "rolebinding", "cm", "--role=cm-writer", "--serviceaccount=team-a:bot")
    eventually(lambda: can_i(server, "list", "pods", "-n", "team-a"))
    matrix = {
        ("list", "pods", "team-a"): True,
        ("watch", "pods", "team-a"): True,
        ("get", "pods", "team-a"): True,
        ("delete", "pods", "team-a"): False,
        ("create", "configmaps", "team-a"): True,
        ("update", "configmaps", "team-a"): True,
        ("delete", "configmaps", "team-a"): False,
        ("get", "secrets", "team-a"): False,
        ("list", "pods", "team-b"): False,
        ("create", "configmaps", "team-b"): False,
        ("list", "nodes", ""): False,
    }
    for (verb, resource, ns), want in matrix.items():
        scope = ["-n", ns] if ns else []
        assert can_i(server, verb, resource, *scope) is want, (verb, resource, ns)
    assert not can_i(server, "get", "pods", "--subresource=log", "-n", "team-a")
    # what the user sees for real requests
    assert server.kubectl("get", "pods", "-n", "team-a", "--as", BOT).returncode == 0
    server.kubectl("create", "configmap", "made-by-bot", "-n", "team-a", "--as", BOT)
    res = server.kubectl("get", "pods", "-n", "team-b", "--as", BOT, check=False)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        'Error from server (Forbidden): pods is forbidden: User "system:serviceaccount:team-a:bot" cannot list '
        'resource "pods" in API group "" in the namespace "team-b"'
    )
    res = server.kubectl("get", "pods", "-n", "team-b", "--watch", "--as", BOT, check=False, timeout=20)
    assert res.returncode == 1 and "cannot watch resource" not in res.stderr and "Forbidden" in res.stderr
    res = server.kubectl("delete", "configmap", "made-by-bot", "-n", "team-a", "--as", BOT, check=False)
    assert 'cannot delete resource "configmaps" in API group "" in the namespace "team-a"' in res.stderr
    res = server.kubectl("get", "nodes", "--as", BOT, check=False)
    assert 'cannot list resource "nodes" in API group "" at the cluster scope' in res.stderr


def test_forbidden_is_kubes_status_object(server: ServerProcess) -> None:
    ctx = server.admin_ssl_context()  # the admin's client certificate (the cluster token opens no API)
    req = urllib.request.Request(
        f"{server.url}/apis/apps/v1/namespaces/team-b/deployments/web", headers={"Impersonate-User": "jane"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=ctx, timeout=10)
    assert err.value.code == 403
    body = json.loads(err.value.read())
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'deployments.apps "web" is forbidden: User "jane" cannot get resource "deployments" in API group '
        '"apps" in the namespace "team-b"',
        "reason": "Forbidden",
        "details": {"name": "web", "group": "apps", "kind": "deployments"},
        "code": 403,
    }


def test_aggregation_into_view_and_its_binding(server: ServerProcess) -> None:
    server.apply(
        yaml.safe_dump(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {
                    "name": "lease-reader",
                    "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"},
                },
                "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list"]}],
            }
        )
    )
    server.kubectl("-n", "team-a", "create", "rolebinding", "viewers", "--clusterrole=view", "--user=viv")
    # view aggregates it, edit aggregates view, admin aggregates edit
    eventually(lambda: can_i(server, "list", "leases.coordination.k8s.io", "-n", "team-a", who="viv"))
    assert can_i(server, "get", "deployments.apps", "-n", "team-a", who="viv")
    assert not can_i(server, "get", "secrets", "-n", "team-a", who="viv")
    assert not can_i(server, "list", "leases.coordination.k8s.io", "-n", "team-b", who="viv")
    admin = json.loads(server.kubectl("get", "clusterrole", "admin", "-o", "json").stdout)
    eventually(
        lambda: any(
            "leases" in r.get("resources", [])
            for r in json.loads(server.kubectl("get", "clusterrole", "admin", "-o", "json").stdout)["rules"]
        )
    )
    assert admin["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] == "true"


def test_escalation_is_refused_unless_held(server: ServerProcess) -> None:
    server.kubectl(
        "-n", "team-a", "create", "rolebinding", "bot-admin", "--clusterrole=admin", "--serviceaccount=team-a:bot"
    )
    eventually(lambda: can_i(server, "create", "rolebindings", "-n", "team-a"))
    # admin holds secrets: a role granting them is not an escalation
    server.kubectl("-n", "team-a", "create", "role", "secret-reader", "--verb=get", "--resource=secrets", "--as", BOT)
    res = server.kubectl(
        "-n",
        "team-a",
        "create",
        "rolebinding",
        "grab",
        "--clusterrole=cluster-admin",
        "--user=bot2",
        "--as",
        BOT,
        check=False,
    )
    assert res.returncode == 1
    assert (
        'rolebindings.rbac.authorization.k8s.io "grab" is forbidden: user "system:serviceaccount:team-a:bot" '
        '(groups=["system:serviceaccounts" "system:serviceaccounts:team-a" "system:authenticated"]) is attempting to '
        "grant RBAC permissions not currently held:\n"
        '{APIGroups:["*"], Resources:["*"], Verbs:["*"]}\n{NonResourceURLs:["*"], Verbs:["*"]}'
    ) in res.stderr
    res = server.kubectl(
        "-n", "team-a", "create", "role", "nodes", "--verb=get", "--resource=nodes", "--as", BOT, check=False
    )
    assert "is attempting to grant RBAC permissions not currently held" in res.stderr
    assert '{APIGroups:[""], Resources:["nodes"], Verbs:["get"]}' in res.stderr
    # and it is still admin only in its own namespace
    res = server.kubectl(
        "-n", "team-b", "create", "role", "x", "--verb=get", "--resource=pods", "--as", BOT, check=False
    )
    assert (
        'cannot create resource "roles" in API group "rbac.authorization.k8s.io" in the namespace "team-b"'
        in res.stderr
    )


def test_can_i_list(server: ServerProcess) -> None:
    out = server.kubectl("auth", "can-i", "--list", "--as", "nobody-special").stdout.splitlines()
    assert out[0].split() == ["Resources", "Non-Resource", "URLs", "Resource", "Names", "Verbs"]
    rows = [line.split() for line in out[1:]]
    assert ["selfsubjectaccessreviews.authorization.k8s.io", "[]", "[]", "[create]"] in rows
    assert ["selfsubjectrulesreviews.authorization.k8s.io", "[]", "[]", "[create]"] in rows
    assert ["[/version]", "[]", "[get]"] in rows and ["[/apis/*]", "[]", "[get]"] in rows
    assert not any("pods" in " ".join(r) for r in rows)
    rows = [
        line.split()
        for line in server.kubectl("auth", "can-i", "--list", "-n", "team-a", "--as", "viv").stdout.splitlines()
    ]
    assert ["leases.coordination.k8s.io", "[]", "[]", "[get", "list]"] in rows  # aggregated into view
    assert ["secrets", "[]", "[]", "[get", "list", "watch]"] not in rows
    admin = server.kubectl("auth", "can-i", "--list").stdout.splitlines()
    assert admin[1].split() == ["*.*", "[]", "[]", "[*]"]


def test_node_reads_only_what_its_pods_reference_and_writes_only_its_own(server: ServerProcess) -> None:
    for n in ("n1", "n2"):
        server.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}))
    server.kubectl("-n", "team-b", "create", "secret", "generic", "mounted", "--from-literal=k=v")
    server.kubectl("-n", "team-b", "create", "secret", "generic", "unrelated", "--from-literal=k=v")
    res = server.kubectl("-n", "team-b", "get", "secret", "mounted", *NODE, check=False)
    assert res.stderr.strip() == (
        'Error from server (Forbidden): secrets "mounted" is forbidden: User "system:node:n1" cannot get resource '
        '"secrets" in API group "" in the namespace "team-b": no relationship found between node \'n1\' and this object'
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "uses-secret", "namespace": "team-b"},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "c", "image": "nginx"}],
            "volumes": [{"name": "s", "secret": {"secretName": "mounted"}}],
        },
    }
    server.apply(yaml.safe_dump(pod))
    eventually(lambda: server.kubectl("-n", "team-b", "get", "secret", "mounted", *NODE, check=False).returncode == 0)
    assert server.kubectl("-n", "team-b", "get", "secret", "unrelated", *NODE, check=False).returncode == 1
    n2 = ("--as", "system:node:n2", "--as-group", "system:nodes")
    assert server.kubectl("-n", "team-b", "get", "secret", "mounted", *n2, check=False).returncode == 1
    assert server.kubectl("-n", "team-b", "get", "secrets", *NODE, check=False).returncode == 1
    # no ConfigMap its pods do not reference, not even the cluster settings (agents get them from /v1-k3s/config)
    res = server.kubectl("-n", "kube-system", "get", "configmap", "kwire-config", *NODE, check=False)
    assert "(Forbidden)" in res.stderr
    # its own Node yes, another's no; restricted labels never
    server.kubectl("label", "node", "n1", "mine=yes", *NODE)
    res = server.kubectl("label", "node", "n2", "mine=yes", *NODE, check=False)
    assert res.stderr.strip() == (
        'Error from server (Forbidden): nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"'
    )
    res = server.kubectl("label", "node", "n1", "node-restriction.kubernetes.io/pool=a", *NODE, check=False)
    assert "is not allowed to modify labels: node-restriction.kubernetes.io/pool" in res.stderr
    # pods: readable, not deletable when bound elsewhere, no creates
    assert server.kubectl("get", "pods", "-A", *NODE).returncode == 0
    res = server.kubectl("-n", "team-b", "delete", "pod", "uses-secret", *n2, check=False)
    assert 'node "n2" can only delete pods with spec.nodeName set to itself' in res.stderr
    res = server.kubectl("-n", "team-b", "run", "x", "--image=nginx", *NODE, check=False)
    assert res.returncode == 1 and "Forbidden" in res.stderr
    assert not can_i(server, "create", "deployments.apps", "-n", "team-b", who="system:node:n1")


def test_upstream_metallb_rbac_applies_and_takes_effect(server: ServerProcess) -> None:
    docs = [d for d in yaml.safe_load_all((UPSTREAM / "metallb-native-v0.14.9.yaml").read_text()) if d]
    rbac = [
        d
        for d in docs
        if d["kind"]
        in (
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "Role",
            "ClusterRole",
            "RoleBinding",
            "ClusterRoleBinding",
        )
    ]
    out = server.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac)).stdout
    assert "clusterrole.rbac.authorization.k8s.io/metallb-system:controller created" in out
    ctl = "system:serviceaccount:metallb-system:controller"
    speaker = "system:serviceaccount:metallb-system:speaker"
    eventually(lambda: can_i(server, "list", "services", who=ctl))
    assert can_i(server, "update", "services", "--subresource=status", who=ctl)
    assert not can_i(server, "update", "services", who=ctl)
    assert can_i(server, "create", "secrets", "-n", "metallb-system", who=ctl)
    assert not can_i(server, "get", "secrets", "-n", "default", who=ctl)
    assert can_i(server, "update", "validatingwebhookconfigurations/metallb-webhook-configuration", who=ctl)
    assert not can_i(server, "update", "validatingwebhookconfigurations/other", who=ctl)
    assert not can_i(server, "delete", "nodes", who=ctl)
    assert can_i(server, "list", "endpointslices.discovery.k8s.io", who=speaker)
    assert can_i(server, "create", "servicel2statuses.metallb.io", "-n", "metallb-system", who=speaker)
    assert can_i(server, "list", "pods", "-n", "metallb-system", who=speaker)
    assert not can_i(server, "list", "pods", "-n", "default", who=speaker)


def test_csr_requester_is_the_requesting_user(server: ServerProcess) -> None:
    pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\nMIHJMHECAQAwDzENMAsGA1UEAwwEamFuZTBZMBMGByqGSM49AgEGCCqGSM49AwEH\n"
        "-----END CERTIFICATE REQUEST-----\n"
    )
    csr = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": "from-jane"},
        # what the request claims is overwritten with who sent it, as kube's CSR strategy does
        "spec": {
            "request": base64.b64encode(pem.encode()).decode(),
            "signerName": "kubernetes.io/kube-apiserver-client",
            "usages": ["client auth"],
            "username": "system:admin",
        },
    }
    server.kubectl("apply", "-f", "-", "--as", "jane", "--as-group", "system:masters", input=yaml.safe_dump(csr))
    spec = json.loads(server.kubectl("get", "csr", "from-jane", "-o", "json").stdout)["spec"]
    assert spec["username"] == "jane" and spec["groups"] == ["system:masters", "system:authenticated"]
