"""The kubelet's exec endpoint without privileges: commands run in the test's own namespace (a hostNetwork pod's
case), spoken to in Kubernetes' channel protocol over WebSocket as kubectl (v5) and the Python client (v4) do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

from kwire.agent.kubelet.execstream import AttachTarget, ExecTarget
from kwire.agent.kubelet.kubeletauth import KubeletAuth
from kwire.agent.kubelet.logs import LogServer
from tests.integration.apiserver import free_port
from tests.unit.kubelet_helpers import FakeApi, kubelet_auth, kubelet_tls, make_pki

TOKEN = "t0ken"
ATTACHED: dict[str, Any] = {}


WRITTEN: list[tuple[bytes, bool]] = []


async def _attach_state() -> dict[str, Any] | None:
    return dict(ATTACHED) or None


async def _attach_write(data: bytes, close: bool) -> bool:
    WRITTEN.append((data, close))
    return True


CLIENT_TLS: list[ssl.SSLContext] = []  # trusts the kubelet's serving certificate (set by _kubelet)


def _client(**kw: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=CLIENT_TLS[-1]), **kw)


@contextlib.asynccontextmanager
async def _kubelet(tmp_path: Path) -> AsyncIterator[str]:
    """The kubelet API over HTTPS; TOKEN is the API server's (system:masters, allowed by the stand-in API)."""
    port = free_port()
    pki = make_pki(tmp_path / "pki")
    CLIENT_TLS.append(pki.client_context())
    api = FakeApi(
        allow=lambda spec: "system:masters" in spec["groups"],
        tokens={TOKEN: {"username": "system:apiserver", "groups": ["system:masters"]}},
    )
    async with api.serve() as api_client:
        async with _log_server(tmp_path, port, kubelet_auth(api_client), kubelet_tls(pki)):
            yield f"https://127.0.0.1:{port}/exec/default/web/c"


@contextlib.asynccontextmanager
async def _log_server(tmp_path: Path, port: int, auth: KubeletAuth, tls: ssl.SSLContext) -> AsyncIterator[None]:
    srv = LogServer(
        logs_dir=tmp_path,
        auth=auth,
        ssl_context=tls,
        host="127.0.0.1",
        port=port,
        exec_target=lambda ns, pod, _c: (
            ExecTarget("", env={"FROM_SPEC": "yes"}) if (ns, pod) == ("default", "web") else None
        ),
        attach_target=lambda ns, pod, c: (
            AttachTarget(state=_attach_state, write=_attach_write, stdin_once=True)
            if (ns, pod, c) == ("default", "web", "c")
            else None
        ),
    )
    await srv.start()
    try:
        yield
    finally:
        await srv.close()


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[str]:
    async with _kubelet(tmp_path) as url:
        yield url


async def _session(
    url: str,
    command: list[str],
    *,
    protocol: str = "v5.channel.k8s.io",
    stdin: bool = False,
    tty: bool = False,
    send: list[bytes | str] | None = None,
) -> tuple[dict[int, bytes], dict[str, Any]]:
    params = [("command", c) for c in command] + [("stdout", "true"), ("stderr", "true")]
    params += [("stdin", "true")] if stdin else []
    params += [("tty", "true")] if tty else []
    out: dict[int, bytes] = {}
    async with (
        _client() as s,
        s.ws_connect(url, params=params, protocols=[protocol], headers={"Authorization": f"Bearer {TOKEN}"}) as ws,
    ):
        assert ws.protocol == protocol
        for frame in send or []:
            if isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame)
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.BINARY
            out[msg.data[0]] = out.get(msg.data[0], b"") + msg.data[1:]
    return out, json.loads(out.get(3, b"{}"))


