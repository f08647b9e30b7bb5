"""Secrets never on a command line: K3s's environment variables and token files, and systemd units as K3s's
install script writes them (issue 17: supervised processes on a real host; issue 15: no token in /proc/*/cmdline)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kwire import install
from kwire.config import AgentConfig, ConfigError, ServerConfig, load_config


def test_token_from_environment_and_file(tmp_path: Path) -> None:
    cfg = load_config(
        cls=AgentConfig, flags={}, config_file=None, env={"KWIRE_TOKEN": "s3cret", "KWIRE_URL": "https://a:6443"}
    )
    assert (cfg.token, cfg.server) == ("s3cret", "https://a:6443")
    f = tmp_path / "token"
    f.write_text("from-file\n")
    cfg = load_config(cls=ServerConfig, flags={"token-file": str(f)}, config_file=None, env={})
    assert cfg.token == "from-file"
    cfg = load_config(cls=ServerConfig, flags={}, config_file=None, env={"KWIRE_TOKEN_FILE": str(f)})
    assert cfg.token == "from-file"
    # A flag wins over the environment.
    cfg = load_config(cls=ServerConfig, flags={"token": "flag"}, config_file=None, env={"KWIRE_TOKEN": "env"})
    assert cfg.token == "flag"
    with pytest.raises(ConfigError, match="token-file .*missing"):
        load_config(cls=ServerConfig, flags={"token-file": str(tmp_path / "missing")}, config_file=None, env={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(cls=ServerConfig, flags={"token-file": str(tmp_path / "empty")}, config_file=None, env={})


def test_systemd_units_restart_always_and_keep_secrets_in_a_private_file(tmp_path: Path) -> None:
    env = {"KWIRE_URL": "https://192.168.1.10:6443", "KWIRE_TOKEN": "K10abc::server:s3cret", "HOME": "/root"}
    written = install.install("agent", args=["--node-label", "rack=a"], root=tmp_path, env=env, start=False)
    unit, env_file = written
    assert unit == tmp_path / "etc/systemd/system/kwire-agent.service"
    text = unit.read_text()
    for line in (
        "Restart=always",
        "KillMode=process",
        "Delegate=yes",
        "EnvironmentFile=-/etc/systemd/system/kwire-agent.service.env",
    ):
        assert line in text
    exec_start = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    assert exec_start.endswith("-m kwire agent --node-label rack=a")
    assert "s3cret" not in text
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text() == "KWIRE_TOKEN=K10abc::server:s3cret\nKWIRE_URL=https://192.168.1.10:6443\n"
    with pytest.raises(ValueError, match="command line"):
        install.install("server", args=["--token", "x"], root=tmp_path, env={}, start=False)
    with pytest.raises(ValueError, match="KWIRE_URL"):
        install.install("agent", args=[], root=tmp_path, env={}, start=False)
