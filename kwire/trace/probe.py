"""`kwire trace --probe`: one real connection from FROM's network namespace to TO, with nftables tracing switched on
for exactly that flow, and the observed outcome compared with the prediction.

For the probe a temporary table `ip kwire-trace-<id>` is added to each node namespace the flow may cross: two base
chains (prerouting and output, priority -350, before conntrack and every NAT) with one `meta nftrace set 1` rule
per form the flow takes there (original destination, each DNAT candidate, the masqueraded source the destination
sees), TCP limited to the SYN so replies and retransmits of other connections stay out. `nft monitor trace` runs
in each of those namespaces while the probe is sent (a TCP connect or a UDP datagram waiting for the responders'
echo, with a bounded timeout); every table is deleted and every monitor stopped afterwards, even on failure.

The observed verdict comes from the socket (connected / echoed: DELIVERED; refused: REJECTED when the trace shows
kube-proxy's `reject`, else REFUSED by the pod; no answer: DROPPED, where the trace shows the dropping rule) and
the trace names the endpoint the DNAT picked and the rule chain hit. Anything that differs from the prediction
for that endpoint is a `BUG` line (the CLI then exits with status 2).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from kwire.kernel import netns
from kwire.kernel.nft.kernel import NFT
from kwire.trace.path import DELIVERED, DEPENDS, DROPPED, REFUSED, REJECTED, UNREACHABLE, Prediction

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"
_TRACE = re.compile(
    r"^trace id (?P<id>\S+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<what>rule|policy) ?(?P<rest>.*)$"
)
_VERDICT = re.compile(r"\(verdict (?P<v>[^)]*)\)\s*$")
_DNAT = re.compile(r"dnat to (?P<ep>\d+\.\d+\.\d+\.\d+:\d+)")
MAX_LINES = 5000  # per monitor: a probe's packets give a few dozen


@dataclass(frozen=True)
class Flow:
    """One form the probe's packet takes somewhere on its way (source may be "" = any)."""

    src: str
    dst: str
    port: int


@dataclass
class Hit:
    node: str
    table: str
    chain: str
    rule: str
    verdict: str

    def text(self) -> str:
        return f"{self.node}: {self.table} {self.chain}: {self.rule} ({self.verdict})"


@dataclass
class Observation:
    outcome: str  # connected | echoed | refused | timeout | unreachable | error: ...
    verdict: str
    endpoint: str = ""  # the DNAT the trace shows (the first, or the first to a predicted candidate)
    dnats: list[str] = field(default_factory=list)
    dropped: Hit | None = None
    hits: list[Hit] = field(default_factory=list)
    bugs: list[str] = field(default_factory=list)
    seconds: float = 0.0


def flows(pred: Prediction) -> list[Flow]:
    out = [Flow(pred.src.ip, pred.dst_ip, pred.port)]
    for via in pred.via:
        ip, port = via.rsplit(":", 1)
        out.append(Flow(pred.src.ip, ip, int(port)))
    if pred.relay:
        out.append(Flow(pred.relay, "", 0))
    for leg in pred.legs:
        if leg.endpoint:
            ip, port = leg.endpoint.rsplit(":", 1)
            out.append(Flow(pred.src.ip, ip, int(port)))
            if leg.src_seen and leg.src_seen != pred.src.ip:
                out.append(Flow(leg.src_seen, ip, int(port)))
        elif leg.src_seen and leg.src_seen != pred.src.ip:
            out.append(Flow(leg.src_seen, pred.dst_ip, pred.port))
    return list(dict.fromkeys(out))


def trace_table(name: str, proto: str, fl: list[Flow]) -> str:
    """The nft script of the temporary tracing table."""
    first = "tcp flags & (syn | ack) == syn " if proto == "tcp" else ""
    rules = "".join(
        f"    {'ip saddr ' + f.src + ' ' if f.src else ''}{'ip daddr ' + f.dst + ' ' if f.dst else ''}"
        f"meta l4proto {proto} {'th dport ' + str(f.port) + ' ' if f.port else ''}{first}meta nftrace set 1\n"
        for f in fl
    )
    chains = "".join(
        f"  chain {hook} {{\n    type filter hook {hook} priority -350; policy accept;\n{rules}  }}\n"
        for hook in ("prerouting", "output")
    )
    return f"table ip {name} {{\n{chains}}}\n"


