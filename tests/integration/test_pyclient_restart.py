"""The official `kubernetes` Python client against kwire, and data/watch continuity across restarts and kill -9."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.integration.apiserver import ServerProcess, free_port

pytestmark = pytest.mark.kubectl


@pytest.fixture
def server(tmp_path) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    srv = ServerProcess(tmp_path, free_port())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(sig=signal.SIGKILL)


def _core(srv: ServerProcess) -> client.CoreV1Api:
    api_client = config.new_client_from_config(config_file=str(srv.kubeconfig))
    return client.CoreV1Api(api_client)


def test_python_client_create_list_patch_watch(server: ServerProcess) -> None:
    core = _core(server)
    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert "kube-system" in names
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="pyc", labels={"app": "py"}), data={"k": "v"})
    created = core.create_namespaced_config_map("default", body)
    assert created.metadata.uid and created.metadata.resource_version
    events: list[tuple[str, str]] = []

    def watcher() -> None:
        w = watch.Watch()
        for ev in w.stream(
            core.list_namespaced_config_map,
            "default",
            label_selector="app=py",
            resource_version=created.metadata.resource_version,
            timeout_seconds=10,
        ):
            events.append((ev["type"], ev["object"].data.get("k")))
            if len(events) >= 2:
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(0.5)
    core.patch_namespaced_config_map("pyc", "default", {"data": {"k": "v2"}})
    core.delete_namespaced_config_map("pyc", "default")
    t.join(15)
    assert events == [("MODIFIED", "v2"), ("DELETED", "v2")]
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map("pyc", "default")
    assert exc.value.status == 404
    # limit/continue paging
    for i in range(5):
        core.create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"page-{i}", labels={"page": "y"}))
        )
    first = core.list_namespaced_config_map("default", label_selector="page=y", limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    seen = [c.metadata.name for c in first.items]
    token = first.metadata._continue
    while token:
        page = core.list_namespaced_config_map("default", label_selector="page=y", limit=2, _continue=token)
        seen += [c.metadata.name for c in page.items]
        token = page.metadata._continue
    assert seen == [f"page-{i}" for i in range(5)]


def test_stale_resource_version_conflicts(server: ServerProcess) -> None:
    core = _core(server)
    cm = core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cas"), data={"a": "1"})
    )
    cm.data = {"a": "2"}
    core.replace_namespaced_config_map("cas", "default", cm)
    cm.data = {"a": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_config_map("cas", "default", cm)
    assert exc.value.status == 409
    assert core.read_namespaced_config_map("cas", "default").data == {"a": "2"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_data_and_watch_survive_restart(server: ServerProcess, sig: int) -> None:
    core = _core(server)
    for i in range(20):
        core.create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"keep-{i}"), data={"i": str(i)})
        )
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    server.stop(sig=sig)
    server.start()
    core = _core(server)
    kept = {
        c.metadata.name: c.data["i"]
        for c in core.list_namespaced_config_map("default").items
        if c.metadata.name.startswith("keep-")
    }
    assert kept == {f"keep-{i}": str(i) for i in range(20)}
    # A watch resumed from the pre-restart resourceVersion continues with the next write.
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after-restart")))
    w = watch.Watch()
    got = []
    for ev in w.stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=5):
        got.append((ev["type"], ev["object"].metadata.name))
        w.stop()
    assert got == [("ADDED", "after-restart")]


def test_watch_from_compacted_revision_gets_410(server: ServerProcess) -> None:
    import json
    import urllib.request

    core = _core(server)
    for i in range(3):
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"old-{i}")))
    server.stop()
    # Compact offline through the store API, then ask for a revision below the compaction point.
    import asyncio

    from kwire.store.sqlite import SQLiteStore

    async def compact() -> int:
        s = SQLiteStore(server.data_dir / "db" / "state.db")
        await s.compact(s.revision)
        rev = s.revision
        await s.close()
        return rev

    compacted = asyncio.run(compact())
    server.start()
    ctx = server.admin_ssl_context(verify=False)
    req = urllib.request.Request(
        f"{server.url}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=2&timeoutSeconds=2"
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        first = json.loads(r.readline())
    assert first["type"] == "ERROR" and first["object"]["code"] == 410
    assert compacted > 2
