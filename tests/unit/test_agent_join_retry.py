"""How the agent waits for a server that is not up yet while joining (CA, node certificates, cluster settings):
the same attempt again every pause while it fails in a retryable way, then one AgentError naming what failed."""

from __future__ import annotations

import asyncio

import pytest

from kwire.agent.agent import AgentError, _retry_until


def test_a_server_that_comes_up_is_waited_for() -> None:
    calls: list[float] = []

    async def attempt() -> str:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 3:
            raise ConnectionRefusedError("connection refused")
        return "ca"

    got = asyncio.run(_retry_until(attempt, retry_on=(OSError,), timeout=5, pause=0.05, failure="cannot reach"))
    assert got == "ca" and len(calls) == 3
    assert all(b - a >= 0.04 for a, b in zip(calls, calls[1:], strict=False))


def test_after_the_timeout_the_last_error_is_one_agent_error() -> None:
    async def attempt() -> None:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(AgentError, match=r"^cannot reach the server at https://x:6443: connection refused$"):
        asyncio.run(
            _retry_until(
                attempt,
                retry_on=(OSError,),
                timeout=0.2,
                pause=0.05,
                failure="cannot reach the server at https://x:6443",
            )
        )


def test_an_error_not_listed_is_not_retried() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("token refused")

    with pytest.raises(ValueError):
        asyncio.run(_retry_until(attempt, retry_on=(OSError,), timeout=5, pause=0.05, failure="x"))
    assert calls == 1
