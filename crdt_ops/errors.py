"""The exceptions the crdt-ops core raises, in one place. Every one derives from
:class:`CrdtError`; a rejected remote message raises an :class:`InvalidMessage` with a
``reason`` tag (the dead-letter header); a buffer at its bounds raises :class:`BufferFull`."""

from __future__ import annotations


class CrdtError(Exception):
    """Base class of every crdt-ops error."""


class InvalidMessage(CrdtError, ValueError):
    """Bytes given to ``Replica.receive`` are not a valid message.

    Raised before anything is applied: the replica's state, clock and buffer
    are exactly as they were. ``reason`` is a short machine-friendly tag
    (e.g. ``"undecodable"``, ``"bad-value"``) suitable for a dead-letter header.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TypeConflict(InvalidMessage, TypeError):
    """A name already holds an object of another type.

    Locally: the handle asked for (e.g. ``replica.counter("x")``) does not match
    the type ``x`` holds: the one it was first written with, or, where replicas wrote
    it with several types concurrently, the highest type number of those, the one its
    value shows (:class:`~crdt_ops.types.ormap.ORMap`). Remotely: the operation's origin
    had seen ``x`` with another type, so every replica rejects it the same way.
    """

    def __init__(self, detail: str) -> None:
        super().__init__("type-conflict", detail)


class InvalidValue(CrdtError, TypeError):
    """A value that cannot be replicated: not str, bytes, int, float, bool or None,
    an int outside signed 64 bits, or a NaN float."""


class BufferFull(CrdtError):
    """The causal buffer already holds its maximum number of waiting operations.

    The message that would have exceeded the bound was not accepted (nothing
    changed); deliver the missing operations (``Replica.missing()``) first.
    """


class NotAMember(CrdtError):
    """This replica may not write yet: its group keeps an agreed membership and it
    is neither a founder nor admitted (``Replica.join()`` asks the members to admit
    it), or it was retired. Nothing was applied. See :mod:`crdt_ops.membership`."""


class OwnPastMissing(CrdtError, ValueError):
    """A replica started on an empty store under an id that wrote before, and its own
    messages, read back from the group's history, name operations the history no longer
    holds (the stream's retention): its next operations would reuse their sequence
    numbers, and every other replica would drop them as duplicates. A transport raises it
    as the replica starts, before anything is written (``AmqpNode.start``). Start a new
    replica (a new id, a new store) in its place, and retire this one. (A ValueError too:
    as a retired replica's, a start that finds it so is not tried again.)

    Not raised by ``Replica.submit``: in a group without authentication a forged message
    under the replica's own id would then stop its every write."""


class Deposed(CrdtError, ValueError):
    """Another process of this process's sole principal (the services' logic, a node's
    worker: one runs at a time) ran while this one was cut off or down, and decided
    without what this one had committed and not sent: that is stale for good. Raised by a
    transport once it knows (as it reconnects, or as it starts and reads the group's
    history), after it marked its stores deposed and before it sent anything of them;
    started again, the replica sets them aside and runs as a new one
    (``crdt_ops.transport.deposition``). (A ValueError too: a start that finds it so is
    not tried again; the next one sets the stores aside.)"""


class SubgroupNotHeld(CrdtError, KeyError):
    """A local write to a key of a sub-group this replica does not hold
    (:mod:`crdt_ops.subgroups`); nothing was changed."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Forbidden(InvalidMessage):
    """An operation writes a path its origin may not write (``reason`` ``forbidden``).
    Locally raised before anything is applied; remotely, every replica rejects
    the same operations."""

    def __init__(self, detail: str) -> None:
        super().__init__("forbidden", detail)


class Unauthenticated(InvalidMessage):
    """A message's origin replica does not belong to the principal that sent it
    (``reason`` ``unauthenticated``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("unauthenticated", detail)


class WaitingCapReached(BufferFull):
    """One origin already has ``max_per_origin`` operations waiting in the causal buffer.

    The refused batch changed nothing. ``origin`` is its origin and ``waits_for``
    the (replica, seq) it would have waited on. A transport may drop it and rely
    on reading the group's history again once the gap fills (or never, for a
    sender whose gap never fills).
    """

    def __init__(self, origin: str, waits_for: tuple[str, int] | None, detail: str) -> None:
        super().__init__(detail)
        self.origin = origin
        self.waits_for = waits_for
