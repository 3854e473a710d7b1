"""The exceptions crdt-ops raises. Every one derives from :class:`CrdtError`."""

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
    the type ``x`` was first written with. Remotely: the operation's origin had
    seen ``x`` with another type, so every replica rejects it the same way.
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
