"""Findings as text for a terminal (one block per finding: severity, check, subject, cause, fix) or as the JSON list
`-o json` prints."""

from __future__ import annotations

import json

from kwire.check.finding import Finding, ordered


def to_json(findings: list[Finding]) -> str:
    return json.dumps([f.to_json() for f in ordered(findings)], indent=2)


def to_text(findings: list[Finding], *, checked: str = "") -> str:
    lines: list[str] = []
    for f in ordered(findings):
        lines.append(f"{f.severity.upper():<8}{f.check:<14}{f.subject}")
        lines.append(f"        {f.message}")
        if f.fix:
            lines.append(f"        fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 and s != 'info' else ''}" for s, n in counts.items())
    where = f" ({checked})" if checked else ""
    lines.append(f"{summary}{where}" if findings else f"no problems found{where}")
    return "\n".join(lines) + "\n"
