"""A private PostgreSQL cluster for tests and benchmarks: Debian's postgresql (setup installs it) run from a
temporary directory as the `postgres` user (postgres refuses to run as root), listening on 127.0.0.1 on a free port
and on a unix socket in that directory only; the system's own cluster is never touched. The superuser has a
password (scram-sha-256 on TCP), so URLs carry credentials as a user's would. `stop()` removes everything."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.integration.apiserver import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "kwire-pg-secret"


class Postgres:
    def __init__(self, *, fsync: bool = False, ssl_cert: Path | None = None, ssl_key: Path | None = None) -> None:
        """`fsync=False` for tests (a throwaway cluster; kwire's own durability is not what they test);
        benchmarks keep PostgreSQL's default. `ssl_cert/ssl_key` turn TLS on (plain TCP stays allowed)."""
        self.fsync = fsync
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="kwire-pg-"))
        self.data = self.root / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ssl = (ssl_cert, ssl_key) if ssl_cert and ssl_key else None
        user = pwd.getpwnam("postgres")
        self._uid, self._gid = user.pw_uid, user.pw_gid
        os.chown(self.root, self._uid, self._gid)
        os.chmod(self.root, 0o700)

    def url(self, database: str = "kubernetes", *, user: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgres://{user}:{password}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def config_file(self, path: Path, database: str = "kubernetes") -> Path:
        """A kwire server config file (0600) naming this database: its URL carries the password, which belongs in
        a file (or KWIRE_DATASTORE_ENDPOINT), not on a command line."""
        path.write_text(f"datastore-endpoint: {self.url(database)}\n")
        os.chmod(path, 0o600)
        return path

    def _run(self, *cmd: str) -> None:
        subprocess.run(
            cmd, check=True, capture_output=True, user=self._uid, group=self._gid, extra_groups=[], cwd=self.root
        )

    def start(self, *, timeout: float = 60.0) -> None:
        if not self.data.exists():
            pwfile = self.root / "pwfile"
            pwfile.write_text(PASSWORD + "\n")
            os.chown(pwfile, self._uid, self._gid)
            os.chmod(pwfile, 0o600)
            self._run(
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-sync",
            )
            pwfile.unlink()
            if self._ssl:
                for src, name in zip(self._ssl, ("server.crt", "server.key"), strict=True):
                    dst = self.data / name
                    shutil.copy(src, dst)
                    os.chown(dst, self._uid, self._gid)
                    os.chmod(dst, 0o600)
        args = [
            str(PG_BIN / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.root}",
            "-c",
            f"fsync={'on' if self.fsync else 'off'}",
            "-c",
            "max_connections=60",
        ]
        if self._ssl:
            args += ["-c", "ssl=on"]
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, user=self._uid, group=self._gid, extra_groups=[]
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
            ready = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", str(self.root), "-p", str(self.port)], capture_output=True
            )
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"postgres did not become ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """Stop the server now (fast shutdown: clients are disconnected), keeping its data for `start()`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
