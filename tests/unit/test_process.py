"""kwire/base/process.py: how every kwire daemon (DNS, metrics-server, MetalLB's controller and speaker) starts
and stops, seen from outside the process: SIGTERM is a clean exit 0 after the main's `finally` ran, a port
that is already taken is one "cannot serve" line and exit status 1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

PROBE = """
import asyncio, logging, sys
from kwire.base import process

async def main():
    if sys.argv[1] == "refused":
        raise RuntimeError("nginx rejected the configuration")
    if sys.argv[1] == "bind":
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", int(sys.argv[2]))
        server.close()
        return
    try:
        print("serving", flush=True)
        await asyncio.Event().wait()
    finally:
        print("closed", flush=True)

process.start(level=sys.argv[3] if len(sys.argv) > 3 else "info")
fatal = (OSError, RuntimeError) if sys.argv[1] == "refused" else (OSError,)
sys.exit(process.run_daemon(main, log=logging.getLogger("probe"), fatal=fatal))
"""


def test_sigterm_cancels_the_main_and_the_process_exits_0() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, "wait", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "serving"
        time.sleep(0.2)  # the signal handlers are installed before main() runs; this only lets it block
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out.strip() == "closed"
    assert "INFO probe: stopping" in err


def test_a_taken_port_is_one_error_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", PROBE, "bind", str(port)], capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 1
    assert "ERROR probe: cannot serve:" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_log_level_flag_is_honoured() -> None:
    probe = "import logging, sys; from kwire.base import process; process.start(level=sys.argv[1]); "
    probe += "logging.getLogger('p').info('said'); logging.getLogger('p').warning('warned')"
    quiet = subprocess.run([sys.executable, "-c", probe, "warn"], capture_output=True, text=True, timeout=30)
    assert "said" not in quiet.stderr and "WARNING p: warned" in quiet.stderr
    unknown = subprocess.run([sys.executable, "-c", probe, "chatty"], capture_output=True, text=True, timeout=30)
    assert "INFO p: said" in unknown.stderr


def test_an_error_the_program_names_fatal_is_one_error_line_and_exit_1() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, "refused", "0"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "ERROR probe: cannot serve: nginx rejected the configuration" in done.stderr
    assert "Traceback" not in done.stderr
