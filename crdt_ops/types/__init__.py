"""The replicated object types: pure data, no I/O, no clocks of their own."""

from crdt_ops.types.base import Crdt
from crdt_ops.types.counter import GCounter, PNCounter
from crdt_ops.types.flag import EWFlag
from crdt_ops.types.ormap import ORMap, new_object
from crdt_ops.types.orset import ORSet
from crdt_ops.types.register import LWWRegister, MVRegister

__all__ = ["Crdt", "EWFlag", "GCounter", "LWWRegister", "MVRegister", "ORMap", "ORSet",
           "PNCounter", "new_object"]
