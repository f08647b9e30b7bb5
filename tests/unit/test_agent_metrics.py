"""The agent's metrics under kube-proxy's and kube-router's names: an NftReconciler reports every sync (duration,
network programming latency, chain count) and every failure to its observer, and hands the failure to `on_failure`
(the agent turns it into a Warning Event on its Node); the exposition carries the names users scrape."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from kwire.agent.flannel.flannel import masquerade_table
from kwire.agent.metrics import AgentMetrics, parse_bind
from kwire.agent.nftsync import NftReconciler
from kwire.kernel import nft
from tests.polling import until


def _samples(text: str) -> dict[str, float]:
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}


async def test_syncs_and_failures_reach_the_metrics_and_the_failure_hook() -> None:
    metrics = AgentMetrics()
    rec = nft.RecordingApplier()
    want = masquerade_table(cluster_cidr="10.42.0.0/16", subnet="10.42.3.0/24")
    r = NftReconciler(
        name="proxy",
        compute=lambda keys, *, resync: want,
        applier=rec,
        min_period=0.01,
        max_period=0.05,
        observer=metrics.proxy,
    )
    failures: list[str] = []

    async def failed(exc: Exception) -> None:
        failures.append(str(exc))

    r.on_failure = failed
    rec.fail_next("table busy")
    metrics.proxy.service_changed()
    metrics.proxy.endpoints_changed()
    r.mark("default/web")
    r.start()
    try:
        await until(lambda: rec.transactions, what="a transaction", interval=0.01)
    finally:
        await r.stop()
    assert failures == ["nft failed: table busy"]
    got = _samples(metrics.exposition().decode())
    assert got["kubeproxy_sync_proxy_rules_nftables_sync_failures_total"] == 1
    assert got["kubeproxy_sync_proxy_rules_duration_seconds_count"] == 1  # the retry after the failure
    assert got["kubeproxy_sync_full_proxy_rules_duration_seconds_count"] == 1
    assert got["kubeproxy_network_programming_duration_seconds_count"] == 1
    assert got["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] > 0
    assert got["kubeproxy_sync_proxy_rules_service_changes_total"] == 1
    assert got["kubeproxy_sync_proxy_rules_endpoint_changes_total"] == 1
    assert got["kubeproxy_sync_proxy_rules_service_changes_pending"] == 0  # the sync took them
    metrics.netpol.synced(full=True, seconds=0.02, latency=None, rules=7)
    metrics.netpol.failed()
    text = metrics.exposition().decode()
    got = _samples(text)
    assert got["kube_router_controller_iptables_sync_time_count"] == 1
    assert got["kube_router_controller_iptables_sync_total_count"] == 1
    assert got["kube_router_controller_iptables_sync_total_time"] == 0.02
    # kube-router's exact names: no `_total` added to the samples or to the HELP/TYPE lines
    assert "# TYPE kube_router_controller_iptables_sync_total_count untyped" in text
    assert "_total_count_total" not in text and "_total_time_total" not in text
    assert got["kube_router_controller_policy_chains"] == 7
    assert got["kwire_netpol_sync_failures_total"] == 1


def test_metrics_bind_address_forms() -> None:
    assert parse_bind("127.0.0.1:10249") == ("127.0.0.1", 10249)
    assert parse_bind("0.0.0.0") == ("0.0.0.0", 10249)
    assert parse_bind(":9999") == ("0.0.0.0", 9999)
    assert parse_bind("[::1]:10249") == ("::1", 10249)
