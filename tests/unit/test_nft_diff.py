"""The one diff/replace path (kwire/kernel/nft/diff.py) on small tables: whole transactions compared line by line,
and the recording applier behaving as the kernel does for a missing table."""

from __future__ import annotations

import pytest

from kwire.kernel import nft

T = nft.Text
FWD = nft.Hook("filter", "forward", "0")


def _table(**parts: object) -> nft.Table:
    base = {
        "chains": [
            nft.Chain("forward", (T("ip daddr vmap @pods"),), FWD),
            nft.Chain("pod-a", (T("ip saddr @peers accept"), T("drop"))),
        ],
        "sets": [nft.Set("peers", "ipv4_addr", ("interval",), elements=frozenset({"10.0.0.0/24"}))],
        "maps": [nft.Map("pods", "ipv4_addr", elements={"10.42.0.5": "jump pod-a"})],
    }
    base.update(parts)
    return nft.table("ip", "kwire-test", **base)  # type: ignore[arg-type]


def test_the_same_table_is_an_empty_transaction() -> None:
    assert nft.diff(_table(), _table()).empty
    assert nft.diff(_table(), _table()).render() == ""


def test_unknown_or_reshaped_tables_are_replaced_whole() -> None:
    assert nft.diff(None, _table()).kind == "replace"
    rehooked = _table(
        chains=[
            nft.Chain("forward", (T("ip daddr vmap @pods"),), nft.Hook("filter", "forward", "5")),
            nft.Chain("pod-a", (T("ip saddr @peers accept"), T("drop"))),
        ]
    )
    assert nft.diff(_table(), rehooked).kind == "replace"
    retyped = _table(sets=[nft.Set("peers", "ipv4_addr", elements=frozenset({"10.0.0.1"}))])
    assert nft.diff(_table(), retyped).kind == "replace"
    assert nft.diff(_table(), _table(limits={"deny-log": "rate 5/second"})).kind == "replace"


def test_a_new_pod_chain_is_declared_before_the_element_naming_it() -> None:
    new = _table(
        chains=[
            nft.Chain("forward", (T("ip daddr vmap @pods"),), FWD),
            nft.Chain("pod-a", (T("ip saddr @peers accept"), T("drop"))),
            nft.Chain("pod-b", (T("drop"),)),
        ],
        sets=[nft.Set("peers", "ipv4_addr", ("interval",), elements=frozenset({"10.0.0.0/24", "10.1.0.0/16"}))],
        maps=[nft.Map("pods", "ipv4_addr", elements={"10.42.0.5": "jump pod-a", "10.42.0.6": "jump pod-b"})],
    )
    assert nft.diff(_table(), new).lines == (
        "flush set ip kwire-test peers",
        "add element ip kwire-test peers { 10.0.0.0/24, 10.1.0.0/16 }",
        "add chain ip kwire-test pod-b",
        "add rule ip kwire-test pod-b drop",
        "add element ip kwire-test pods { 10.42.0.6 : jump pod-b }",
    )


def test_a_removed_chain_goes_after_the_elements_naming_it_and_changed_values_are_readded() -> None:
    old = _table(
        chains=[
            nft.Chain("forward", (T("ip daddr vmap @pods"),), FWD),
            nft.Chain("pod-a", (T("ip saddr @peers accept"), T("drop"))),
            nft.Chain("pod-b", (T("drop"),)),
        ],
        maps=[nft.Map("pods", "ipv4_addr", elements={"10.42.0.5": "jump pod-a", "10.42.0.6": "jump pod-b"})],
    )
    new = _table(
        chains=[nft.Chain("forward", (T("ip daddr vmap @pods"),), FWD), nft.Chain("pod-a", (T("drop"),))],
        maps=[nft.Map("pods", "ipv4_addr", elements={"10.42.0.6": "jump pod-a"})],
        sets=[nft.Set("peers2", "ipv4_addr . inet_proto . inet_service", elements=frozenset({"10.42.0.6 . tcp . 80"}))],
    )
    assert nft.diff(old, new).lines == (
        "add set ip kwire-test peers2 { type ipv4_addr . inet_proto . inet_service; }",
        "add element ip kwire-test peers2 { 10.42.0.6 . tcp . 80 }",
        "flush chain ip kwire-test pod-a",
        "delete element ip kwire-test pods { 10.42.0.5, 10.42.0.6 }",
        "add rule ip kwire-test pod-a drop",
        "add element ip kwire-test pods { 10.42.0.6 : jump pod-a }",
        "flush chain ip kwire-test pod-b",
        "delete chain ip kwire-test pod-b",
        "delete set ip kwire-test peers",
    )


def test_recording_applier_is_as_strict_as_the_kernel_about_missing_tables() -> None:
    rec = nft.RecordingApplier()
    update = nft.diff(_table(), _table(maps=[nft.Map("pods", "ipv4_addr")]))
    with pytest.raises(nft.NftError):
        rec.apply(update)  # the table is not there yet
    rec.apply(nft.replace(_table()))
    rec.apply(update)
    assert [t.kind for t in rec.take()] == ["replace", "update"]
    rec.apply(nft.delete("ip", "kwire-test"))
    assert not rec.exists("ip", "kwire-test")
