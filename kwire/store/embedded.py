"""The embedded etcd of `kwire server --cluster-init`: one etcd member process (Debian's etcd-server), supervised.

K3s runs etcd inside its own process; kwire runs Debian's /usr/bin/etcd as a child instead and mirrors K3s's
layout and settings: data under `<data-dir>/db/etcd`, client URL https://<node-ip>:2379 plus 127.0.0.1,
peer URL https://<node-ip>:2380, mutual TLS on both from the cluster CA (`--client-cert-auth`,
`--peer-client-cert-auth`), heartbeat 500 ms / election timeout 5 s and snapshot-count 10000 as K3s sets them;
`--etcd-arg KEY=VALUE` (K3s's flag) adds or overrides etcd flags (e.g. election-timeout=1000 for faster fail-over).
The member's name (`<node>-<random>`, as K3s names members) is kept in `db/etcd/name`.

The child is started with PR_SET_PDEATHSIG=SIGKILL, so it dies with the server even on kill -9 (as K3s's
in-process etcd does); if it exits on its own it is restarted with back-off. Its output goes to
`db/etcd.log` (the previous run's kept as `etcd.log.1`), at etcd's warn level, so the file stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from kwire.base.backoff import Backoff

log = logging.getLogger(__name__)

ETCD_BINARY = "/usr/bin/etcd"
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class EtcdTls:
    """The embedded etcd's TLS files, all issued by the cluster CA (K3s's `tls/etcd/` file names)."""

    ca_cert: Path
    server_cert: Path  # client-facing listener (server and client auth)
    server_key: Path
    peer_cert: Path  # peer listener and peer client (server and client auth)
    peer_key: Path
    client_cert: Path  # the kwire server as etcd's client (client auth)
    client_key: Path

    def client_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


def _url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: the kernel SIGKILLs it when the server dies. The standard
    library has no prctl; ctypes on libc's is the usual way (no maintained package wraps just this)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class EmbeddedEtcd:
    def __init__(
        self,
        db_dir: Path,
        *,
        node_name: str,
        address: str,
        client_port: int,
        peer_port: int,
        tls: EtcdTls,
        extra_args: tuple[str, ...] = (),
        binary: str = ETCD_BINARY,
    ) -> None:
        self.data_dir = Path(db_dir) / "etcd"
        self._log_path = Path(db_dir) / "etcd.log"
        self._address = address
        self._client_port = client_port
        self._peer_port = peer_port
        self.tls = tls
        self._binary = binary
        self._extra = [f"--{a.lstrip('-')}" for a in extra_args]  # K3s's --etcd-arg takes them without dashes
        self.name = self._member_name(node_name)
        self._initial_cluster = f"{self.name}={self.peer_url}"
        self._cluster_state = "new"
        self._force_new_cluster = False
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @staticmethod
    def exists(db_dir: Path) -> bool:
        """A data dir that already holds an embedded etcd member (then the server keeps using it)."""
        return (Path(db_dir) / "etcd" / "member").is_dir()

    def _member_name(self, node_name: str) -> str:
        path = self.data_dir / "name"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        name = f"{node_name}-{secrets.token_hex(4)}"
        path.write_text(name + "\n")
        return name

    @property
    def client_url(self) -> str:
        """What this server's store connects to: the loopback client listener."""
        return _url("127.0.0.1", self._client_port)

    @property
    def advertise_client_url(self) -> str:
        return _url(self._address, self._client_port)

    @property
    def peer_url(self) -> str:
        return _url(self._address, self._peer_port)

    def _args(self) -> list[str]:
        client_urls = [self.client_url]
        if self._address != "127.0.0.1":
            client_urls.append(self.advertise_client_url)
        t = self.tls
        return [
            self._binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={','.join(client_urls)}",
            f"--advertise-client-urls={self.advertise_client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self._initial_cluster}",
            f"--initial-cluster-state={self._cluster_state}",
            "--client-cert-auth",
            f"--trusted-ca-file={t.ca_cert}",
            f"--cert-file={t.server_cert}",
            f"--key-file={t.server_key}",
            "--peer-client-cert-auth",
            f"--peer-trusted-ca-file={t.ca_cert}",
            f"--peer-cert-file={t.peer_cert}",
            f"--peer-key-file={t.peer_key}",
            "--heartbeat-interval=500",
            "--election-timeout=5000",
            "--snapshot-count=10000",
            "--logger=zap",
            "--log-level=warn",
            *(["--force-new-cluster"] if self._force_new_cluster else []),
            *self._extra,
        ]

    async def _spawn(self) -> asyncio.subprocess.Process:
        if self._log_path.exists():
            self._log_path.replace(self._log_path.with_name("etcd.log.1"))
        fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._args(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                preexec_fn=_die_with_parent,
            )
        finally:
            os.close(fd)
        log.info("embedded etcd %s started (pid %d), client %s", self.name, proc.pid, self.advertise_client_url)
        return proc

    def join(self, members: list[tuple[str, str]]) -> None:
        """Start as a member added to an existing cluster: `members` are (name, peer URL) of every member, this one
        included (etcd's --initial-cluster-state=existing). Only the first start of a member uses it."""
        self._initial_cluster = ",".join(f"{name}={url}" for name, url in members)
        self._cluster_state = "existing"

    def force_new_cluster(self) -> None:
        """Start as the only member of its cluster, keeping its data (etcd's --force-new-cluster; K3s's
        --cluster-reset without a snapshot)."""
        self._force_new_cluster = True

    async def start(self, *, timeout: float = 60.0) -> None:
        """Start the member and wait until it answers /health (a member of a healthy cluster)."""
        self._proc = await self._spawn()
        await self._wait_healthy(timeout=timeout)
        self._supervisor = asyncio.create_task(self._supervise())

    async def _wait_healthy(self, *, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        ctx = self.tls.client_ssl_context()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                assert self._proc is not None
                if self._proc.returncode is not None:
                    raise RuntimeError(
                        f"embedded etcd exited with {self._proc.returncode}; see {self._log_path}:\n" + self._log_tail()
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(self.client_url + "/health", ssl=ctx) as r:
                        if r.status == 200 and (await r.json(content_type=None)).get("health") == "true":
                            return
                if loop.time() > end:
                    raise RuntimeError(f"embedded etcd did not become healthy in {timeout:.0f}s:\n{self._log_tail()}")
                await asyncio.sleep(0.2)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def _supervise(self) -> None:
        backoff = Backoff(1.0, 30.0)
        while True:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            delay = backoff.next()
            log.error("embedded etcd exited with %s; restarting in %.0fs:\n%s", code, delay, self._log_tail())
            await asyncio.sleep(delay)
            try:
                self._proc = await self._spawn()
                await self._wait_healthy(timeout=60)
                backoff.reset()
            except RuntimeError as exc:
                log.error("%s", exc)

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
