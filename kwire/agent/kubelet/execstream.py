"""The kubelet's exec and attach endpoints: `GET /exec/{namespace}/{pod}/{container}?command=..&stdin=..&tty=..`
and `GET /attach/{namespace}/{pod}/{container}` (WebSockets; attach is described at serve_attach).

What `kubectl exec` reaches through the API server's `pods/exec`. The command runs in the pod's network namespace
through `ip netns exec` (so it sees the pod's network, resolv.conf and hosts, as the pod's containers do), with
pipes, or a pseudo-terminal when `tty` is set. The stream protocol is Kubernetes' channel protocol over WebSocket
(`v5.channel.k8s.io`, or `v4.channel.k8s.io` as the Python client speaks): every binary message starts with a
channel byte (0 stdin, 1 stdout, 2 stderr, 3 the final status, 4 terminal resize; v5 adds 255 = "close this
stream", used for stdin's end), and the session ends with a metav1.Status on channel 3 carrying the exit code.
A container that runs a process is entered as runc exec enters it (`nsenter -t <pid>`: its mount namespace with its
volumes, its UTS and network namespaces, its root). The command also enters the pod's UTS namespace (`hostname` prints the pod's hostname) and gets the container's
environment (its `env` and `envFrom`, as the CRI runtime gives exec the container's env), plus HOME and TERM for a
terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from kwire.agent.kubelet import crilog
from kwire.base import pty

log = logging.getLogger(__name__)

IP = shutil.which("ip") or "/usr/sbin/ip"
SETSID = shutil.which("setsid") or "/usr/bin/setsid"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
CONTAIN_SCRIPT = str(Path(__file__).with_name("contain.py"))
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
READ_CHUNK = 32 * 1024


def _flag(request: web.Request, name: str, default: bool) -> bool:
    v = request.query.get(name)
    return default if v is None else v.lower() in ("1", "true", "yes")


def _frame(msg: Any) -> bytes:
    """A client message's bytes: binary frames as kubectl sends them, or text frames, which the Python client's
    `write_stdin("text")` sends (the channel is then the first character, chr(0) for stdin)."""
    if msg.type == WSMsgType.BINARY:
        return bytes(msg.data)
    if msg.type == WSMsgType.TEXT:
        return str(msg.data).encode("utf-8")
    return b""


def status(exit_code: int | None, *, error: str = "") -> dict[str, Any]:
    """The metav1.Status kube's kubelet sends last (kubectl exits with the code it carries)."""
    if error:
        return {"metadata": {}, "status": "Failure", "message": error, "reason": "InternalError"}
    if exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


def _set_winsize(fd: int, payload: bytes) -> None:
    try:
        size = json.loads(payload)
        rows, cols = int(size.get("Height", 0)), int(size.get("Width", 0))
    except (ValueError, TypeError, AttributeError):
        return
    if rows > 0 and cols > 0:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@dataclass(frozen=True)
class ExecTarget:
    """Where an exec'd command runs: the pod's network namespace ("" = the node's own, for hostNetwork pods), its
    UTS namespace file ("" = the node's), and the container's environment."""

    netns: str
    uts: str = ""
    env: dict[str, str] = field(default_factory=dict)
    pid: int = 0  # the container's process, when it runs one: exec enters all its namespaces and its root
    security: dict[str, Any] = field(default_factory=dict)  # the container's identity and capabilities (security.py)
    contain: dict[str, Any] = field(default_factory=dict)  # contain.py's spec for a command in a container of its own


