"""Other firewalls in the node's namespace that would drop what the cluster needs: VXLAN (8472/udp from other
nodes), the API server (6443/tcp, on servers), the kubelet (10250/tcp) and forwarded pod traffic. The K3s docs
list these ports and tell ufw/firewalld users to open them; here the rules are read, not guessed.

`nft -j list ruleset` is walked for every table that is not kwire's own (`kwire-proxy`, `kwire-netpol`,
`kwire-flannel`, `kwire-lb-*`): each base chain on the input or forward hook is followed from its first rule, as
the kernel would for a new connection of each probe, through jumps and gotos, until a rule accepts it for certain
(the chain's verdict for that probe) or the chain ends (its policy). A rule's matches are judged on what the probe
fixes (protocol, destination port, conntrack state `new`); a match on anything else (addresses, interfaces, marks)
may or may not hold, so a drop behind it is reported as a warning, a certain drop as an error. ufw and firewalld
are recognised by their chain and table names, and their own commands are given as the fix. iptables-legacy rules
beside nftables (`iptables-legacy-save`) are invisible to `nft list ruleset` and apply too: reported.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kwire.check.finding import Finding, Severity

OWN_TABLES = ("kwire-proxy", "kwire-netpol", "kwire-flannel")
OWN_PREFIXES = ("kwire-lb-",)
FAMILIES = ("ip", "inet")
MAX_DEPTH = 16


@dataclass(frozen=True)
class Probe:
    hook: str  # input | forward
    proto: str  # tcp | udp
    dport: int
    what: str  # "VXLAN (8472/udp) from other nodes"
    breaks: str  # what fails when it is dropped
    ufw: str  # the ufw command that opens it
    firewalld: str


VXLAN = Probe(
    "input",
    "udp",
    8472,
    "VXLAN (8472/udp) from other nodes",
    "pods on other nodes cannot reach this node's pods",
    "ufw allow 8472/udp",
    "firewall-cmd --permanent --add-port=8472/udp",
)
API = Probe(
    "input",
    "tcp",
    6443,
    "the API server (6443/tcp)",
    "agents and kubectl cannot reach the API server",
    "ufw allow 6443/tcp",
    "firewall-cmd --permanent --add-port=6443/tcp",
)
KUBELET = Probe(
    "input",
    "tcp",
    10250,
    "the kubelet (10250/tcp)",
    "kubectl logs/exec and metrics fail for this node",
    "ufw allow 10250/tcp",
    "firewall-cmd --permanent --add-port=10250/tcp",
)
DEFAULT_CLUSTER_CIDR = "10.42.0.0/16"
FORWARD = Probe(
    "forward",
    "tcp",
    80,
    "forwarded pod traffic",
    "pods' traffic through this node (to other nodes, Services, outside) is dropped",
    "ufw allow from 10.42.0.0/16; ufw allow to 10.42.0.0/16 (ufw default allow routed)",
    "firewall-cmd --permanent --zone=trusted --add-source=10.42.0.0/16",
)


def own_table(name: str) -> bool:
    return name in OWN_TABLES or name.startswith(OWN_PREFIXES)


@dataclass
class Ruleset:
    """`nft -j list ruleset` indexed: chains (with hook/policy), their rules in order, and sets' elements."""

    chains: dict[tuple[str, str, str], dict[str, Any]]
    rules: dict[tuple[str, str, str], list[dict[str, Any]]]
    sets: dict[tuple[str, str, str], list[Any]]

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> Ruleset:
        chains: dict[tuple[str, str, str], dict[str, Any]] = {}
        rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        sets: dict[tuple[str, str, str], list[Any]] = {}
        for obj in doc.get("nftables") or []:
            if "chain" in obj:
                c = obj["chain"]
                chains[(c["family"], c["table"], c["name"])] = c
            elif "rule" in obj:
                r = obj["rule"]
                rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
            elif "set" in obj or "map" in obj:
                s = obj.get("set") or obj.get("map") or {}
                sets[(s["family"], s["table"], s["name"])] = list(s.get("elem") or [])
        return cls(chains, rules, sets)

    def base_chains(self, hook: str) -> list[dict[str, Any]]:
        found = [
            c
            for c in self.chains.values()
            if c.get("hook") == hook and c.get("family") in FAMILIES and not own_table(str(c.get("table")))
        ]
        return sorted(found, key=lambda c: int(c.get("prio") or 0))

    def tables(self) -> set[tuple[str, str]]:
        return {(c["family"], c["table"]) for c in self.chains.values()}


