"""`kwire install server|agent`: systemd units for a real host, as K3s's install script writes k3s.service.

The unit mirrors K3s's: `Restart=always` (a killed or crashed server or agent is started again; K3s waits
`RestartSec=5s`), `KillMode=process` (stopping or restarting the agent never kills the pod runtime and the pods'
processes, which outlive it by design), `Delegate=yes`, no limits on files, processes and tasks, br_netfilter
loaded before start, and secrets only in `/etc/systemd/system/<unit>.service.env` (mode 0600), never on the
command line: `KWIRE_TOKEN` (or `KWIRE_TOKEN_FILE`), for servers `KWIRE_AGENT_TOKEN` (or its `_FILE`) and, for
agents, `KWIRE_URL`, taken from the environment of `kwire install` as K3s takes K3S_TOKEN, K3S_AGENT_TOKEN and
K3S_URL. Flags after `--` go to the ExecStart line (no secrets there).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from kwire.base.files import atomic_write

SECRET_VARS = ("KWIRE_TOKEN", "KWIRE_TOKEN_FILE", "KWIRE_AGENT_TOKEN", "KWIRE_AGENT_TOKEN_FILE", "KWIRE_URL")

UNIT = """[Unit]
Description=kwire {role} (the K3s networking stack)
Documentation=file://{readme}
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=simple
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/{unit}.env
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe vxlan
ExecStart={exec_start}
"""


def unit_name(role: str) -> str:
    return f"kwire-{role}.service"


def render(role: str, *, args: list[str], python: str = sys.executable) -> str:
    for a in args:
        if a.startswith("--token=") or a == "--token" or a.startswith("--agent-token"):
            raise ValueError("a token on the command line is readable by every local user: use KWIRE_TOKEN")
    exec_start = shlex.join([python, "-m", "kwire", role, *args])
    readme = Path(__file__).resolve().parent.parent / "README.md"
    return UNIT.format(role=role, unit=unit_name(role), exec_start=exec_start, readme=readme)


def install(
    role: str,
    *,
    args: list[str],
    root: Path = Path("/"),
    env: dict[str, str] | None = None,
    start: bool = True,
) -> list[Path]:
    """Write the unit and its environment file under `root`; enable and start it when systemd runs."""
    if role not in ("server", "agent"):
        raise ValueError(f"role must be server or agent, not {role!r}")
    env = dict(os.environ) if env is None else env
    if role == "agent" and not (env.get("KWIRE_URL") and (env.get("KWIRE_TOKEN") or env.get("KWIRE_TOKEN_FILE"))):
        raise ValueError("an agent needs KWIRE_URL and KWIRE_TOKEN (or KWIRE_TOKEN_FILE) in the environment")
    unit_dir = root / "etc" / "systemd" / "system"
    unit = unit_dir / unit_name(role)
    env_file = unit_dir / f"{unit_name(role)}.env"
    atomic_write(unit, render(role, args=args), mode=0o644)
    secrets = "".join(f"{k}={shlex.quote(env[k])}\n" for k in SECRET_VARS if env.get(k))
    atomic_write(env_file, secrets, mode=0o600)
    if start and root == Path("/") and Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", "--now", unit_name(role)], check=True)
    return [unit, env_file]
