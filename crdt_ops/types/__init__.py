"""The replicated object types: pure data, no I/O, no clocks of their own. One module per
type, each registering its class in :mod:`crdt_ops.types.registry`; importing this package
registers them all."""

from crdt_ops.types.base import Crdt
from crdt_ops.types.counter import GCounter, PNCounter
from crdt_ops.types.flag import EWFlag
from crdt_ops.types.ormap import ORMap
from crdt_ops.types.orset import ORSet
from crdt_ops.types.register import LWWRegister, MVRegister
from crdt_ops.types.registry import new_object, registered

__all__ = ["Crdt", "EWFlag", "GCounter", "LWWRegister", "MVRegister", "ORMap", "ORSet",
           "PNCounter", "new_object", "registered"]
