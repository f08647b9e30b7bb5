"""Readiness and liveness probes (httpGet, tcpSocket, exec) with kubelet's thresholds and timings.

Probes run from the node (the agent's namespace), which reaches every pod IP through cni0, as kubelet's prober
does; exec probes run inside the pod's namespace.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

Obj = dict[str, Any]
IP = shutil.which("ip") or "/usr/sbin/ip"


def _port(value: Any, container: Obj) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    for p in container.get("ports") or []:
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ValueError(f"port {value!r} is not a containerPort of {container.get('name')}")


async def run_probe(probe: Obj, *, container: Obj, pod_ip: str, netns: str) -> tuple[bool, str]:
    """One probe attempt: (success, message)."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            h = probe["httpGet"]
            scheme = str(h.get("scheme") or "HTTP").lower()
            host = h.get("host") or pod_ip
            url = f"{scheme}://{host}:{_port(h.get('port'), container)}{h.get('path') or '/'}"
            headers = {str(x["name"]): str(x["value"]) for x in h.get("httpHeaders") or []}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
                async with s.get(url, headers=headers, ssl=False, allow_redirects=False) as r:
                    ok = 200 <= r.status < 400
                    return ok, f"HTTP probe failed with statuscode: {r.status}" if not ok else ""
        if "tcpSocket" in probe:
            t = probe["tcpSocket"]
            port = _port(t.get("port"), container)
            _, writer = await asyncio.wait_for(asyncio.open_connection(t.get("host") or pod_ip, port), timeout)
            writer.close()
            return True, ""
        if "exec" in probe:
            argv = [str(x) for x in (probe["exec"].get("command") or [])]
            prefix = [IP, "netns", "exec", netns] if netns else []
            proc = await asyncio.create_subprocess_exec(
                *prefix, *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            try:
                rc = await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return False, f"command timed out after {timeout:g}s"
            return rc == 0, f"command exited with {rc}" if rc else ""
    except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return False, str(exc) or exc.__class__.__name__
    return False, "probe has no handler"


@dataclass
class ProbeState:
    """Consecutive results against successThreshold / failureThreshold (kubelet's worker)."""

    probe: Obj
    initial: bool  # the value before the first result (readiness: False, liveness: True)
    result: bool = False
    successes: int = 0
    failures: int = 0
    last_message: str = ""

    def __post_init__(self) -> None:
        self.result = self.initial

    @property
    def period(self) -> float:
        return float(self.probe.get("periodSeconds") or 10)

    @property
    def initial_delay(self) -> float:
        return float(self.probe.get("initialDelaySeconds") or 0)

    def record(self, ok: bool, message: str) -> bool:
        """Record one attempt; True when the result flipped."""
        before = self.result
        self.last_message = message
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.probe.get("successThreshold") or 1):
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.probe.get("failureThreshold") or 3):
                self.result = False
        return self.result != before

    def reset(self) -> None:
        self.result = self.initial
        self.successes = self.failures = 0
