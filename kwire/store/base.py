"""The revisioned key-value store interface (the kine/etcd model every API write goes through).

Every write gets the next global revision; an object's resourceVersion is the revision of its last write.
Watches replay the revision log from a given revision and then follow live writes; revisions older than the
last compaction are gone (the API answers 410 Gone for them).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(frozen=True, slots=True)
class Event:
    """One write as watchers see it. For DELETED, `value` is the last stored value."""

    type: str
    key: str
    revision: int
    value: bytes
    prev_value: bytes | None


@dataclass(frozen=True, slots=True)
class RangeResult:
    items: list[KV]
    revision: int  # the store revision the result is consistent with
    more: bool  # items were cut by limit


class StoreError(Exception):
    pass


class KeyExists(StoreError):
    pass


class KeyNotFound(StoreError):
    pass


class RevisionMismatch(StoreError):
    """Compare-and-swap failed: the key's current revision is not the expected one."""

    def __init__(self, key: str, current: KV | None) -> None:
        super().__init__(key)
        self.current = current


class Compacted(StoreError):
    """The requested revision is older than the compaction point."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"requested revision {requested} is compacted (oldest available {compacted + 1})")
        self.requested = requested
        self.compacted = compacted


class WatchStream(Protocol):
    """Events of one watch: iterate them (ends when the watcher is cut off), or take what is ready now."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def __anext__(self) -> Event: ...

    def ready(self) -> list[Event]: ...

    def close(self) -> None: ...


class Store(abc.ABC):
    """A revisioned KV store. All methods run on the owner's event loop."""

    @property
    @abc.abstractmethod
    def revision(self) -> int:
        """The current (last written) revision."""

    @property
    @abc.abstractmethod
    def compacted_revision(self) -> int:
        """Revisions at or below this one can no longer be watched from."""

    @abc.abstractmethod
    async def get(self, key: str) -> KV | None: ...

    @abc.abstractmethod
    def get_now(self, key: str) -> KV | None:
        """Synchronous read of the live state (every backend mirrors it in memory)."""

    @abc.abstractmethod
    async def range(self, prefix: str, *, start_after: str = "", limit: int = 0) -> RangeResult:
        """Live keys under prefix, in key order, strictly after `start_after`; limit 0 = all."""

    @abc.abstractmethod
    async def create(self, key: str, value: bytes) -> int:
        """Store a new key; raises KeyExists. Returns the write's revision."""

    @abc.abstractmethod
    async def update(self, key: str, value: bytes, *, expected_revision: int) -> int:
        """Replace a key's value if its mod_revision is `expected_revision`; raises KeyNotFound/RevisionMismatch."""

    @abc.abstractmethod
    async def delete(self, key: str, *, expected_revision: int = 0) -> int:
        """Delete a key (CAS when expected_revision != 0); raises KeyNotFound/RevisionMismatch."""

    @abc.abstractmethod
    def watch(self, prefix: str, *, from_revision: int) -> WatchStream:
        """Events under prefix with revision > from_revision, then live ones; raises Compacted."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Drop history at or below `revision` (the latest value of each live key is kept)."""

    def healthy(self) -> bool:
        """Whether the backend answers (the API server's `etcd` health check); backends refine it."""
        return True

    @abc.abstractmethod
    async def close(self) -> None: ...
