"""What a replica's snapshot holds: everything needed to restart it (or to start a new
replica from a peer's) and take the rest of the stream. :meth:`Replica.snapshot
<crdt_ops.replica.Replica.snapshot>` makes one; :mod:`crdt_ops.wire.codec` encodes it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crdt_ops.clock import Clock
from crdt_ops.ops import Batch
from crdt_ops.types import ORMap


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A replica's state at one moment.

    ``replica_id``: whose; ``clock``: the operations delivered (origin -> last sequence
    number); ``hlc``: the highest hybrid logical timestamp seen; ``root``: the state;
    ``known`` and ``reported``: what each replica is known to have delivered, and the
    latest operations heartbeats reported (causal stability: :mod:`crdt_ops.stability`);
    ``deps_of``: the dependencies each origin's next batch must name; ``managed``,
    ``founders``, ``admissions``, ``retiring``, ``retired``: the agreed membership
    (:mod:`crdt_ops.membership`); ``waiting``: batches held in the causal buffer;
    ``unsent``: this replica's own operations applied but not yet sent, one batch per
    channel (:mod:`crdt_ops.subgroups`) that has any; ``sealed``: its own batches sealed
    before those (each with the ``deps`` it goes out with) but not yet handed to
    ``outgoing()``, in order."""

    replica_id: str
    clock: Clock
    hlc: int
    root: ORMap
    known: Mapping[str, Clock]
    deps_of: Mapping[str, Clock]
    retired: frozenset[str]
    managed: bool
    founders: frozenset[str]
    admissions: Mapping[str, Clock]
    retiring: Clock
    reported: Clock
    waiting: Sequence[Batch]
    unsent: Sequence[Batch]
    sealed: Sequence[Batch] = ()
