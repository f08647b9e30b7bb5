"""Waiting in async tests: poll a condition until it holds, and fail with what it last gave when it does not.

(The lab tests' synchronous counterpart is `tests.integration.labkit.wait_for`.)"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from kwire.client import NotFound


async def until(
    fn: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """Call `fn` (plain, or returning an awaitable) until it returns something truthy, and return that; a NotFound
    it raises counts as not yet. After `timeout` seconds: AssertionError naming `what` and the last value."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            if inspect.isawaitable(last):
                last = await last
        except NotFound as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if loop.time() > end:
            raise AssertionError(f"{what} not reached in {timeout}s; last value: {last!r}")
        await asyncio.sleep(interval)
