"""Causal stability: which operations no operation still to come can be concurrent with.

An operation is *causally stable* at a replica when every operation delivered
there from now on is causally after it (Baquero, Almeida, Shoker, "Making
operation-based CRDTs operation-based", DAIS 2014, section 5): only then may
metadata kept for concurrent operations (an LWW register's losing assignments)
be dropped without replicas diverging. That needs an agreed membership
(:mod:`crdt_ops.membership`): the stable clock is the pointwise minimum of what
each member is known to have delivered; a member is known to have delivered
what it reported (heartbeats, a batch's dependencies) and, from its admission
on, the admission's causal past (all its operations follow it). A member never
heard from holds everything back; an open group (no membership) is never stable.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from crdt_ops.clock import Clock, dominates, merge_into, pointwise_min
from crdt_ops.membership import Membership


class Stability:
    """Tracks the members' reported clocks and derives the stable clock and the
    compaction frontier.

    ``stable()``: the pointwise minimum of every member's clock (this replica's own
    included); every operation any member issues from now on follows what it covers.
    ``frontier()``: a stable clock such that, in addition, every operation
    concurrent with what it covers has been delivered *here*; metadata of the
    operations it covers can be dropped without any replica diverging. A frontier
    is adopted only when the members did not change since it was computed and this
    replica has delivered every operation the members had reported issuing then.
    """

    def __init__(self, me: str, own: Clock, membership: Membership) -> None:
        self.me = me
        self._own = own
        self.membership = membership
        self.known: dict[str, Clock] = {}
        #: per replica, the highest of its seqs any report named (gap detection)
        self.reported: Clock = {}
        self._candidate: tuple[Clock, Clock, int] | None = None
        self._frontier: Clock = {}

    def observe(self, replica: str, clock: Mapping[str, int], own: int = 0) -> None:
        """``replica`` has delivered at least ``clock``, and its own operations up to ``own``."""
        merge_into(self.reported, clock)
        self._report(replica, own)
        if replica == self.me or not self.membership.is_member(replica):
            return
        known = self.known.setdefault(replica, {})
        merge_into(known, clock)
        if own > known.get(replica, 0):
            known[replica] = own

    def admitted(self, replica: str, past: Mapping[str, int]) -> None:
        """``replica`` became a member by an admission whose causal past (the
        admission's own dot included) is ``past``: it follows all of that."""
        if replica != self.me:
            merge_into(self.known.setdefault(replica, {}), past)

    def retire(self, replica: str, last_seq: int) -> None:
        """``replica`` leaves for good after its operation ``last_seq``: it counts
        until that operation is delivered here (:meth:`settle`)."""
        self.membership.retire(replica, last_seq)
        self._report(replica, last_seq)
        self.settle()

    def _report(self, replica: str, seq: int) -> None:
        if seq > self.reported.get(replica, 0):
            self.reported[replica] = seq

    def settle(self) -> None:
        """Drop the retiring replicas whose last operations are all delivered here."""
        if self.membership.retiring:
            for r in self.membership.settle(self._own):
                self.known.pop(r, None)

    def stable(self) -> Clock:
        """What every operation any member issues from now on follows ({} in an open group)."""
        self.settle()
        if not self.membership.managed:
            return {}
        members = self.membership.members()
        others = [r for r in members if r != self.me]
        if not others and self.me not in members:
            return {}
        clocks = [self._own] + [self.known.get(r, {}) for r in others]
        return pointwise_min(clocks, self._own)  # an entry missing from our own clock is 0

    def frontier(self) -> Clock:
        """Advance and return the compaction frontier (see the class docstring)."""
        self.settle()
        view = self.membership.view
        cand = self._candidate
        if cand is not None and cand[2] != view:
            cand = None  # members changed: what it covers may not be stable any more
        elif cand is not None and dominates(self._own, cand[1]):
            merge_into(self._frontier, cand[0])
            cand = None
        if cand is None:
            members = self.membership.members()
            issued = {r: max(self.known.get(r, {}).get(r, 0),
                             self.membership.retiring.get(r, 0))
                      for r in members if r != self.me}
            cand = (self.stable(), issued, view)
        self._candidate = cand
        return self._frontier

    def gaps(self) -> dict[str, tuple[int, int]]:
        """Per replica, the range of seqs some report named that are not delivered here."""
        return {r: (self._own.get(r, 0) + 1, s) for r, s in self._gaps()}

    def has_gaps(self) -> bool:
        """Whether :meth:`gaps` is not empty (without building it)."""
        return any(True for _ in self._gaps())

    def _gaps(self) -> Iterator[tuple[str, int]]:
        own = self._own
        return ((r, s) for r, s in self.reported.items() if s > own.get(r, 0))

    def lag(self) -> int:
        """How many of this replica's own operations are not yet stable."""
        return self._own.get(self.me, 0) - self.stable().get(self.me, 0)
