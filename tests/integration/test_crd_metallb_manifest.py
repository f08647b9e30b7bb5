"""The whole upstream MetalLB manifest (CRDs, RBAC, webhook configuration, workloads) applied unchanged with kubectl,
then MetalLB's own validating webhook guarding its custom resources, as on a cluster where MetalLB's controller
is not running yet."""

from __future__ import annotations

import pytest

from tests import UPSTREAM
from tests.integration.apiserver import ServerProcess

pytestmark = pytest.mark.kubectl

METALLB = UPSTREAM / "metallb-native-v0.14.9.yaml"


def test_whole_manifest_applies_and_its_webhook_guards_its_kinds(server: ServerProcess) -> None:
    out = server.kubectl("apply", "-f", str(METALLB), timeout=120).stdout
    for line in (
        "customresourcedefinition.apiextensions.k8s.io/ipaddresspools.metallb.io created",
        "customresourcedefinition.apiextensions.k8s.io/bgppeers.metallb.io created",
        "clusterrole.rbac.authorization.k8s.io/metallb-system:controller created",
        "deployment.apps/controller created",
        "daemonset.apps/speaker created",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/metallb-webhook-configuration created",
    ):
        assert line in out, out
    assert "unchanged" in server.kubectl("apply", "-f", str(METALLB), timeout=120).stdout
    # MetalLB's webhook (failurePolicy Fail) has no endpoints while its controller is not running: kube refuses
    # the write the same way.
    pool = (
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: pool, namespace: metallb-system}\n"
        "spec: {addresses: [192.0.2.0/28]}\n"
    )
    res = server.kubectl("apply", "-f", "-", input=pool, check=False)
    assert res.returncode != 0
    assert 'failed calling webhook "ipaddresspoolvalidationwebhook.metallb.io"' in res.stderr, res.stderr
    assert 'no endpoints available for service "metallb-webhook-service"' in res.stderr, res.stderr
    assert "No resources found" in server.kubectl("get", "ipaddresspools", "-n", "metallb-system").stderr
