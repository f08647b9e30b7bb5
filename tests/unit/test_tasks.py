"""kwire/base/tasks.py: stopping background tasks waits for their cleanup, and never swallows a cancellation of
the part that is stopping them."""

from __future__ import annotations

import asyncio

import pytest

from kwire.base.tasks import cancel_and_wait


async def test_each_task_is_cancelled_and_its_cleanup_has_run_when_it_returns() -> None:
    cleaned: list[str] = []

    async def loop(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # cleanup that itself awaits
            cleaned.append(name)

    tasks = [asyncio.create_task(loop(n)) for n in ("a", "b")]
    await asyncio.sleep(0)
    await cancel_and_wait(*tasks, None)
    assert sorted(cleaned) == ["a", "b"]
    assert all(t.cancelled() for t in tasks)


async def test_a_task_that_already_died_does_not_fail_the_stop() -> None:
    async def crash() -> None:
        raise ConnectionResetError("peer went away")

    dead = asyncio.create_task(crash())
    await asyncio.sleep(0)
    await cancel_and_wait(dead)  # no exception
    assert dead.done()


async def test_the_callers_own_cancellation_is_passed_on() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.2)  # a slow cleanup: the stopper is cancelled meanwhile

    inner = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(inner))
    await asyncio.sleep(0.05)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert stopper.cancelled()
