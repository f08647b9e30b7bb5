"""Exponential back-off for retry loops: client-go's `wait.Backoff` (Duration, Factor 2, Cap, Jitter) in small.

A loop that retries (a watch that relists, a poll whose target is away) waits `next()` seconds after each
attempt: `initial`, doubling up to `cap`; `reset()` after a success starts again from `initial`. With `jitter`
each wait is stretched by a random part of itself, up to `jitter` times it (client-go's Jitter), so many clients
retrying against one server do not wake in step. Hand-written because the loops need only these few lines, and
the retry libraries (tenacity, backoff) wrap a whole call, which does not fit a watch that resets the delay on
every event it receives.

`sleep_fn` is what the waiting is done with (asyncio.sleep), replaceable so a test can record the waits a loop
makes without waiting them; `pause(seconds)` waits a loop's steady period through it (a poll between successes),
so one object holds every wait of a loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field


@dataclass
class Backoff:
    initial: float  # the first wait, and the wait again after reset()
    cap: float  # the longest wait (before jitter)
    jitter: float = 0.0  # each wait is stretched by up to this fraction of itself
    _: KW_ONLY
    sleep_fn: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)
    _current: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._current = self.initial

    def reset(self) -> None:
        """The last attempt succeeded: the next wait is `initial` again."""
        self._current = self.initial

    def next(self) -> float:
        """The wait before the next attempt; the one after it is twice as long, up to `cap`."""
        delay = self._current
        self._current = min(delay * 2, self.cap)
        return delay * (1 + random.random() * self.jitter) if self.jitter else delay

    async def sleep(self) -> None:
        """Wait `next()` seconds (after a failed attempt)."""
        await self.sleep_fn(self.next())

    async def pause(self, seconds: float) -> None:
        """Wait a loop's steady period (after a success); the back-off is left as it is."""
        await self.sleep_fn(seconds)