async def test_output_streams_and_the_exit_code(kubelet: str) -> None:
    out, status = await _session(kubelet, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert out[1] == b"out\n" and out[2] == b"err\n"
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    _, ok = await _session(kubelet, ["true"])
    assert ok == {"metadata": {}, "status": "Success"}


async def test_stdin_and_its_end_v5(kubelet: str) -> None:
    out, status = await _session(kubelet, ["cat"], stdin=True, send=[b"\x00hello ", b"\x00world", b"\xff\x00"])
    assert out[1] == b"hello world" and status["status"] == "Success"


async def test_text_frames_as_the_python_clients_write_stdin_sends_them(kubelet: str) -> None:
    """`stream(...).write_stdin("text")` sends a text frame whose first character is the channel."""
    cmd = ["sh", "-c", "read a; echo got $a; echo env $FROM_SPEC"]
    out, status = await _session(kubelet, cmd, protocol="v4.channel.k8s.io", stdin=True, send=["\x00hello\n"])
    assert out[1] == b"got hello\nenv yes\n" and status["status"] == "Success"  # the container's env too


async def test_v4_as_the_python_client_speaks_it(kubelet: str) -> None:
    out, status = await _session(kubelet, ["echo", "four"], protocol="v4.channel.k8s.io")
    assert out[1] == b"four\n" and status["status"] == "Success"


async def _tty_with_resize(kubelet: str) -> None:
    resize = b"\x04" + json.dumps({"Width": 100, "Height": 40}).encode()
    out, status = await _session(
        kubelet, ["sh", "-c", "read x; tty; stty size"], stdin=True, tty=True, send=[resize, b"\x00go\n"]
    )
    text = out[1].decode()
    assert "/dev/pts/" in text and "40 100" in text and 2 not in out  # a terminal has no separate stderr
    assert status["status"] == "Success"


async def test_tty_with_resize(kubelet: str) -> None:
    await _tty_with_resize(kubelet)


def test_under_uvloop_the_agents_loop(tmp_path: Path) -> None:
    """uvloop spawns processes its own way (no preexec_fn after the child's stdio is set up): the terminal and
    the pipes must work there too."""

    async def scenario() -> None:
        async with _kubelet(tmp_path) as url:
            await _tty_with_resize(url)
            out, status = await _session(url, ["cat"], stdin=True, send=[b"\x00uv", b"\xff\x00"])
            assert out[1] == b"uv" and status["status"] == "Success"

    uvloop.run(scenario())


async def test_refusals(kubelet: str) -> None:
    async with _client() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(kubelet + "?command=true", protocols=["v5.channel.k8s.io"])
        assert e.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(
                kubelet.replace("/web/", "/other/") + "?command=true",
                protocols=["v5.channel.k8s.io"],
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        assert e.value.status == 404
    _, status = await _session(kubelet, ["/no/such/program"])
    assert status["status"] == "Failure"


async def test_attach_follows_this_runs_output_until_it_ends(kubelet: str, tmp_path: Path) -> None:
    log = tmp_path / "default_web_c.log"
    earlier = b"2024-01-02T03:04:05.000000001Z stdout F an earlier run\n"
    log.write_bytes(earlier)
    ATTACHED.clear()
    WRITTEN.clear()
    ATTACHED.update(running=True, exitCode=None, logOffset=len(earlier))
    url = kubelet.replace("/exec/", "/attach/") + "?stdin=true&stdout=true&tty=true"
    out: dict[int, bytes] = {}
    async with (
        _client() as s,
        s.ws_connect(url, protocols=["v5.channel.k8s.io"], headers={"Authorization": f"Bearer {TOKEN}"}) as ws,
    ):
        with log.open("ab") as f:
            f.write(b"2024-01-02T03:04:06Z stdout F Server: 10.43.0.10\n")
        await ws.send_bytes(b"\x00some input")
        await asyncio.sleep(0.3)
        with log.open("ab") as f:
            f.write(b"2024-01-02T03:04:07Z stdout P Address: \n2024-01-02T03:04:07Z stdout F 10.43.0.1\n")
        ATTACHED.update(running=False, exitCode=1)
        async for msg in ws:
            out[msg.data[0]] = out.get(msg.data[0], b"") + msg.data[1:]
    assert out[1] == b"Server: 10.43.0.10\r\nAddress: 10.43.0.1\r\n"  # this run only; a terminal's line ends
    # Success even for exit code 1, as the CRI streaming server ends an attach (kubectl reads the pod's status).
    assert json.loads(out[3]) == {"metadata": {}, "status": "Success"}
    # Input reached the container; stdinOnce closed it when the session ended.
    assert WRITTEN == [(b"some input", False), (b"", True)]


async def test_logs_as_kubelet_serves_them(kubelet: str, tmp_path: Path) -> None:
    """CRI-format files: the current run, previous, since-time, tail, timestamps, limit-bytes, follow to the end."""
    base = kubelet.replace("/exec/", "/containerLogs/")
    prev = b"2024-01-02T03:00:00.5Z stdout F first run\n"
    cur = (
        b"2024-01-02T03:04:05.000000001Z stdout F one\n"
        b"2024-01-02T03:04:06Z stderr F two\n"
        b"2024-01-02T03:04:07Z stdout P thr\n"
        b"2024-01-02T03:04:07Z stdout F ee\n"
    )
    log = tmp_path / "default_web_c.log"
    log.write_bytes(prev + cur)
    ATTACHED.clear()
    ATTACHED.update(running=False, exitCode=0, logOffset=len(prev), prevLogOffset=0)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with _client(headers=headers) as s:

        async def get(query: str) -> tuple[int, str]:
            async with s.get(f"{base}?{query}") as r:
                return r.status, await r.text()

        assert await get("") == (200, "one\ntwo\nthree\n")
        assert await get("previous=true") == (200, "first run\n")
        assert await get("tailLines=1") == (200, "three\n")
        assert await get("sinceTime=2024-01-02T03:04:06Z") == (200, "two\nthree\n")
        assert await get("limitBytes=5") == (200, "one\nt")
        _, stamped = await get("timestamps=true&tailLines=2")
        assert stamped == "2024-01-02T03:04:06Z two\n2024-01-02T03:04:07Z three\n"
        ATTACHED.update(prevLogOffset=-1)
        status, text = await get("previous=true")
        assert status == 400 and text == 'previous terminated container "c" in pod "web" not found'
        # follow: new output streams until the run ends
        ATTACHED.update(running=True, exitCode=None)

        async def finish() -> None:
            await asyncio.sleep(0.4)
            with log.open("ab") as f:
                f.write(b"2024-01-02T03:04:09Z stdout F four\n")
            await asyncio.sleep(0.4)
            ATTACHED.update(running=False, exitCode=0)

        task = asyncio.create_task(finish())
        assert await asyncio.wait_for(get("follow=true&tailLines=1"), 10) == (200, "three\nfour\n")
        await task
