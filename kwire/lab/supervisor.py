"""The lab's process supervisor: what systemd's `Restart=always` is for K3s on a real host.

One supervisor process per lab (`kwire lab supervise`, started by `lab up`, in the machine's own namespace) holds
the lab's 127.0.0.1 API listener and checks every `INTERVAL` seconds that the servers (one, or several with
`--servers N`: a server on a node stopped on purpose is left alone) and every node's agent are alive. A dead one (killed, crashed) is started again (the server with the same listener, so kubectl's address
never changes) and the restart is logged to `logs/supervisor.log` and recorded in `state.json`. Nodes stopped on
purpose (`kwire lab node stop`) are left alone until `node start`. Each agent in turn replaces its own pod
runtime when that dies. Every read-modify-write of `state.json` holds the lab's lock (`LabState.locked`), so a
`node stop` and a restart never race. The supervisor ends when the lab's state is gone (`lab down`) or on SIGTERM.
It lives as long as the lab and imports only state.py, start.py, procs.py and topology.py (no asyncio, no API
client, no pyroute2): 22 MB of RSS, where importing lab.py made it 69 MB.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from types import FrameType

from kwire.lab import procs, topology
from kwire.lab.start import start_agent, start_server
from kwire.lab.state import LabState, server_procs

log = logging.getLogger(__name__)

INTERVAL = 0.5
BACKOFF_MAX = 10.0  # a process that dies at once again and again is restarted at most this often


def run(name: str, *, listen_fd: int) -> int:
    lsock = socket.socket(fileno=listen_fd)
    stopping = False

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    restarts: dict[str, tuple[int, float]] = {}  # process -> (consecutive restarts, when the last one happened)
    log.info("supervisor for lab %s started (pid checks every %.1f s)", name, INTERVAL)
    while not stopping:
        procs.reap_children()
        with LabState.locked(name):
            st = LabState.load(name)
            if st is None:
                log.info("lab %s is gone; supervisor ends", name)
                return 0
            topo = topology.build(st.name, nodes=st.nodes)
            servers = server_procs(st)
            wanted = [p for p, node in servers.items() if st.servers == 1 or node not in st.stopped]
            wanted += [h.name for h in topo.nodes if h.name not in st.stopped]
            changed = False
            for proc in wanted:
                pid = st.pids.get(proc, 0)
                if procs.alive(pid):
                    if proc in restarts and time.monotonic() - restarts[proc][1] > 60:
                        del restarts[proc]  # up for a minute: the back-off starts over
                    continue
                count, last = restarts.get(proc, (0, 0.0))
                wait = min(BACKOFF_MAX, 0.0 if count == 0 else 2.0 ** (count - 1))
                if time.monotonic() - last < wait:
                    continue
                new = start_server(topo, st, lsock, proc) if proc in servers else start_agent(topo, st, proc)
                st.pids[proc] = new
                restarts[proc] = (count + 1, time.monotonic())
                changed = True
                log.warning("%s (pid %d) died; restarted as pid %d", proc, pid, new)
            if changed:
                st.save()
        time.sleep(INTERVAL)
    return 0
