"""Waiting in the transport: for an asyncio event with a timeout, without losing a
cancellation (:func:`wait_set`), and between two runs of a periodic duty (:func:`jittered`).

On Python 3.11, ``asyncio.wait_for(event.wait(), timeout)`` swallows a cancellation that
arrives in the loop iteration in which the event is set: the cancelled task goes on as if
nothing had happened, and a service's loop that waits that way never stops (CPython
gh-86296; Python 3.12 rewrote ``wait_for`` on ``asyncio.timeout``). :func:`wait_set` waits
with ``asyncio.timeout``, which tells its own expiry from a cancellation from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

#: How far one wait of a jittered periodic duty strays from its period, either way, at most
#: (a fraction of the period).
JITTER = 0.25


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` seconds passed; return whether it is
    set. A cancellation of the caller always raises CancelledError here, also one that
    arrives as the event is set or as the timeout expires."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


def jittered(period_s: float, draw: Callable[[], float] = random.random) -> float:
    """The seconds to wait before the next run of a duty due every ``period_s`` seconds:
    ``period_s``, give or take up to :data:`JITTER` of it, drawn anew for each wait
    (``draw``: uniform in [0, 1)). On average the duty still runs every ``period_s``; the
    runs of the groups one process holds, which start together, and of the replicas a
    platform starts together, do not stay in step.

    For a replica's heartbeat (:meth:`AmqpNode._heartbeat
    <crdt_ops.transport.amqp.node.AmqpNode._heartbeat>`), a commit with a disk sync and a
    message to every member: in step, the 41 groups of a front end holding 40 cells
    committed some 100 times within a quarter of a second every 2 s, and the Starts that
    fell into it waited tens of milliseconds (BENCHMARKS.md, 2026-12-05, sixteenth
    session). Cheap duties (an echo check, a settling pass with nothing to settle) are
    better left in step: the loop then wakes once for all groups. The rule is the routing
    protocols': periodic messages of independent senders fall into step unless each
    timer is set with a random part (Floyd and Jacobson, "The Synchronization of Periodic
    Routing Messages", 1994; RIP offsets its 30 s timer by up to 5 s each time it is set,
    RFC 2453 section 3.8)."""
    return period_s * (1 - JITTER + 2 * JITTER * draw())


__all__ = ["jittered", "wait_set"]
