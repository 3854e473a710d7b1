"""Taking what arrives in a consumer's inbox within a deadline: the one wait that turns
deliveries arriving close together into one batch (one store transaction, one disk sync)
for the queue's consumer (:mod:`~crdt_ops.transport.amqp.inbound`) and for stream reads
(:mod:`~crdt_ops.transport.amqp.recovery`)."""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

T = TypeVar("T")


async def arriving(inbox: asyncio.Queue[T], room: int, deadline: float) -> list[T]:
    """What reaches ``inbox`` before ``deadline`` (``time.monotonic()`` seconds): the first
    item to come, with those queued behind it, at most ``room``; none if none comes in
    time or there is no room. A cancellation (the consumer's stop) is never swallowed,
    and leaves no item taken."""
    left = deadline - time.monotonic()
    if room < 1 or left <= 0:
        return []
    # not asyncio.wait_for: on Python 3.11 it can swallow a cancellation when the get
    # completes at the same moment (the consumer would then wait on, never stopping)
    getter = asyncio.ensure_future(inbox.get())
    try:
        await asyncio.wait({getter}, timeout=left)
    finally:
        if not getter.done():
            getter.cancel()  # Queue.get leaves the item in the queue
    if not getter.done() or getter.cancelled():
        return []
    more = [getter.result()]
    while len(more) < room and not inbox.empty():
        more.append(inbox.get_nowait())
    return more
