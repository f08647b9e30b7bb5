"""The nginx process the ingress controller drives: start, graceful reload, endpoint pushes, default certificate.

nginx runs in the foreground (`daemon off`) as a child of the controller, in the controller's network namespace
(the pod's), with its files in a private 0700 directory. A new configuration is written atomically and applied
with SIGHUP (nginx's graceful reload: in-flight requests finish on the old workers). Endpoints go through the
control socket (see nginxconf), never through a reload. The default certificate is generated once per start with
the subject Traefik's default certificate has (`CN=TRAEFIK DEFAULT CERT`). Secrets' certificates are written as
one PEM file (certificate + key, 0600) named by a hash of their content, so a rotated secret is a changed
configuration and is served after the reload.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kwire.base.files import atomic_write
from kwire.ingress.nginxconf import Paths

log = logging.getLogger(__name__)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def default_certificate() -> bytes:
    """A self-signed certificate + key (PEM), as Traefik's generated default certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TRAEFIK DEFAULT CERT")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("traefik.default")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Nginx:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.proc: subprocess.Popen[bytes] | None = None
        self._conf = ""
        self._session: aiohttp.ClientSession | None = None
        self.reloads = 0
        self.command_prefix: list[str] = []  # e.g. `ip netns exec NS taskset -c 0` (the benchmark); empty in the pod

    def prepare(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.paths.root, 0o700)
        self.paths.certs.mkdir(exist_ok=True)
        os.chmod(self.paths.certs, 0o700)
        atomic_write(self.paths.default_cert, default_certificate(), mode=0o600)

    def write_cert(self, pem: bytes) -> Path:
        """The file serving this certificate + key (content-addressed)."""
        path = self.paths.certs / (hashlib.sha256(pem).hexdigest()[:20] + ".pem")
        if not path.exists():
            atomic_write(path, pem, mode=0o600)
        return path

    def prune_certs(self, keep: set[Path]) -> None:
        for f in self.paths.certs.glob("*.pem"):
            if f != self.paths.default_cert and f not in keep:
                f.unlink(missing_ok=True)

    async def apply(self, conf: str) -> bool:
        """Write the configuration; start nginx or reload it gracefully. True when something changed."""
        if conf == self._conf and self.running():
            return False
        # Written whole and renamed, not fsynced: the directory lives as long as this process (a crash restarts
        # the pod with a freshly rendered file), and an fsync per change would add disk latency to every route.
        tmp = self.paths.conf.with_suffix(".tmp")
        tmp.write_text(conf)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.paths.conf)
        self._conf = conf
        if not self.running():
            await self._start()
        else:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGHUP)
            self.reloads += 1
        return True

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def _start(self) -> None:
        test = await asyncio.to_thread(
            subprocess.run,
            [*self.command_prefix, NGINX, "-t", "-q", "-c", str(self.paths.conf), "-p", str(self.paths.root)],
            capture_output=True,
            text=True,
        )
        if test.returncode != 0:
            raise RuntimeError(f"nginx rejected the configuration: {test.stderr.strip()}")
        self.paths.control.unlink(missing_ok=True)
        self.proc = self._spawn()
        for _ in range(2400):  # a large configuration on a busy machine takes seconds
            if self.paths.control.exists() and self._control_accepts():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}")
            await asyncio.sleep(0.025)
        raise RuntimeError("nginx did not open its control socket within 60 s")

    def _control_accepts(self) -> bool:
        """The socket file exists between nginx's bind and listen: accepted only once a connection is."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.paths.control))
            except OSError:
                return False
        return True

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*self.command_prefix, NGINX, "-c", str(self.paths.conf), "-p", str(self.paths.root)])

    async def push(self, body: bytes, *, full: bool = True) -> None:
        """Send endpoints to every worker (the shared dict); `full` drops backends the body does not name."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.paths.control)))
        url = "http://kwire/backends" + ("?full=1" if full else "")
        async with self._session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"nginx control socket answered {resp.status}")

    async def push_routes(self, chunk: str) -> None:
        """Send the Lua router's chunk (lua.py); nginx compiles it once and refuses one that does not compile."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.paths.control)))
        async with self._session.post(
            "http://kwire/routes", data=chunk.encode(), timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"nginx refused the routes ({resp.status}): {(await resp.text()).strip()[:500]}")

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10)
            except TimeoutError:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
