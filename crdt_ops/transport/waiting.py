"""Waiting for an asyncio event with a timeout, without losing a cancellation.

On Python 3.11, ``asyncio.wait_for(event.wait(), timeout)`` swallows a cancellation that
arrives in the loop iteration in which the event is set: the cancelled task goes on as if
nothing had happened, and a service's loop that waits that way never stops (CPython
gh-86296; Python 3.12 rewrote ``wait_for`` on ``asyncio.timeout``). :func:`wait_set` waits
with ``asyncio.timeout``, which tells its own expiry from a cancellation from outside.
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` seconds passed; return whether it is
    set. A cancellation of the caller always raises CancelledError here, also one that
    arrives as the event is set or as the timeout expires."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


__all__ = ["wait_set"]