def _is_kwire_node(ns: str) -> bool:
    """Whether a namespace is a kwire node's (its agent's proxy table is there): the probe adds its tracing table
    nowhere else, so it can never touch a namespace kwire does not run in."""
    cmd = [NFT, "list", "table", "ip", "kwire-proxy"]
    res = subprocess.run(cmd if not ns else [IP, "netns", "exec", ns, *cmd], capture_output=True, timeout=10)
    return res.returncode == 0


def _nft(ns: str, script: str) -> None:
    cmd = [NFT, "-f", "-"] if not ns else [IP, "netns", "exec", ns, NFT, "-f", "-"]
    res = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise RuntimeError(f"nft in {ns or 'this namespace'}: {res.stderr.strip()}")


class _Monitor:
    """`nft monitor trace` in one namespace, its lines collected (bounded) by a reader thread."""

    def __init__(self, node: str, ns: str) -> None:
        self.node = node
        cmd = [NFT, "monitor", "trace"] if not ns else [IP, "netns", "exec", ns, NFT, "monitor", "trace"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if len(self.lines) < MAX_LINES:
                self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(timeout=3)


@contextmanager
def tracing(namespaces: dict[str, str], proto: str, fl: list[Flow]) -> Iterator[list[_Monitor]]:
    """Tracing on for the flows in every namespace (node -> netns) while the body runs; removed afterwards."""
    name = f"kwire-trace-{os.getpid():x}"
    added: list[str] = []
    monitors: list[_Monitor] = []
    try:
        for node, ns in namespaces.items():
            if not _is_kwire_node(ns):
                raise RuntimeError(
                    f"node {node}: {ns or 'this namespace'} holds no kwire-proxy table (not a kwire node)"
                )
            _nft(ns, trace_table(name, proto, fl))
            added.append(ns)
            monitors.append(_Monitor(node, ns))
        time.sleep(0.4)  # let each monitor subscribe before the first packet
        yield monitors
        time.sleep(0.4)  # the last events
    finally:
        for m in monitors:
            m.stop()
        for ns in added:
            try:
                _nft(ns, f"delete table ip {name}\n")
            except RuntimeError:
                pass


def send(src_ns: str, dst_ip: str, port: int, proto: str, *, timeout: float) -> str:
    """One TCP connect or UDP datagram from inside `src_ns`: connected | echoed | refused | timeout | unreachable."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = netns.open_socket(src_ns, socket.AF_INET, kind, reuse=False)
    try:
        s.settimeout(timeout)
        if proto == "tcp":
            s.connect((dst_ip, port))
            return "connected"
        s.connect((dst_ip, port))
        s.send(b"kwire-trace probe\n")
        s.recv(2048)
        return "echoed"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "unreachable"
        return f"error: {exc}"
    finally:
        s.close()


def parse(node: str, lines: list[str]) -> list[Hit]:
    """The rule and policy verdicts of kwire's tables (and foreign ones) in one monitor's output, in order."""
    out = []
    for line in lines:
        m = _TRACE.match(line)
        if m is None or m.group("what") == "packet" or m.group("table").startswith("kwire-trace-"):
            continue
        rest = m.group("rest")
        v = _VERDICT.search(rest)
        if m.group("what") == "policy":
            verdict, rule = rest.strip(), "policy"
        elif v is not None:
            verdict, rule = v.group("v"), rest[: v.start()].strip()
        else:
            continue
        out.append(Hit(node, m.group("table"), m.group("chain"), rule, verdict))
    return out


def observe(outcome: str, hits: list[Hit]) -> Observation:
    obs = Observation(outcome, "", hits=hits)
    for h in hits:
        d = _DNAT.search(h.rule)
        if d is not None and d.group("ep") not in obs.dnats:
            obs.dnats.append(d.group("ep"))
        if h.verdict in ("drop", "policy drop") and obs.dropped is None:
            obs.dropped = h
    obs.endpoint = obs.dnats[0] if obs.dnats else ""
    rejected = any("reject" in h.rule.split() for h in hits if h.table == "kwire-proxy")
    if outcome in ("connected", "echoed"):
        obs.verdict = DELIVERED
    elif outcome == "refused":
        obs.verdict = REJECTED if rejected else REFUSED
    elif outcome == "timeout":
        obs.verdict = DROPPED
    elif outcome == "unreachable":
        obs.verdict = UNREACHABLE
    else:
        obs.verdict = outcome
    return obs


_REASON_TABLE = {"netpol": "kwire-netpol", "proxy": "kwire-proxy"}


def compare(pred: Prediction, obs: Observation, *, traced: set[str] | None = None) -> list[str]:
    """BUG lines: every way the observation differs from the prediction."""
    bugs = []
    candidates = [leg.endpoint for leg in pred.legs if leg.endpoint]
    obs.endpoint = next((d for d in obs.dnats if d in candidates), obs.endpoint)
    leg = next((i for i, leg in enumerate(pred.legs) if leg.endpoint and leg.endpoint == obs.endpoint), None)
    for d in obs.dnats:
        if d not in candidates and d not in pred.via:
            bugs.append(f"BUG: the kernel DNATed to {d}; predicted: {', '.join(pred.via + candidates) or 'none'}")
    if obs.endpoint not in candidates and candidates and obs.verdict == DELIVERED:
        bugs.append(f"BUG: delivered without the predicted DNAT to {', '.join(candidates)}")
    predicted = pred.verdict
    step, hop = pred.deciding(leg or 0)
    if leg is not None:
        predicted = pred.legs[leg].verdict
    if predicted == DEPENDS:
        predicted = obs.verdict if obs.verdict in {leg.verdict for leg in pred.legs} else predicted
    if predicted != obs.verdict:
        seen = f" ({obs.dropped.text()})" if obs.dropped is not None else ""
        bugs.append(f"BUG: predicted {predicted}, observed {obs.verdict} ({obs.outcome}){seen}")
    elif predicted == DROPPED and obs.dropped is not None and hop is not None:
        want = _REASON_TABLE.get(hop.reason.split(" ")[0], "")
        if want and obs.dropped.table != want:
            bugs.append(f"BUG: predicted the drop in {want} ({hop.reason}), observed {obs.dropped.text()}")
    elif predicted == DROPPED == obs.verdict and hop is not None and hop.node in (traced or set()):
        bugs.append(
            f"BUG: predicted a drop by {hop.reason} on node {hop.node}, but no rule there dropped it: the packet was "
            "lost elsewhere (a node down, a route, the MTU?)"
        )
    return bugs


def run(pred: Prediction, *, src_ns: str, namespaces: dict[str, str], timeout: float = 2.0) -> Observation:
    """Send the probe with tracing on in `namespaces` (node -> netns) and compare."""
    start = time.monotonic()
    with tracing(namespaces, pred.proto, flows(pred)) as monitors:
        outcome = send(src_ns, pred.dst_ip, pred.port, pred.proto, timeout=timeout)
    hits = [h for m in monitors for h in parse(m.node, m.lines)]
    obs = observe(outcome, hits)
    obs.seconds = time.monotonic() - start
    obs.bugs = compare(pred, obs, traced=set(namespaces))
    return obs


def text(obs: Observation) -> str:
    kwire_hits = [h for h in obs.hits if h.table.startswith("kwire-") and h.verdict != "continue"]
    lines = [f"probe: {obs.outcome} -> observed {obs.verdict}" + (f", DNAT to {obs.endpoint}" if obs.endpoint else "")]
    if obs.dropped is not None:
        lines.append(f"  dropped by {obs.dropped.text()}")
    lines.append("  rules hit (nft monitor trace):")
    lines += [f"    {h.text()}" for h in kwire_hits[:40]]
    if len(kwire_hits) > 40:
        lines.append(f"    ... {len(kwire_hits) - 40} more")
    lines += obs.bugs or ["probe agrees with the prediction"]
    return "\n".join(lines)
