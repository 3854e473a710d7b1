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
