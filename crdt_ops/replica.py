"""The Replica: objects by key, a clock, an outbox and change events. Sans-IO.

Bytes come in through :meth:`Replica.receive` and go out through
:meth:`Replica.outgoing`; nothing here awaits, touches a socket or reads a
clock it was not handed. A transport is a small pump around it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from crdt_ops.causal import CausalBuffer
from crdt_ops.clock import Clock
from crdt_ops.errors import CrdtError, InvalidMessage, TypeConflict
from crdt_ops.events import Callback, ChangeEvent, Subscribers
from crdt_ops.handles import (
    CounterHandle,
    FlagHandle,
    GCounterHandle,
    MapHandle,
    MVRegisterHandle,
    RegisterHandle,
    SetHandle,
)
from crdt_ops.hlc import HybridClock
from crdt_ops.ops import Batch, Heartbeat, Kind, ObjType, Op
from crdt_ops.policy import OPEN, Unauthenticated, WritePolicy, belongs
from crdt_ops.stability import Stability
from crdt_ops.types import Crdt, ORMap
from crdt_ops.values import check_text
from crdt_ops.wire import codec

_MISSING = object()


class Replica:
    """One replica of a group's shared objects.

    Guarantees: every operation is applied exactly once, after every operation
    its origin had seen; two replicas that delivered the same operations have
    equal :meth:`state`; a message that is not valid raises
    :class:`~crdt_ops.errors.InvalidMessage` and changes nothing.

    ``wall_clock`` (e.g. ``time.time_ns``) feeds LWW timestamps; without it
    they are logical. Local operations are batched into one message per
    :meth:`outgoing` call, at most ``max_batch_ops`` per message. At most
    ``max_buffered_ops`` remote operations wait in the causal buffer, and at most
    ``max_waiting_per_origin`` of one origin (see :class:`~crdt_ops.causal.CausalBuffer`).
    """

    def __init__(self, replica_id: str, *, wall_clock: Callable[[], int] | None = None,
                 max_batch_ops: int = 1000, max_buffered_ops: int = 100_000,
                 compact_every: int = 1000, max_waiting_per_origin: int | None = None,
                 policy: WritePolicy = OPEN) -> None:
        if not isinstance(replica_id, str) or not 0 < len(replica_id) <= codec.MAX_ID:
            raise ValueError(f"replica_id must be a str of 1..{codec.MAX_ID} characters")
        check_text(replica_id, "replica_id")
        self.replica_id = replica_id
        #: Who may write what (:mod:`crdt_ops.policy`), checked for local and remote
        #: operations alike; every replica of a group must use the same policy.
        self.policy = policy
        self.max_batch_ops = max_batch_ops
        self.compact_every = compact_every
        self._root = ORMap()
        self._buffer = CausalBuffer(max_ops=max_buffered_ops,
                                    max_per_origin=max_waiting_per_origin)
        self._stability = Stability(replica_id, self._buffer.clock)
        self._hlc = HybridClock(wall_clock)
        self._subs = Subscribers()
        self._unsent: list[Op] = []
        self._out: list[bytes] = []
        self._candidates: dict[int, Crdt] = {}
        self._sent_deps: Clock = {}
        self._deps_of: dict[str, Clock] = {}
        self._since_compact = 0
        #: Batches that became deliverable after waiting and were found invalid:
        #: (origin, first_seq, reason). They were not applied.
        self.rejected: deque[tuple[str, int, str]] = deque(maxlen=1000)
        #: Counters for observability: ops applied (local and remote), duplicates dropped.
        self.stats = {"applied": 0, "local": 0, "duplicates": 0, "rejected": 0}
        #: Called with (origin, first seq, last seq) after each run of operations is
        #: applied here, local or remote (e.g. for an external ledger of deliveries).
        self.on_applied: list[Callable[[str, int, int], None]] = []

    # ------------------------------------------------------------ handles

    def counter(self, key: str) -> CounterHandle:
        return CounterHandle(self, (key,))

    def gcounter(self, key: str) -> GCounterHandle:
        return GCounterHandle(self, (key,))

    def register(self, key: str) -> RegisterHandle:
        return RegisterHandle(self, (key,))

    def mvregister(self, key: str) -> MVRegisterHandle:
        return MVRegisterHandle(self, (key,))

    def set(self, key: str) -> SetHandle:
        return SetHandle(self, (key,))

    def flag(self, key: str) -> FlagHandle:
        return FlagHandle(self, (key,))

    def map(self, key: str) -> MapHandle:
        return MapHandle(self, (key,))

    def remove(self, key: str) -> None:
        """Observed-remove of a top-level key (any type): concurrent updates survive."""
        MapHandle(self, ()).remove(key)

    # ------------------------------------------------------------ reading

    def state(self) -> dict[str, Any]:
        """Every visible object as plain Python: counters int, registers their
        value, MV registers and sets frozenset, flags bool, maps dict."""
        return self._root.value

    def get(self, key: str, default: Any = None) -> Any:
        """The plain value of one top-level key, or ``default``."""
        return self._view(key, default)

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """The visible top-level keys that start with ``prefix`` and their plain
        values, in key order (computing only those: cheaper than :meth:`state`)."""
        out = []
        for key in sorted(k for k in self._root.fields if k.startswith(prefix)):
            value = self._view(key, _MISSING)
            if value is not _MISSING:
                out.append((key, value))
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
        """Per replica, the range of sequence numbers waiting operations need."""
        return self._buffer.missing()

    @property
    def unsent(self) -> int:
        """Local operations applied but not yet handed out by :meth:`outgoing`."""
        return len(self._unsent)

    @property
    def buffered(self) -> int:
        """Operations waiting in the causal buffer."""
        return len(self._buffer)

    def metadata_size(self) -> int:
        """Metadata units held (dots, per-origin entries, waiting operations)."""
        return self._root.size() + len(self._buffer) + len(self._candidates)

    def subscribe(self, prefix: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(ChangeEvent)`` after every change of a key starting with
        ``prefix``; returns a function that unsubscribes."""
        return self._subs.add(prefix, callback)

    # ------------------------------------------------------------ output

    def outgoing(self) -> list[bytes]:
        """The wire messages produced since the last call (local operations, batched,
        and heartbeats). Send each to every replica of the group."""
        self._seal()
        out, self._out = self._out, []
        return out

    def heartbeat(self, retired: bool = False) -> None:
        """Queue a message with this replica's clock (or its retirement) for the group."""
        self._seal()
        self._out.append(self.clock_message(retired))

    def clock_message(self, retired: bool = False) -> bytes:
        """A heartbeat message with this replica's clock, not queued."""
        return codec.encode_heartbeat(Heartbeat(self.replica_id, dict(self._buffer.clock), retired))

    def retire(self, replica_id: str) -> None:
        """Stop waiting for ``replica_id`` (gone for good) in causal stability."""
        self._stability.retire(replica_id)

    def _seal(self) -> None:
        ops, size = self._unsent, self.max_batch_ops
        first = self._buffer.clock.get(self.replica_id, 0) - len(ops) + 1
        for start in range(0, len(ops), size):
            chunk = ops[start:start + size]
            self._out.append(codec.encode_batch(
                Batch(self.replica_id, first + start, self._deps_delta(), chunk)))
        self._unsent = []

    def _deps_delta(self) -> Clock:
        """The clock entries (other replicas) that grew since the last batch sealed."""
        sent = self._sent_deps
        delta = {r: s for r, s in self._buffer.clock.items()
                 if s != sent.get(r) and r != self.replica_id}
        sent.update(delta)
        return delta

    # ------------------------------------------------------------ input

    def receive(self, data: bytes, sender: str | None = None) -> bool:
        """Take one message from any replica (this one included), in any order,
        any number of times. Raises InvalidMessage (nothing changed) if it is not
        valid, BufferFull if it would overflow the causal buffer.

        Returns False when the message brought nothing new (every operation in
        it was applied or held here already): a transport need not log it.

        ``sender``: the authenticated principal that delivered the message (e.g.
        the broker user); the message's origin must belong to it
        (:func:`crdt_ops.policy.belongs`), else :class:`~crdt_ops.policy.Unauthenticated`."""
        msg = codec.decode(data)
        if sender is not None and not belongs(msg.origin, sender):
            raise Unauthenticated(f"replica {msg.origin!r} does not belong to sender {sender!r}")
        if isinstance(msg, Heartbeat):
            if msg.retired:
                self._stability.retire(msg.origin)
            else:
                self._stability.observe(msg.origin, msg.clock)
            return True
        buf = self._buffer
        if buf.is_duplicate(msg):
            self.stats["duplicates"] += 1
            return False
        if buf.unmet(msg) is None:
            self._deliver(msg)
            self._drain()
        elif not buf.hold(msg):
            self.stats["duplicates"] += 1
            return False
        self._stability.observe(msg.origin, msg.deps, msg.last_seq)
        return True

    def _drain(self) -> None:
        while (batch := self._buffer.pop_ready()) is not None:
            try:
                self._deliver(batch)
            except InvalidMessage as e:
                self.stats["rejected"] += 1
                self.rejected.append((batch.origin, batch.first_seq, e.reason))

    def _deliver(self, batch: Batch) -> None:
        """Apply the not yet delivered part of a deliverable batch, all or nothing."""
        origin = batch.origin
        skip = self._buffer.clock.get(origin, 0) - batch.first_seq + 1
        ops = batch.ops[skip:] if skip > 0 else batch.ops
        if not ops:
            self.stats["duplicates"] += 1
            return
        first = batch.first_seq + max(skip, 0)
        seen = dict(self._deps_of.get(origin, ()))
        seen.update(batch.deps)
        seen[origin] = first - 1
        self._validate(origin, ops, seen)
        self._deps_of[origin] = seen
        self._apply(origin, first, ops)

    def _authorize(self, origin: str, ops: list[Op]) -> None:
        """Raise :class:`~crdt_ops.policy.Forbidden` unless the policy lets ``origin``
        write what each of ``ops`` writes (nothing to check without rules)."""
        if self.policy.rules:
            for op in ops:
                self.policy.check(origin, _target(op))

    def _validate(self, origin: str, ops: list[Op], seen: Mapping[str, int]) -> None:
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

    def _apply(self, origin: str, first: int, ops: list[Op]) -> None:
        """Apply valid operations ``first, first + 1, ...`` of ``origin``, then record
        them as delivered and tell the subscribers."""
        watch = self._subs_before(ops)
        apply = self._root.apply
        hlc = self._hlc
        candidates = self._candidates
        seq = first
        for op in ops:
            target = apply(op, origin, seq)
            if op.timestamp:
                hlc.observe(op.timestamp)
            if target is not None and target.needs_compaction():
                candidates[id(target)] = target
            seq += 1
        self._buffer.delivered(origin, seq - 1)
        self.stats["applied"] += len(ops)
        for hook in self.on_applied:
            hook(origin, first, seq - 1)
        for key, old in watch.items():
            new = self._view(key, _MISSING)
            if new != old:
                self._subs.emit(ChangeEvent(key, None if old is _MISSING else old,
                                            None if new is _MISSING else new, origin))
        self._since_compact += len(ops)
        if self._since_compact >= self.compact_every:
            self.compact()

    def _subs_before(self, ops: list[Op]) -> dict[str, Any]:
        watch: dict[str, Any] = {}
        if not self._subs:
            return watch
        for op in ops:
            key = op.path[0] if op.path else op.field
            if key not in watch and self._subs.wants(key):
                watch[key] = self._view(key, _MISSING)
        return watch

    def _view(self, key: str, default: Any) -> Any:
        return self._root.field_value(key, default)

    # ------------------------------------------------------------ local writes

    def _check(self, path: tuple[str, ...], type_: ObjType) -> None:
        self._root.check(path, type_, self._buffer.clock)

    def _local(self, op: Op) -> None:
        """Apply an operation prepared here and queue it for :meth:`outgoing`.
        Raises :class:`~crdt_ops.policy.Forbidden` if the policy denies it."""
        self._check(op.path, op.type)
        self._authorize(self.replica_id, [op])
        seq = self._buffer.clock.get(self.replica_id, 0) + 1
        self._apply(self.replica_id, seq, [op])
        self.stats["local"] += 1
        self._unsent.append(op)

    # ------------------------------------------------------------ stability

    def compact(self) -> None:
        """Drop metadata that no operation still to come can need (see Stability)."""
        self._since_compact = 0
        frontier = self._stability.frontier()
        for key, obj in list(self._candidates.items()):
            obj.compact(frontier)
            if not obj.needs_compaction():
                del self._candidates[key]

    # ------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """State, clock, waiting and unsent operations: everything needed to
        restart with :meth:`from_snapshot` and take the rest of the stream."""
        unsent = None
        if self._unsent:
            last = self._buffer.clock[self.replica_id]
            unsent = Batch(self.replica_id, last - len(self._unsent) + 1, {}, list(self._unsent))
        return codec.encode_snapshot({
            "replica_id": self.replica_id, "clock": dict(self._buffer.clock),
            "hlc": self._hlc.last, "root": self._root, "known": self._stability.known,
            "retired": self._stability.retired, "waiting": list(self._buffer.waiting()),
            "unsent": unsent, "deps_of": self._deps_of,
        })

    @classmethod
    def from_snapshot(cls, data: bytes, replica_id: str | None = None,
                      **options: Any) -> Replica:
        """A replica restored from :meth:`snapshot` (options as for the constructor).

        With another ``replica_id``, a new replica bootstraps from a peer's
        snapshot: it takes the state and clock, not the peer's unsent operations
        (the peer still owns and sends them)."""
        snap = codec.decode_snapshot(data)
        if replica_id is not None and replica_id != snap["replica_id"]:
            snap["replica_id"], snap["unsent"] = replica_id, None
        root, unsent, me = snap["root"], snap["unsent"], snap["replica_id"]
        if not isinstance(root, ORMap):
            raise InvalidMessage("bad-snapshot", "the snapshot's root is not a map")
        if unsent is not None and (unsent.origin != me
                                   or unsent.last_seq != snap["clock"].get(me, 0)):
            raise InvalidMessage("bad-snapshot", "the unsent operations are not the replica's "
                                 "latest own operations")
        replica = cls(snap["replica_id"], **options)
        replica._root = root
        replica._buffer.clock.update(snap["clock"])
        replica._hlc.last = snap["hlc"]
        for r, clock in snap["known"].items():
            replica._stability.observe(r, clock)
        for r in snap["retired"]:
            replica._stability.retire(r)
        replica._deps_of = snap["deps_of"]
        for batch in snap["waiting"]:
            replica._buffer.hold(batch)
        replica._drain()
        if unsent is not None:
            replica._unsent = list(unsent.ops)
        replica._candidates = {id(c): c for c in _compaction_candidates(root)}
        return replica

    def __repr__(self) -> str:
        return f"<Replica {self.replica_id!r} clock={dict(self._buffer.clock)}>"


def _compaction_candidates(obj: Crdt) -> list[Crdt]:
    out = [obj] if obj.needs_compaction() else []
    if isinstance(obj, ORMap):
        for typed in obj.fields.values():
            for f in typed.values():
                out.extend(_compaction_candidates(f.obj))
    return out


def _target(op: Op) -> tuple[str, ...]:
    """The path an operation writes: its object's, or the removed field's."""
    return (*op.path, op.field) if op.kind is Kind.MAP_REMOVE else op.path


__all__ = ["CrdtError", "Replica"]
