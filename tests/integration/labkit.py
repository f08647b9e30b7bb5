"""Test helpers for real labs: bring one up under a test name, run commands in its hosts and pods, kubectl."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kwire.kernel import netns
from kwire.lab import lab, topology
from tests.integration.apiserver import KUBECTL, free_port

IP = shutil.which("ip") or "/usr/sbin/ip"
T = TypeVar("T")
# Appended to every test lab's name, so test runs in several checkouts on one machine never share a lab.
TEST_ID = os.environ.get("KWIRE_TEST_ID", "")


def lab_name(base: str) -> str:
    return f"{base}-{TEST_ID}" if TEST_ID else base


def wait_for(fn: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> T:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except (AssertionError, subprocess.CalledProcessError, OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


# The labs this test process has up now: a failing test's report carries their log tails (conftest.py), since
# taking a lab down removes its logs.
ACTIVE: set[str] = set()


@dataclass
class Lab:
    name: str
    nodes: int
    backend: str
    api_port: int = 0
    bringup_seconds: float = 0.0
    config_file: str = ""
    servers: int = 1

    def __post_init__(self) -> None:
        self.name = lab_name(self.name)

    @property
    def topo(self) -> topology.Topology:
        return topology.build(self.name, nodes=self.nodes)

    def up(self) -> None:
        self.api_port = free_port()
        ACTIVE.add(self.name)
        _, self.bringup_seconds = lab.up(
            self.name,
            nodes=self.nodes,
            flannel_backend=self.backend,
            api_port=self.api_port,
            timeout=60,
            config_file=self.config_file,
            servers=self.servers,
        )

    def down(self) -> list[str]:
        ACTIVE.discard(self.name)
        return lab.down(self.name)

    def __enter__(self) -> Lab:
        """`with Lab(...) as lab_:` brings the lab up and always takes it down again (also when `up` fails half-way)."""
        try:
            self.up()
        except BaseException:
            sys.stderr.write(self.log_tails())  # pytest shows it with the failure; `down` removes the logs
            self.down()
            raise
        return self

    def log_tails(self, *, lines: int = 40) -> str:
        return log_tails(self.name, lines=lines)

    def __exit__(self, *_exc: object) -> None:
        self.down()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"KUBECONFIG": str(self.topo.kubeconfig), "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
        res = subprocess.run([KUBECTL, *args], input=input, capture_output=True, text=True, env=env, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {res.stderr}")
        return res

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: str) -> None:
        self.kubectl("apply", "-f", "-", input=manifest)

    def netns_of(self, target: str, namespace: str = "default") -> str:
        return lab.exec_target(self.name, target, namespace=namespace)

    def run(self, target: str, *cmd: str, namespace: str = "default", timeout: float = 20) -> str:
        """Run a command in a node, the client, or a pod (as `kwire lab exec` does); its stdout."""
        ns = self.netns_of(target, namespace)
        res = subprocess.run([IP, "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, cmd, res.stdout, res.stderr)
        return res.stdout

    def curl_json(self, target: str, url: str, namespace: str = "default") -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.run(target, "curl", "-s", "-m", "3", url, namespace=namespace))
        return out

    def pods(self, selector: str = "", namespace: str = "default") -> list[dict[str, Any]]:
        args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = self.get(*args)["items"]
        return items

    def wait_pods_ready(self, selector: str, count: int, namespace: str = "default", timeout: float = 30) -> list[Any]:
        def ready() -> list[Any] | None:
            pods = [
                p
                for p in self.pods(selector, namespace)
                if not p["metadata"].get("deletionTimestamp")
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (p.get("status") or {}).get("conditions", [])
                )
            ]
            return pods if len(pods) == count and all(p["status"].get("podIP") for p in pods) else None

        return wait_for(ready, timeout=timeout, what=f"{count} ready pods {selector}")


def web_app(*, replicas: int) -> str:
    """The web app several lab tests reach: Deployment `web` (nginx serving port 8080, named http) and the
    ClusterIP Service `web` (port 80 to http); a manifest to apply, ending in `---` so more can follow."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: c, image: nginx, ports: [{{containerPort: 8080, name: http}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
"""


def log_tails(name: str, *, lines: int = 40) -> str:
    """The last lines of every process log of lab `name` (supervisor, servers, agents, runtimes)."""
    out = []
    for path in sorted((topology.STATE_ROOT / name / "logs").glob("*.log")):
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        out.append(f"----- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail) + "\n")
    return "".join(out)


def udp_echo(lab_: Lab, target: str, ip: str, port: int, payload: bytes = b"ping", namespace: str = "default") -> bytes:
    """Send one datagram from `target` and return the reply (the responders echo UDP)."""
    code = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);"
        f"s.sendto({payload!r},({ip!r},{port}));sys.stdout.write(s.recv(2048).decode())"
    )
    return lab_.run(target, sys.executable, "-c", code, namespace=namespace).encode()


class Listener:
    """A TCP listener inside a lab host's namespace that records the peer address of each connection."""

    def __init__(self, ns: str, port: int) -> None:
        self.sock = netns.open_socket(ns, socket.AF_INET, socket.SOCK_STREAM, bind=("0.0.0.0", port))
        self.sock.listen(16)
        self.sock.settimeout(10)
        self.peers: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, addr = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.peers.append(str(addr[0]))

    def accept_peer(self) -> str:
        self._thread.join(10)
        return self.peers[0] if self.peers else ""

    def close(self) -> None:
        self.sock.close()


def leftovers(name: str) -> dict[str, list[str]]:
    """What a lab could leave behind: namespaces, /etc/netns dirs, state dir, processes in its namespaces."""
    prefix = f"kwire-{name}-"
    procs = subprocess.run(["pgrep", "-f", f"labs/{name}/"], capture_output=True, text=True).stdout.split()
    root_links = subprocess.run([IP, "-o", "link"], capture_output=True, text=True).stdout
    root_tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {
        "root_links": [w for w in ("flannel.1", "cni0", "kwire-br0", "kw-node") if w in root_links],
        "root_nft": [ln for ln in root_tables.splitlines() if "kwire" in ln],
        "netns": netns.list_names(prefix),
        "etc_netns": sorted(p.name for p in Path("/etc/netns").glob(prefix + "*")),
        "state": [str(topology.STATE_ROOT / name)] if (topology.STATE_ROOT / name).exists() else [],
        "processes": procs,
    }


def in_terminal(lab_: Lab, kubectl_args: str, *, typing: str) -> subprocess.CompletedProcess[str]:
    """`kubectl ARGS` on a terminal (util-linux `script` provides one) with what the shell command `typing` prints
    as the user's keystrokes."""
    env = {"KUBECONFIG": str(lab_.topo.kubeconfig), "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
    feeder = subprocess.Popen(["sh", "-c", typing], stdout=subprocess.PIPE)
    try:
        return subprocess.run(
            ["script", "-qec", f"{KUBECTL} {kubectl_args}", "/dev/null"],
            stdin=feeder.stdout,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        feeder.kill()
        feeder.wait()
