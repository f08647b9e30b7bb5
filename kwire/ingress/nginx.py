"""The nginx process the ingress controller drives: start, the control socket's pushes, default certificate.

nginx runs in the foreground (`daemon off`) as a child of the controller, in the controller's network namespace
(the pod's), with its files in a private 0700 directory. Its configuration is constant (nginxconf.py); a
different one (other ports) is written atomically and applied with SIGHUP (nginx's graceful reload). Endpoints,
the router's routes and the Secrets' certificates go through the control socket, never through a reload; the
certificates therefore live only in nginx's memory, never in a file. The default certificate is generated once
per start with the subject Traefik's default certificate has (`CN=TRAEFIK DEFAULT CERT`), in a 0600 file.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import shutil
import signal
import socket
import subprocess

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

    async def _post(self, what: str, body: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.paths.control)))
        async with self._session.post(f"http://kwire/{what}", data=body, timeout=aiohttp.ClientTimeout(total=10)) as r:
            if r.status != 200:
                raise RuntimeError(f"nginx refused {what.split('?')[0]} ({r.status}): {(await r.text()).strip()[:500]}")

    async def push(self, body: bytes, *, full: bool = True) -> None:
        """Send endpoints to every worker (the shared dict); `full` drops backends the body does not name and
        marks the proxy ready."""
        await self._post("backends" + ("?full=1" if full else ""), body)

    async def push_routes(self, chunk: str) -> None:
        """Send the Lua router's chunk (router.py); nginx compiles it once and refuses one that does not compile."""
        await self._post("routes", chunk.encode())

    async def push_certs(self, chunk: str) -> None:
        """Send the certificates served by SNI (router.certs_config)."""
        await self._post("certs", chunk.encode())

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
