"""The I/O adapters around the sans-IO core: the pumps that move a Replica's bytes between
processes, and what they need from the machine.

Pumps, each offering the :class:`Node` interface the services are written against:
``memory`` (a simulated network in one process: tests, simulations, the demo) and
``amqp`` (RabbitMQ with SQLite durability). Their adapters: ``store`` (SQLite),
``config`` (settings from flags and the environment), ``signing`` (Ed25519 keys),
``metrics`` (Prometheus), ``provision`` (broker users, permissions and definitions),
``echo`` (a replica watching its own messages come back).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from crdt_ops.replica import Replica


class Node(Protocol):
    """One replica of a group, pumped by a transport.

    ``replica_id``: this replica's id; ``replica``: the
    :class:`~crdt_ops.replica.Replica` itself. Read it at any time (``state()``,
    ``items(prefix)``, handles' ``.value``) and ``subscribe`` to its changes; write
    through :meth:`write` (or write to ``replica`` and :meth:`flush`), so that the
    operations are sent. Implemented by
    :class:`~crdt_ops.transport.memory.MemoryNode` and
    :class:`~crdt_ops.transport.amqp.AmqpNode`.
    """

    replica_id: str

    @property
    def replica(self) -> Replica:
        """The replica this node pumps (the same object for the node's whole life)."""
        ...

    async def start(self) -> None:
        """Join the group and start pumping messages; returns once this replica may
        write (over RabbitMQ: connected, caught up with the stream, a member)."""
        ...

    async def stop(self) -> None:
        """Commit what was written, stop pumping, release the connection and store."""
        ...

    def write(self) -> AbstractAsyncContextManager[Replica]:
        """``async with node.write() as r: ...``: the operations made on ``r`` are
        applied at once and sent (over RabbitMQ: durable) when the block exits."""
        ...

    async def flush(self) -> None:
        """Hand every local operation applied so far to the transport (over RabbitMQ:
        return once they are durable in the store; they are published from there)."""
        ...

    async def store_works(self) -> None:
        """Return once the node takes writes again (at once when nothing failed): over
        RabbitMQ, after a :class:`~crdt_ops.transport.store.StoreUnavailable`, once its
        store works and memory was restored from it. A loop that writes awaits this when a
        write or ``flush()`` raised StoreUnavailable, then goes on."""
        ...

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
