"""kwire's MetalLB controller against a real API server with MetalLB's CRDs and K3s's ServiceLB left on: IPs
from the pool, a loadBalancerClass Service left alone, AllocationFailed with MetalLB's reason in `kubectl
describe`, and the ServiceLB conflict said once, naming the fix."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kwire.client import ApiClient, load_kubeconfig
from kwire.metallb.controller import MetallbController
from tests import UPSTREAM
from tests.integration.apiserver import ServerProcess, free_port
from tests.integration.labkit import wait_for

MANIFEST = UPSTREAM / "metallb-native-v0.14.9.yaml"

OBJECTS = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: p, namespace: metallb-system}
spec: {addresses: [10.0.0.100-10.0.0.101]}
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {type: LoadBalancer, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: classy}
spec: {type: LoadBalancer, loadBalancerClass: example.com/other, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: outside}
spec: {type: LoadBalancer, loadBalancerIP: 10.9.9.9, ports: [{port: 80}]}
"""


class ControllerThread:
    """The controller on an event loop of its own (as in its pod), stopped by cancelling that loop's task."""

    def __init__(self, kubeconfig: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._run, args=(kubeconfig,), daemon=True)
        self.thread.start()

    def _run(self, kubeconfig: Path) -> None:
        async def main() -> None:
            client = ApiClient(load_kubeconfig(kubeconfig))
            ctl = MetallbController(client, namespace="metallb-system", webhook_port=None)
            try:
                await ctl.run()
            finally:
                await ctl.informers.stop()
                await client.close()

        self.task = self.loop.create_task(main())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass

    def stop(self) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # traefik's add-on Service would take the pool's first IP; ServiceLB stays on (the conflict under test)
    s = ServerProcess(tmp_path_factory.mktemp("metallb"), free_port(), extra_args=["--disable", "traefik"])
    s.start()
    ctl: ControllerThread | None = None
    try:
        docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
        crds = [d for d in docs if d["kind"] in ("Namespace", "CustomResourceDefinition")]
        s.apply(yaml.safe_dump_all(crds))
        wait_for(lambda: s.kubectl("get", "ipaddresspools", "-A"), timeout=20, what="MetalLB CRDs served")
        ctl = ControllerThread(s.kubeconfig)
        s.apply(OBJECTS)
        yield s
    finally:
        if ctl is not None:
            ctl.stop()
        s.stop()


def test_ips_from_the_pool_and_a_foreign_class_left_alone(srv: ServerProcess) -> None:
    def ip_of(name: str) -> str:
        out = srv.kubectl("get", "svc", name, "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}").stdout
        assert out.strip(), f"{name}: no IP"
        return out.strip()

    assert wait_for(lambda: ip_of("a"), timeout=30, what="a's IP") == "10.0.0.100"
    ann = srv.kubectl("get", "svc", "a", "-o", "jsonpath={.metadata.annotations}").stdout
    assert '"metallb.io/ip-allocated-from-pool":"p"' in ann
    assert "IPAllocated" in srv.kubectl("describe", "svc", "a").stdout
    described = srv.kubectl("describe", "svc", "classy").stdout
    assert "IPAllocated" not in described and "AllocationFailed" not in described
    assert "metallb.io/ip-allocated-from-pool" not in described


def test_allocation_failed_event_with_the_reason(srv: ServerProcess) -> None:
    def failed() -> str:
        out = srv.kubectl("describe", "svc", "outside").stdout
        assert "AllocationFailed" in out, out
        return out

    out = wait_for(failed, timeout=30, what="AllocationFailed")
    assert """Failed to allocate IP for "default/outside": "10.9.9.9" is not allowed in config""" in out.replace(
        "'", '"'
    )


def test_servicelb_conflict_said_once_naming_the_fix(srv: ServerProcess) -> None:
    def warned() -> str:
        out = srv.kubectl("get", "events", "-A", "--field-selector", "reason=ServiceLBActive").stdout
        assert "ServiceLBActive" in out, out
        return out

    out = wait_for(warned, timeout=30, what="the ServiceLB warning")
    assert "disable: [servicelb]" in out
    srv.apply("apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {type: LoadBalancer, ports: [{port: 81}]}\n")
    wait_for(lambda: "IPAllocated" in srv.kubectl("describe", "svc", "b").stdout or None, timeout=30, what="b's IP")
    again = srv.kubectl("get", "events", "-A", "--field-selector", "reason=ServiceLBActive", "-o", "name").stdout
    assert len(again.split()) == 1
