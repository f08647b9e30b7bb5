"""kwire.base.backoff: the waits a retry loop takes."""

from __future__ import annotations

import asyncio
import time

from kwire.base.backoff import Backoff


def test_waits_double_up_to_the_cap_and_reset_starts_over() -> None:
    b = Backoff(0.2, 5.0)
    assert [b.next() for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    b.reset()
    assert [b.next() for _ in range(2)] == [0.2, 0.4]


def test_jitter_stretches_each_wait_by_at_most_its_fraction() -> None:
    b = Backoff(0.5, 10.0, jitter=0.5)
    waits = [b.next() for _ in range(200)]
    bases = [0.5, 1.0, 2.0, 4.0, 8.0] + [10.0] * 195
    assert all(base <= w <= base * 1.5 for w, base in zip(waits, bases, strict=True))
    assert len({round(w, 6) for w in waits[10:]}) > 1  # random, not a fixed stretch


def test_sleep_waits_the_next_delay() -> None:
    b = Backoff(0.05, 1.0)
    t0 = time.monotonic()
    asyncio.run(b.sleep())
    assert 0.05 <= time.monotonic() - t0 < 1.0
    assert b.next() == 0.1
