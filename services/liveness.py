"""Logic's view of which worker epochs are alive, and which are gone for sure.

The other half of the lease rule (services/lease.py). Logic notes the instant
(its own ``time.monotonic()``) at which it *received* anything from a node's
current epoch, and the node's replica tells it up to when it has heard
everything routed to it (``heard_through()``: a queue is FIFO, so when one of
logic's own messages published at ``p`` comes back, everything routed before ``p``
came first).

An epoch is **gone** when either

* its node announced another epoch (a worker does so only after its lease ran
  out), or
* logic has heard everything up to ``last + lease + lease/4 + margin``, where
  ``last`` is when it last received from the epoch.

Why that is safe: a beat logic has not received by then was routed after that
instant; a beat renews a lease only if it was written while the lease held (so
before ``last + lease``) and confirmed within ``lease/4`` of being written, which
would put its routing before ``last + lease + lease/4``. So no beat logic could
have missed renewed the lease, which ran out by ``last + lease``; the worker and
its guard stopped the epoch's containers before that. ``margin`` covers the
clocks' rates and scheduling.

While logic cannot hear (the broker is down, logic is paused, its queue is gone)
``heard_through`` stands still, so silence then proves nothing and nobody is
declared gone: a broker outage shorter than the lease moves nothing. Received is
also applied: while logic's replica of a cell holds operations waiting for earlier
ones (a beat held behind a gap), ``heard_through`` stays where the wait began. Logic
restarting knows no receipts: every epoch counts as heard at its start.

An epoch is **fresh** (new containers may be placed on it) when logic received
from it within one lease of what it has heard through. Logic restarting has received
nothing yet, and a worker beats only every fifth of its lease: until an epoch's first
receipt, logic may *presume* it fresh up to a time it derives from the record's age by the
wall clocks (``presume``), as a scheduler trusts the node status it stored (a Nomad
server newly elected leader keeps every node's stored status and gives each a fresh
heartbeat timer, ``initializeHeartbeatTimers`` in nomad/heartbeat.go). That guess only
chooses where a container goes: an epoch is declared gone by receipts alone, so a wrong
guess delays a container until the epoch is gone (and it moves), and never runs it twice.

Sans-IO: every time is handed in.
"""

from __future__ import annotations

import math


class Liveness:
    """Receipts per (node, epoch) and the two verdicts. ``started``: when logic
    started (``time.monotonic()`` seconds); ``margin_s`` as above."""

    def __init__(self, started: float, margin_s: float = 1.0) -> None:
        if margin_s < 0:
            raise ValueError(f"the margin must be >= 0 s, not {margin_s}")
        self.started = started
        self.margin_s = margin_s
        self._last: dict[tuple[str, str], float] = {}
        self._presumed: dict[tuple[str, str], float] = {}

    def heard(self, node: str, epoch: str, now: float) -> None:
        """Something of ``node``'s epoch ``epoch`` was received at ``now``."""
        self._last[(node, epoch)] = now

    def last(self, node: str, epoch: str) -> float:
        """When logic last received from the epoch (its start if never)."""
        return self._last.get((node, epoch), self.started)

    def gone(self, node: str, epoch: str, current: str | None, lease_s: float,
             heard_through: float) -> bool:
        """Whether ``node``'s epoch ``epoch`` is over for sure; ``current``: the epoch
        its node record names now; ``lease_s``: its lease."""
        if current is not None and current != epoch:
            return True
        return heard_through >= self.last(node, epoch) + lease_s * 1.25 + self.margin_s

    def presume(self, node: str, epoch: str, until: float) -> None:
        """Until logic has heard through ``until`` (``time.monotonic()`` seconds), count
        ``node``'s epoch ``epoch`` as fresh though nothing of it was received yet: logic
        read the record at its start, and by the wall clocks the epoch's last beat is
        recent. A receipt supersedes it; it never delays ``gone``."""
        self._presumed[(node, epoch)] = until

    def fresh(self, node: str, epoch: str, lease_s: float, heard_through: float) -> bool:
        """Whether new containers may go to the epoch: received from within a lease, or,
        before anything of it was received, presumed fresh (``presume``) up to now."""
        last = self._last.get((node, epoch))
        if last is None:
            return heard_through <= self._presumed.get((node, epoch), -math.inf)
        return heard_through - last <= lease_s

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop receipts of epochs not in ``keep`` (their nodes moved on)."""
        for held in (self._last, self._presumed):
            for k in [k for k in held if k not in keep]:
                del held[k]


__all__ = ["Liveness"]
