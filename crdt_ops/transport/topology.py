"""A group's topology on RabbitMQ, declared once as data.

For group G (the names are a contract operators rely on): the fanout exchange
``crdt.G``; per replica R a durable queue ``crdt.G.R`` bound to it; the stream
``crdt.G.log`` bound to it (the replayable history: RabbitMQ "Streams"); dead letters
go to the fanout exchange ``crdt.G.dlx`` and its queue ``crdt.G.dead``; founding claims
go to the fanout exchange ``crdt.G.founder`` and the stream ``crdt.G.founders`` bound to
it, whose first message names the group's founder (a stream is append-only and read
without taking messages out, so every reader sees the same first claim).

:class:`Topology` lists these objects (:meth:`Topology.shared`, :meth:`Topology.member`);
:func:`declare` declares them through a channel (every replica, the benchmarks, the
chaos relay) and :mod:`crdt_ops.transport.provision` exports the same list as broker
definitions for an administrator to import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

if TYPE_CHECKING:
    from crdt_ops.transport.config import Settings

@dataclass(frozen=True, slots=True)
class Queue:
    """A durable queue: ``name``, its ``arguments`` (None: none), and the fanout exchange
    it is bound to (None: not bound)."""

    name: str
    arguments: dict[str, Any] | None
    bound_to: str | None


@dataclass(frozen=True, slots=True)
class Topology:
    """The RabbitMQ objects of one group. ``queue_type``: the replicas' queues'
    ``x-queue-type`` (classic or quorum); ``stream_max_age`` / ``stream_max_bytes``: the
    stream's retention (``x-max-age``; ``x-max-length-bytes``, 0: no bound)."""

    group: str
    queue_type: str = "classic"
    stream_max_age: str = "7D"
    stream_max_bytes: int = 0

    @classmethod
    def of(cls, settings: Settings) -> Topology:
        """The topology a replica with ``settings`` uses."""
        return cls(settings.group, settings.queue_type, settings.stream_max_age,
                   settings.stream_max_bytes)

    @property
    def exchange(self) -> str:
        return f"crdt.{self.group}"

    def queue(self, replica_id: str) -> str:
        return f"crdt.{self.group}.{replica_id}"

    @property
    def stream(self) -> str:
        return f"crdt.{self.group}.log"

    @property
    def founder(self) -> str:
        """The exchange founding claims are published to."""
        return f"crdt.{self.group}.founder"

    @property
    def founders(self) -> str:
        """The stream of founding claims (bound to :attr:`founder`): its first message
        names the group's founder."""
        return f"crdt.{self.group}.founders"

    @property
    def dead_letter_exchange(self) -> str:
        return f"crdt.{self.group}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"crdt.{self.group}.dead"

    @property
    def exchanges(self) -> tuple[str, ...]:
        """The group's fanout exchanges (all durable)."""
        return (self.exchange, self.dead_letter_exchange, self.founder)

    def stream_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": "stream", "x-max-age": self.stream_max_age}
        if self.stream_max_bytes:
            args["x-max-length-bytes"] = self.stream_max_bytes
        return args

    def shared(self) -> tuple[Queue, ...]:
        """The queues every replica of the group shares (with :attr:`exchanges`: what an
        administrator provisions for narrow broker users)."""
        # the dead-letter queue is quorum when the replicas' are: a classic queue's node
        # being down would fail this declaration, and with it every replica's reconnect
        return (Queue(self.stream, self.stream_arguments(), self.exchange),
                Queue(self.dead_letter_queue,
                      {"x-queue-type": "quorum"} if self.queue_type == "quorum" else None,
                      self.dead_letter_exchange),
                Queue(self.founders, {"x-queue-type": "stream"}, self.founder))

    def objects(self, replica_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """The names of the queues and of the exchanges the group has on the broker with
        these replicas: what deleting the group means."""
        return ([self.queue(r) for r in replica_ids] + [q.name for q in self.shared()],
                list(self.exchanges))

    def member(self, replica_id: str) -> Queue:
        """Replica ``replica_id``'s own queue, bound to the group's exchange."""
        return Queue(self.queue(replica_id), {"x-queue-type": self.queue_type}, self.exchange)


async def declare(channel: AbstractChannel, topology: Topology) -> dict[str, AbstractExchange]:
    """Declare the group's exchanges and shared queues with their bindings (idempotent);
    returns the exchanges by name. Raises aiormq's ChannelAccessRefused for a broker user
    that may not declare them (provisioned by an administrator instead)."""
    exchanges = {name: await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT,
                                                      durable=True)
                 for name in topology.exchanges}
    for q in topology.shared():
        queue = await channel.declare_queue(q.name, durable=True, arguments=q.arguments)
        if q.bound_to is not None:
            await queue.bind(exchanges[q.bound_to])
    return exchanges


async def declare_member(channel: AbstractChannel, topology: Topology,
                         replica_id: str) -> AbstractQueue:
    """Declare replica ``replica_id``'s queue and bind it to the group's exchange."""
    q = topology.member(replica_id)
    queue = await channel.declare_queue(q.name, durable=True, arguments=q.arguments)
    await queue.bind(q.bound_to or topology.exchange)
    return queue
