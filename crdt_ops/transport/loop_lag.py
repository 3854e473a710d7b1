"""How long the event loop was held: a probe task that sleeps a tick and measures how late
it woke. Anything that runs on the loop without yielding (a disk sync, a snapshot's write,
a garbage collection, a service's reaction) delays every delivery and every hop behind
it (issue 14: "measure the loop's stalls and report the worst").

A stall shorter than the tick may go unseen (it can fall between two wake-ups); one longer
than the tick is seen, to within a tick. The probe costs one wake-up per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from crdt_ops.transport import metrics

log = logging.getLogger(__name__)


class LoopLag:
    """The event loop's stalls while :meth:`start`-ed: ``worst_s`` (seconds late) and
    ``worst_at`` (seconds after the start). ``tick_s``: the probe's sleep; ``warn_s``: a
    stall at least this long is logged (one line, at most one per ``warn_every_s``), and
    every stall goes into the ``crdt_ops_event_loop_lag_seconds`` histogram of
    ``replica`` (none if ``replica`` is empty)."""

    def __init__(self, replica: str = "", tick_s: float = 0.05, warn_s: float = 0.5,
                 warn_every_s: float = 60.0) -> None:
        self.replica, self.tick_s, self.warn_s, self.warn_every_s = (
            replica, tick_s, warn_s, warn_every_s)
        self.worst_s = 0.0
        self.worst_at = 0.0
        self._t0 = 0.0
        self._warned = -warn_every_s
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether it probes (started, not stopped)."""
        return self._task is not None

    def start(self) -> None:
        """Start probing (on the running loop)."""
        self._t0 = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> float:
        """Stop probing; returns :attr:`worst_s`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.worst_s

    async def _run(self) -> None:
        histogram = metrics.LOOP_LAG.labels(self.replica) if self.replica else None
        while True:
            due = time.monotonic() + self.tick_s
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            self.took(now - due, now)
            if histogram is not None:
                histogram.observe(max(now - due, 0.0))

    def took(self, late_s: float, now: float) -> None:
        """A wake-up at ``now`` (``time.monotonic()`` seconds) came ``late_s`` late."""
        if late_s > self.worst_s:
            self.worst_s, self.worst_at = late_s, now - late_s - self._t0
        if late_s >= self.warn_s and now - self._warned >= self.warn_every_s:
            self._warned = now
            log.warning("replica %s: its event loop was held for %.0f ms (a long disk "
                        "sync, garbage collection or reaction?); deliveries and writes "
                        "waited behind it", self.replica or "?", 1000 * late_s)
