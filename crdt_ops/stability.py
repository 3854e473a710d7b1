"""Causal stability: which operations no operation still to come can be concurrent with.

An operation is *causally stable* at a replica when every operation delivered
there from now on is causally after it (Baquero, Almeida, Shoker, "Making
operation-based CRDTs operation-based", DAIS 2014, section 5): only then may
metadata kept for concurrent operations (an LWW register's losing assignments)
be dropped without replicas diverging. That needs an agreed membership
(:mod:`crdt_ops.membership`): the stable clock is the pointwise minimum of what
each member is known to have delivered; a member is known to have delivered
what it reported (heartbeats, a batch's dependencies). A member never heard from
holds everything back (an admitted one too: of the admissions the members make of
it, the one it follows is the first it delivered, unknown here until it reports); an
open group (no membership) is never stable.

With sub-groups (:mod:`crdt_ops.subgroups`) the clocks are of channels, and a channel's
operations are stable once every member *that holds its sub-group* delivered them: a
member that does not hold it never receives them, and writes nothing there that could be
concurrent with them. A replica tracks the channels of the sub-groups it holds only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from crdt_ops.clock import Clock, dominates, merge_into, pointwise_min
from crdt_ops.membership import Membership
from crdt_ops.subgroups import COMMON, NONE, SubGroups, channels_of, split


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

    def __init__(self, me: str, own: Clock, membership: Membership,
                 subgroups: SubGroups = NONE) -> None:
        self.me = me
        self._own = own
        self.membership = membership
        self.subgroups = subgroups
        self._split = bool(subgroups)  # (read on every delivery: a plain bool is cheapest)
        self._mine = subgroups.held_by(me)  # the one sub-group held here; None: all
        self.known: dict[str, Clock] = {}
        #: per channel, the highest of its seqs any report named (gap detection)
        self.reported: Clock = {}
        #: with sub-groups: per member, the channels of its own that reports named
        self._channels: dict[str, set[str]] = {}
        self._candidate: tuple[Clock, Clock, int] | None = None
        self._frontier: Clock = {}
        #: per retiring replica, the members that told they know of its retirement
        #: (:meth:`told`)
        self._told: dict[str, set[str]] = {}

    def held(self, channel: str) -> bool:
        """Whether this replica holds ``channel``'s sub-group."""
        if not self.subgroups or self._mine is None:
            return True
        sub = split(channel)[1]
        return sub == COMMON or sub == self._mine

    def observe(self, replica: str, clock: Mapping[str, int], own: int = 0,
                channel: str | None = None) -> None:
        """``replica`` has delivered at least ``clock``, and its own operations on
        ``channel`` (default: its id) up to ``own``. Entries of channels this replica
        does not hold are ignored."""
        channel = replica if channel is None else channel
        if self._split:
            if self._mine is not None:
                clock = {c: s for c, s in clock.items() if self.held(c)}
            self._note_channels(replica, clock, channel if own else None)
        merge_into(self.reported, clock)
        self._report(channel, own)
        if replica == self.me or not self.membership.is_member(replica):
            return
        retiring = self.membership.retiring
        if retiring:
            for c in retiring.keys() & clock.keys():  # it delivered more of the retiree
                self.membership.raise_last(c, clock[c])
        known = self.known.setdefault(replica, {})
        merge_into(known, clock)
        if own > known.get(channel, 0):
            known[channel] = own

    def _note_channels(self, replica: str, clock: Mapping[str, int], channel: str | None) -> None:
        """Note the channels of ``replica``'s own that ``clock`` (and ``channel``) name."""
        mine = self._channels.setdefault(replica, set())
        if channel is not None:
            mine.add(channel)
        mine.update(channels_of(clock, replica))

    def admitted(self, replica: str) -> None:
        """``replica`` became a member here (an admission of it was delivered). It is known
        to have delivered nothing until it reports: its operations follow the admission
        *it* delivered first, which need not be the one delivered here first (every member
        that hears a join request admits the sender), so no admission's causal past is a
        lower bound of its clock."""
        if replica != self.me:
            self.known.setdefault(replica, {})

    def retire(self, replica: str, lasts: Mapping[str, int]) -> None:
        """``replica`` leaves for good after its operation ``lasts[c]`` on each of its
        channels ``c`` (those this replica does not hold are ignored): it counts until
        those operations are delivered here (:meth:`settle`)."""
        lasts = {c: s for c, s in lasts.items() if self.held(c)}
        self.membership.retire(replica, lasts)
        for c, s in lasts.items():
            self._report(c, s)
        self.settle()

    def _report(self, replica: str, seq: int) -> None:
        if seq > self.reported.get(replica, 0):
            self.reported[replica] = seq

    def told(self, member: str, channels: Iterable[str]) -> None:
        """``member`` relayed retirements naming ``channels``: it knows of their replicas'
        retirements, and its relays named the most it delivered of each of their channels
        it holds (:meth:`Replica.retirements <crdt_ops.replica.Replica.retirements>`)."""
        retired = self.membership.retired
        for c in channels:
            if (r := split(c)[0]) not in retired:
                self._told.setdefault(r, set()).add(member)

    def _all_told(self, channel: str) -> bool:
        """Whether every other member that holds ``channel`` (not itself retiring) told of
        the retirement of its replica: a worker, which holds the common part and its own
        node's sub-group, is waited for on those. Its queue had what the retiree published
        there before the retirement (a queue is first in, first out), the stream perhaps
        not; counted out before its word, the retiree's late operation that only it
        delivered would be resolved against compacted state elsewhere."""
        m = self.membership
        out = m.retiring_replicas()
        told = self._told.get(split(channel)[0], set())
        return all(r in told for r in m.members()
                   if r != self.me and r not in out and self.holds(r, channel))

    def holds(self, member: str, channel: str) -> bool:
        """Whether ``member`` holds ``channel``'s sub-group (the common part: every member;
        without sub-groups: every channel)."""
        if not self._split:
            return True
        theirs = self.subgroups.held_by(member)
        return theirs is None or split(channel)[1] in (COMMON, theirs)

    def settle(self) -> None:
        """Drop the retiring replicas whose last operations are all delivered here and
        whose retirement every other member told of."""
        if self.membership.retiring:
            for r in self.membership.settle(self._own, self._all_told):
                self.known.pop(r, None)
            for r in self._told.keys() - self.membership.retiring_replicas():
                del self._told[r]

    def stable(self) -> Clock:
        """What every operation any member issues from now on follows ({} in an open group)."""
        self.settle()
        if not self.membership.managed:
            return {}
        members = self.membership.members()
        others = [r for r in members if r != self.me]
        if not others and self.me not in members:
            return {}
        if not self.subgroups:
            clocks = [self._own] + [self.known.get(r, {}) for r in others]
            return pointwise_min(clocks, self._own)  # an entry missing from our own clock is 0
        # a channel's operations wait for the members that hold its sub-group only
        everyone: list[Mapping[str, int]] = []
        by_sub: dict[str, list[Mapping[str, int]]] = {}
        for r in others:
            held = self.subgroups.held_by(r)
            (everyone if held is None else by_sub.setdefault(held, [])).append(
                self.known.get(r, {}))
        every = everyone + [k for ks in by_sub.values() for k in ks]
        out: Clock = {}
        for c, low in self._own.items():
            sub = split(c)[1]
            for k in every if sub == COMMON else everyone + by_sub.get(sub, []):
                low = min(low, k.get(c, 0))
                if not low:
                    break
            if low:
                out[c] = low
        return out

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
            cand = (self.stable(), self._issued(), view)
        self._candidate = cand
        return self._frontier

    def _issued(self) -> Clock:
        """Per channel of the other members (held here), the operations they are known to
        have issued: what they reported delivering of their own, or a retirement's last;
        and per channel of a retiring or retired replica, the most any report named (a
        late operation of a replica counted out, still to be delivered here: compacting
        before it is would resolve it against settled state, unlike where it came first)."""
        issued = self._own_issued()
        out = self.membership.retired | self.membership.retiring_replicas()
        if out:
            for c, s in self.reported.items():
                if s > issued.get(c, 0) and split(c)[0] in out and self.held(c):
                    issued[c] = s
        return issued

    def _own_issued(self) -> Clock:
        """:meth:`_issued` of the members, from their reports and the retirements' lasts."""
        others = [r for r in self.membership.members() if r != self.me]
        retiring = self.membership.retiring
        if not self.subgroups:
            return {r: max(self.known.get(r, {}).get(r, 0), retiring.get(r, 0)) for r in others}
        issued: Clock = {}
        for r in others:
            known = self.known.get(r, {})
            for c in self._channels.get(r, ()):
                if self.held(c):
                    issued[c] = known.get(c, 0)
        for c, last in retiring.items():
            if self.held(c) and last > issued.get(c, 0):
                issued[c] = last
        return issued

    def gaps(self) -> dict[str, tuple[int, int]]:
        """Per channel, the range of seqs some report named that are not delivered here."""
        return {r: (self._own.get(r, 0) + 1, s) for r, s in self._gaps()}

    def has_gaps(self) -> bool:
        """Whether :meth:`gaps` is not empty (without building it)."""
        return any(True for _ in self._gaps())

    def _gaps(self) -> Iterator[tuple[str, int]]:
        own = self._own
        return ((r, s) for r, s in self.reported.items() if s > own.get(r, 0))

    def lag(self) -> int:
        """How many of this replica's own operations are not yet stable."""
        if not self.subgroups:
            return self._own.get(self.me, 0) - self.stable().get(self.me, 0)
        stable = self.stable()
        return sum(s - stable.get(c, 0) for c, s in channels_of(self._own, self.me).items())
