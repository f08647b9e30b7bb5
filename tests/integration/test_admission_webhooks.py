"""Admission and CRD conversion webhooks as users see them through the real kubectl: a test HTTPS webhook server
(own CA) that allows, denies, mutates or stalls; failure policies, timeouts, caBundle verification, selectors,
service references, kwire's own controllers writing past a webhook whose backend is gone, and a two-version CRD
converted by a webhook."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.integration.apiserver import ServerProcess, free_port
from tests.integration.webhookserver import WebhookServer, running

pytestmark = pytest.mark.kubectl


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookServer]:
    with running(tmp_path_factory.mktemp("hook")) as srv:
        yield srv


def namespace(server: ServerProcess, name: str) -> None:
    server.kubectl("create", "namespace", name)
    server.kubectl("label", "namespace", name, f"hooktest={name}")


def configuration(
    kind: str, name: str, ns: str, client_config: dict[str, Any], *, resources: str = "configmaps", **extra: Any
) -> str:
    webhook = {
        "name": name,
        "clientConfig": client_config,
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": extra.pop("operations", ["CREATE", "UPDATE"]),
                "resources": [resources],
                "scope": "Namespaced",
            }
        ],
        "namespaceSelector": {"matchLabels": {"hooktest": ns}},
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        **extra,
    }
    return yaml.safe_dump(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "webhooks": [webhook],
        }
    )


def url(hook: WebhookServer, path: str, *, ca: str | None = None) -> dict[str, Any]:
    return {"url": f"https://127.0.0.1:{hook.port}{path}", "caBundle": hook.ca_bundle if ca is None else ca}


def test_deny_with_message_and_object_selector(server: ServerProcess, hook: WebhookServer) -> None:
    namespace(server, "deny")
    server.apply(
        configuration(
            "ValidatingWebhookConfiguration",
            "deny.example.com",
            "deny",
            url(hook, "/deny"),
            objectSelector={"matchLabels": {"policy": "deny"}},
            operations=["CREATE", "UPDATE", "DELETE"],
        )
    )
    before = len(hook.seen("/deny"))
    server.kubectl("-n", "deny", "create", "configmap", "fine")
    assert len(hook.seen("/deny")) == before  # the object selector does not select it
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad, labels: {policy: deny}}\n"
    res = server.kubectl("-n", "deny", "apply", "-f", "-", input=cm, check=False)
    assert res.returncode != 0
    assert 'admission webhook "deny.example.com" denied the request: configmap bad is not welcome' in res.stderr
    review = hook.seen("/deny")[-1]
    assert review["operation"] == "CREATE" and review["namespace"] == "deny" and review["name"] == "bad"
    assert review["kind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}
    assert review["resource"] == {"group": "", "version": "v1", "resource": "configmaps"}
    assert review["userInfo"] == {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]}
    assert review["object"]["metadata"]["labels"] == {"policy": "deny"}
    # the request's user, after impersonation, is what the webhook is told
    res = server.kubectl(
        "-n", "deny", "apply", "-f", "-", "--as", "jane", "--as-group", "system:masters", input=cm, check=False
    )
    assert res.returncode != 0
    assert hook.seen("/deny")[-1]["userInfo"] == {
        "username": "jane",
        "groups": ["system:masters", "system:authenticated"],
    }
    # Labelling an existing object so that it is selected: the UPDATE is denied (the old object is sent too).
    res = server.kubectl("-n", "deny", "label", "configmap", "fine", "policy=deny", check=False)
    assert "denied the request: configmap fine is not welcome" in res.stderr
    assert hook.seen("/deny")[-1]["oldObject"]["metadata"]["name"] == "fine"
    # The same object in a namespace the namespaceSelector does not select is never sent.
    server.kubectl("-n", "default", "apply", "-f", "-", input=cm)
    server.kubectl("delete", "validatingwebhookconfiguration", "deny.example.com")


def test_delete_is_admitted(server: ServerProcess, hook: WebhookServer) -> None:
    namespace(server, "nodelete")
    server.kubectl("-n", "nodelete", "create", "configmap", "keep")
    server.kubectl("-n", "nodelete", "label", "configmap", "keep", "policy=deny")
    server.apply(
        configuration(
            "ValidatingWebhookConfiguration",
            "nodelete.example.com",
            "nodelete",
            url(hook, "/deny"),
            operations=["DELETE"],
        )
    )
    res = server.kubectl("-n", "nodelete", "delete", "configmap", "keep", check=False)
    assert 'admission webhook "nodelete.example.com" denied the request: configmap keep is not welcome' in res.stderr
    assert hook.seen("/deny")[-1]["operation"] == "DELETE"
    server.kubectl("delete", "validatingwebhookconfiguration", "nodelete.example.com")
    server.kubectl("-n", "nodelete", "delete", "configmap", "keep")


def test_mutating_webhook_patch_is_applied(server: ServerProcess, hook: WebhookServer) -> None:
    namespace(server, "mutate")
    server.apply(configuration("MutatingWebhookConfiguration", "mutate.example.com", "mutate", url(hook, "/mutate")))
    server.kubectl("-n", "mutate", "create", "configmap", "plain", "--from-literal=a=b")
    got = json.loads(server.kubectl("-n", "mutate", "get", "configmap", "plain", "-o", "json").stdout)
    assert got["metadata"]["labels"] == {"mutated-by": "hook"}
    assert got["data"] == {"a": "b"}
    server.kubectl("delete", "mutatingwebhookconfiguration", "mutate.example.com")


def test_failure_policy_timeout_and_ca_bundle(server: ServerProcess, hook: WebhookServer) -> None:
    namespace(server, "failing")
    closed = free_port()
    cases = [
        ("down.example.com", {"url": f"https://127.0.0.1:{closed}/x", "caBundle": hook.ca_bundle}, {}),
        ("slow.example.com", url(hook, "/slow"), {"timeoutSeconds": 1}),
        ("badca.example.com", url(hook, "/allow", ca=hook.other_ca_bundle), {}),
    ]
    expected = {
        "down.example.com": f'Post "https://127.0.0.1:{closed}/x?timeout=10s": dial tcp 127.0.0.1:{closed}:',
        "slow.example.com": f'Post "https://127.0.0.1:{hook.port}/slow?timeout=1s": context deadline exceeded',
        "badca.example.com": "certificate verify failed",
    }
    for name, client_config, extra in cases:
        config = configuration("ValidatingWebhookConfiguration", name, "failing", client_config, **extra)
        server.apply(config)
        start = time.monotonic()
        res = server.kubectl("-n", "failing", "create", "configmap", f"c-{name.split('.')[0]}", check=False)
        elapsed = time.monotonic() - start
        assert res.returncode != 0, name
        assert f'Internal error occurred: failed calling webhook "{name}": failed to call webhook: ' in res.stderr
        assert expected[name] in res.stderr, res.stderr
        if name == "slow.example.com":
            assert 0.9 < elapsed < 10
        # failurePolicy Ignore: the same failure lets the request through.
        ignore = configuration(
            "ValidatingWebhookConfiguration", name, "failing", client_config, failurePolicy="Ignore", **extra
        )
        server.apply(ignore)
        server.kubectl("-n", "failing", "create", "configmap", f"c-{name.split('.')[0]}")
        server.kubectl("delete", "validatingwebhookconfiguration", name)


def test_service_reference_and_controllers_past_a_dead_webhook(server: ServerProcess, hook: WebhookServer) -> None:
    namespace(server, "svcref")
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "hook", "namespace": "default"},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": hook.port}]},
    }
    eps = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "hook", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": hook.port}]}],
    }
    server.apply(yaml.safe_dump_all([svc, eps]))
    ref = {"service": {"namespace": "default", "name": "hook", "path": "/deny"}, "caBundle": hook.ca_bundle}
    server.apply(configuration("ValidatingWebhookConfiguration", "svc.example.com", "svcref", ref))
    res = server.kubectl("-n", "svcref", "create", "configmap", "viaservice", check=False)
    # Verified as hook.default.svc (the certificate has no other name that would match).
    assert 'admission webhook "svc.example.com" denied the request: configmap viaservice is not welcome' in res.stderr

    # A Service without endpoints and failurePolicy Ignore: every write, the controllers' included, goes on.
    gone = {**svc, "metadata": {"name": "nohook", "namespace": "default"}}
    no_eps = {**eps, "metadata": {"name": "nohook", "namespace": "default"}, "subsets": []}
    server.apply(yaml.safe_dump_all([gone, no_eps]))
    dead = {"service": {"namespace": "default", "name": "nohook"}, "caBundle": hook.ca_bundle}
    server.apply(
        configuration(
            "ValidatingWebhookConfiguration",
            "svc.example.com",
            "svcref",
            dead,
            resources="*",
            failurePolicy="Ignore",
            timeoutSeconds=30,
        )
    )
    start = time.monotonic()
    server.kubectl("-n", "svcref", "create", "deployment", "web", "--image=nginx", "--replicas=2")
    deadline = time.monotonic() + 60
    pods: list[Any] = []
    while time.monotonic() < deadline:
        pods = json.loads(server.kubectl("-n", "svcref", "get", "pods", "-o", "json").stdout)["items"]
        if len(pods) == 2:
            break
        time.sleep(0.5)
    assert len(pods) == 2, "the ReplicaSet controller's pod creations were held up by the webhook"
    assert time.monotonic() - start < 30
    # With failurePolicy Fail the same dead webhook refuses, naming kube's reason.
    fail = configuration("ValidatingWebhookConfiguration", "svc.example.com", "svcref", dead, resources="configmaps")
    server.apply(fail)
    res = server.kubectl("-n", "svcref", "create", "configmap", "refused", check=False)
    assert (
        'failed calling webhook "svc.example.com": failed to call webhook: '
        'Post "https://nohook.default.svc:443?timeout=10s": no endpoints available for service "nohook"'
    ) in res.stderr
    server.kubectl("delete", "validatingwebhookconfiguration", "svc.example.com")


def test_webhook_configurations_are_not_admitted_by_webhooks(server: ServerProcess, hook: WebhookServer) -> None:
    broken = configuration(
        "ValidatingWebhookConfiguration",
        "broken.example.com",
        "x",
        {"url": f"https://127.0.0.1:{free_port()}/"},
        resources="*",
    )
    doc = yaml.safe_load(broken)
    doc["webhooks"][0]["rules"][0].update(apiGroups=["*"], apiVersions=["*"], scope="*")
    doc["webhooks"][0].pop("namespaceSelector")
    server.apply(yaml.safe_dump(doc))
    # It would refuse everything, yet it can still be removed.
    res = server.kubectl("create", "configmap", "blocked", check=False)
    assert 'failed calling webhook "broken.example.com"' in res.stderr
    server.kubectl("delete", "validatingwebhookconfiguration", "broken.example.com")
    server.kubectl("create", "configmap", "blocked")


def crontab_crd(hook: WebhookServer, path: str) -> str:
    def version(name: str, field: str, storage: bool) -> dict[str, Any]:
        spec = {"type": "object", "properties": {field: {"type": "string"}}}
        return {
            "name": name,
            "served": True,
            "storage": storage,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec}}},
        }

    return yaml.safe_dump(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {
                "group": "stable.example.com",
                "scope": "Namespaced",
                "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab"},
                "versions": [version("v1", "cronSpec", True), version("v2", "schedule", False)],
                "conversion": {
                    "strategy": "Webhook",
                    "webhook": {"clientConfig": url(hook, path), "conversionReviewVersions": ["v1"]},
                },
            },
        }
    )


def test_crd_conversion_webhook(server: ServerProcess, hook: WebhookServer) -> None:
    server.apply(crontab_crd(hook, "/convert"))
    server.kubectl("wait", "--for=condition=established", "crd/crontabs.stable.example.com", "--timeout=30s")
    cr = "apiVersion: stable.example.com/v2\nkind: CronTab\nmetadata: {name: nightly}\nspec: {schedule: '0 3 * * *'}\n"
    deadline = time.monotonic() + 30
    while True:  # discovery of the new group can take kubectl a moment
        res = server.kubectl("apply", "-f", "-", input=cr, check=False)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert res.returncode == 0, res.stderr
    # Stored at v1 through the webhook; read back at either version through it.
    write = [r for r in hook.seen("/convert") if r["desiredAPIVersion"] == "stable.example.com/v1"]
    assert write and write[-1]["objects"][0]["spec"] == {"schedule": "0 3 * * *"}
    v1 = json.loads(server.kubectl("get", "crontabs.v1.stable.example.com", "nightly", "-o", "json").stdout)
    assert v1["apiVersion"] == "stable.example.com/v1" and v1["spec"] == {"cronSpec": "0 3 * * *"}
    v2 = json.loads(server.kubectl("get", "crontabs.v2.stable.example.com", "nightly", "-o", "json").stdout)
    assert v2["apiVersion"] == "stable.example.com/v2" and v2["spec"] == {"schedule": "0 3 * * *"}
    assert v2["metadata"]["labels"] == {"converted-to": "v2"}  # labels may change; other metadata is kept
    assert v2["metadata"]["uid"] == v1["metadata"]["uid"]
    listed = json.loads(server.kubectl("get", "crontabs.v2.stable.example.com", "-o", "json").stdout)
    assert [i["spec"] for i in listed["items"]] == [{"schedule": "0 3 * * *"}]
    # A webhook that refuses: reads at the other version fail in kube's words, the storage version still reads.
    server.apply(crontab_crd(hook, "/convert-fail"))
    res = server.kubectl("get", "crontabs.v2.stable.example.com", "nightly", check=False)
    assert res.returncode != 0
    assert (
        "Internal error occurred: conversion webhook for stable.example.com/v1, Kind=CronTab failed: cannot convert"
        in res.stderr
    )
    server.kubectl("get", "crontabs.v1.stable.example.com", "nightly")
    server.kubectl("delete", "crd", "crontabs.stable.example.com", "--wait=false")


def test_connect_exec_is_admitted(server: ServerProcess, hook: WebhookServer) -> None:
    namespace(server, "noexec")
    server.kubectl("-n", "noexec", "run", "target", "--image=nginx")
    config = yaml.safe_load(
        configuration(
            "ValidatingWebhookConfiguration",
            "noexec.example.com",
            "noexec",
            url(hook, "/deny"),
            resources="pods/exec",
            operations=["CONNECT"],
        )
    )
    server.apply(yaml.safe_dump(config))
    res = server.kubectl("-n", "noexec", "exec", "target", "--", "ls", check=False)
    assert res.returncode != 0
    assert 'admission webhook "noexec.example.com" denied the request' in res.stderr, res.stderr
    review = hook.seen("/deny")[-1]
    assert (review["operation"], review["subResource"], review["name"]) == ("CONNECT", "exec", "target")
    assert review["object"]["kind"] == "PodExecOptions" and review["object"]["command"] == ["ls"]
    server.kubectl("delete", "validatingwebhookconfiguration", "noexec.example.com")


def test_match_conditions_decide_whether_a_webhook_is_called(server: ServerProcess, hook: WebhookServer) -> None:
    namespace(server, "matchcond")
    conditions = [
        {"name": "labelled", "expression": "has(object.metadata.labels) && 'deny-me' in object.metadata.labels"}
    ]
    cfg = configuration(
        "ValidatingWebhookConfiguration",
        "match.example.com",
        "matchcond",
        url(hook, "/deny"),
        matchConditions=conditions,
    )
    server.apply(cfg)
    before = len(hook.seen("/deny"))
    server.kubectl("-n", "matchcond", "create", "configmap", "quiet")  # condition false: never called
    assert len(hook.seen("/deny")) == before
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: loud, labels: {deny-me: 'yes'}}\n"
    res = server.kubectl("-n", "matchcond", "apply", "-f", "-", input=manifest, check=False)
    assert res.returncode != 0 and 'admission webhook "match.example.com" denied the request' in res.stderr
    assert len(hook.seen("/deny")) == before + 1

    # A condition that fails to evaluate follows the failure policy.
    broken = [{"name": "missing", "expression": "object.metadata.labels['absent'] == 'x'"}]
    for policy, ok in (("Ignore", True), ("Fail", False)):
        cfg = configuration(
            "ValidatingWebhookConfiguration",
            "match.example.com",
            "matchcond",
            url(hook, "/deny"),
            matchConditions=broken,
            failurePolicy=policy,
        )
        server.apply(cfg)
        time.sleep(0.5)
        res = server.kubectl("-n", "matchcond", "create", "configmap", f"eval-{policy.lower()}", check=False)
        assert (res.returncode == 0) == ok, res.stderr
        if not ok:
            assert "failed evaluating match conditions" in res.stderr
    assert len(hook.seen("/deny")) == before + 1  # the webhook itself was never called for those

    # An expression that does not compile is refused when written, with the field path.
    bad = [{"name": "syntax", "expression": "object.metadata.(("}]
    cfg = configuration(
        "ValidatingWebhookConfiguration", "match.example.com", "matchcond", url(hook, "/deny"), matchConditions=bad
    )
    res = server.kubectl("apply", "-f", "-", input=cfg, check=False)
    assert res.returncode != 0 and "webhooks[0].matchConditions[0].expression: Invalid value" in res.stderr
    server.kubectl("delete", "validatingwebhookconfiguration", "match.example.com")


def test_reinvocation_if_needed(server: ServerProcess, hook: WebhookServer) -> None:
    """A webhook with reinvocationPolicy IfNeeded runs again when a later webhook changed the object."""
    namespace(server, "reinvoke")
    for policy, calls in (("IfNeeded", 2), ("Never", 1)):
        first = configuration(
            "MutatingWebhookConfiguration",
            "a-first.example.com",
            "reinvoke",
            url(hook, "/mutate"),
            reinvocationPolicy=policy,
        )
        second = configuration(
            "MutatingWebhookConfiguration", "b-second.example.com", "reinvoke", url(hook, "/mutate-second")
        )
        server.apply(first + "---\n" + second)
        time.sleep(0.5)
        before = len(hook.seen("/mutate"))
        server.kubectl("-n", "reinvoke", "create", "configmap", f"cm-{policy.lower()}")
        assert len(hook.seen("/mutate")) - before == calls, policy
        got = json.loads(
            server.kubectl("-n", "reinvoke", "get", "configmap", f"cm-{policy.lower()}", "-o", "json").stdout
        )
        assert got["metadata"]["labels"] == {"mutated-by": "hook", "second": "hook"}
    server.kubectl("delete", "mutatingwebhookconfiguration", "a-first.example.com", "b-second.example.com")
