"""Readiness and liveness probes (httpGet, tcpSocket, exec) with kubelet's thresholds and timings.

Probes run from the node (the agent's namespace), which reaches every pod IP through cni0, as kubelet's prober
does; exec probes run inside the pod's namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable
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


def _dial_error(exc: BaseException, addr: str) -> str:
    """A connection failure in Go's net words, as kubelet's probe messages carry them."""
    if isinstance(exc, ConnectionRefusedError):
        return f"dial tcp {addr}: connect: connection refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"dial tcp {addr}: i/o timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"dial tcp {addr}: connect: {os.strerror(exc.errno).lower()}"
    return f"dial tcp {addr}: connect: {exc.__class__.__name__}"


async def run_probe(
    probe: Obj, *, container: Obj, pod_ip: str, netns: str, enter: Callable[[list[str]], list[str]] | None = None
) -> tuple[bool, str]:
    """One probe attempt: (success, kubelet's failure message). An exec probe's command runs in the container as
    `kubectl exec` does (`enter` makes its argv: the kubelet's), else in the pod's network namespace."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            h = probe["httpGet"]
            scheme = str(h.get("scheme") or "HTTP").lower()
            host = h.get("host") or pod_ip
            port = _port(h.get("port"), container)
            url = f"{scheme}://{host}:{port}{h.get('path') or '/'}"
            headers = {str(x["name"]): str(x["value"]) for x in h.get("httpHeaders") or []}
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
                    async with s.get(url, headers=headers, ssl=False, allow_redirects=False) as r:
                        ok = 200 <= r.status < 400
                        return ok, f"HTTP probe failed with statuscode: {r.status}" if not ok else ""
            except aiohttp.ClientConnectorError as exc:
                return False, f'Get "{url}": {_dial_error(exc.os_error, f"{host}:{port}")}'
            except TimeoutError:
                return False, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
            except aiohttp.ClientError as exc:
                return False, f'Get "{url}": {exc.__class__.__name__}'
        if "tcpSocket" in probe:
            t = probe["tcpSocket"]
            port = _port(t.get("port"), container)
            host = t.get("host") or pod_ip
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            except (OSError, TimeoutError) as exc:
                return False, _dial_error(exc, f"{host}:{port}")
            writer.close()
            return True, ""
        if "exec" in probe:
            argv = [str(x) for x in (probe["exec"].get("command") or [])]
            prefix = [IP, "netns", "exec", netns] if netns else []
            proc = await asyncio.create_subprocess_exec(
                *(enter(argv) if enter else [*prefix, *argv]),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return False, f"command {argv!r} timed out"
            rc = proc.returncode
            # kubelet's exec probe message is the command's output
            return rc == 0, out[:10240].decode("utf-8", "replace") if rc else ""
    except (OSError, ValueError) as exc:
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
