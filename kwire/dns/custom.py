"""The optional ConfigMap kube-system/coredns-custom, in kwire's own small format (re-read on every change).

K3s imports Corefile snippets from this ConfigMap (`*.override`, `*.server`); kwire does not interpret Corefile
syntax. It reads three data keys instead, each a list of lines (`#` starts a comment, blank lines are skipped):

- `hosts`: `<ip> <name> [<name>...]` - extra host records (A/AAAA and PTR), answered before NodeHosts and the
  cluster zone, TTL 60, other names fall through (as the hosts plugin).
- `forward`: `<zone> <upstream> [<upstream>...]` where an upstream is `ip`, `ip:port` or `[ipv6]:port` - a stub
  zone: names at or under `<zone>` (the longest matching zone wins) go to these upstreams instead of the
  cluster records and resolv.conf's servers (a separate server block in CoreDNS terms). Loopback upstreams are
  refused as in resolv.conf.
- `rewrite`: `<from-name> <to-name>` - a query for exactly from-name is answered with to-name's records, the
  answer's names rewritten back to from-name (CoreDNS's `rewrite name exact <from> <to>` with `answer auto`).
  Rewrites apply first; to-name is then resolved as any query.

Other keys are ignored (with an info line). A line that does not parse is logged with its key and line number
and skipped; the rest of the ConfigMap still applies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from kwire.dns.forward import Upstream, parse_upstream, usable_upstreams
from kwire.dns.hosts import HostsTable
from kwire.dns.wire import Labels, labels_of

log = logging.getLogger(__name__)

KEYS = ("hosts", "forward", "rewrite")

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class CustomConfig:
    hosts: HostsTable = field(default_factory=lambda: HostsTable(source="coredns-custom hosts"))
    forward: dict[Labels, list[Upstream]] = field(default_factory=dict)
    rewrite: dict[Labels, Labels] = field(default_factory=dict)
    invalid: int = 0

    def forward_zone(self, labels: Labels) -> tuple[Labels, list[Upstream]] | None:
        """The longest configured zone at or above `labels`."""
        if not self.forward:
            return None
        for i in range(len(labels) + 1):
            ups = self.forward.get(labels[i:])
            if ups is not None:
                return labels[i:], ups
        return None


def _lines(text: str) -> list[tuple[int, str, list[str]]]:
    out = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if fields:
            out.append((lineno, raw, fields))
    return out


def _read_lines(
    cfg: CustomConfig,
    data: dict[str, str],
    key: str,
    *,
    parse: Callable[[int, list[str]], tuple[K, V]],
    into: dict[K, V],
    repeated: str,
) -> None:
    """Each line of data key `key` through `parse` (line number, fields -> entry; ValueError says why not) into
    `into`; a line that does not parse, or repeats an earlier line's entry (`repeated` says so), is logged and
    counted as invalid and skipped."""
    for lineno, raw, fields in _lines(str(data.get(key) or "")):
        try:
            name, value = parse(lineno, fields)
            if name in into:
                raise ValueError(repeated)
        except ValueError as exc:
            cfg.invalid += 1
            log.warning("coredns-custom %s line %d skipped (%s): %r", key, lineno, exc, raw)
            continue
        into[name] = value


def parse_custom(data: dict[str, str] | None, *, allow_loopback: bool = False) -> CustomConfig:
    data = data or {}
    cfg = CustomConfig()
    for key in sorted(data):
        if key not in KEYS:
            log.info("coredns-custom: key %r ignored (kwire reads only %s)", key, ", ".join(KEYS))
    if data.get("hosts"):
        cfg.hosts = HostsTable(str(data["hosts"]), source="coredns-custom hosts")
        cfg.invalid += cfg.hosts.invalid

    def forward(lineno: int, fields: list[str]) -> tuple[Labels, list[Upstream]]:
        if len(fields) < 2:
            raise ValueError("expected '<zone> <upstream> [<upstream>...]'")
        zone = labels_of(fields[0])
        ups = [parse_upstream(f) for f in fields[1:]]
        ups = usable_upstreams(ups, f"coredns-custom forward line {lineno}", allow_loopback=allow_loopback)
        if not ups:
            raise ValueError("no usable upstream")
        return zone, ups

    def rewrite(_lineno: int, fields: list[str]) -> tuple[Labels, Labels]:
        if len(fields) != 2:
            raise ValueError("expected '<from-name> <to-name>'")
        src, dst = labels_of(fields[0]), labels_of(fields[1])
        if not src or not dst or src == dst:
            raise ValueError("names must differ and not be the root")
        return src, dst

    _read_lines(
        cfg, data, "forward", parse=forward, into=cfg.forward, repeated="zone already configured on an earlier line"
    )
    _read_lines(
        cfg, data, "rewrite", parse=rewrite, into=cfg.rewrite, repeated="name already rewritten on an earlier line"
    )
    return cfg
