"""The pod runtime without privileges: its small HTTP server, the responders and the control API, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp
import pytest

from kwire.agent.kubelet import crilog
from kwire.agent.kubelet.responder import Responders
from kwire.agent.kubelet.runtime import Runtime
from kwire.base import http11
from tests.integration.apiserver import free_port


async def _raw(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(-1) if until_close else reader.read(65536), 5)
    writer.close()
    return out


async def _echo_server(handler: http11.Handler) -> tuple[http11.HttpServer, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    srv = http11.HttpServer(handler)
    await srv.start_socket(sock)
    return srv, int(sock.getsockname()[1])


async def _echo(req: http11.Request) -> http11.Response:
    if req.path == "/boom":
        raise RuntimeError("handler bug")
    return http11.Response(200, json.dumps({"m": req.method, "t": req.target, "n": len(req.body)}).encode())


async def test_keepalive_head_and_100_continue() -> None:
    srv, port = await _echo_server(_echo)
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(3):  # one pooled connection, three requests
                async with s.post(f"http://127.0.0.1:{port}/x?i={i}", data=b"abc") as r:
                    assert r.status == 200 and await r.json() == {"m": "POST", "t": f"/x?i={i}", "n": 3}
            async with s.head(f"http://127.0.0.1:{port}/h") as r:
                assert r.status == 200 and r.headers["Content-Length"] != "0" and await r.read() == b""
        reply = await _raw(
            port,
            b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            until_close=False,
        )
        assert reply.startswith(b"HTTP/1.1 100 ")
    finally:
        await srv.close()


async def test_bad_requests_get_4xx_and_the_server_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http11, "MAX_BODY", 10)
    srv, port = await _echo_server(_echo)
    try:
        assert (await _raw(port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400 Bad Request")
        big = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
        assert (await _raw(port, big)).startswith(b"HTTP/1.1 413 ")
        boom = await _raw(port, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert boom.startswith(b"HTTP/1.1 500 ")
        ok = await _raw(port, b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK") and b'"/fine"' in ok
    finally:
        await srv.close()


async def test_close_ends_keepalive_connections() -> None:
    srv, port = await _echo_server(_echo)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.read(65536)).startswith(b"HTTP/1.1 200 ")
    await asyncio.wait_for(srv.close(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed the idle keep-alive connection
    writer.close()


def _log(path: Path) -> str:
    """A CRI log file's output, checking every line is a CRI entry."""
    raw = path.read_bytes()
    entries = [crilog.parse(line) for line in raw.splitlines()]
    assert all(e is not None for e in entries), raw
    return b"".join(e.text() for e in entries if e is not None).decode()


def _spec(name: str, ports: list[list[object]], processes: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {
        "pod": {"name": name, "namespace": "default", "node": "n1", "podIP": "127.0.0.1", "netns": ""},
        "ports": ports,
        "processes": processes or [],
        "restartPolicy": "Never",
    }


async def test_responders_answer_tcp_with_the_pod_and_echo_udp(tmp_path: Path) -> None:
    rt = Runtime(tmp_path, responders=Responders(bind_host="127.0.0.1"))
    tcp, udp = free_port(), free_port(udp=True)
    try:
        await rt.ensure_pod("u1", _spec("web-1", [[tcp, "TCP"], [udp, "UDP"]]))
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{tcp}/hello?a=1", headers={"X-Test": "yes"}) as r,
        ):
            body = await r.json()
        assert body["pod"] == "web-1" and body["namespace"] == "default" and body["port"] == tcp
        assert body["path"] == "/hello?a=1" and body["clientIP"] == "127.0.0.1" and body["headers"]["X-Test"] == "yes"

        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                got.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", udp))
        transport.sendto(b"ping")
        assert await asyncio.wait_for(got, 5) == b"ping"
        transport.close()

        assert rt.status()["u1"]["ports"] == [[tcp, "TCP"], [udp, "UDP"]]
        await rt.remove_pod("u1")
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", tcp)
    finally:
        await rt.close()


