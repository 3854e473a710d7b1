"""Causal stability: what every member of the group is known to have delivered."""

from __future__ import annotations

from collections.abc import Mapping

from crdt_ops.clock import Clock, dominates, merge_into, pointwise_min


class Stability:
    """Tracks the clocks the other replicas reported and derives two clocks.

    ``stable()``: the pointwise minimum of every member's clock, this replica's
    own included; an operation it covers has been delivered everywhere.
    ``frontier()``: a stable clock such that, in addition, every operation
    concurrent with what it covers has been delivered *here*; metadata of
    operations it covers can be dropped without any replica diverging.

    Members are every replica id ever seen in a clock, minus retired ones; a
    member never heard from holds everything back (its clock counts as empty).
    """

    def __init__(self, me: str, own: Clock) -> None:
        self.me = me
        self._own = own
        self.known: dict[str, Clock] = {}
        self.retired: set[str] = set()
        self._candidate: tuple[Clock, Clock] | None = None
        self._frontier: Clock = {}

    def observe(self, replica: str, clock: Mapping[str, int], own: int = 0) -> None:
        """``replica`` has delivered at least ``clock``, and its own operations up to ``own``."""
        if replica == self.me or replica in self.retired:
            return
        known = self.known.get(replica)
        if known is None:
            known = self.known[replica] = {}
        merge_into(known, clock)
        if own > known.get(replica, 0):
            known[replica] = own

    def retire(self, replica: str) -> None:
        """``replica`` left for good: stop waiting for it."""
        self.retired.add(replica)
        self.known.pop(replica, None)
        self._candidate = None

    def members(self) -> set[str]:
        ids = {self.me} | set(self.known) | set(self._own)
        for clock in self.known.values():
            ids.update(clock)
        return ids - self.retired

    def stable(self) -> Clock:
        members = self.members()
        clocks = [self._own] + [self.known.get(r, {}) for r in members if r != self.me]
        return pointwise_min(clocks, members)

    def frontier(self) -> Clock:
        """Advance and return the compaction frontier (see the class docstring)."""
        cand = self._candidate
        if cand is not None and dominates(self._own, cand[1]):
            self._frontier = cand[0]
            cand = None
        if cand is None:
            members = self.members()
            issued = {r: self.known.get(r, {}).get(r, 0) for r in members if r != self.me}
            self._candidate = (self.stable(), issued)
        return self._frontier

    def lag(self) -> int:
        """How many of this replica's own operations are not yet stable."""
        return self._own.get(self.me, 0) - self.stable().get(self.me, 0)
