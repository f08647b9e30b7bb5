"""Container lifecycle hooks (postStart, preStop) as kubelet's handler runner runs them: `exec` inside the
container (its namespaces, as `kubectl exec`), `httpGet` against the pod's IP (or `host`), `sleep`. A failure is
kubelet's message, which becomes the FailedPostStartHook / FailedPreStopHook event:

    Exec lifecycle hook ([sh -c exit 3]) for Container "web" in Pod "web_default(uid)" failed - error:
    command 'sh -c exit 3' exited with 3: , message: ""
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from kwire.agent.kubelet.execstream import ExecTarget, enter_argv
from kwire.agent.kubelet.status import pod_ref

Obj = dict[str, Any]
MAX_OUTPUT = 10 * 1024


async def run(handler: Obj, *, pod: Obj, container: Obj, target: ExecTarget, pod_ip: str, timeout: float) -> str:
    """Run one hook; "" on success, else kubelet's failure message."""
    name = str(container.get("name", ""))
    if isinstance(handler.get("exec"), dict):
        command = [str(x) for x in handler["exec"].get("command") or []]
        head = f"Exec lifecycle hook ([{' '.join(command)}]) for Container {json.dumps(name)} in Pod {json.dumps(pod_ref(pod))} failed"
        try:
            proc = await asyncio.create_subprocess_exec(
                *enter_argv(target, command),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **target.env},
            )
        except OSError as exc:
            return f'{head} - error: {exc}, message: ""'
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return f'{head} - error: command timed out, message: ""'
        text = out[:MAX_OUTPUT].decode("utf-8", "replace")
        if proc.returncode:
            err = f"command '{' '.join(command)}' exited with {proc.returncode}: {text}"
            return f"{head} - error: {err}, message: {json.dumps(text)}"
        return ""
    if isinstance(handler.get("httpGet"), dict):
        h = handler["httpGet"]
        path = str(h.get("path") or "/")
        head = f"HTTP lifecycle hook ({path}) for Container {json.dumps(name)} in Pod {json.dumps(pod_ref(pod))} failed"
        port = h.get("port")
        if isinstance(port, str) and not port.isdigit():
            port = next((p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == port), port)
        url = f"{str(h.get('scheme') or 'HTTP').lower()}://{h.get('host') or pod_ip}:{port}{path}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
                async with s.get(url, ssl=False) as r:
                    if r.status >= 400:
                        return f"{head} - error: HTTP lifecycle hook failed with statuscode: {r.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return f'{head} - error: Get "{url}": {exc.__class__.__name__}: {exc}'
        return ""
    if isinstance(handler.get("sleep"), dict):
        await asyncio.sleep(min(float(handler["sleep"].get("seconds") or 0), timeout))
        return ""
    return ""