async def test_control_api_and_process_exit_codes(tmp_path: Path) -> None:
    rt = Runtime(tmp_path, responders=Responders(bind_host="127.0.0.1"))
    api = http11.HttpServer(rt.handle)
    sock_path = str(tmp_path / "rt.sock")
    await api.start_unix(sock_path)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock_path)) as s:
            spec = _spec("job-1", [], [{"name": "c", "argv": ["sh", "-c", "echo hi; exit 3"], "env": {}}])
            async with s.put("http://rt/pods/u2", data=json.dumps(spec)) as r:
                assert r.status == 200
            for _ in range(100):
                async with s.get("http://rt/pods") as r:
                    st = (await r.json())["u2"]["containers"]["c"]
                if not st["running"] and st["exitCode"] is not None:
                    break
                await asyncio.sleep(0.05)
            assert st["exitCode"] == 3 and st["restartCount"] == 0  # restartPolicy Never
            assert _log(tmp_path / "logs" / "default_job-1_c.log") == "hi\n"
            async with s.put("http://rt/pods/u3", data=b"[1, 2]") as r:
                assert r.status == 400
            async with s.put("http://rt/pods/u3", data=b"{not json") as r:
                assert r.status == 400
            async with s.post("http://rt/elsewhere") as r:
                assert r.status == 404
            async with s.delete("http://rt/pods/u2") as r:
                assert r.status == 200
            async with s.get("http://rt/pods") as r:
                assert await r.json() == {}
    finally:
        await api.close()
        await rt.close()


