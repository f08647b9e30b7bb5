"""How the agent waits for a server that is not up yet while joining (CA, node certificates, cluster settings):
the same attempt again after a back-off (0.2 s or 0.5 s doubling to 2 s, 10% jitter) while it fails in a
retryable way, then one AgentError naming what failed."""

from __future__ import annotations

import asyncio

import pytest

from kwire.agent.agent import AgentError, _retry_until, join_backoff
from kwire.base.backoff import Backoff


def test_a_server_that_comes_up_is_waited_for() -> None:
    calls: list[float] = []

    async def attempt() -> str:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 3:
            raise ConnectionRefusedError("connection refused")
        return "ca"

    got = asyncio.run(
        _retry_until(attempt, retry_on=(OSError,), timeout=5, backoff=Backoff(0.05, 1.0), failure="cannot reach")
    )
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
                backoff=Backoff(0.05, 1.0),
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
        asyncio.run(_retry_until(attempt, retry_on=(OSError,), timeout=5, backoff=Backoff(0.05, 1.0), failure="x"))
    assert calls == 1


async def test_joining_retries_from_its_first_wait_doubling_to_2s_with_a_tenth_of_jitter() -> None:
    """The joins' own back-off: 0.2 s doubling to 2 s, each wait stretched by at most 10% (recorded, not waited)."""
    backoff = join_backoff(0.2)
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    backoff.sleep_fn = record
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 8:
            raise ConnectionRefusedError("connection refused")
        return "ca"

    got = await _retry_until(attempt, retry_on=(OSError,), timeout=60, backoff=backoff, failure="no server")
    assert got == "ca"
    bases = [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert len(waits) == len(bases) and all(b <= w <= b * 1.1 for w, b in zip(waits, bases, strict=True))
