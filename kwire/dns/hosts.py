"""Hosts tables (CoreDNS's hosts plugin): NodeHosts from the `coredns` ConfigMap and the extra hosts of
`coredns-custom`.

Lines are `<ip> <name> [<name>...]`, `#` starts a comment. A name in the table answers A/AAAA with its addresses
(NODATA when it has only the other family or the type is something else), its address's reverse name answers PTR;
every other name falls through (the plugin's `fallthrough`). K3s configures NodeHosts with `ttl 60`.
"""

from __future__ import annotations

import ipaddress
import logging

from kwire.dns.wire import (
    AAAA,
    ANY,
    NOERROR,
    PTR,
    RR,
    A,
    Answer,
    Labels,
    NameRdata,
    a_record,
    ip_from_reverse,
    labels_of,
)

log = logging.getLogger(__name__)

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
HOSTS_TTL = 60


class HostsTable:
    def __init__(self, text: str = "", *, source: str = "hosts", ttl: int = HOSTS_TTL) -> None:
        self.source = source
        self.ttl = ttl
        self.names: dict[Labels, list[IP]] = {}
        self.reverse: dict[IP, list[Labels]] = {}
        self.invalid = 0
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            try:
                ip = ipaddress.ip_address(fields[0].split("%", 1)[0])
            except ValueError:
                self._bad(lineno, raw, f"{fields[0]!r} is not an IP address")
                continue
            if len(fields) < 2:
                self._bad(lineno, raw, "no name after the address")
                continue
            for name in fields[1:]:
                try:
                    labels = labels_of(name)
                except ValueError as exc:
                    self._bad(lineno, raw, str(exc))
                    continue
                if not labels:
                    self._bad(lineno, raw, "the root is not a host name")
                    continue
                ips = self.names.setdefault(labels, [])
                if ip not in ips:
                    ips.append(ip)
                rev = self.reverse.setdefault(ip, [])
                if labels not in rev:
                    rev.append(labels)

    def _bad(self, lineno: int, raw: str, why: str) -> None:
        self.invalid += 1
        log.warning("%s line %d skipped (%s): %r", self.source, lineno, why, raw)

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, labels: Labels, qtype: int) -> Answer | None:
        ips = self.names.get(labels)
        if ips is not None:
            want = (4,) if qtype == A else (6,) if qtype == AAAA else (4, 6) if qtype == ANY else ()
            rrs = [a_record(labels, ip, self.ttl) for ip in ips if ip.version in want]
            return Answer(NOERROR, rrs, plugin="hosts")
        if qtype == PTR and self.reverse:
            ip = ip_from_reverse(labels)
            if ip is not None and ip in self.reverse:
                return Answer(
                    NOERROR, [RR(labels, PTR, self.ttl, NameRdata(n)) for n in self.reverse[ip]], plugin="hosts"
                )
        return None