def test_runtime_process_imports_stay_small() -> None:
    """The runtime runs on every node for as long as its pods do: none of the heavy imports may creep back in."""
    import subprocess
    import sys

    probe = (
        "import sys, kwire.agent.kubelet.runtime_main; "
        "print(sorted(m for m in ('ssl', 'aiohttp', 'pyroute2', 'yaml', 'uvloop', 'cryptography') if sys.modules.get(m) is not None))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "[]"


async def test_a_new_runtime_ends_what_a_killed_one_left_running(tmp_path: Path) -> None:
    import os

    from kwire.agent.kubelet import runtime as rtmod

    rt = Runtime(tmp_path, responders=Responders(bind_host="127.0.0.1"))
    try:
        await rt.ensure_pod("u4", _spec("long-1", [], [{"name": "c", "argv": ["sleep", "60"], "env": {}}]))
        await asyncio.sleep(0.2)
        pid = rt.status()["u4"]["containers"]["c"]["pid"]
        recorded = json.loads((tmp_path / "containers.json").read_text())
        assert recorded == {str(pid): rtmod._start_time(pid)}
        # A process that merely reuses a recorded PID (another start time) must be left alone.
        other = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
        recorded[str(other.pid)] = "1"
        (tmp_path / "containers.json").write_text(json.dumps(recorded))

        # As if the runtime had been SIGKILLed: its container is still running; a successor reaps it.
        assert await asyncio.to_thread(rtmod.reap_orphans, tmp_path) == 1
        for _ in range(50):
            if rt.status()["u4"]["containers"]["c"]["running"] is False:
                break
            await asyncio.sleep(0.05)
        assert rt.status()["u4"]["containers"]["c"]["running"] is False
        assert other.returncode is None and not (tmp_path / "containers.json").exists()
        os.kill(other.pid, 9)
        await other.wait()
    finally:
        await rt.close()


async def test_stdin_and_tty_containers_take_input_for_attach(tmp_path: Path) -> None:
    rt = Runtime(tmp_path, responders=Responders(bind_host="127.0.0.1"))
    try:
        spec = _spec("cat-1", [], [{"name": "c", "argv": ["cat"], "env": {}, "stdin": True}])
        await rt.ensure_pod("u5", spec)
        await asyncio.sleep(0.2)
        assert rt.status()["u5"]["containers"]["c"]["stdin"] is True
        assert await rt.write_stdin("u5", "c", b"through the pipe\n", close=True)
        for _ in range(100):
            if rt.status()["u5"]["containers"]["c"]["exitCode"] is not None:
                break
            await asyncio.sleep(0.05)
        assert rt.status()["u5"]["containers"]["c"]["exitCode"] == 0  # EOF ended cat
        assert _log(tmp_path / "logs" / "default_cat-1_c.log") == "through the pipe\n"
        assert not await rt.write_stdin("u5", "c", b"too late")

        sh = _spec("sh-1", [], [{"name": "c", "argv": ["sh"], "env": {}, "stdin": True, "tty": True}])
        await rt.ensure_pod("u6", sh)
        await asyncio.sleep(0.3)
        assert rt.status()["u6"]["containers"]["c"]["tty"] is True
        assert await rt.write_stdin("u6", "c", b"tty; exit 4\n")
        for _ in range(100):
            if rt.status()["u6"]["containers"]["c"]["exitCode"] is not None:
                break
            await asyncio.sleep(0.05)
        assert rt.status()["u6"]["containers"]["c"]["exitCode"] == 4
        await asyncio.sleep(0.1)
        assert "/dev/pts/" in _log(tmp_path / "logs" / "default_sh-1_c.log")
    finally:
        await rt.close()


async def _until(rt: Runtime, uid: str, name: str, pred: object, timeout: float = 10.0) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        st: dict[str, object] = rt.status()[uid]["containers"][name]
        if pred(st):  # type: ignore[operator]
            return st
        assert loop.time() < end, st
        await asyncio.sleep(0.05)


async def test_crash_loop_back_off_start_errors_and_the_last_termination(tmp_path: Path) -> None:
    rt = Runtime(tmp_path, responders=Responders(bind_host="127.0.0.1"))
    try:
        spec = _spec("crash-1", [], [{"name": "c", "argv": ["sh", "-c", "echo run; exit 2"], "env": {}}])
        spec["restartPolicy"] = "Always"
        await rt.ensure_pod("u7", spec)
        # kubelet: the first restart is at once, the next waits 10 s (CrashLoopBackOff), doubling to 5 min
        st = await _until(rt, "u7", "c", lambda s: s["restartCount"] == 1 and s["backoffUntil"])
        assert st["backoffSeconds"] == 10.0 and st["exitCode"] == 2 and st["reason"] == "Error"
        last = st["lastTermination"]
        assert isinstance(last, dict) and last["exitCode"] == 2 and last["finishedAt"] >= last["startedAt"] > 0
        # each run's output has its place in the file, for logs --previous
        assert (
            st["prevLogOffset"] == 0
            and st["logOffset"] == len((tmp_path / "logs" / "default_crash-1_c.log").read_bytes()) // 2
        )

        missing = _spec("crash-2", [], [{"name": "c", "argv": ["/nonexistent/prog"], "env": {}}])
        await rt.ensure_pod("u8", missing)
        st = await _until(rt, "u8", "c", lambda s: s["exitCode"] == 128)
        assert st["reason"] == "StartError" and not st["running"] and st["done"]
        assert 'exec: "/nonexistent/prog": stat /nonexistent/prog: no such file or directory' in str(st["message"])

        # Only the changed container restarts when a pod's processes change.
        two = _spec("two-1", [], [{"name": "a", "argv": ["sleep", "60"], "env": {}}])
        await rt.ensure_pod("u9", two)
        pid_a = (await _until(rt, "u9", "a", lambda s: s["pid"]))["pid"]
        two2 = {**two, "processes": [*two["processes"], {"name": "b", "argv": ["sleep", "60"], "env": {}}]}  # type: ignore[list-item,misc]
        await rt.ensure_pod("u9", two2)
        await _until(rt, "u9", "b", lambda s: s["pid"])
        assert rt.status()["u9"]["containers"]["a"]["pid"] == pid_a
    finally:
        await rt.close()


async def test_sigterm_then_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    import time

    rt = Runtime(tmp_path, responders=Responders(bind_host="127.0.0.1"))
    try:
        stubborn = "trap 'echo TERM' TERM; while true; do sleep 0.1; done"
        await rt.ensure_pod("u10", _spec("stubborn-1", [], [{"name": "c", "argv": ["sh", "-c", stubborn], "env": {}}]))
        await _until(rt, "u10", "c", lambda s: s["pid"])
        await asyncio.sleep(0.2)
        t = time.monotonic()
        await rt.remove_pod("u10", grace=1.0)
        took = time.monotonic() - t
        assert 0.9 < took < 5, took  # it ignored SIGTERM, so it was killed once the grace ran out
        assert "TERM" in _log(tmp_path / "logs" / "default_stubborn-1_c.log")
    finally:
        await rt.close()
