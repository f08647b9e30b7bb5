"""Stale UDP conntrack entries removed through conntrack netlink (pyroute2), in the calling thread's namespace.

kube-proxy clears conntrack entries for UDP service traffic whose endpoint went away (and for a service that had
no endpoints, whose clients' entries would otherwise keep pointing at the reject): UDP has no connection to end,
so such entries black-hole a client until they time out. kube-proxy runs `conntrack -D` per flow; here one
netlink dump of the UDP entries is matched against every flow of a sync and only matching entries are deleted, with
no process started. `RecordingConntrack` is the fake tests use.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class StaleUdp:
    """UDP entries to delete: every given field must match (`conntrack -D -p udp --orig-dst ... --dst-nat ...`)."""

    orig_dst: str = ""  # the address the client sent to (a service VIP)
    orig_dport: int = 0  # the port the client sent to
    dnat_to: str = ""  # the endpoint the entry was DNATed to (the reply's source)

    def matches(self, orig_dst: str, orig_dport: int, reply_src: str) -> bool:
        return (
            (not self.orig_dst or self.orig_dst == orig_dst)
            and (not self.orig_dport or self.orig_dport == orig_dport)
            and (not self.dnat_to or self.dnat_to == reply_src)
        )


class Conntrack(Protocol):
    def delete_udp(self, flows: Sequence[StaleUdp]) -> int: ...


class NetlinkConntrack:
    """The kernel's conntrack table over netlink (pyroute2's NFCTSocket)."""

    def delete_udp(self, flows: Sequence[StaleUdp]) -> int:
        if not flows:
            return 0
        from kwire.kernel.pyroute import Conntrack as PyConntrack
        from kwire.kernel.pyroute import NFCTAttrTuple

        deleted = 0
        ct: Any = PyConntrack()
        try:
            entries = list(ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP)))
            for e in entries:
                o, r = e.tuple_orig, e.tuple_reply
                if any(f.matches(str(o.daddr), int(o.dport or 0), str(r.saddr)) for f in flows):
                    try:
                        ct.delete(e)
                        deleted += 1
                    except OSError:  # gone meanwhile
                        pass
        finally:
            ct.close()
        return deleted


class RecordingConntrack:
    """A fake: records the flows it was asked to delete."""

    def __init__(self) -> None:
        self.flows: list[StaleUdp] = []
        self._lock = threading.Lock()

    def delete_udp(self, flows: Sequence[StaleUdp]) -> int:
        with self._lock:
            self.flows.extend(flows)
        return 0
