"""`/healthz`, `/livez` and `/readyz` as kube-apiserver answers them: named checks, `?verbose` listing each
(`[+]ping ok` ... `readyz check passed`), `?exclude=<name>`, one check at `/readyz/<name>`; a failing check is
`[-]<name> failed: reason withheld` and a 500 with `<endpoint> check failed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

ENDPOINTS = ("healthz", "livez", "readyz")


@dataclass(frozen=True)
class Check:
    name: str
    healthy: Callable[[], bool]
    ready_only: bool = False  # kube's readyz-only checks (shutdown, etcd-readiness, informer-sync)


@dataclass
class Health:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, healthy: Callable[[], bool], *, ready_only: bool = False) -> None:
        self.checks.append(Check(name, healthy, ready_only))

    def for_endpoint(self, endpoint: str) -> list[Check]:
        return [c for c in self.checks if endpoint == "readyz" or not c.ready_only]

    def answer(self, endpoint: str, *, sub: str, verbose: bool, exclude: list[str]) -> tuple[int, str] | None:
        """(status, text) for `/<endpoint>[/<sub>]`, or None when `sub` names no check (a 404)."""
        checks = self.for_endpoint(endpoint)
        if sub:
            check = next((c for c in checks if c.name == sub), None)
            if check is None:
                return None
            ok = _run(check)
            return (200, "ok") if ok else (500, "internal server error: reason withheld")
        lines = []
        failed = False
        for check in checks:
            if check.name in exclude:
                lines.append(f"[+]{check.name} excluded: ok")
                continue
            ok = _run(check)
            failed |= not ok
            lines.append(f"[+]{check.name} ok" if ok else f"[-]{check.name} failed: reason withheld")
        verdict = f"{endpoint} check failed" if failed else f"{endpoint} check passed"
        if failed:
            return 500, "\n".join(lines) + f"\n{verdict}\n"
        if verbose:
            return 200, "\n".join(lines) + f"\n{verdict}\n"
        return 200, "ok"


def _run(check: Check) -> bool:
    try:
        return bool(check.healthy())
    except Exception:  # noqa: BLE001 - a check that raises is a failing check
        return False
