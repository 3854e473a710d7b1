"""How long the event loop was held: a probe task that sleeps a tick and measures how late
it woke. Anything that runs on the loop without yielding (a disk sync, a snapshot's write,
a garbage collection, a service's reaction) delays every delivery and every hop behind
it (issue 14: "measure the loop's stalls and report the worst").

A stall shorter than the tick may go unseen (it can fall between two wake-ups); one longer
than the tick is seen, to within a tick. The probe costs one wake-up per tick, about a
quarter of a millisecond of CPU on a small VM, so it ticks fast only while there is work:
for ``busy_for_s`` after the last :meth:`LoopLag.busy` (a delivery, a write: 0.1 s covers
what follows a delivery, its reactions, the linger before its log and the disk sync), and
once per ``idle_tick_s`` otherwise. The first work after a quiet spell wakes it, and the time from
that call until the probe runs counts as a stall: what that work held the loop for. One
probe serves one event loop: the nodes of a process share it (:meth:`LoopLag.start` and
:meth:`LoopLag.stop` count their users).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from crdt_ops.transport import metrics
from crdt_ops.transport.waiting import wait_set

log = logging.getLogger(__name__)


class LoopLag:
    """The event loop's stalls while :meth:`start`-ed: ``worst_s`` (seconds late) and
    ``worst_at`` (seconds after the start). ``tick_s``: the probe's sleep while busy
    (:meth:`busy` called within ``busy_for_s``), ``idle_tick_s`` while not (seconds; a
    value not above ``tick_s`` keeps it at ``tick_s``); ``warn_s``: a stall at least this
    long is logged (one line, at most one per ``warn_every_s``), and every stall goes into
    the ``crdt_ops_event_loop_lag_seconds`` histogram of ``replica`` (none if ``replica``
    is empty)."""

    def __init__(self, replica: str = "", tick_s: float = 0.05, warn_s: float = 0.5,
                 warn_every_s: float = 60.0, idle_tick_s: float = 1.0,
                 busy_for_s: float = 0.1) -> None:
        self.replica, self.tick_s, self.warn_s, self.warn_every_s = (
            replica, tick_s, warn_s, warn_every_s)
        self.idle_tick_s, self.busy_for_s = idle_tick_s, busy_for_s
        self.worst_s = 0.0
        self.worst_at = 0.0
        #: wake-ups of the probe since it started (each one tick)
        self.ticks = 0
        self._t0 = 0.0
        self._warned = -warn_every_s
        self._task: asyncio.Task[None] | None = None
        self._users = 0
        self._busy = False  # work was noted since the probe last looked
        self._idle = False  # the probe sleeps its idle tick
        self._poked_at = 0.0
        self._woken = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether it probes (started, not stopped)."""
        return self._task is not None

    def start(self) -> None:
        """Start probing (on the running loop), or count one more user of a running probe."""
        self._users += 1
        if self._task is None:
            self._t0 = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> float:
        """Stop probing once every user that started it stopped it; returns :attr:`worst_s`."""
        self._users = max(self._users - 1, 0)
        if self._task is not None and not self._users:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.worst_s

    def busy(self) -> None:
        """Work arrived (a delivery, a write): probe every ``tick_s`` for the next
        ``busy_for_s`` at least. Costs an attribute write, and after a quiet spell one
        wake-up of the probe."""
        self._busy = True
        if self._idle:
            self._idle = False
            self._poked_at = time.monotonic()
            self._woken.set()

    async def _run(self) -> None:
        histogram = metrics.LOOP_LAG.labels(self.replica) if self.replica else None
        quiet_since = time.monotonic()
        while True:
            now = time.monotonic()
            if self._busy:
                self._busy = False
                quiet_since = now
            if now - quiet_since < self.busy_for_s or self.idle_tick_s <= self.tick_s:
                due = now + self.tick_s
                await asyncio.sleep(self.tick_s)
            else:
                due = now + self.idle_tick_s
                self._woken.clear()
                self._idle = True
                if await wait_set(self._woken, self.idle_tick_s):
                    due = self._poked_at  # held from the first work's arrival until now
                self._idle = False
            now = time.monotonic()
            self.ticks += 1
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
