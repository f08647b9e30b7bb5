"""The result of every check: a `Finding` names the cause and the fix in one line each, as K3s's `check-config`
and the K3s guides' troubleshooting recipes do; the exit status is 1 when any finding is an error."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")


@dataclass(frozen=True, order=True)
class Finding:
    severity: Severity
    check: str  # the family: kernel, sysctl, mtu, offload, firewall, dns, hairpin, flannel, nodes, services, ...
    subject: str  # what it is about: "node2/flannel.1", "default/web", "node1 inet filter/input"
    message: str  # the cause, one line
    fix: str = ""  # the fix, one line

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Finding:
        sev = str(obj.get("severity", "error"))
        return cls(
            severity=sev if sev in SEVERITIES else "error",  # type: ignore[arg-type]
            check=str(obj.get("check", "")),
            subject=str(obj.get("subject", "")),
            message=str(obj.get("message", "")),
            fix=str(obj.get("fix", "")),
        )


def exit_status(findings: list[Finding]) -> int:
    """0 when no finding is an error, 1 otherwise."""
    return 1 if any(f.severity == "error" for f in findings) else 0


def ordered(findings: list[Finding]) -> list[Finding]:
    """Errors first, then warnings, then information; duplicates removed."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(set(findings), key=lambda f: (rank[f.severity], f.check, f.subject, f.message))