def _contains(value: Any, port: int, sets: list[Any] | None = None) -> bool | None:
    """Whether a match's right-hand side (a port, a range, an anonymous or named set) holds `port`."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value == port
    if isinstance(value, str):
        if value.startswith("@"):
            if sets is None:
                return None
            return any(_contains(e, port) for e in sets)
        return value.isdigit() and int(value) == port
    if isinstance(value, dict):
        if "range" in value:
            lo, hi = value["range"]
            return isinstance(lo, int) and isinstance(hi, int) and lo <= port <= hi
        if "set" in value:
            return any(_contains(e, port) for e in value["set"])
        if "elem" in value:
            return _contains(value["elem"].get("val"), port)
        return None
    if isinstance(value, list):
        return any(_contains(e, port) for e in value)
    return None


def _names(value: Any) -> set[str] | None:
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {str(v) for v in value}
    if isinstance(value, dict) and "set" in value:
        return {str(v) for v in value["set"]}
    return None


def _match(
    expr: dict[str, Any], probe: Probe, sets: dict[tuple[str, str, str], list[Any]], table: tuple[str, str]
) -> bool | None:
    """True: holds for the probe; False: cannot hold; None: depends on what the probe does not fix."""
    op = expr.get("op", "==")
    left = expr.get("left") or {}
    right = expr.get("right")
    result: bool | None = None
    if isinstance(left, dict) and "payload" in left:
        pl = left["payload"]
        proto, fld = pl.get("protocol"), pl.get("field")
        if fld == "dport" and proto in ("tcp", "udp", "th"):
            if proto in ("tcp", "udp") and proto != probe.proto:
                return False if op in ("==", "in") else None
            named = (
                sets.get((table[0], table[1], right[1:])) if isinstance(right, str) and right.startswith("@") else None
            )
            result = _contains(right, probe.dport, named)
        elif fld == "protocol" and proto in ("ip", "ip6"):
            names = _names(right)
            result = None if names is None else probe.proto in names
        elif proto in ("tcp", "udp") and proto != probe.proto and op in ("==", "in"):
            return False  # any other tcp/udp header field: the packet must be of that protocol
    elif isinstance(left, dict) and "meta" in left and left["meta"].get("key") in ("l4proto", "protocol"):
        if left["meta"].get("key") == "l4proto":
            names = _names(right)
            result = None if names is None else probe.proto in names
    elif isinstance(left, dict) and "ct" in left and left["ct"].get("key") == "state":
        names = _names(right)
        result = None if names is None else "new" in names
    if result is None:
        return None
    if op == "!=":
        return not result
    return result


VERDICTS = ("accept", "drop", "reject", "jump", "goto", "return", "queue")


def _rule_verdict(rule: dict[str, Any]) -> tuple[str, str]:
    for e in reversed(rule.get("expr") or []):
        if not isinstance(e, dict):
            continue
        for v in VERDICTS:
            if v in e:
                target = e[v].get("target", "") if isinstance(e[v], dict) else ""
                return v, str(target)
    return "", ""


@dataclass(frozen=True)
class Hit:
    certain: bool
    family: str
    table: str
    chain: str
    handle: int
    verdict: str  # drop | reject | policy drop


def walk(rs: Ruleset, probe: Probe) -> list[Hit]:
    """The drops a new connection of `probe` may meet in the foreign base chains of its hook (each base chain
    decides on its own: an accept in one does not spare the packet another's drop)."""
    hits: list[Hit] = []
    for base in rs.base_chains(probe.hook):
        family, table = base["family"], base["table"]
        state = _State()
        outcome = _walk_chain(rs, probe, (family, table, base["name"]), hits, state, depth=0)
        if outcome is None and base.get("policy") == "drop":
            hits.append(Hit(state.sure, family, table, base["name"], 0, "policy drop"))
    return hits


@dataclass
class _State:
    sure: bool = True  # the packet surely reaches the current rule: no earlier rule may have ended its walk


def _results(rule: dict[str, Any], probe: Probe, rs: Ruleset, table: tuple[str, str]) -> list[bool | None]:
    results = [
        _match(e["match"], probe, rs.sets, table)
        for e in rule.get("expr") or []
        if isinstance(e, dict) and "match" in e
    ]
    for e in rule.get("expr") or []:
        if isinstance(e, dict) and isinstance(e.get("xt"), dict) and e["xt"].get("type") == "match":
            # An iptables-nft extension match nft cannot show. `conntrack`/`state` are taken as the idiom every
            # iptables firewall (ufw included) uses them for, RELATED,ESTABLISHED accepts and INVALID drops: they do
            # not hold for a new, valid connection. Any other may or may not hold.
            results.append(False if e["xt"].get("name") in ("conntrack", "state") else None)
    return results


def _may_accept(rs: Ruleset, probe: Probe, key: tuple[str, str, str], depth: int = 0) -> bool:
    """Whether a rule of this chain (or of one it jumps to) may accept the probe."""
    if depth > MAX_DEPTH:
        return True
    for rule in rs.rules.get(key, []):
        if any(r is False for r in _results(rule, probe, rs, key[:2])):
            continue
        verdict, target = _rule_verdict(rule)
        if verdict == "accept" or (
            verdict in ("jump", "goto") and _may_accept(rs, probe, (*key[:2], target), depth + 1)
        ):
            return True
    return False


def _walk_chain(
    rs: Ruleset, probe: Probe, key: tuple[str, str, str], hits: list[Hit], state: _State, *, depth: int
) -> str | None:
    """'accept' / 'drop' when the chain surely ends the packet's walk that way, None when it falls through."""
    if depth > MAX_DEPTH:
        state.sure = False
        return None
    family, table, chain = key
    for rule in rs.rules.get(key, []):
        results = _results(rule, probe, rs, (family, table))
        if any(r is False for r in results):
            continue
        sure = state.sure and all(r is True for r in results)
        verdict, target = _rule_verdict(rule)
        if verdict in ("drop", "reject"):
            hits.append(Hit(sure, family, table, chain, int(rule.get("handle") or 0), verdict))
            if sure:
                return "drop"
        elif verdict in ("accept", "return"):
            if sure:
                return "accept" if verdict == "accept" else None
            state.sure = False  # it may have ended here
        elif verdict in ("jump", "goto"):
            before = state.sure
            state.sure = sure
            sub = _walk_chain(rs, probe, (family, table, target), hits, state, depth=depth + 1)
            if sure and (sub is not None or verdict == "goto"):
                return sub
            if sure:
                continue  # state.sure is what the sub-chain left: False if it may have accepted
            state.sure = before and verdict == "jump" and not _may_accept(rs, probe, (family, table, target))
    return None


def _tool(rs: Ruleset, family: str, table: str) -> str:
    """ufw (through iptables-nft: `ufw-*` chains in `filter`) or firewalld (its own `firewalld` table)."""
    chains = [name for (f, t, name) in rs.chains if (f, t) == (family, table)]
    if any(c.startswith("ufw") for c in chains):
        return "ufw"
    if table == "firewalld" or any(c.startswith(("filter_IN_", "filter_FWD_")) for c in chains):
        return "firewalld"
    return ""


def check_nft(doc: dict[str, Any], *, node: str, probes: list[Probe]) -> list[Finding]:
    rs = Ruleset.parse(doc)
    findings = []
    for probe in probes:
        for hit in walk(rs, probe):
            tool = _tool(rs, hit.family, hit.table)
            where = f"table {hit.family} {hit.table}, chain {hit.chain}"
            what = "its policy drops" if hit.verdict == "policy drop" else f"rule handle {hit.handle} {hit.verdict}s"
            if tool == "ufw":
                fix = probe.ufw
            elif tool == "firewalld":
                fix = probe.firewalld
            elif hit.verdict == "policy drop":
                fix = f"accept {probe.proto} dport {probe.dport} in {hit.family} {hit.table} {hit.chain} before its end"
            else:
                fix = f"nft delete rule {hit.family} {hit.table} {hit.chain} handle {hit.handle} (or accept it before)"
            by = f"{tool} ({where})" if tool else f"another firewall ({where})"
            sev: Severity = "error" if hit.certain else "warning"
            if hit.certain:
                verb = f"{what} {probe.what}"
            elif hit.verdict == "policy drop":
                verb = f"{what} {probe.what} unless a rule before its end accepts it (that depends on addresses)"
            else:
                verb = f"{what} {probe.what} when its other matches hold"
            findings.append(
                Finding(
                    sev,
                    "firewall",
                    f"{node} {hit.family} {hit.table}/{hit.chain}",
                    f"{by}: {verb}: {probe.breaks}",
                    fix,
                )
            )
    return findings


_LEGACY_RULE = re.compile(r"^-A (\S+) (.*)-j (DROP|REJECT)\b")


def check_legacy(save: str, *, node: str, probes: list[Probe]) -> list[Finding]:
    """`iptables-legacy-save` output: any rule at all is a warning (two firewalls apply, `nft list ruleset` shows
    one); a DROP/REJECT in INPUT or FORWARD that can hit a probe is an error."""
    rules = [line for line in save.splitlines() if line.startswith("-A ")]
    policies = [line for line in save.splitlines() if re.match(r"^:(INPUT|FORWARD) (DROP|REJECT)", line)]
    if not rules and not policies:
        return []
    findings = [
        Finding(
            "warning",
            "firewall",
            f"{node} iptables-legacy",
            f"{len(rules)} iptables-legacy rules beside nftables: both apply, and `nft list ruleset` does not show "
            "them",
            "move them to nftables (iptables-legacy-save | iptables-restore-translate -f /dev/stdin) and flush "
            "legacy (iptables-legacy -F)",
        )
    ]
    for line in policies:
        chain = line[1:].split()[0]
        for probe in probes:
            if probe.hook.upper() == chain:
                findings.append(
                    Finding(
                        "error",
                        "firewall",
                        f"{node} iptables-legacy/{chain}",
                        f"iptables-legacy's {chain} policy drops {probe.what}: {probe.breaks}",
                        f"iptables-legacy -P {chain} ACCEPT, or accept {probe.proto} dport {probe.dport} first",
                    )
                )
    for line in rules:
        m = _LEGACY_RULE.match(line)
        if not m:
            continue
        chain, matches = m.group(1), m.group(2)
        for probe in probes:
            if probe.hook.upper() != chain:
                continue
            pm = re.search(r"-p (\w+)", matches)
            dm = re.search(r"--dports? (\S+)", matches)
            if pm and pm.group(1) != probe.proto:
                continue
            if dm and not any(_port_in(p, probe.dport) for p in dm.group(1).split(",")):
                continue
            findings.append(
                Finding(
                    "error",
                    "firewall",
                    f"{node} iptables-legacy/{chain}",
                    f"iptables-legacy rule `{line}` drops {probe.what}: {probe.breaks}",
                    f"iptables-legacy -D {line[3:]}",
                )
            )
    return findings


def _port_in(spec: str, port: int) -> bool:
    if ":" in spec:
        lo, hi = spec.split(":", 1)
        return lo.isdigit() and hi.isdigit() and int(lo) <= port <= int(hi)
    return spec.isdigit() and int(spec) == port


def listening_tcp(port: int, proc_net: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> bool:
    """Whether something listens on tcp `port` in the calling process's namespace."""
    for path in proc_net:
        try:
            lines = open(path).read().splitlines()[1:]  # noqa: SIM115 - tiny files
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def forward_probe(cluster_cidr: str) -> Probe:
    """FORWARD with the cluster's pod CIDR in the ufw and firewalld commands."""
    return dataclasses.replace(
        FORWARD,
        ufw=FORWARD.ufw.replace(DEFAULT_CLUSTER_CIDR, cluster_cidr),
        firewalld=FORWARD.firewalld.replace(DEFAULT_CLUSTER_CIDR, cluster_cidr),
    )


def probes_for_node(*, vxlan: bool, cluster_cidr: str = "10.42.0.0/16") -> list[Probe]:
    out = [forward_probe(cluster_cidr)]
    if vxlan:
        out.append(VXLAN)
    if listening_tcp(API.dport):
        out.append(API)
    if listening_tcp(KUBELET.dport):
        out.append(KUBELET)
    return out


def gather_nft() -> dict[str, Any]:
    import json

    nft = shutil.which("nft") or "/usr/sbin/nft"
    out = subprocess.run([nft, "-j", "list", "ruleset"], capture_output=True, text=True, check=False, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"nft exited {out.returncode}")
    doc: dict[str, Any] = json.loads(out.stdout or "{}")
    return doc


def gather_legacy() -> str | None:
    tool = shutil.which("iptables-legacy-save")
    if tool is None:
        return None
    out = subprocess.run([tool], capture_output=True, text=True, check=False, timeout=30)
    return out.stdout if out.returncode == 0 else None


def iter_tables(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for obj in doc.get("nftables") or []:
        if "table" in obj:
            yield obj["table"]["family"], obj["table"]["name"]
