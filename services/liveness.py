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
declared gone: a broker outage shorter than the lease moves nothing. Logic
restarting knows no receipts: every epoch counts as heard at its start.

An epoch is **fresh** (new containers may be placed on it) when logic received
from it within one lease of what it has heard through.

Sans-IO: every time is handed in.
"""

from __future__ import annotations


class Liveness:
    """Receipts per (node, epoch) and the two verdicts. ``started``: when logic
    started (``time.monotonic()`` seconds); ``margin_s`` as above."""

    def __init__(self, started: float, margin_s: float = 1.0) -> None:
        if margin_s < 0:
            raise ValueError(f"the margin must be >= 0 s, not {margin_s}")
        self.started = started
        self.margin_s = margin_s
        self._last: dict[tuple[str, str], float] = {}

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

    def fresh(self, node: str, epoch: str, lease_s: float, heard_through: float) -> bool:
        """Whether new containers may go to the epoch: received from within a lease."""
        last = self._last.get((node, epoch))
        return last is not None and heard_through - last <= lease_s

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop receipts of epochs not in ``keep`` (their nodes moved on)."""
        for k in [k for k in self._last if k not in keep]:
            del self._last[k]


__all__ = ["Liveness"]
