"""CustomResourceDefinitions through real kubectl 1.32 and the official Python client: upstream MetalLB and Traefik
CRDs applied unchanged, custom resources validated/defaulted/pruned with kube's words, printer columns, watch,
status and scale subresources, several versions, name clashes, garbage collection and CRD deletion."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests import UPSTREAM
from tests.integration.apiserver import ServerProcess, running_server

pytestmark = pytest.mark.kubectl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
METALLB = UPSTREAM / "metallb-native-v0.14.9.yaml"
TRAEFIK = UPSTREAM / "traefik-crds-v34.5.0"

WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-validations": [{"rule": "self.metadata.name != 'taken'", "message": "that name is taken"}],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "x-kubernetes-validations": [{"rule": "self.size != 'xxl'", "message": "xxl is sold out"}],
            "properties": {
                "size": {"type": "string", "enum": ["s", "m", "l", "xxl"]},
                "color": {"type": "string", "default": "blue"},
                "replicas": {"type": "integer", "minimum": 0},
                "note": {"type": "string"},
            },
        },
        "status": {
            "type": "object",
            "properties": {
                "replicas": {"type": "integer"},
                "selector": {"type": "string"},
                "phase": {"type": "string"},
            },
        },
    },
}


def widget_crd(*, name: str = "widgets", kind: str = "Widget", short: list[str] | None = None) -> dict[str, Any]:
    version = {
        "served": True,
        "schema": {"openAPIV3Schema": WIDGET_SCHEMA},
        "selectableFields": [{"jsonPath": ".spec.size"}],
        "subresources": {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        "additionalPrinterColumns": [
            {"name": "Size", "type": "string", "jsonPath": ".spec.size"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Color", "type": "string", "jsonPath": ".spec.color", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{name}.kwire.test"},
        "spec": {
            "group": "kwire.test",
            "names": {
                "plural": name,
                "singular": name[:-1],
                "kind": kind,
                "shortNames": short if short is not None else ["wd"],
                "categories": ["kwiretest"],
            },
            "scope": "Namespaced",
            "versions": [
                {**version, "name": "v1", "storage": True},
                {**version, "name": "v1beta1", "storage": False},
            ],
        },
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("crd")) as srv:
        crds = [d for d in yaml.safe_load_all(METALLB.read_text()) if d and d["kind"] == "CustomResourceDefinition"]
        srv.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(crds))
        srv.kubectl("apply", "-f", str(TRAEFIK))
        srv.kubectl("apply", "-f", "-", input=json.dumps(widget_crd()))
        yield srv


def _api(srv: ServerProcess) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(srv.kubeconfig))


def _fails(srv: ServerProcess, *args: str, input: str | None = None) -> str:
    res = srv.kubectl(*args, input=input, check=False)
    assert res.returncode != 0, res.stdout
    return res.stderr


def test_upstream_crds_established_and_discoverable(server: ServerProcess) -> None:
    crd = json.loads(server.kubectl("get", "crd", "ipaddresspools.metallb.io", "-o", "json").stdout)
    conds = {c["type"]: (c["status"], c["reason"]) for c in crd["status"]["conditions"]}
    assert conds == {"NamesAccepted": ("True", "NoConflicts"), "Established": ("True", "InitialNamesAccepted")}
    assert crd["status"]["storedVersions"] == ["v1beta1"]
    assert crd["metadata"]["finalizers"] == ["customresourcecleanup.apiextensions.k8s.io"]
    out = server.kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd/l2advertisements.metallb.io")
    assert "condition met" in out.stdout
    table = server.kubectl("get", "crd", "ipaddresspools.metallb.io").stdout.splitlines()
    assert table[0].split() == ["NAME", "CREATED", "AT"]
    assert table[1].split() == ["ipaddresspools.metallb.io", crd["metadata"]["creationTimestamp"]]
    out = server.kubectl("api-resources", "--api-group=traefik.io", "-o", "name").stdout.split()
    assert sorted(out) == sorted(
        f"{p}.traefik.io"
        for p in (
            "ingressroutes",
            "ingressroutetcps",
            "ingressrouteudps",
            "middlewares",
            "middlewaretcps",
            "serverstransports",
            "serverstransporttcps",
            "tlsoptions",
            "tlsstores",
            "traefikservices",
        )
    )
    assert "widgets" in server.kubectl("api-resources", "--api-group=kwire.test").stdout
    # aggregated discovery (what kubectl 1.32 asks for first) carries CRD kinds too
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    req = urllib.request.Request(f"{server.url}/apis", headers={"Accept": accept})
    ctx = server.admin_ssl_context(verify=False)
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        assert r.headers["Content-Type"] == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        doc = json.loads(r.read())
    groups = {g["metadata"]["name"]: g for g in doc["items"]}
    widgets = next(x for x in groups["kwire.test"]["versions"][0]["resources"] if x["resource"] == "widgets")
    assert [v["version"] for v in groups["kwire.test"]["versions"]] == ["v1", "v1beta1"]
    assert widgets["responseKind"] == {"group": "kwire.test", "version": "v1", "kind": "Widget"}
    assert (widgets["scope"], widgets["singularResource"], widgets["shortNames"]) == ("Namespaced", "widget", ["wd"])
    assert {s["subresource"]: s["responseKind"]["kind"] for s in widgets["subresources"]} == {
        "status": "Widget",
        "scale": "Scale",
    }
    assert [v["version"] for v in groups["metallb.io"]["versions"]] == ["v1beta2", "v1beta1"]


def test_metallb_objects_columns_defaults_pruning_and_errors(server: ServerProcess) -> None:
    server.kubectl("apply", "-f", str(EXAMPLES / "metallb.yaml"))
    lines = server.kubectl("get", "ipaddresspools", "-n", "metallb-system").stdout.splitlines()
    # columns as declared; no Age when a CRD declares columns (apiextensions serveDefaultColumnsIfEmpty)
    assert lines[0].split() == ["NAME", "AUTO", "ASSIGN", "AVOID", "BUGGY", "IPS", "ADDRESSES"]
    assert lines[1].split()[:4] == ["picluster-pool", "true", "false", '["192.168.77.100-192.168.77.120"]']
    pool = (
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: pruned, namespace: metallb-system}\n"
        "spec: {addresses: [192.0.2.0/28], bogus: 1}\n"
    )
    server.kubectl("apply", "--validate=false", "-f", "-", input=pool)
    got = yaml.safe_load(server.kubectl("get", "ipaddresspool", "pruned", "-n", "metallb-system", "-o", "yaml").stdout)
    assert got["spec"] == {"addresses": ["192.0.2.0/28"], "autoAssign": True, "avoidBuggyIPs": False}
    bad = (
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: x, namespace: metallb-system}\n"
        "spec: {autoAssign: maybe}\n"
    )
    err = _fails(server, "apply", "-f", "-", input=bad)
    assert 'The IPAddressPool "x" is invalid:' in err
    assert "* spec.addresses: Required value" in err
    assert (
        '* spec.autoAssign: Invalid value: "string": spec.autoAssign in body must be of type boolean: "string"' in err
    )
    l2 = (
        "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2bad, namespace: metallb-system}\n"
        "spec: {ipAddressPools: picluster-pool}\n"
    )
    err = _fails(server, "apply", "-f", "-", input=l2)
    assert (
        'spec.ipAddressPools: Invalid value: "string": spec.ipAddressPools in body must be of type array: "string"'
        in err
    )
    assert "pruned" not in server.kubectl("get", "l2advertisements", "-A").stdout
    # nothing invalid was stored
    assert "x " not in server.kubectl("get", "ipaddresspools", "-A").stdout


def test_traefik_ingressroute_and_middleware(server: ServerProcess) -> None:
    route = {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "IngressRoute",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "entryPoints": ["web"],
            "routes": [{"match": "Host(`a.example`)", "kind": "Rule", "services": [{"name": "svc", "port": 80}]}],
        },
    }
    server.kubectl("apply", "-f", "-", input=json.dumps(route))
    assert "web" in server.kubectl("get", "ingressroute", "web").stdout
    bad = json.loads(json.dumps(route))
    bad["metadata"]["name"] = "bad"
    bad["spec"]["routes"] = [{"kind": "Regex", "services": [{"port": True}]}]
    err = _fails(server, "apply", "-f", "-", input=json.dumps(bad))
    assert "* spec.routes[0].match: Required value" in err
    assert '* spec.routes[0].kind: Unsupported value: "Regex": supported values: "Rule"' in err
    assert "* spec.routes[0].services[0].name: Required value" in err
    assert (
        '* spec.routes[0].services[0].port: Invalid value: "boolean": spec.routes[0].services[0].port in body '
        'must be of type integer,string: "boolean"' in err
    )
    mw = {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": "strip", "namespace": "default"},
        "spec": {"stripPrefix": {"prefixes": ["/api"]}, "rateLimit": {"average": 10, "period": "1m"}},
    }
    server.kubectl("apply", "-f", "-", input=json.dumps(mw))
    mw["metadata"]["name"] = "bad"
    mw["spec"]["rateLimit"]["average"] = "lots"
    err = _fails(server, "apply", "-f", "-", input=json.dumps(mw))
    assert (
        'spec.rateLimit.average: Invalid value: "string": spec.rateLimit.average in body must be of type integer: '
        '"string"' in err
    )


def test_names_columns_versions_status_scale_and_cel(server: ServerProcess) -> None:
    w = {
        "apiVersion": "kwire.test/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "default", "labels": {"app": "w"}, "bogus": "dropped"},
        "spec": {"size": "m", "replicas": 2, "unknown": "dropped"},
        "status": {"phase": "ignored on create"},
    }
    # --validate=false: fieldValidation=Ignore, so unknown fields are pruned silently (Strict would refuse them)
    server.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(w))
    for name in ("widgets", "widget", "wd", "kwiretest"):
        out = server.kubectl("get", name).stdout.splitlines()
        assert out[0].split() == ["NAME", "SIZE", "REPLICAS", "AGE"], name
        assert out[1].split()[:3] == ["w1", "m", "2"], name
    wide = server.kubectl("get", "wd", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "SIZE", "REPLICAS", "COLOR", "AGE"]
    assert wide[1].split()[:4] == ["w1", "m", "2", "blue"]
    got = json.loads(server.kubectl("get", "wd", "w1", "-o", "json").stdout)
    assert got["spec"] == {"size": "m", "replicas": 2, "color": "blue"} and "status" not in got
    assert got["metadata"]["generation"] == 1 and "bogus" not in got["metadata"]
    beta = json.loads(server.kubectl("get", "widgets.v1beta1.kwire.test", "w1", "-o", "json").stdout)
    assert beta["apiVersion"] == "kwire.test/v1beta1" and beta["spec"] == got["spec"]
    # label and field selectors
    assert "w1" in server.kubectl("get", "wd", "-l", "app=w").stdout
    assert "No resources found" in server.kubectl("get", "wd", "--field-selector", "metadata.name=other").stderr
    assert "w1" in server.kubectl("get", "wd", "--field-selector", "spec.size=m").stdout  # a selectableField
    assert "No resources found" in server.kubectl("get", "wd", "--field-selector", "spec.size=s").stderr
    err = _fails(server, "get", "wd", "--field-selector", "spec.color=blue")
    assert "field label not supported: spec.color" in err
    # status subresource: the main endpoint ignores status, /status changes only status
    server.kubectl(
        "patch", "wd", "w1", "--subresource=status", "--type=merge", "-p",
        '{"status": {"replicas": 2, "selector": "app=w", "phase": "Ready"}}',
    )  # fmt: skip
    server.kubectl("patch", "wd", "w1", "--type=merge", "-p", '{"status": {"phase": "nope"}}')
    got = json.loads(server.kubectl("get", "wd", "w1", "-o", "json").stdout)
    assert got["status"] == {"replicas": 2, "selector": "app=w", "phase": "Ready"}
    assert got["metadata"]["generation"] == 1
    # scale subresource
    assert "scaled" in server.kubectl("scale", "wd", "w1", "--replicas=5").stdout
    got = json.loads(server.kubectl("get", "wd", "w1", "-o", "json").stdout)
    assert got["spec"]["replicas"] == 5 and got["metadata"]["generation"] == 2
    scale = json.loads(server.kubectl("get", "--raw", "/apis/kwire.test/v1/namespaces/default/widgets/w1/scale").stdout)
    assert scale["spec"] == {"replicas": 5} and scale["status"] == {"replicas": 2, "selector": "app=w"}
    server.kubectl("patch", "wd", "w1", "--type=json", "-p", '[{"op": "replace", "path": "/spec/size", "value": "l"}]')
    assert json.loads(server.kubectl("get", "wd", "w1", "-o", "json").stdout)["spec"]["size"] == "l"
    # strategic merge patch is refused for custom resources, as in kube
    err = _fails(server, "patch", "wd", "w1", "--type=strategic", "-p", '{"spec": {"size": "l"}}')
    assert "UnsupportedMediaType" in err or "unknown format" in err
    # written through v1beta1, stored at v1, read back at either version
    wb = {**w, "apiVersion": "kwire.test/v1beta1", "metadata": {"name": "w2", "namespace": "default"}}
    server.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(wb))
    assert json.loads(server.kubectl("get", "widgets.v1.kwire.test", "w2", "-o", "json").stdout)["apiVersion"] == (
        "kwire.test/v1"
    )
    # CEL rule and enum
    taken = {**w, "metadata": {"name": "taken", "namespace": "default"}}
    err = _fails(server, "apply", "--validate=false", "-f", "-", input=json.dumps(taken))
    assert '<nil>: Invalid value: "object": that name is taken' in err
    err = _fails(server, "patch", "wd", "w2", "--type=merge", "-p", '{"spec": {"size": "xxl"}}')
    assert 'spec: Invalid value: "object": xxl is sold out' in err
    err = _fails(server, "patch", "wd", "w2", "--type=merge", "-p", '{"spec": {"size": "xl", "replicas": -1}}')
    assert 'spec.size: Unsupported value: "xl": supported values: "s", "m", "l", "xxl"' in err
    assert "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0" in err


def test_name_clash_is_not_accepted(server: ServerProcess) -> None:
    wrong = widget_crd(name="bolts", kind="Bolt", short=[])
    wrong["metadata"]["name"] = "screws.kwire.test"
    wrong["spec"]["versions"][1]["storage"] = True
    err = _fails(server, "apply", "-f", "-", input=json.dumps(wrong))
    assert 'The CustomResourceDefinition "screws.kwire.test" is invalid:' in err
    assert '* metadata.name: Invalid value: "screws.kwire.test": must be spec.names.plural+"."+spec.group' in err
    assert "must have exactly one version marked as storage version" in err
    assert server.kubectl("get", "crd", "screws.kwire.test", check=False).returncode != 0
    server.kubectl("apply", "-f", "-", input=json.dumps(widget_crd(name="gizmos", kind="Gizmo", short=["wd"])))
    crd = json.loads(server.kubectl("get", "crd", "gizmos.kwire.test", "-o", "json").stdout)
    conds = {c["type"]: c for c in crd["status"]["conditions"]}
    assert (conds["NamesAccepted"]["status"], conds["NamesAccepted"]["reason"]) == ("False", "ShortNamesConflict")
    assert conds["NamesAccepted"]["message"] == '"wd" is already in use'
    assert conds["Established"]["status"] == "False"
    assert "gizmos" not in server.kubectl("api-resources", "--api-group=kwire.test").stdout
    server.kubectl("delete", "crd", "gizmos.kwire.test")
    # a name freed by one CRD is accepted for the CRD that was refused it (the naming controller requeues)
    server.kubectl("apply", "-f", "-", input=json.dumps(widget_crd(name="cogs", kind="Cog", short=["zz"])))
    server.kubectl("apply", "-f", "-", input=json.dumps(widget_crd(name="gears", kind="Gear", short=["zz"])))
    gears = json.loads(server.kubectl("get", "crd", "gears.kwire.test", "-o", "json").stdout)
    assert {c["type"]: c["status"] for c in gears["status"]["conditions"]}["NamesAccepted"] == "False"
    server.kubectl("delete", "crd", "cogs.kwire.test", "--timeout=60s")
    server.kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd/gears.kwire.test")
    gears = json.loads(server.kubectl("get", "crd", "gears.kwire.test", "-o", "json").stdout)
    assert gears["status"]["acceptedNames"]["shortNames"] == ["zz"]
    assert "gears" in server.kubectl("api-resources", "--api-group=kwire.test").stdout
    server.kubectl("delete", "crd", "gears.kwire.test", "--timeout=60s")


def test_watch_gc_and_python_clients(server: ServerProcess) -> None:
    api = _api(server)
    ext = client.ApiextensionsV1Api(api)
    crd = widget_crd(name="sprockets", kind="Sprocket", short=[])
    created = ext.create_custom_resource_definition(crd)
    assert created.metadata.name == "sprockets.kwire.test"
    assert "sprockets.kwire.test" in [c.metadata.name for c in ext.list_custom_resource_definition().items]
    deadline = time.monotonic() + 20
    while not any(
        c.type == "Established" and c.status == "True"
        for c in ext.read_custom_resource_definition("sprockets.kwire.test").status.conditions
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    co = client.CustomObjectsApi(api)
    args = ("kwire.test", "v1", "default", "sprockets")
    events: list[tuple[str, str]] = []
    listed = co.list_namespaced_custom_object(*args)
    rv = listed["metadata"]["resourceVersion"]

    def watcher() -> None:
        w = watch.Watch()
        for ev in w.stream(co.list_namespaced_custom_object, *args, resource_version=rv, timeout_seconds=20):
            events.append((ev["type"], ev["object"]["spec"].get("size")))
            if len(events) >= 4:
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(0.5)
    body = {"apiVersion": "kwire.test/v1", "kind": "Sprocket", "metadata": {"name": "s1"}, "spec": {"size": "s"}}
    obj = co.create_namespaced_custom_object(*args, body)
    assert obj["spec"]["color"] == "blue"
    assert co.get_namespaced_custom_object(*args, "s1")["metadata"]["uid"] == obj["metadata"]["uid"]
    co.patch_namespaced_custom_object(*args, "s1", {"spec": {"size": "l"}})
    stale = {**obj, "spec": {"size": "m"}}
    with pytest.raises(ApiException) as exc:
        co.replace_namespaced_custom_object(*args, "s1", stale)
    assert exc.value.status == 409
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(*args, {**body, "metadata": {"name": "s2"}, "spec": {}})
    assert exc.value.status == 422 and "spec.size: Required value" in json.loads(exc.value.body)["message"]
    co.patch_namespaced_custom_object_status(*args, "s1", {"status": {"replicas": 1, "selector": "a=b"}})
    assert co.get_namespaced_custom_object_scale(*args, "s1")["status"]["replicas"] == 1
    # an owned ConfigMap goes when its owner (a custom resource) goes
    core = client.CoreV1Api(api)
    owner = co.get_namespaced_custom_object(*args, "s1")
    core.create_namespaced_config_map(
        "default",
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name="owned-by-s1",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="kwire.test/v1", kind="Sprocket", name="s1", uid=owner["metadata"]["uid"]
                    )
                ],
            )
        ),
    )
    co.delete_namespaced_custom_object(*args, "s1")
    t.join(25)
    assert events == [("ADDED", "s"), ("MODIFIED", "l"), ("MODIFIED", "l"), ("DELETED", "l")]
    deadline = time.monotonic() + 20
    while True:
        try:
            core.read_namespaced_config_map("owned-by-s1", "default")
        except ApiException as e:
            assert e.status == 404
            break
        assert time.monotonic() < deadline, "owned ConfigMap was not garbage collected"
        time.sleep(0.2)
    ext.delete_custom_resource_definition("sprockets.kwire.test")


def test_namespace_deletion_and_crd_deletion_remove_objects(server: ServerProcess) -> None:
    server.kubectl("create", "namespace", "crd-ns")
    w = {"apiVersion": "kwire.test/v1", "kind": "Widget", "metadata": {"namespace": "crd-ns"}, "spec": {"size": "s"}}
    for name in ("n1", "n2"):
        server.kubectl("apply", "-f", "-", input=json.dumps({**w, "metadata": {**w["metadata"], "name": name}}))
    server.kubectl("delete", "namespace", "crd-ns", "--timeout=60s")
    assert server.kubectl("get", "ns", "crd-ns", check=False).returncode != 0
    assert "n1" not in server.kubectl("get", "widgets", "-A").stdout
    # deleting the CRD deletes its objects (finalizer), then stops serving its paths
    assert "w1" in server.kubectl("get", "widgets", "-A").stdout
    server.kubectl("delete", "crd", "widgets.kwire.test", "--timeout=60s")
    assert server.kubectl("get", "crd", "widgets.kwire.test", check=False).returncode != 0
    raw = server.kubectl("get", "--raw", "/apis/kwire.test/v1/widgets", check=False)
    assert raw.returncode != 0 and "NotFound" in raw.stderr
    # a re-created CRD starts empty
    server.kubectl("apply", "-f", "-", input=json.dumps(widget_crd()))
    deadline = time.monotonic() + 30
    while True:
        res = server.kubectl("get", "widgets", "-A", check=False)
        if res.returncode == 0:
            break
        assert time.monotonic() < deadline, res.stderr
        time.sleep(0.5)
    assert "No resources found" in res.stderr


def test_cluster_scoped_kind_survives_restart(server: ServerProcess) -> None:
    crd = widget_crd(name="realms", kind="Realm", short=["rlm"])
    crd["spec"]["scope"] = "Cluster"
    server.kubectl("apply", "-f", "-", input=json.dumps(crd))
    realm = {"apiVersion": "kwire.test/v1beta1", "kind": "Realm", "metadata": {"name": "north"}, "spec": {"size": "l"}}
    deadline = time.monotonic() + 30
    while server.kubectl("apply", "-f", "-", input=json.dumps(realm), check=False).returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    err = _fails(server, "get", "--raw", "/apis/kwire.test/v1/namespaces/default/realms")
    assert "NotFound" in err
    server.stop()
    server.start(timeout=60)
    out = server.kubectl("get", "rlm").stdout.splitlines()
    assert out[0].split() == ["NAME", "SIZE", "REPLICAS", "AGE"] and out[1].split()[:2] == ["north", "l"]
    got = json.loads(server.kubectl("get", "realms.v1beta1.kwire.test", "north", "-o", "json").stdout)
    assert got["apiVersion"] == "kwire.test/v1beta1" and got["spec"] == {"size": "l", "color": "blue"}
    assert "namespace" not in got["metadata"]
    server.kubectl("delete", "crd", "realms.kwire.test", "--timeout=60s")
    assert "realms" not in server.kubectl("api-resources", "--api-group=kwire.test").stdout


def test_reapplying_unchanged_manifests_changes_nothing(server: ServerProcess) -> None:
    crds = [d for d in yaml.safe_load_all(METALLB.read_text()) if d and d["kind"] == "CustomResourceDefinition"]
    before = json.loads(server.kubectl("get", "crd", "ipaddresspools.metallb.io", "-o", "json").stdout)
    out = server.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(crds)).stdout
    assert out.count("unchanged") == len(crds), out
    server.kubectl("replace", "-f", "-", input=yaml.safe_dump_all([c for c in crds if "ipaddresspools" in str(c)]))
    after = json.loads(server.kubectl("get", "crd", "ipaddresspools.metallb.io", "-o", "json").stdout)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["status"]["conditions"] == before["status"]["conditions"]
    assert after["metadata"]["finalizers"] == ["customresourcecleanup.apiextensions.k8s.io"]
    server.kubectl("apply", "-f", str(EXAMPLES / "metallb.yaml"))
    out = server.kubectl("apply", "-f", str(EXAMPLES / "metallb.yaml")).stdout
    assert "ipaddresspool.metallb.io/picluster-pool unchanged" in out
