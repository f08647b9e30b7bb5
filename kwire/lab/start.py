"""Starting a lab's server and agent processes (by `lab up`, and again by the supervisor when one died).

Each is `python -m kwire server|agent` in its node's network namespace (procs.py), with its secrets in the
environment: the server gets the cluster token, an agent K3s's secure form of it, `K10<sha256 of the cluster
CA>::server:<token>`, with which it pins the CA at join. Every server gets the lab's 127.0.0.1 listener.
This module imports nothing heavy, as the supervisor process lives on it.
"""

from __future__ import annotations

import socket
from pathlib import Path

from kwire.base.jointoken import secure_form
from kwire.lab import procs
from kwire.lab.state import LabState, server_procs
from kwire.lab.topology import HOST_IFACE, Topology

SERVER_PORT = 6443


# kube-controller-manager's lease timing (15/10/2 s) shortened as the HA fail-over goal needs: lease 4 s, renew
# deadline 3 s, retry 1 s. The HA lab's servers use it, and so do the tests that kill a controller leader.
FAST_LEADER_ELECTION = (
    "--leader-elect-lease-duration",
    "4",
    "--leader-elect-renew-deadline",
    "3",
    "--leader-elect-retry-period",
    "1",
)


def node_dir(topo: Topology, node: str) -> Path:
    return topo.state_dir / node


def server_dir(topo: Topology, proc: str) -> Path:
    return topo.state_dir / proc


def start_server(topo: Topology, st: LabState, lsock: socket.socket, proc: str = "server") -> int:
    """Start a server; every server gets the same 127.0.0.1 listener, so kubectl's connections are accepted by
    whichever servers are alive (the kernel hands each one to one of the processes accepting on it)."""
    host = topo.host(server_procs(st)[proc])
    assert host is not None
    sdir = server_dir(topo, proc)
    args = [
        "server",
        "--data-dir",
        str(sdir),
        "--bind-address",
        "0.0.0.0",
        "--https-listen-port",
        str(SERVER_PORT),
        "--node-ip",
        host.ip,
        "--node-name",
        host.name,
        "--write-kubeconfig",
        str(sdir / "admin.kubeconfig"),
        "--flannel-backend",
        st.flannel_backend,
        "--listen-fd",
        str(lsock.fileno()),
    ]
    if st.servers > 1:
        args += ["--cluster-init"] if proc == "server" else ["--server", f"https://{topo.server.ip}:{SERVER_PORT}"]
        args += [
            *FAST_LEADER_ELECTION,
            "--etcd-arg",
            "heartbeat-interval=100",
            "--etcd-arg",
            "election-timeout=1000",
        ]
    if st.config_file:
        args += ["--config", st.config_file]
    return procs.spawn(
        host.netns,
        args,
        log_path=topo.state_dir / "logs" / f"{proc}.log",
        pass_fds=(lsock.fileno(),),
        secret_env={"KWIRE_TOKEN": st.token},
    )


def _agent_token(topo: Topology, st: LabState) -> str:
    """K3s's secure token format, `K10<sha256 of the cluster CA>::server:<token>`: agents pin the CA by it."""
    ca = (topo.state_dir / "server" / "tls" / "server-ca.crt").read_bytes()
    return secure_form(st.token, ca_pem=ca)


def start_agent(topo: Topology, st: LabState, node: str) -> int:
    host = topo.host(node)
    assert host is not None
    args = [
        "agent",
        "--server",
        f"https://{topo.server.ip}:{SERVER_PORT}",
        "--node-name",
        host.name,
        "--node-ip",
        host.ip,
        "--flannel-iface",
        HOST_IFACE,
        "--data-dir",
        str(node_dir(topo, host.name)),
        "--pod-netns-prefix",
        f"kwire-{topo.name}-pod-",
    ]
    if host.name in server_procs(st).values():
        args += [
            "--node-label",
            "node-role.kubernetes.io/control-plane=true",
            "--node-label",
            "node-role.kubernetes.io/master=true",
        ]
    return procs.spawn(
        host.netns,
        args,
        log_path=topo.state_dir / "logs" / f"{host.name}.log",
        secret_env={"KWIRE_TOKEN": _agent_token(topo, st)},
    )
