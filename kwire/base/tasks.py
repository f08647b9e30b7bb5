"""Stopping background tasks: cancel them and wait until their cleanup has run.

Every long-lived part (informers, store followers, reconcilers, the kubelet's loops, stream pumps) ends its
background tasks the same way on stop: `cancel_and_wait`. A stopped task's own ending (its CancelledError) is not
the caller's concern, and neither is an error it ended with (a relay whose connection reset; logged at debug); but a
cancellation of the caller while it waits is passed on (`Task.cancelling()`), which the hand-written
`try: await task / except CancelledError: pass` it replaces would have swallowed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel every task given (None is skipped), then wait for each to finish."""
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    for task in live:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller itself is being cancelled
        except Exception as exc:  # noqa: BLE001 - it is being stopped; what it died of is only worth a line
            log.debug("task %s ended with %s: %s", _name(task), type(exc).__name__, exc)


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)
