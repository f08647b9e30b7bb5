"""Runs a real `kwire server` process for tests and drives it with the real kubectl."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kwire.config import ServerConfig

KUBECTL = shutil.which("kubectl") or str(Path(sys.prefix) / "bin" / "kubectl")


def free_port(*, udp: bool = False) -> int:
    """A TCP port (a UDP one with `udp`) that nothing listens on at 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_tcp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (a DNS server listens on both)."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def server_config(tmp: Path, *, token: str, port: int = 0, **overrides: Any) -> ServerConfig:
    """An in-process test server's config: data in `tmp/data`, HTTPS on 127.0.0.1:`port` (a free port when 0),
    the admin kubeconfig written to `tmp/kubeconfig`; `overrides` are further ServerConfig fields."""
    return ServerConfig(
        data_dir=str(tmp / "data"),
        bind_address="127.0.0.1",
        https_listen_port=port or free_port(),
        token=token,
        write_kubeconfig=str(tmp / "kubeconfig"),
        **overrides,
    )


@dataclass
class ServerProcess:
    data_dir: Path
    port: int
    token: str = "kwire-test-token"
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "admin.kubeconfig"

    def admin_ssl_context(self, *, verify: bool = True) -> ssl.SSLContext:
        """TLS as the admin: the server's CA and the admin client certificate (system:admin / system:masters),
        the credential the server's kubeconfig carries; the cluster token is not an API credential."""
        ctx = ssl.create_default_context(cafile=str(self.data_dir / "tls" / "server-ca.crt"))
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        tls = self.data_dir / "tls"
        ctx.load_cert_chain(tls / "client-admin.crt", tls / "client-admin.key")
        return ctx

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self, *, timeout: float = 20.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "kwire",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            str(self.port),
            "--token",
            self.token,
            "--write-kubeconfig",
            str(self.kubeconfig),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kwire server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=ctx, timeout=1) as r:
                    if r.status == 200 and self.kubeconfig.exists():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()  # never leave a server behind that the test will not stop
        raise RuntimeError(f"kwire server did not become ready:\n{self.log_path.read_text()}")

    def stop(self, *, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.data_dir)}
        cmd = [KUBECTL, "--cache-dir", str(self.data_dir / "kubecache"), *args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, env=env, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def apply(self, manifest: str) -> None:
        """`kubectl apply -f -` of a manifest (YAML or JSON); a refusal fails the test."""
        self.kubectl("apply", "-f", "-", input=manifest)


@contextlib.contextmanager
def running_server(
    data_dir: Path, *, extra_args: Sequence[str] = (), timeout: float = 60.0, token: str = "kwire-test-token"
) -> Iterator[ServerProcess]:
    """A started `kwire server` on a free port, stopped on the way out whatever happened."""
    srv = ServerProcess(data_dir, free_port(), token=token, extra_args=list(extra_args))
    srv.start(timeout=timeout)
    try:
        yield srv
    finally:
        srv.stop()
