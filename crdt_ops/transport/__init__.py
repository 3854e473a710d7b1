"""Transports: the pumps that move a Replica's bytes between processes.

``memory``: a simulated network in one process (tests, simulations, the demo).
``amqp``: RabbitMQ with SQLite durability (services).
Both offer the :class:`Node` interface services are written against.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from crdt_ops.replica import Replica


class Node(Protocol):
    """One replica of a group, pumped by a transport."""

    replica_id: str
    replica: Replica

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def write(self) -> AbstractAsyncContextManager[Replica]: ...

    async def flush(self) -> None: ...

    def health(self) -> dict[str, str]:
        """Per part of the node, ``"ok"`` or what is wrong (e.g. ``store``, ``echo``)."""
        ...

    def confirmed_through(self) -> float:
        """A ``time.monotonic()`` instant before which every operation this node
        committed is known to have reached the group (broker-confirmed)."""
        ...

    def heard_through(self) -> float:
        """A ``time.monotonic()`` instant before which everything sent to this node
        has been delivered and applied here; it stops while the node cannot hear."""
        ...
