"""Flannel's masquerade table (`ip kwire-flannel`, flannel's FLANNEL-POSTRTG / FLANNEL-FWD) as a whole
transaction, and its reconciler on the recording applier: applied once, restored when it vanishes."""

from __future__ import annotations

import asyncio

from kwire.agent.flannel.flannel import NFT_TABLE, masquerade_table
from kwire.agent.nftsync import NftReconciler
from kwire.kernel import nft
from tests.polling import until
from tests.unit import golden


def test_masquerade_table_golden() -> None:
    # Pod-to-pod returns before any masquerade; pods leaving the cluster network are masqueraded.
    golden.check(
        "flannel-masquerade", nft.replace(masquerade_table(cluster_cidr="10.42.0.0/16", subnet="10.42.0.0/24"))
    )


async def test_reconciler_applies_once_and_restores_a_vanished_table() -> None:
    rec = nft.RecordingApplier()
    want = masquerade_table(cluster_cidr="10.42.0.0/16", subnet="10.42.3.0/24")
    r = NftReconciler(
        name="flannel",
        compute=lambda keys, *, resync: want,
        applier=rec,
        min_period=0.01,
        max_period=0.05,
        table_check_period=0.05,
    )
    r.start()
    try:
        await until(lambda: rec.transactions, what="a transaction", interval=0.01)
        assert rec.take() == [nft.replace(want)]
        await asyncio.sleep(0.2)
        assert rec.take() == []  # nothing changed: no transaction
        rec.lose("ip", NFT_TABLE)
        await until(lambda: rec.transactions, what="a transaction", interval=0.01)
        assert rec.take() == [nft.replace(want)] and rec.exists("ip", NFT_TABLE)
    finally:
        await r.stop()
