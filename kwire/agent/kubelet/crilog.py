"""Container log files in the CRI format kubelet reads (`/var/log/pods/.../0.log`, written by containerd):

    2024-01-02T03:04:05.123456789Z stdout F a complete line
    2024-01-02T03:04:05.123456789Z stderr P a partial line (continued by the next entry of the stream)

One entry per line of output, stamped when the runtime read it; output that does not end a line yet (a shell's
prompt, a line longer than MAX_LINE) is written at once as `P` entries, which the line's `F` entry ends (so an
attached terminal sees a prompt without waiting for a newline). The runtime writes them (LineWriter); the node's log and
attach endpoints read them (parse, Reader) to serve `kubectl logs` with --timestamps, --since, --since-time, --tail
and --limit-bytes, as kubelet does. Stdlib only: the pod runtime imports it.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from typing import BinaryIO

MAX_LINE = 16 * 1024  # containerd's default max_container_log_line_size


def timestamp(ns: int | None = None) -> str:
    """RFC 3339 with nanoseconds, as containerd stamps log lines."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def parse_time(value: str) -> float | None:
    """An RFC 3339 time (with or without fraction, `Z` or an offset) as Unix seconds; None if malformed."""
    v = value.strip()
    try:
        offset = 0
        if v.endswith("Z"):
            v = v[:-1]
        elif len(v) > 6 and v[-6] in "+-" and v[-3] == ":":
            sign = 1 if v[-6] == "+" else -1
            offset = sign * (int(v[-5:-3]) * 3600 + int(v[-2:]) * 60)
            v = v[:-6]
        base, _, frac = v.partition(".")
        secs = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) - offset
        return secs + (float(f"0.{frac}") if frac.isdigit() else 0.0)
    except (ValueError, OverflowError):
        return None


class LineWriter:
    """Turns a stream's output into CRI entries on `out` (an unbuffered file opened for appending)."""

    def __init__(self, out: BinaryIO, stream: str) -> None:
        self.out = out
        self.stream = stream.encode()
        self.buf = b""

    def _entry(self, tag: bytes, content: bytes) -> bytes:
        return timestamp().encode() + b" " + self.stream + b" " + tag + b" " + content + b"\n"

    def write(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0 or nl > MAX_LINE:
                break
            out.append(self._entry(b"F", self.buf[:nl]))
            self.buf = self.buf[nl + 1 :]
        while self.buf:
            out.append(self._entry(b"P", self.buf[:MAX_LINE]))
            self.buf = self.buf[MAX_LINE:]
        if out:
            self.out.write(b"".join(out))

    def close(self) -> None:
        """The end of the run (every write is already in the file)."""


@dataclass(frozen=True)
class Entry:
    time: str
    stream: str
    partial: bool
    content: bytes

    @property
    def seconds(self) -> float:
        return parse_time(self.time) or 0.0

    def text(self) -> bytes:
        """The output this entry stands for (a full line gets its newline back)."""
        return self.content if self.partial else self.content + b"\n"


def parse(line: bytes) -> Entry | None:
    """One line of a CRI log file (without its newline); None if it is not one."""
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[2] not in (b"F", b"P"):
        return None
    content = parts[3] if len(parts) == 4 else b""
    return Entry(parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace"), parts[2] == b"P", content)


class Reader:
    """Incremental: feed it the bytes appended to a log file, get the complete entries back."""

    def __init__(self) -> None:
        self.rest = b""

    def feed(self, data: bytes) -> list[Entry]:
        data = self.rest + data
        lines = data.split(b"\n")
        self.rest = lines.pop()
        return [e for e in (parse(x) for x in lines) if e is not None]


def lines(entries: list[Entry]) -> list[list[Entry]]:
    """Entries grouped into lines of output (`P` entries with the `F` entry that ends them), per stream."""
    out: list[list[Entry]] = []
    open_line: dict[str, list[Entry]] = {}
    for e in entries:
        line = open_line.pop(e.stream, None)
        if line is None:
            line = []
            out.append(line)
        line.append(e)
        if e.partial:
            open_line[e.stream] = line
    return out


def select(entries: list[Entry], *, since: float = 0.0, tail: int = -1) -> list[Entry]:
    """kubelet's log options on whole lines: those from `since` on (Unix seconds), then the last `tail` (-1: all)."""
    picked = [ln for ln in lines(entries) if ln[0].seconds >= since]
    if tail >= 0:
        picked = picked[-tail:] if tail else []
    return [e for ln in picked for e in ln]


def render(entries: list[Entry], *, timestamps: bool) -> bytes:
    """What `kubectl logs` prints for these entries (with `--timestamps`, each line starts with its time)."""
    if not timestamps:
        return b"".join(e.text() for e in entries)
    out, at_line_start = [], True
    for e in entries:
        out.append((e.time.encode() + b" " if at_line_start else b"") + e.text())
        at_line_start = not e.partial
    return b"".join(out)
