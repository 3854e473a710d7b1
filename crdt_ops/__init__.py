"""crdt-ops: operation-based CRDTs replicated between Python services.

The core (this package minus ``crdt_ops.transport``) is sans-IO: bytes in
through ``Replica.receive``, bytes out through ``Replica.outgoing``; no module of it
imports an I/O or clock module (``tests/core/test_wire.py`` checks it).
``crdt_ops.transport`` holds the I/O adapters: the pumps, the store, the settings.
"""

from crdt_ops.errors import (
    BufferFull,
    CrdtError,
    Deposed,
    Forbidden,
    InvalidMessage,
    InvalidValue,
    NotAMember,
    OwnPastMissing,
    TypeConflict,
    Unauthenticated,
    WaitingCapReached,
)
from crdt_ops.events import ChangeEvent
from crdt_ops.policy import Rule, WritePolicy
from crdt_ops.replica import Replica

__all__ = ["BufferFull", "ChangeEvent", "CrdtError", "Deposed", "Forbidden", "InvalidMessage",
           "InvalidValue", "NotAMember", "OwnPastMissing", "Replica", "Rule", "TypeConflict",
           "Unauthenticated", "WaitingCapReached", "WritePolicy"]
__version__ = "0.1.0"
