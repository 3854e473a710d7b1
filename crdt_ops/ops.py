"""Operations, batches and heartbeats as plain Python objects.

These are what the wire codec decodes to and what the CRDT types apply; no
protobuf object leaves ``crdt_ops.wire``.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as _field
from enum import IntEnum

from crdt_ops.clock import Clock, Dot, Spans
from crdt_ops.subgroups import channel
from crdt_ops.values import Value


class ObjType(IntEnum):
    """Replicated object types; values equal the wire enum ``crdt_ops.v1.ObjType``."""

    GCOUNTER = 1
    PNCOUNTER = 2
    LWW_REGISTER = 3
    MV_REGISTER = 4
    ORSET = 5
    EWFLAG = 6
    ORMAP = 7


COUNTER_TYPES = (ObjType.GCOUNTER, ObjType.PNCOUNTER)

#: Deepest nesting of maps a path may have.
MAX_DEPTH = 32
#: Largest amount of one operation, and of one origin's running total on one counter.
MAX_AMOUNT = 2**63 - 1


class Kind(IntEnum):
    """What an operation does to its target object."""

    COUNTER_ADD = 1
    REGISTER_SET = 2
    SET_ADD = 3
    SET_REMOVE = 4
    FLAG_ENABLE = 5
    FLAG_DISABLE = 6
    MAP_REMOVE = 7
    #: admission of ``value`` (a replica id) to the group's membership; targets the root
    ADMIT = 8


#: The object types each kind of operation may target.
KIND_TARGETS: dict[Kind, tuple[ObjType, ...]] = {
    Kind.COUNTER_ADD: COUNTER_TYPES,
    Kind.REGISTER_SET: (ObjType.LWW_REGISTER, ObjType.MV_REGISTER),
    Kind.SET_ADD: (ObjType.ORSET,),
    Kind.SET_REMOVE: (ObjType.ORSET,),
    Kind.FLAG_ENABLE: (ObjType.EWFLAG,),
    Kind.FLAG_DISABLE: (ObjType.EWFLAG,),
    Kind.MAP_REMOVE: (ObjType.ORMAP,),
    Kind.ADMIT: (ObjType.ORMAP,),
}


@dataclass(frozen=True, slots=True)
class CounterFloor:
    """What a map-field remove observed of one origin's share of a counter."""

    path: tuple[str, ...]
    type: ObjType
    origin: str
    p: int
    n: int


@dataclass(slots=True)
class Op:
    """One operation's effect, as prepared at its origin (never mutated after).

    ``path`` leads from the replica's root map to the target object (the empty
    path is the root itself); every level but the last is an OR-map.
    """

    path: tuple[str, ...]
    type: ObjType
    kind: Kind
    value: Value = None
    timestamp: int = 0
    p: int = 0
    n: int = 0
    observed: tuple[Dot, ...] = ()
    field: str = ""
    seen: Clock = _field(default_factory=dict)
    floors: tuple[CounterFloor, ...] = ()


@dataclass(slots=True)
class Batch:
    """Operations ``first_seq, first_seq + 1, ...`` of ``origin`` on ``subgroup``
    (:mod:`crdt_ops.subgroups`; ``""``: the group's common part).

    The sequence numbers are those of the batch's ``channel`` (``origin`` for the common
    part, ``origin#subgroup`` else). ``deps``: the entries of the origin's clock (other
    channels) that grew since its previous batch on the same channel. None of the
    batch's operations is applied anywhere before all of ``deps`` and the channel's
    operations up to ``first_seq - 1`` are; since the earlier batches' deps were met
    before, so is everything the origin had delivered of the batch's sub-group and of
    the common part when it sealed the batch.
    """

    origin: str
    first_seq: int
    deps: Clock
    ops: list[Op]
    subgroup: str = ""
    channel: str = _field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.channel = channel(self.origin, self.subgroup)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.ops) - 1


@dataclass(slots=True)
class Heartbeat:
    """A replica's clock (what it has delivered), its retirement from the group
    (``retired``: its last operation is ``clock[origin]``), or its request to be
    admitted (``join``). ``retirements``: the other replicas' retirements the origin
    knows of (replica -> its last operation), relayed so that a member that missed one
    (it is no operation: no gap in a clock reveals it) learns it from any member.
    ``wants``: operations the origin waits for and did not find in the group's history
    (channel -> first..last), asked of the replica that issued them
    (:meth:`Replica.ask <crdt_ops.replica.Replica.ask>`)."""

    origin: str
    clock: Clock
    retired: bool = False
    join: bool = False
    retirements: Clock = _field(default_factory=dict)
    wants: Spans = _field(default_factory=dict)
