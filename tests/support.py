"""Small helpers shared by the tests."""

from __future__ import annotations

from typing import TypeVar

from crdt_ops import Replica
from crdt_ops.transport import Node
from crdt_ops.transport.groups import NodeGroups

N = TypeVar("N", bound=Node)


def exchange(*replicas: Replica) -> None:
    """Deliver every pending message of every replica to all of them, until quiet."""
    while True:
        msgs = [m for r in replicas for m in r.outgoing()]
        if not msgs:
            return
        for m in msgs:
            for r in replicas:
                r.receive(m)


def send(src: Replica, *dst: Replica) -> list[bytes]:
    """Deliver ``src``'s pending messages to ``dst`` (and return them)."""
    msgs = src.outgoing()
    for m in msgs:
        for r in dst:
            r.receive(m)
    return msgs


def one_group(node: N) -> NodeGroups[N]:
    """``node`` as the one group of a process: what the services take (``services.model.
    routing``'s default group holds every record)."""
    from services import model

    return NodeGroups(model.routing("g"), {"g": node})
