"""Small helpers shared by the tests."""

from __future__ import annotations

from crdt_ops import Replica


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
