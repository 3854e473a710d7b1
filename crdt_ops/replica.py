"""The Replica: objects by key, a clock, an outbox and change events. Sans-IO.

Bytes come in through :meth:`Replica.receive` and go out through
:meth:`Replica.outgoing`; nothing here awaits, touches a socket or reads a
clock it was not handed. A transport is a small pump around it.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from crdt_ops.causal import CausalBuffer
from crdt_ops.clock import Clock, Spans, merge_into, widen
from crdt_ops.errors import (
    BufferFull,
    CrdtError,
    InvalidMessage,
    InvalidValue,
    NotAMember,
    SubgroupNotHeld,
    TypeConflict,
    Unauthenticated,
)
from crdt_ops.events import Callback, ChangeEvent, Subscribers
from crdt_ops.handles import Fields, MapHandle, Target
from crdt_ops.hlc import HybridClock
from crdt_ops.keys import KeyIndex
from crdt_ops.membership import Membership
from crdt_ops.ops import Batch, Heartbeat, Kind, ObjType, Op
from crdt_ops.policy import OPEN, WritePolicy, belongs
from crdt_ops.settler import Settler, live_paths
from crdt_ops.snapshot import Snapshot
from crdt_ops.stability import Stability
from crdt_ops.subgroups import COMMON, NONE, SEP, SubGroups, channel, channels_of, split
from crdt_ops.types import Crdt, ORMap
from crdt_ops.values import check_text
from crdt_ops.wire import codec

_MISSING = object()


class Replica(Fields):
    """One replica of a group's shared objects.

    Guarantees: every operation is applied exactly once, after every operation
    its origin had seen; two replicas that delivered the same operations have
    equal :meth:`state`; a message that is not valid raises
    :class:`~crdt_ops.errors.InvalidMessage` and changes nothing.

    ``wall_clock`` (e.g. ``time.time_ns``: it must return an int, ns since the epoch) feeds
    LWW timestamps; without it they are logical. A timestamp is at most
    :data:`~crdt_ops.hlc.MAX_TIMESTAMP` (2**63-1): an assignment that would need a larger
    one, or whose wall clock returns no int, raises before anything is applied. Local
    operations are batched into one message per :meth:`outgoing` call, at most
    ``max_batch_ops`` and about ``max_message_bytes``
    (:data:`~crdt_ops.wire.codec.MAX_MESSAGE_BYTES`, 8 MiB) per message. At most
    ``max_buffered_ops`` remote operations wait in the causal buffer, and at most
    ``max_waiting_per_origin`` of one origin (see :class:`~crdt_ops.causal.CausalBuffer`).

    ``members``: the founders of a group that keeps an agreed membership (the same list at
    every replica; may be empty; a str is refused: pass a list), which causal stability and
    compaction need; a replica not among them writes only once admitted (:meth:`join`). None
    (the default): an open group, where anyone writes and nothing is compacted. See
    :mod:`crdt_ops.membership`.

    ``subgroups``: the group's sub-group rule (:mod:`crdt_ops.subgroups`; the same at
    every replica, like ``policy``; default: none). A replica then holds the sub-groups
    the rule gives its id: it writes and applies only those keys, skips the batches of
    the others, and numbers its operations per channel (its clock and dots are keyed by
    channel). Raises ValueError for a replica id that is not a str of 1 to 256
    characters of valid Unicode, or that cannot name channels.
    """

    #: Written paths one automatic :meth:`compact` settles at most (a few ms of work).
    SETTLE_STEP = 256

    def __init__(self, replica_id: str, *, wall_clock: Callable[[], int] | None = None,
                 max_batch_ops: int = 1000, max_buffered_ops: int = 100_000,
                 compact_every: int = 1000, max_waiting_per_origin: int | None = None,
                 policy: WritePolicy = OPEN, members: Iterable[str] | None = None,
                 subgroups: SubGroups = NONE,
                 max_message_bytes: int = codec.MAX_MESSAGE_BYTES) -> None:
        _check_id(replica_id)
        subgroups.check_id(replica_id)
        #: This replica's id, unique in its group (a str of 1..256 characters); every
        #: operation it writes carries it as its origin.
        self.replica_id = replica_id
        #: Who may write what (:mod:`crdt_ops.policy`), checked for local and remote
        #: operations alike; every replica of a group must use the same policy.
        self.policy = policy
        #: The group's sub-group rule (:mod:`crdt_ops.subgroups`), and the one sub-group
        #: this replica holds (None: every one).
        self.subgroups = subgroups
        self.held_subgroup = subgroups.held_by(replica_id)
        self._split = bool(subgroups)  # (read on every delivery: a plain bool is cheapest)
        self.max_batch_ops = max_batch_ops
        #: The most a message of this replica holds, bytes (about: ``codec.op_bytes``); a
        #: local operation larger than that is refused (:meth:`submit`)
        self.max_message_bytes = max_message_bytes
        self.compact_every = compact_every
        self._root = ORMap()
        self._keys = KeyIndex()
        self._buffer = CausalBuffer(max_ops=max_buffered_ops,
                                    max_per_origin=max_waiting_per_origin)
        #: The group's agreed membership as this replica knows it: founders, admissions,
        #: retirements (:class:`~crdt_ops.membership.Membership`).
        self.membership = Membership(members)
        self._stability = Stability(replica_id, self._buffer.clock, self.membership, subgroups)
        self._hlc = HybridClock(wall_clock)
        self._subs = Subscribers()
        #: local operations not yet sealed, per sub-group (COMMON: the common part)
        self._unsent: dict[str, list[Op]] = {}
        #: about the bytes of ``_unsent`` (``codec.op_bytes``): :meth:`_seal` cuts by size
        #: only when they may not fit in one message per ``max_batch_ops``
        self._unsent_bytes = 0
        #: the top-level keys ``_unsent`` writes (:meth:`_deliver` seals them before a
        #: delivery that writes one of them)
        self._unsent_keys: set[str] = set()
        self._out: list[bytes] = []
        #: the operations in ``_out``'s batches (sealed, not yet handed out)
        self._sealed_ops = 0
        self._settler = Settler()
        #: per sub-group, the clock entries its last batch told (see _deps_delta)
        self._sent_deps: dict[str, Clock] = {}
        self._deps_of: dict[str, Clock] = {}
        self._since_compact = 0
        #: what this replica's own messages, received back, told the group it had delivered
        #: (see :meth:`unmet_claims`)
        self._claimed: Clock = {}
        #: what this replica asks the senders to send again (:meth:`ask`), per channel
        self._wants: Spans = {}
        #: what others asked this replica to send again (:meth:`asked`), per own channel,
        #: and who asked
        self._asked: Spans = {}
        self._askers: set[str] = set()
        #: what others asked other senders to send again, of what this replica delivered
        #: (:meth:`asked_of_others`), and who asked, per channel
        self._relay_asked: Spans = {}
        self._relay_askers: dict[str, set[str]] = {}
        #: Batches that became deliverable after waiting and were found invalid:
        #: (origin, first_seq, reason). They were not applied.
        self.rejected: deque[tuple[str, int, str]] = deque(maxlen=1000)
        #: Counters for observability: ops applied (local and remote), duplicates dropped;
        #: ``left_out``: operations a restored snapshot held waiting that this replica's caps
        #: refused (:meth:`from_snapshot`).
        self.stats = {"applied": 0, "local": 0, "duplicates": 0, "rejected": 0, "skipped": 0,
                      "left_out": 0}
        #: Called with (channel, first seq, last seq) after each run of operations is
        #: applied here, local or remote (e.g. for an external ledger of deliveries); the
        #: channel is the origin's id in a group without sub-groups.
        self.on_applied: list[Callable[[str, int, int], None]] = []

    # ------------------------------------------------------------ handles

    def _at(self, name: str) -> tuple[Target, tuple[str, ...]]:
        return self, (name,)

    def remove(self, key: str) -> None:
        """Observed-remove of a top-level key (any type): concurrent updates survive; a
        no-op if it is not visible here. Raises ValueError for a key no object can have
        (not a non-empty str)."""
        MapHandle(self, ()).remove(key)

    # ------------------------------------------------------------ reading

    def state(self) -> dict[str, Any]:
        """Every visible object as plain Python: counters int, registers their
        value, MV registers and sets frozenset, flags bool, maps dict."""
        return self._root.value

    def get(self, key: str, default: Any = None) -> Any:
        """The plain value of one top-level key, or ``default``."""
        return self._view(key, default)

    def items(self, prefix: str = "", *, after: str | None = None,
              limit: int | None = None) -> list[tuple[str, Any]]:
        """The visible top-level keys that start with ``prefix`` and their plain
        values, in key order (by code point), computing only those.

        ``after``: only keys greater than it (a cursor: the last key of the previous
        page; stable under concurrent changes, since keys keep their place);
        ``limit``: at most that many. Cost: O(log n) to find the start, then one step
        per key scanned (invisible keys, e.g. removed ones, are skipped). Raises TypeError
        for a ``prefix`` or an ``after`` that is not a str."""
        _check_scan(prefix, after)
        out: list[tuple[str, Any]] = []
        if limit is not None and limit <= 0:
            return out
        view = self._view
        for key in self._keys.scan(prefix, after):
            value = view(key, _MISSING)
            if value is not _MISSING:
                out.append((key, value))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def keys(self, prefix: str = "", *, after: str | None = None,
             limit: int | None = None) -> list[str]:
        """The visible top-level keys of :meth:`items` (same arguments), without
        computing their values."""
        _check_scan(prefix, after)
        out: list[str] = []
        if limit is not None and limit <= 0:
            return out
        visible = self._root.visible
        for key in self._keys.scan(prefix, after):
            if visible(key):
                out.append(key)
                if limit is not None and len(out) >= limit:
                    break
        return out

    @property
    def clock(self) -> Mapping[str, int]:
        """Per replica, the last operation delivered here (read-only)."""
        return MappingProxyType(self._buffer.clock)

    def stable_clock(self) -> Clock:
        """What every known member of the group is known to have delivered."""
        return self._stability.stable()

    def stable_lag(self) -> int:
        """How many of this replica's own operations are not yet known to be everywhere."""
        return self._stability.lag()

    def missing(self) -> dict[str, tuple[int, int]]:
        """Per replica, the range of sequence numbers not delivered here that waiting
        operations need or that a report (a heartbeat, a batch's dependencies, a
        retirement) named: a gap to fill from the group's history."""
        held: dict[str, int] = {}
        for batch in self._buffer.waiting():
            held[batch.channel] = max(held.get(batch.channel, 0), batch.last_seq)
        out = {r: span for r, span in self._stability.gaps().items()
               if span[1] > held.get(r, 0)}
        for r, (a, b) in self._buffer.missing().items():
            old = out.get(r)
            out[r] = (a, b if old is None else max(b, old[1]))
        return dict(sorted(out.items()))

    def unmet_claims(self) -> dict[str, tuple[int, int]]:
        """Per channel, the range of sequence numbers (first..last, inclusive) that this
        replica's own messages, received back, told the group it had delivered (or
        issued), and that it has not delivered now; empty normally.

        Not empty when its store lost transactions (an older copy put back, an OS crash
        that undid what was not synced) after what they held was published: the group may
        count those operations as stable (every member had them). Until it has them again
        this replica must not write, or its next operations would be concurrent with what
        the others take as stable (causal stability: Baquero, Almeida and Shoker, "Making
        operation-based CRDTs operation-based", 2014). A transport reads them from the
        group's history before it writes again."""
        clock = self._buffer.clock
        return {c: (clock.get(c, 0) + 1, s) for c, s in self._claimed.items()
                if s > clock.get(c, 0)}

    def ask(self, spans: Mapping[str, tuple[int, int]]) -> None:
        """Ask the senders of ``spans`` (channel -> first..last sequence number, inclusive)
        to send those operations again: from now on this replica's heartbeats name the
        part of them it has not delivered (:meth:`wants`), until it has. For what this
        replica waits for and the group's history (over RabbitMQ, its stream) did not
        hold. Ranges of its own channels are left out (it is their sender); at most
        :data:`~crdt_ops.wire.codec.MAX_WANTS` channels are asked at once. Raises
        TypeError or ValueError (nothing asked) for a range that is not two ints with
        1 <= first <= last."""
        for ch, span in spans.items():
            if (not isinstance(ch, str) or not isinstance(span, tuple) or len(span) != 2
                    or not all(type(x) is int for x in span)):
                raise TypeError(f"ask() takes channel -> (first, last) ints, got {ch!r}: "
                                f"{span!r}")
            if not 1 <= span[0] <= span[1]:
                raise ValueError(f"ask(): {ch!r} {span[0]}..{span[1]} is no range of "
                                 "sequence numbers (1 <= first <= last)")
        for ch, (a, b) in spans.items():
            if split(ch)[0] == self.replica_id:
                continue
            if ch in self._wants or len(self._wants) < codec.MAX_WANTS:
                widen(self._wants, ch, a, b)

    def wants(self) -> Spans:
        """What this replica asks to be sent again (:meth:`ask`) and has still not
        delivered: channel -> first..last, from the first to the last number it neither
        delivered nor holds waiting (:meth:`CausalBuffer.holes
        <crdt_ops.causal.CausalBuffer.holes>`: every hole of a channel at once). Its
        heartbeats carry it."""
        if not self._wants:
            return {}
        clock = self._buffer.clock
        self._wants = {ch: (a, b) for ch, (a, b) in self._wants.items()
                       if b > clock.get(ch, 0)}
        return self._buffer.holes({ch: b for ch, (_, b) in self._wants.items()})

    @property
    def asking(self) -> int:
        """How many channels this replica asks operations of (:meth:`ask`) that it has not
        delivered up to the range asked: cheap (no pass over the causal buffer, which
        :meth:`wants` makes)."""
        clock = self._buffer.clock
        return sum(b > clock.get(ch, 0) for ch, (_, b) in self._wants.items())

    def asked(self) -> tuple[Spans, set[str]]:
        """What other replicas asked this one to send again since the last call (their
        heartbeats' ``wants`` of this replica's channels, up to what it issued): channel ->
        first..last, and who asked. A transport publishes those operations again from
        what it kept of its own messages (the others drop what they have as duplicates).
        A request from a member that reported delivering the whole range already (a
        heartbeat read again from the history) is left out."""
        out, who = self._asked, self._askers
        self._asked, self._askers = {}, set()
        return out, who

    def asked_of_others(self) -> tuple[Spans, dict[str, set[str]]]:
        """What other replicas asked *other* senders to send again since the last call
        (their heartbeats' ``wants``), cut to what this replica delivered: channel ->
        first..last, and channel -> who asked for it. A transport may send those
        operations again from what it logged of them (``crdt_ops.transport.relay``) when
        their sender does not, as when it is gone for good: any holder can repair a loss
        (SRM: Floyd et al., "A Reliable Multicast Framework for Light-weight Sessions",
        1997), and the replicas that have them drop them as duplicates. Channels of the
        asker's own are left out, and so is a range the asker reported delivering already."""
        out, who = self._relay_asked, self._relay_askers
        self._relay_asked, self._relay_askers = {}, {}
        return out, who

    def holders(self, channel: str, through: int) -> list[str]:
        """The replicas known to have delivered ``channel`` up to ``through`` (this one by
        its clock, the others by what they reported: a lower bound), retired ones left out,
        sorted by id: the candidates to send those operations again for a sender that does
        not (:meth:`asked_of_others`), in the order in which they take it up."""
        retired = self.membership.retired
        out = {r for r, clock in self._stability.known.items()
               if clock.get(channel, 0) >= through and r not in retired}
        out.discard(self.replica_id)
        if self._buffer.clock.get(channel, 0) >= through:
            out.add(self.replica_id)
        return sorted(out)

    def _heard_wants(self, asker: str, wants: Mapping[str, tuple[int, int]]) -> None:
        """Note what ``asker`` asks this replica to send again (see :meth:`asked`), and
        what it asks others for that this replica delivered (:meth:`asked_of_others`)."""
        clock, known = self._buffer.clock, self._stability.known.get(asker, {})
        for ch, (a, b) in wants.items():
            sender = split(ch)[0]
            if asker in (sender, self.replica_id):
                continue
            b = min(b, clock.get(ch, 0))  # (never more than it issued, or delivered)
            if a > b or known.get(ch, 0) >= b:
                continue
            if sender == self.replica_id:
                widen(self._asked, ch, a, b)
                self._askers.add(asker)
            else:
                widen(self._relay_asked, ch, a, b)
                self._relay_askers.setdefault(ch, set()).add(asker)

    def held_by_peers(self) -> Clock:
        """Per channel of this replica's own, the last of its operations that every member
        has reported delivering: the stable clock's entry (:meth:`stable_clock`). What a
        transport keeps of its own messages to send again on request (:meth:`asked`) can
        go up to there. {} in an open group, where no agreed membership says who the
        peers are."""
        if not self.membership.managed:
            return {}
        stable = self.stable_clock()
        return {c: stable.get(c, 0) for c in self._own_lasts(self._buffer.clock)}

    def has_gap(self) -> bool:
        """Whether :meth:`missing` is not empty (cheaper than computing it)."""
        return bool(len(self._buffer)) or self._stability.has_gaps()

    @property
    def is_member(self) -> bool:
        """Whether this replica may write: an open group, a founder, or admitted
        and neither retiring nor retired (see :mod:`crdt_ops.membership`)."""
        m = self.membership
        return not m.managed or (m.is_member(self.replica_id)
                                 and not m.is_retiring(self.replica_id))

    def sole_holder(self) -> bool:
        """Whether this replica holds one sub-group and, as its membership knows it, no
        other member holds that one: then no other replica that receives its sub-group
        alone needs this replica's operations on it (the replicas that hold every
        sub-group do). False when it holds every sub-group, or its group's membership is
        not managed (its members are not known). A transport that leaves such operations
        out of what only holders of that sub-group receive may leave them out for a member
        this replica does not know of yet (one still to be admitted): that one finds them
        as it finds any gap, when this replica's next heartbeat reports its clock (over
        RabbitMQ: read again from the group's stream)."""
        held, m = self.held_subgroup, self.membership
        if held is None or not m.managed:
            return False
        return not any(self.subgroups.held_by(r) == held
                       for r in m.members() if r != self.replica_id)

    @property
    def own_seq(self) -> int:
        """How many operations this replica has issued: its clock entry, or with
        sub-groups the sum of its channels' entries (it only grows)."""
        if not self.subgroups:
            return self._buffer.clock.get(self.replica_id, 0)
        return sum(self._own_lasts(self._buffer.clock).values())

    @property
    def unsent(self) -> int:
        """Local operations applied but not yet handed out by :meth:`outgoing`: those not
        sealed yet and those sealed into batches (by :meth:`heartbeat`, :meth:`join`, or a
        delivery: :meth:`_deliver`). A transport takes 0 for "all of them are in my
        outbox"."""
        return sum(map(len, self._unsent.values())) + self._sealed_ops

    @property
    def buffered(self) -> int:
        """Operations waiting in the causal buffer."""
        return len(self._buffer)

    def waiting_origins(self) -> set[str]:
        """The replicas whose operations wait in the causal buffer for earlier ones."""
        return set(self._buffer.waiting_per_origin())

    def metadata_size(self) -> int:
        """Metadata units held (dots, per-origin entries, waiting operations)."""
        return self._root.size() + len(self._buffer) + len(self._settler)

    def subscribe(self, prefix: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(ChangeEvent)`` after every change of a key starting with
        ``prefix`` (``""``: every key); returns a function that unsubscribes.

        Changes made after this call are reported, local and remote alike (register
        before the writes or deliveries you want to hear about; the current state is
        :meth:`items`). The callback runs synchronously, inside the mutator or the
        :meth:`receive` that applied the change, once per changed top-level key and
        batch; it must not block. It may write (a node sends those writes too). An
        exception it raises is logged and does not stop the other callbacks. Raises
        TypeError, subscribing nothing, if ``prefix`` is not a str or ``callback`` is not
        callable."""
        return self._subs.add(prefix, callback)

    # ------------------------------------------------------------ output

    def outgoing(self) -> list[bytes]:
        """The wire messages produced since the last call (local operations, batched,
        and heartbeats). Send each to every replica of the group."""
        self._seal()
        out, self._out = self._out, []
        self._sealed_ops = 0
        return out

    def heartbeat(self, retired: bool = False) -> None:
        """Queue a message with this replica's clock for the group. ``retired``: this
        replica leaves the group for good after its last operation (it may not
        write again; the others count it until they delivered that operation)."""
        self._seal()
        self._out.append(self.clock_message(retired))
        if retired:
            self._stability.retire(self.replica_id, self._own_lasts(self._buffer.clock))

    def clock_message(self, retired: bool = False, join: bool = False,
                      unsent_from: Mapping[str, int] | None = None) -> bytes:
        """A heartbeat message with this replica's clock and the retirements it knows of
        (:meth:`retirements`), not queued. ``unsent_from``, for a message sent outside the
        order of the operations (a transport's probe, a marker), which may overtake them:
        per channel of this replica's own, the first sequence number of its operations not
        known to have left (a transport's outbox); the clock then names its own operations
        only up to before those, and before any not handed out by :meth:`outgoing` yet (on
        every own channel, by their count: a lower report is harmless). A peer takes a
        clock as a report that those operations exist, and waits for them
        (:meth:`missing`, a retirement's last operation); were they never sent (their
        sender deposed, or crashed before it stored them), it would wait for good."""
        clock = dict(self._buffer.clock)
        if unsent_from is not None:
            held = self.unsent
            for c, s in self._own_lasts(clock).items():
                if c in clock:
                    clock[c] = max(0, min(s - held, unsent_from.get(c, s + 1) - 1))
        return codec.encode_heartbeat(Heartbeat(self.replica_id, clock, retired, join,
                                                self.retirements(), self.wants()))

    def retirements(self) -> dict[str, int]:
        """The retirements this replica knows of, each replica with its last operation's
        sequence number: the retiring ones (their last operations not all delivered yet)
        and the retired (all delivered: the clock's entry). Heartbeats relay them."""
        m, clock = self.membership, self._buffer.clock
        if not self.subgroups:
            known = {r: clock.get(r, 0) for r in m.retired}
        else:  # every channel of theirs held here
            known = {c: s for c, s in clock.items() if split(c)[0] in m.retired}
            known.update((r, clock.get(r, 0)) for r in m.retired)
        known.update(m.retiring)
        # and the most of theirs delivered, or named by a report, here: one held waiting
        # for an earlier one is the retiree's too (the others must wait for it)
        reported = self._stability.reported
        return {c: max(s, clock.get(c, 0), reported.get(c, 0)) for c, s in known.items()}

    def _own_lasts(self, clock: Mapping[str, int], replica_id: str | None = None) -> Clock:
        """The entries of ``clock`` of ``replica_id``'s channels (default: this replica's):
        its last operations on each, as a retirement names them."""
        me = self.replica_id if replica_id is None else replica_id
        if not self.subgroups:
            return {me: clock.get(me, 0)}
        return channels_of(clock, me) or {me: 0}

    def join(self) -> None:
        """Queue a request to be admitted to the group: every member that receives
        it admits this replica (an ``Admit`` operation); once one admission is
        delivered here, :attr:`is_member` is True and writes are accepted. Send it
        again until then (a member may not have received it)."""
        self._seal()
        self._out.append(self.clock_message(join=True))

    def found(self) -> None:
        """Found the group: admit this replica by its own first operation. Only the
        group's one founder may do this (over RabbitMQ, the replica that claimed
        founding on the broker); raises ValueError if this replica wrote before."""
        if self.own_seq:
            raise ValueError("only a replica's first operation can found a group")
        self.submit(Op((), ObjType.ORMAP, Kind.ADMIT, value=self.replica_id))

    def admit(self, replica_id: str) -> None:
        """Admit ``replica_id`` to the group (an operation of this replica, a member).
        Members call this on a join request; raises NotAMember if this one is not."""
        _check_id(replica_id)
        self.submit(Op((), ObjType.ORMAP, Kind.ADMIT, value=replica_id))

    def retire(self, replica_id: str, last_seq: int | Mapping[str, int] = 0) -> None:
        """Stop counting ``replica_id`` (gone for good) in causal stability once its
        operations up to ``last_seq`` are delivered here (at once for 0). With
        sub-groups, ``last_seq`` is its last operation per channel (a mapping; an int is
        its common part's)."""
        self._stability.retire(replica_id, _lasts(replica_id, last_seq))

    @staticmethod
    def retirement(replica_id: str, last_seq: int | Mapping[str, int]) -> bytes:
        """A message telling the group that ``replica_id`` left for good after its
        operation ``last_seq`` (for an operator retiring a dead replica; with sub-groups,
        a mapping of its channels to their last operations), not queued."""
        return codec.encode_heartbeat(Heartbeat(
            replica_id, {c: s for c, s in _lasts(replica_id, last_seq).items() if s},
            retired=True))

    def _seal(self) -> None:
        size, me = self.max_batch_ops, self.replica_id
        # the common part first: a sub-group's batch may depend on it, never the reverse
        for sub in sorted(self._unsent, key=bool):
            ops = self._unsent[sub]
            ch = channel(me, sub)
            first = self._buffer.clock.get(ch, 0) - len(ops) + 1
            cut = (_chunks(ops, size, self.max_message_bytes)
                   if self._unsent_bytes > self.max_message_bytes
                   else [(i, ops[i:i + size]) for i in range(0, len(ops), size)])
            for start, chunk in cut:
                self._out.append(codec.encode_batch(
                    Batch(me, first + start, self._deps_delta(sub, ch), chunk, sub)))
            self._sealed_ops += len(ops)
        self._unsent = {}
        self._unsent_bytes = 0
        self._unsent_keys = set()

    def _deps_delta(self, sub: str, ch: str) -> Clock:
        """The clock entries (other channels) that grew since the last batch sealed on
        sub-group ``sub``: of the common part and of ``sub`` only (a replica holding
        another sub-group has no other)."""
        sent = self._sent_deps.setdefault(sub, {})
        if not self.subgroups:
            delta = {r: s for r, s in self._buffer.clock.items() if s != sent.get(r) and r != ch}
        else:
            delta = {r: s for r, s in self._buffer.clock.items()
                     if s != sent.get(r) and r != ch and split(r)[1] in (COMMON, sub)}
        sent.update(delta)
        return delta

    # ------------------------------------------------------------ input

    def receive(self, data: bytes, sender: str | None = None) -> bool:
        """Take one message from any replica (this one included), in any order,
        any number of times. Raises InvalidMessage (nothing changed) if it is not
        valid, BufferFull if it would overflow the causal buffer.

        Returns whether a transport must log the message before acknowledging it:
        False when it brought nothing new (every operation in it was applied or held
        here already), or is a heartbeat that told of no retirement. A clock report
        lost in a crash only leaves this replica knowing less of the others' clocks
        until their next one (causal stability comes later, never wrongly: what it
        knows of a clock is a lower bound); replaying a join request from a log would
        admit again. A retirement is logged: the retired replica sends no other.

        ``sender``: the authenticated principal that delivered the message (e.g.
        the broker user); the message's origin must belong to it
        (:func:`crdt_ops.policy.belongs`), else :class:`~crdt_ops.errors.Unauthenticated`."""
        msg = codec.decode(data)
        if sender is not None and not belongs(msg.origin, sender):
            raise Unauthenticated(f"replica {msg.origin!r} does not belong to sender {sender!r}")
        if self._split and SEP in msg.origin:
            raise InvalidMessage("bad-origin", f"origin {msg.origin!r} holds {SEP!r}, which "
                                 "separates replica and sub-group in this group's channels")
        if isinstance(msg, Heartbeat):
            # what a join request caused (an admission) is an operation, logged as such
            return self._heard(msg)
        if msg.subgroup:
            if not self.subgroups:
                raise InvalidMessage("bad-subgroup", f"a batch of sub-group {msg.subgroup!r} "
                                     "in a group without sub-groups (every replica of a "
                                     "group must use the same rule)")
            if self.held_subgroup is not None and msg.subgroup != self.held_subgroup:
                self.stats["skipped"] += 1  # not held here: nothing to apply
                return False
        buf = self._buffer
        if buf.is_duplicate(msg):
            self.stats["duplicates"] += 1
            return False
        try:
            if buf.unmet(msg) is None:
                self._deliver(msg)
                self._drain()
            elif not buf.hold(msg):
                self.stats["duplicates"] += 1
                return False
        except BufferFull:  # no room to hold it: it is ours all the same
            self._claim(msg)
            raise
        self._claim(msg)
        self._stability.observe(msg.origin, msg.deps, msg.last_seq, msg.channel)
        return True

    def _claim(self, msg: Batch) -> None:
        """Note ``msg``, if it is one of this replica's own (one its store lost, read back
        from the group's history), as published by it (:meth:`unmet_claims`): once it was
        applied or held, or refused for want of room (the causal buffer's bounds say
        nothing of whether this replica published it); not when it was found invalid."""
        if msg.origin == self.replica_id:
            merge_into(self._claimed, msg.deps)
            merge_into(self._claimed, {msg.channel: msg.last_seq})

    def _heard(self, hb: Heartbeat) -> bool:
        """Take a heartbeat: a clock report, a retirement, or a join request (which a
        member answers by admitting the sender). Returns whether it told this replica
        of a retirement (to be logged)."""
        m = self.membership
        told = hb.retired
        # (a member leaving reports too, as its last word, what it has of another retiree:
        # its clock and its relays, before it is counted out itself)
        self._stability.observe(hb.origin, hb.clock)
        relays = not m.managed or m.is_member(hb.origin)
        if hb.retired:
            if m.managed and relays:
                self._take_relays(hb, but=hb.origin)  # (its own: taken as its retirement)
            self._stability.retire(hb.origin, self._own_lasts(hb.clock, hb.origin))
        else:
            if hb.origin == self.replica_id:
                merge_into(self._claimed, hb.clock)
            if relays:
                # a retirement relayed by a member: ours may have missed the original
                # (it is no operation, so no clock shows the gap); and the member knows
                # of it, with the most it delivered of the retiree
                self._stability.told(hb.origin, hb.retirements)
                told = self._take_relays(hb)
                self._stability.settle()
            if hb.wants:
                self._heard_wants(hb.origin, hb.wants)
            if (hb.join and m.managed and not m.is_member(hb.origin)
                    and hb.origin not in m.retired and self.is_member):
                self.admit(hb.origin)  # (not while retiring: it writes no more)
        if self._settler:  # a report may move the frontier: settle some of what it released
            self.compact(self.SETTLE_STEP)
        return told

    def _take_relays(self, hb: Heartbeat, but: str | None = None) -> bool:
        """Take the retirements member ``hb.origin`` relays (but ``but``'s), on the
        channels held here and there; returns whether one was news here."""
        m, st, news = self.membership, self._stability, False
        for r, lasts in _by_replica(hb.retirements).items():
            lasts = {c: s for c, s in lasts.items() if r != but and m.tells(c, s)
                     and st.held(c) and st.holds(hb.origin, c)}
            if lasts:
                st.retire(r, lasts)
                news = True
        return news

    def _drain(self) -> None:
        while (batch := self._buffer.pop_ready()) is not None:
            try:
                self._deliver(batch)
            except InvalidMessage as e:
                self.stats["rejected"] += 1
                self.rejected.append((batch.origin, batch.first_seq, e.reason))

    def _deliver(self, batch: Batch) -> None:
        """Apply the not yet delivered part of a deliverable batch, all or nothing (a batch
        refused changes nothing). Once it is found valid, if it writes a top-level key that
        this replica's operations not yet sealed write, those are sealed first
        (:meth:`_seal`). A batch's ``deps`` is the clock as it is sealed, and every other
        replica checks its operations' types against what that clock covers: sealed after
        this delivery, a write of a type this one changed would be refused everywhere but
        here as a write by a writer that saw both (and every later operation of this
        replica's would wait behind it). A delivery that writes none of those keys cannot
        change what such a check finds, and does not cut what is unsent in two."""
        ch = batch.channel
        skip = self._buffer.clock.get(ch, 0) - batch.first_seq + 1
        ops = batch.ops[skip:] if skip > 0 else batch.ops
        if not ops:
            self.stats["duplicates"] += 1
            return
        first = batch.first_seq + max(skip, 0)
        seen = dict(self._deps_of.get(ch, ()))
        seen.update(batch.deps)
        seen[ch] = first - 1
        self._validate(batch.origin, first, ops, seen, batch.subgroup)
        if self._unsent and not self._unsent_keys.isdisjoint(map(_key, ops)):
            self._seal()
        self._deps_of[ch] = seen
        self._apply(ch, first, ops, batch.origin)

    def _authorize(self, origin: str, ops: list[Op]) -> None:
        """Raise :class:`~crdt_ops.errors.Forbidden` unless the policy lets ``origin``
        write what each of ``ops`` writes (nothing to check without rules)."""
        if self.policy.rules:
            for op in ops:
                if op.kind is not Kind.ADMIT:
                    self.policy.check(origin, _target(op))

    def _validate(self, origin: str, first: int, ops: list[Op],
                  seen: Mapping[str, int], subgroup: str = COMMON) -> None:
        if self._split:
            for op in ops:
                if self._subgroup_of(op) != subgroup:
                    raise InvalidMessage("wrong-subgroup", f"a batch of sub-group "
                                         f"{subgroup!r} writes {_key(op)!r}, which belongs "
                                         f"to {self._subgroup_of(op)!r}")
        founding = first == 1 and subgroup == COMMON and ops[0].kind is Kind.ADMIT \
            and ops[0].value == origin
        if not self.membership.may_write(origin, seen, founding):
            raise InvalidMessage("not-a-member", f"{origin!r} wrote without an admission to "
                                 "the group in its causal past")
        check = self._root.check
        for op in ops:
            check(op.path, op.type, seen)
        self._authorize(origin, ops)
        if len(ops) == 1:
            return
        created: dict[tuple[str, ...], ObjType] = {}
        for op in ops:
            path = op.path
            if op.kind is Kind.MAP_REMOVE or created.get(path) is op.type:
                continue
            for d in range(len(path)):
                want = op.type if d == len(path) - 1 else ObjType.ORMAP
                if created.setdefault(path[: d + 1], want) != want:
                    raise TypeConflict(f"one batch writes {'/'.join(path[: d + 1])!r} "
                                       "with two types")

    def _apply(self, ch: str, first: int, ops: list[Op], origin: str) -> None:
        """Apply valid operations ``first, first + 1, ...`` of channel ``ch`` (of replica
        ``origin``), then record them as delivered and tell the subscribers."""
        watch = self._subs_before(ops)
        apply = self._root.apply
        hlc = self._hlc
        settler = self._settler if self.membership.managed else None
        seq = first
        admit = Kind.ADMIT
        remove = Kind.MAP_REMOVE
        root = self._root
        for op in ops:
            if op.kind is admit:  # membership, not data (its path is empty: the root)
                self._admitted(str(op.value), ch, seq)
                seq += 1
                continue
            if op.kind is not remove:
                if not root.holds(op.path[0]):
                    self._keys.add(op.path[0])
                if settler is not None:
                    settler.note(op.path, ch, seq)
            apply(op, ch, seq)
            if op.timestamp:
                hlc.observe(op.timestamp)
            seq += 1
        self._buffer.delivered(ch, seq - 1)
        if self.membership.retiring:
            self._stability.settle()
        self.stats["applied"] += len(ops)
        for hook in self.on_applied:
            hook(ch, first, seq - 1)
        for key, old in watch.items():
            new = self._view(key, _MISSING)
            if new != old:
                self._subs.emit(ChangeEvent(key, None if old is _MISSING else old,
                                            None if new is _MISSING else new, origin))
        self._since_compact += len(ops)
        if self._since_compact >= self.compact_every:
            self.compact(self.SETTLE_STEP)

    def _admitted(self, replica: str, origin: str, seq: int) -> None:
        if self.membership.admit(replica, (origin, seq)):
            self._stability.admitted(replica)

    def _subs_before(self, ops: list[Op]) -> dict[str, Any]:
        watch: dict[str, Any] = {}
        if not self._subs:
            return watch
        for op in ops:
            key = op.path[0] if op.path else op.field
            if not key:
                continue
            if key not in watch and self._subs.wants(key):
                watch[key] = self._view(key, _MISSING)
        return watch

    def _view(self, key: str, default: Any) -> Any:
        return self._root.field_value(key, default)

    # ------------------------------------------------------------ local writes

    def locate(self, path: tuple[str, ...], type_: ObjType) -> Crdt | None:
        """The object of ``type_`` at ``path``, or None (for handles: :class:`Target`)."""
        return self._root.locate(path, type_)

    def check_type(self, path: tuple[str, ...], type_: ObjType) -> None:
        """Raise :class:`~crdt_ops.errors.TypeConflict` if ``path`` holds another type
        here (for handles: :class:`Target`)."""
        self._root.check(path, type_, self._buffer.clock)

    def timestamp(self) -> int:
        """The next hybrid logical timestamp (for handles: :class:`Target`)."""
        return self._hlc.now()

    def submit(self, op: Op) -> None:
        """Apply an operation prepared here and queue it for :meth:`outgoing`.
        Raises :class:`~crdt_ops.errors.Forbidden` if the policy denies it,
        :class:`~crdt_ops.errors.NotAMember` if this replica may not write, and
        :class:`~crdt_ops.errors.InvalidValue` if it would not fit in a message
        (``max_message_bytes``); nothing is applied then."""
        if not (self.is_member or (op.kind is Kind.ADMIT and op.value == self.replica_id)):
            m = self.membership
            if self.replica_id in m.retired or m.is_retiring(self.replica_id):
                raise NotAMember(f"replica {self.replica_id!r} was retired from its group: it "
                                 "may write no more; start a new replica (a new store, a new "
                                 "id) in its place")
            raise NotAMember(f"replica {self.replica_id!r} is not a member of its group "
                             "yet: over a transport, await the node's start(), which founds "
                             "the group or is admitted to it; a bare Replica calls found() "
                             "or join()")
        self.check_type(op.path, op.type)
        self._authorize(self.replica_id, [op])
        sub = self._subgroup_of(op)
        if sub != COMMON and self.held_subgroup not in (None, sub):
            raise SubgroupNotHeld(f"replica {self.replica_id!r} holds sub-group "
                                  f"{self.held_subgroup!r}, not {sub!r} of {_key(op)!r}")
        size = codec.op_bytes(op)
        if size > self.max_message_bytes:
            raise InvalidValue(f"an operation on {'/'.join(op.path) or op.field!r} of about "
                               f"{size:,} bytes does not fit in a message (at most "
                               f"{self.max_message_bytes:,}): keep large data elsewhere "
                               "and replicate a reference to it")
        ch = channel(self.replica_id, sub)
        seq = self._buffer.clock.get(ch, 0) + 1
        self._apply(ch, seq, [op], self.replica_id)
        self.stats["local"] += 1
        self._unsent.setdefault(sub, []).append(op)
        self._unsent_bytes += size
        self._unsent_keys.add(_key(op))

    def _subgroup_of(self, op: Op) -> str:
        """The sub-group an operation writes (that of its top-level key)."""
        return self.subgroups.of_key(_key(op)) if self.subgroups else COMMON

    # ------------------------------------------------------------ stability

    def compact(self, limit: int | None = None) -> int:
        """Drop metadata that no operation still to come can need: settle the fields
        whose updates all became causally stable (:mod:`crdt_ops.settler`,
        :mod:`crdt_ops.types.settled`). ``limit``: take at most that many of the
        written paths waiting (each costs a few microseconds), all when None.
        Returns how many were taken (``limit``: there may be more). The replica calls
        it by itself every ``compact_every`` operations and on each heartbeat it
        receives, with a limit of :attr:`SETTLE_STEP`, so that no call holds its caller
        for long; a transport drains the rest in such steps between its other work
        (the RabbitMQ node does: ``AmqpNode``)."""
        self._since_compact = 0
        return self._settler.settle(self._root, self._stability.frontier(), limit)

    # ------------------------------------------------------------ snapshots

    def adopt(self, other: Replica) -> None:
        """Become ``other`` (the same replica rebuilt, e.g. from its store after a
        failed write left memory ahead of it): take its state, clock, membership,
        causal buffer and unsent operations, keep this object's subscribers, hooks,
        options and counters. The hybrid clock never goes back. Subscribers get one
        :class:`~crdt_ops.events.ChangeEvent` (``origin``: this replica) per top-level
        key whose value differs. Raises ValueError if ``other`` is another replica."""
        if other.replica_id != self.replica_id:
            raise ValueError(f"replica {self.replica_id!r} cannot adopt the state of "
                             f"{other.replica_id!r}")
        before = self.state() if self._subs else {}
        last = self._hlc.last
        for name in ("_root", "_keys", "_buffer", "membership", "_stability", "_hlc",
                     "_unsent", "_unsent_bytes", "_unsent_keys", "_out", "_sealed_ops",
                     "_settler", "_sent_deps",
                     "_deps_of", "_since_compact", "_claimed"):
            setattr(self, name, getattr(other, name))
        self._hlc.last = max(self._hlc.last, last)
        if self._subs:
            after = self.state()
            for key in sorted(before.keys() | after.keys()):
                old, new = before.get(key), after.get(key)
                if old != new:
                    self._subs.emit(ChangeEvent(key, old, new, self.replica_id))


    def snapshot(self) -> bytes:
        """State, clock, waiting and unsent operations (those sealed into batches by
        :meth:`heartbeat`, :meth:`join` or a delivery, not yet taken by :meth:`outgoing`,
        included): everything needed to restart with :meth:`from_snapshot` and take the
        rest of the stream."""
        me, clock = self.replica_id, self._buffer.clock
        sealed = [m for m in map(codec.decode, self._out) if isinstance(m, Batch)]
        unsent = [Batch(me, clock[channel(me, sub)] - len(ops) + 1, {}, list(ops), sub)
                  for sub, ops in sorted(self._unsent.items(), key=lambda e: bool(e[0]))
                  if ops]
        # this replica's own batches sealed from now on follow everything delivered here:
        # a replay of them after a restore must know it (their deps list only what grew)
        deps_of = {**self._deps_of, **{c: dict(clock) for c in self._own_lasts(clock)}}
        return codec.encode_snapshot(Snapshot(
            replica_id=self.replica_id, clock=dict(self._buffer.clock), hlc=self._hlc.last,
            root=self._root, known=self._stability.known, deps_of=deps_of,
            retired=frozenset(self.membership.retired), managed=self.membership.managed,
            founders=self.membership.founders, admissions=self.membership.admissions,
            retiring=self.membership.retiring, reported=self._stability.reported,
            waiting=list(self._buffer.waiting()), unsent=unsent, sealed=sealed))

    @classmethod
    def from_snapshot(cls, data: bytes, replica_id: str | None = None,
                      **options: Any) -> Replica:
        """A replica restored from :meth:`snapshot` (options as for the constructor).

        With another ``replica_id``, a new replica bootstraps from a peer's
        snapshot: it takes the state and clock, not the peer's unsent operations
        (the peer still owns and sends them). Operations the snapshot held waiting for
        earlier ones that ``options``' caps refuse are left out, counted in
        ``stats["left_out"]`` (refusing to restore would refuse every start until the
        setting went back)."""
        snap = codec.decode_snapshot(data)
        if replica_id is not None and replica_id != snap.replica_id:
            snap = dataclasses.replace(snap, replica_id=replica_id, unsent=[], sealed=[])
        root, me = snap.root, snap.replica_id
        for unsent in snap.unsent:
            if unsent.origin != me or unsent.last_seq != snap.clock.get(unsent.channel, 0):
                raise InvalidMessage("bad-snapshot", "the unsent operations are not the "
                                     "replica's latest own operations")
        for sealed in snap.sealed:
            if sealed.origin != me or sealed.last_seq > snap.clock.get(sealed.channel, 0):
                raise InvalidMessage("bad-snapshot", "the sealed batches are not the "
                                     "replica's own delivered operations")
        replica = cls(snap.replica_id, **options)
        replica._root = root
        replica._keys = KeyIndex(root.names())
        replica._buffer.clock.update(snap.clock)
        replica._hlc.last = snap.hlc
        replica.membership.load(snap.founders, snap.admissions, snap.retiring,
                                snap.retired, snap.managed)
        for r, clock in snap.known.items():
            replica._stability.observe(r, clock)
        replica._stability.reported.update(snap.reported)
        replica._deps_of = {r: dict(c) for r, c in snap.deps_of.items()}
        for batch in snap.waiting:
            try:
                replica._buffer.hold(batch)
            except BufferFull:  # caps lower than when it was taken (max_waiting_per_origin):
                # left out, as a delivery over the caps is; nothing of it was delivered, and
                # the transport's gap watch reads it again
                replica.stats["left_out"] += len(batch.ops)
        replica._drain()
        replica._out = [codec.encode_batch(b) for b in snap.sealed]
        replica._sealed_ops = sum(len(b.ops) for b in snap.sealed)
        replica._unsent = {b.subgroup: list(b.ops) for b in snap.unsent}
        replica._unsent_bytes = sum(codec.op_bytes(op) for b in snap.unsent for op in b.ops)
        replica._unsent_keys = {_key(op) for b in snap.unsent for op in b.ops}
        if replica.membership.managed:
            for path, origin, seq in sorted(live_paths(root), key=lambda e: e[2]):
                replica._settler.note(path, origin, seq)
        return replica

    def __repr__(self) -> str:
        return f"<Replica {self.replica_id!r} clock={dict(self._buffer.clock)}>"


def _check_id(replica_id: str) -> None:
    """Raise ValueError unless ``replica_id`` is a replica id the wire can carry."""
    if not isinstance(replica_id, str) or not 0 < len(replica_id) <= codec.MAX_ID:
        raise ValueError(f"replica_id must be a str of 1..{codec.MAX_ID} characters")
    check_text(replica_id, "replica_id")


def _chunks(ops: list[Op], max_ops: int, max_bytes: int) -> list[tuple[int, list[Op]]]:
    """``ops`` cut into runs of at most ``max_ops`` operations and about ``max_bytes``
    bytes (:func:`~crdt_ops.wire.codec.op_bytes`; an operation larger than that goes
    alone, though :meth:`Replica.submit` refuses one), each with its index in ``ops``."""
    out: list[tuple[int, list[Op]]] = []
    start, size = 0, 0
    for i, op in enumerate(ops):
        n = codec.op_bytes(op)
        if i > start and (i - start >= max_ops or size + n > max_bytes):
            out.append((start, ops[start:i]))
            start, size = i, 0
        size += n
    if start < len(ops):
        out.append((start, ops[start:]))
    return out


def _check_scan(prefix: object, after: object) -> None:
    """Raise TypeError unless ``prefix`` is a str and ``after`` a str or None (the
    arguments of :meth:`Replica.items` and :meth:`Replica.keys`)."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str (\"\" for every key), not {type(prefix).__name__}")
    if after is not None and not isinstance(after, str):
        raise TypeError(f"after must be a key (a str) or None, not {type(after).__name__}")


def _key(op: Op) -> str:
    """The top-level key an operation writes ("" for an admission: the root)."""
    return op.path[0] if op.path else op.field


def _lasts(replica_id: str, last_seq: int | Mapping[str, int]) -> Clock:
    """A retirement's last operations per channel: ``last_seq`` itself, or an int as the
    last operation of ``replica_id``'s common part."""
    return {replica_id: last_seq} if isinstance(last_seq, int) else dict(last_seq)


def _by_replica(lasts: Mapping[str, int]) -> dict[str, Clock]:
    """Channel -> seq entries grouped by the replica of each channel."""
    out: dict[str, Clock] = {}
    for c, s in lasts.items():
        out.setdefault(split(c)[0], {})[c] = s
    return out


def _target(op: Op) -> tuple[str, ...]:
    """The path an operation writes: its object's, or the removed field's."""
    return (*op.path, op.field) if op.kind is Kind.MAP_REMOVE else op.path


__all__ = ["CrdtError", "Replica"]
