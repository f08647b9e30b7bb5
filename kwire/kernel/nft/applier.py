"""Where transactions go: the kernel (through libnftables) or a recording fake for tests.

`Applier` is the whole interface the reconciler needs: apply one transaction, and tell whether a table exists
(kube-proxy's canary check: a table of our own is its own canary). `KernelApplier` runs transactions through one
long-lived libnftables context in the calling thread's network namespace. `RecordingApplier` mirrors knftables'
`Fake`: it keeps every transaction it was given (tests assert whole transactions), tracks which tables exist the
way the kernel would (an update of a missing table fails), and can be told to fail the next transaction or to lose
a table, as a host firewall's `flush ruleset` would.
"""

from __future__ import annotations

import threading
from typing import Protocol

from kwire.kernel.nft import kernel
from kwire.kernel.nft.diff import Transaction
from kwire.kernel.nft.kernel import NftError


class Applier(Protocol):
    def apply(self, txn: Transaction) -> None: ...

    def exists(self, family: str, table: str) -> bool: ...


class KernelApplier:
    """The kernel of the calling thread's network namespace. `library=False` runs the `nft` command instead of the
    long-lived libnftables context (for a process that changes namespaces between calls)."""

    def __init__(self, *, library: bool = True) -> None:
        self.library = library

    def apply(self, txn: Transaction) -> None:
        if not txn.empty:
            kernel.apply(txn.render(), use_library=self.library)

    def exists(self, family: str, table: str) -> bool:
        return kernel.table_exists(family, table)


class RecordingApplier:
    """A fake kernel: records transactions and which tables exist. Thread-safe (appliers run in worker threads)."""

    def __init__(self) -> None:
        self.transactions: list[Transaction] = []
        self.tables: set[tuple[str, str]] = set()
        self._fail_next: list[str] = []
        self._lock = threading.Lock()

    def fail_next(self, message: str = "injected failure") -> None:
        with self._lock:
            self._fail_next.append(message)

    def lose(self, family: str, table: str) -> None:
        """The table disappears behind kwire's back."""
        with self._lock:
            self.tables.discard((family, table))

    def apply(self, txn: Transaction) -> None:
        with self._lock:
            if self._fail_next:
                raise NftError(f"nft failed: {self._fail_next.pop(0)}")
            ident = (txn.family, txn.table)
            if txn.kind == "update" and txn.lines and ident not in self.tables:
                raise NftError(f"nft failed: No such file or directory: table {txn.family} {txn.table}")
            if txn.kind == "replace":
                self.tables.add(ident)
            elif txn.kind == "delete":
                self.tables.discard(ident)
            if not txn.empty:
                self.transactions.append(txn)

    def exists(self, family: str, table: str) -> bool:
        with self._lock:
            return (family, table) in self.tables

    def take(self) -> list[Transaction]:
        """The transactions recorded since the last take."""
        with self._lock:
            out, self.transactions = self.transactions, []
            return out