def enter_argv(target: ExecTarget, command: list[str]) -> list[str]:
    """`command` as it runs in the target: in a running container as runc exec runs it (`nsenter -t <pid>` into
    its mount, UTS, network and PID namespaces, its root and cwd, then contain.py's exec mode for its uid, groups,
    capabilities and no_new_privs); otherwise (no process runs there) in the pod's network and UTS namespaces and
    a confinement of its own, as the container's would be (`contain`)."""
    if target.pid:
        spec = json.dumps({**target.security, "mode": "exec"})
        inner = [sys.executable, "-S", CONTAIN_SCRIPT, spec, "--"] if target.security else []
        return [NSENTER, "-t", str(target.pid), "-m", "-u", "-n", "-p", "-r", "-w", "--", *inner, *command]
    argv = list(command)
    if target.contain:
        Path(target.contain["stage"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [sys.executable, "-S", CONTAIN_SCRIPT, json.dumps(target.contain), "--", *argv]
        if target.contain.get("pidns"):
            argv = [UNSHARE, "--pid", "--fork", "--", *argv]
        if not target.netns:
            argv = [UNSHARE, "--mount", "--propagation", "slave", "--", *argv]
    if target.uts:
        argv = [NSENTER, f"--uts={target.uts}", "--", *argv]
    if target.netns:
        argv = [IP, "netns", "exec", target.netns, *argv]
    return argv


async def serve_exec(request: web.Request, *, target: ExecTarget, pod: str) -> web.WebSocketResponse:
    """Run the request's command in the target's namespaces and stream it."""
    command = request.query.getall("command", [])
    stdin, tty = _flag(request, "stdin", False), _flag(request, "tty", False)
    want_out, want_err = _flag(request, "stdout", True), _flag(request, "stderr", True) and not tty
    ws = web.WebSocketResponse(protocols=PROTOCOLS, heartbeat=30)
    await ws.prepare(request)
    v5 = ws.ws_protocol == "v5.channel.k8s.io"
    if not command:
        await ws.send_bytes(bytes([ERROR]) + json.dumps(status(None, error="you must specify a command")).encode())
        await ws.close()
        return ws
    argv = enter_argv(target, list(command))
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "HOSTNAME": pod,
        **target.env,
    }
    master = -1
    try:
        if tty:
            # A pseudo-terminal whose slave is the command's stdin/stdout/stderr and controlling terminal (a
            # shell's job control and ^C need one), as the container runtime gives `kubectl exec -t`. util-linux
            # `setsid --ctty` makes the session and takes the terminal: uvloop, the agent's loop, runs no
            # preexec_fn after the child's stdio is in place.
            # a container's command gets a terminal of the container's own devpts (`tty` names it)
            master, slave = pty.open_pty(f"/proc/{target.pid}/root" if target.pid else "/")
            env["TERM"] = "xterm"
            try:
                proc = await asyncio.create_subprocess_exec(
                    SETSID, "--ctty", "--wait", *argv, stdin=slave, stdout=slave, stderr=slave, env=env
                )
            finally:
                os.close(slave)
        else:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        if master >= 0:
            os.close(master)
        await ws.send_bytes(bytes([ERROR]) + json.dumps(status(None, error=f"cannot run {command[0]}: {exc}")).encode())
        await ws.close()
        return ws

    async def pump_pipe(reader: asyncio.StreamReader | None, channel: int, wanted: bool) -> None:
        if reader is None:
            return
        while chunk := await reader.read(READ_CHUNK):
            if wanted and not ws.closed:
                await ws.send_bytes(bytes([channel]) + chunk)

    async def pump_pty() -> None:
        async for chunk in pty.read_master(master):
            if want_out and not ws.closed:
                await ws.send_bytes(bytes([STDOUT]) + chunk)

    async def from_client() -> None:
        async for msg in ws:
            data = _frame(msg)
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel == STDIN and payload:
                if tty:
                    await asyncio.to_thread(os.write, master, payload)
                elif proc.stdin is not None and not proc.stdin.is_closing():
                    proc.stdin.write(payload)
                    with contextlib.suppress(ConnectionError):
                        await proc.stdin.drain()
            elif channel == RESIZE and tty:
                _set_winsize(master, payload)
            elif channel == CLOSE and v5 and payload[:1] == bytes([STDIN]):
                if tty:
                    await asyncio.to_thread(os.write, master, b"\x04")  # EOF at the terminal's line discipline
                elif proc.stdin is not None:
                    proc.stdin.close()

    if tty:
        outputs = [asyncio.create_task(pump_pty())]
    else:
        outputs = [
            asyncio.create_task(pump_pipe(proc.stdout, STDOUT, want_out)),
            asyncio.create_task(pump_pipe(proc.stderr, STDERR, want_err)),
        ]
    client = asyncio.create_task(from_client())

    async def all_output() -> None:
        await asyncio.gather(*outputs)

    output_done = asyncio.create_task(all_output())
    try:
        done, _ = await asyncio.wait([client, output_done], return_when=asyncio.FIRST_COMPLETED)
        if client in done:  # the client went away first: end the command, as the kubelet does
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        code = await proc.wait()
        await asyncio.gather(*outputs, return_exceptions=True)
        if not ws.closed:
            await ws.send_bytes(bytes([ERROR]) + json.dumps(status(code)).encode())
            await ws.close()
    finally:
        client.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await client
        for t in (*outputs, output_done):
            t.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
        if master >= 0:
            os.close(master)
    return ws


ATTACH_POLL = 0.1


@dataclass(frozen=True)
class AttachTarget:
    """A container to attach to: its runtime state, its input, and whether input ends with the first session."""

    state: Callable[[], Awaitable[dict[str, Any] | None]]
    write: Callable[[bytes, bool], Awaitable[bool]]  # (data, close) -> whether the container took it
    stdin_once: bool = False


async def serve_attach(request: web.Request, *, log_path: Path, target: AttachTarget) -> web.WebSocketResponse:
    """`kubectl attach` / `kubectl run -it`: the container's output from the start of its current run, until it
    ends. The runtime keeps each container's output in its log file, so attach follows that file (from
    the run's first byte, so a short command's output is not lost before the client attaches) and polls the
    runtime for the container's end. Input goes to the container when its spec has `stdin: true` (the runtime
    keeps a pipe, or the terminal of a `tty: true` container, for it; v5's close signal ends it, and so does the
    end of the first session with `stdinOnce`). A container that is not a process (a responder) has no output:
    the session lasts until the client leaves."""
    ws = web.WebSocketResponse(protocols=PROTOCOLS, heartbeat=30)
    await ws.prepare(request)
    v5 = ws.ws_protocol == "v5.channel.k8s.io"

    async def from_client() -> None:
        async for msg in ws:  # the loop ends when the client leaves
            data = _frame(msg)
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel == STDIN and payload:
                await target.write(payload, False)
            elif channel == CLOSE and v5 and payload[:1] == bytes([STDIN]):
                await target.write(b"", True)

    client = asyncio.create_task(from_client())
    st = await target.state()
    offset = int((st or {}).get("logOffset") or 0)
    # A terminal's line discipline turns \n into \r\n (onlcr) and kubectl's terminal is in raw mode: a container
    # that has no terminal of its own gets that translation here.
    tty = _flag(request, "tty", False) and not (st or {}).get("tty")
    reader = crilog.Reader()
    try:
        while not client.done():
            try:
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    raw = f.read()
            except FileNotFoundError:
                raw = b""
            if raw:
                offset += len(raw)
                chunk = b"".join(e.text() for e in reader.feed(raw))
                if not chunk:
                    continue
                await ws.send_bytes(bytes([STDOUT]) + (chunk.replace(b"\n", b"\r\n") if tty else chunk))
                continue
            st = await target.state()
            if st is not None and not st.get("running") and st.get("exitCode") is not None:
                # Success whatever the exit code, as the CRI streaming server ends an attach: kubectl takes the
                # code from the pod's status (a failure here would make it retry with `logs`, printing twice).
                await ws.send_bytes(bytes([ERROR]) + json.dumps(status(0)).encode())
                break
            await asyncio.sleep(ATTACH_POLL)
    finally:
        client.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await client
        if target.stdin_once:
            await target.write(b"", True)
        await ws.close()
    return ws
