"""The agent's side of the pod runtime: starting the runtime process if it is not running, and its JSON API.

The runtime is a separate, long-lived process (`python -m kwire.agent.kubelet.runtime_main`), started detached from the agent so that an agent
restart leaves pods' processes and sockets alone (as containerd outlives the kubelet).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

log = logging.getLogger(__name__)


class RuntimeClient:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.socket = state_dir / "runtime.sock"
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket)))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> Any:
        data = None if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
        async with self._sess().request(
            method, f"http://runtime{path}", data=data, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as r:
            raw = await r.read()
            if r.status >= 400:
                raise RuntimeError(f"runtime {method} {path}: {r.status} {raw[:200]!r}")
            return orjson.loads(raw) if raw else {}

    async def alive(self) -> bool:
        try:
            await self._call("GET", "/pods")
            return True
        except (aiohttp.ClientError, OSError, RuntimeError):
            return False

    async def ensure_running(self, *, timeout: float = 10.0) -> None:
        """Start the runtime (detached, in this namespace) unless one already answers on the socket."""
        if await self.alive():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / "runtime.log"
        with open(log_path, "ab") as logf:
            # Popen, not asyncio: the runtime must outlive this agent, so nothing here waits on it.
            proc = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "kwire.agent.kubelet.runtime_main", "--state-dir", str(self.state_dir)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )
        log.info("started pod runtime (pid %d)", proc.pid)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if await self.alive():
                return
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the pod runtime did not start; see {log_path}")

    async def pods(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/pods")
        return result

    async def put_pod(self, uid: str, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("PUT", f"/pods/{uid}", spec)
        return result

    async def delete_pod(self, uid: str, *, grace: float = 5.0) -> None:
        """Stop the pod's processes: SIGTERM, then SIGKILL after `grace` seconds (terminationGracePeriodSeconds)."""
        await self._call("DELETE", f"/pods/{uid}?grace={grace:g}", timeout=grace + 30)

    async def kill(self, uid: str, container: str) -> None:
        """End a container's current run at once (SIGKILL); its restart policy decides what follows."""
        await self._call("POST", f"/pods/{uid}/kill/{container}", b"")

    async def write_stdin(self, uid: str, container: str, data: bytes, *, close: bool = False) -> bool:
        """Input for an attached container; False when it has none open."""
        try:
            await self._call("POST", f"/pods/{uid}/stdin/{container}" + ("?close=1" if close else ""), data)
        except RuntimeError:
            return False
        return True
