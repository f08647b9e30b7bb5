"""The cluster's join tokens, as K3s has them: the server token and the agent token.

Neither is an API credential: the server token lets another server join (the bootstrap endpoint) and seals the
bootstrap data in a shared datastore; the agent token (K3s's `--agent-token`, the server token when unset) lets a
node join. Both live in the data dir (`token`, `agent-token`, 0600) and may be given in K3s's secure form
`K10<sha256 of the cluster CA>::<user>:<secret>`, whose hash a joining node pins the CA with. `JoinTokens` answers
"may this presented token join as a server / as an agent?"; it re-reads the files when they change, so
`kwire token rotate` takes effect without a restart. The node-join endpoint calls `JoinTokens.agent_may_join`.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from kwire.base.files import atomic_write
from kwire.base.jointoken import ca_hash, plain, secure_form

SERVER_FILE = "token"
AGENT_FILE = "agent-token"

__all__ = ["AGENT_FILE", "SERVER_FILE", "JoinTokens", "ca_hash", "ensure_agent_token", "plain", "rotate", "secure_form"]


def _equal(a: str, b: str) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def ensure_agent_token(data_dir: Path, agent_token: str | None) -> str:
    """The agent token: the given one (stored), else the stored one, else "" (agents then use the server token)."""
    path = Path(data_dir) / AGENT_FILE
    if agent_token:
        secret = plain(agent_token)
        if _read(path) != secret:
            atomic_write(path, secret.encode() + b"\n", mode=0o600)
        return secret
    return _read(path)


def rotate(data_dir: Path, *, agent: bool, new: str = "") -> str:
    """Write a new server (or agent) token into the data dir and return it (K3s: `k3s token rotate`)."""
    path = Path(data_dir) / (AGENT_FILE if agent else SERVER_FILE)
    secret = plain(new) if new else secrets.token_hex(24)
    atomic_write(path, secret.encode() + b"\n", mode=0o600)
    return secret


@dataclass
class JoinTokens:
    """The server and agent tokens of one data dir, re-read when their files change."""

    data_dir: Path
    _cache: dict[str, tuple[float, str]] = field(default_factory=dict)

    def _current(self, name: str) -> str:
        path = Path(self.data_dir) / name
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return ""
        cached = self._cache.get(name)
        if cached is None or cached[0] != mtime:
            cached = (mtime, _read(path))
            self._cache[name] = cached
        return cached[1]

    @property
    def server(self) -> str:
        return self._current(SERVER_FILE)

    @property
    def agent(self) -> str:
        """The agent token; the server token when no separate one is set (K3s's default)."""
        return self._current(AGENT_FILE) or self.server

    def server_may_join(self, presented: str) -> bool:
        return _equal(plain(presented), self.server)

    def agent_may_join(self, presented: str) -> bool:
        """An agent joins with the agent token, or the server token (K3s accepts both)."""
        p = plain(presented)
        return _equal(p, self.agent) or _equal(p, self.server)
