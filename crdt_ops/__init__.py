"""crdt-ops: operation-based CRDTs replicated between Python services.

The core (this package minus ``crdt_ops.transport``) is sans-IO: bytes in
through ``Replica.receive``, bytes out through ``Replica.outgoing``.
"""

from crdt_ops.errors import (
    BufferFull,
    CrdtError,
    InvalidMessage,
    InvalidValue,
    NotAMember,
    TypeConflict,
)
from crdt_ops.events import ChangeEvent
from crdt_ops.policy import Forbidden, Rule, Unauthenticated, WritePolicy
from crdt_ops.replica import Replica

__all__ = ["BufferFull", "ChangeEvent", "CrdtError", "Forbidden", "InvalidMessage",
           "InvalidValue", "NotAMember", "Replica", "Rule", "TypeConflict", "Unauthenticated",
           "WritePolicy"]
__version__ = "0.1.0"
