"""Admission follows webhook configurations through the store's watch, and keeps following them after a burst
of writes cuts that watch off (it relists, as informers do)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import kwire.store.live as live_mod
from kwire.api.allocator import ServiceAllocator
from kwire.api.errors import ApiError
from kwire.api.registry import by_path
from kwire.api.resources import Resources
from kwire.api.webhookadmission import WebhookAdmission
from kwire.store.sqlite import SQLiteStore
from tests.integration.apiserver import free_port

CONFIGMAPS = by_path("", "v1", "configmaps")
NAMESPACES = by_path("", "v1", "namespaces")
VALIDATING = by_path("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations")


def config(name: str, port: int) -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"{name}.example.com",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/"},
                "rules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}
                ],
                "namespaceSelector": {"matchLabels": {"guard": name}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }
        ],
    }


async def test_configurations_are_followed_after_an_overflowed_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert CONFIGMAPS and NAMESPACES and VALIDATING
    monkeypatch.setattr(live_mod, "_MAX_PENDING", 0)  # every watch of configurations is cut off at its first event
    store = SQLiteStore(tmp_path / "state.db")
    res = Resources(store, allocator=ServiceAllocator(service_cidr="10.43.0.0/16", node_port_range=(30000, 32767)))
    await res.load()
    admission = WebhookAdmission(store, lookup=res, namespace_labels=res.namespace_labels)
    await admission.start()
    res.admission = admission
    closed = free_port()
    try:
        await res.create(NAMESPACES, None, {"metadata": {"name": "guarded", "labels": {"guard": "late"}}})
        await asyncio.sleep(0.2)  # the configuration watch is running
        # The watch is cut off by this write (as a burst beyond its buffer would): the configuration still counts.
        await res.create(VALIDATING, None, config("late", closed))
        end = asyncio.get_running_loop().time() + 10
        while True:
            try:
                await res.create(CONFIGMAPS, "guarded", {"metadata": {"name": "probe"}}, dry_run=True)
            except ApiError as err:
                assert err.code == 500
                assert err.message.startswith('Internal error occurred: failed calling webhook "late.example.com"')
                break
            assert asyncio.get_running_loop().time() < end, "the late configuration was never seen"
            await asyncio.sleep(0.1)
    finally:
        await admission.stop()
        store._db.close()
