"""A group's topology on RabbitMQ, declared once as data.

For group G (the names are a contract operators rely on): the fanout exchange
``crdt.G``; per replica R a durable queue ``crdt.G.R`` bound to it; the stream
``crdt.G.log`` bound to it (the replayable history: RabbitMQ "Streams"); dead letters
go to the fanout exchange ``crdt.G.dlx`` and its queue ``crdt.G.dead``; a message that a
member's queue refused (a length limit with ``reject-publish``) goes into the stream once
more through the fanout exchange ``crdt.G.tolog``, bound to the stream only (a replica's
broker user may write to it, not to the default exchange); founding claims
go to the fanout exchange ``crdt.G.founder`` and the stream ``crdt.G.founders`` bound to
it, whose first message names the group's founder (a stream is append-only and read
without taking messages out, so every reader sees the same first claim). While replica R
runs, its connection holds the exclusive queue ``crdt.G.R.held``, which the broker deletes
with that connection (:mod:`crdt_ops.transport.amqp.holder`: one process at a time runs
a replica).

A group with sub-groups (:mod:`crdt_ops.subgroups`; ``routed``) also has the topic
exchange ``crdt.G.routed``, which its replicas publish to, each message with the routing
key of its sub-group (:meth:`Topology.routing_key`: ``common``, or ``sub.<name>``); the
fanout exchange is bound to it with ``#``, so the stream and the queues of the replicas
that hold every sub-group get every message as before, and the queue of a replica that
holds one sub-group is bound to ``crdt.G.routed`` with that sub-group's key and the common
part's only: the broker leaves the other sub-groups' messages out of it (RabbitMQ "Topic
Exchange"; "Exchange to Exchange Bindings"). A plain heartbeat (a clock report) goes to
every member only now and then (:data:`~crdt_ops.transport.amqp.publisher.
HEARTBEAT_TO_ALL_EVERY`); the others go to the replicas that hold every sub-group
(``whole``), or, from a replica that holds one, to that sub-group's key (back to it, for
its echo).

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
    """A durable queue: ``name``, its ``arguments`` (None: none), the exchange it is bound
    to (None: not bound), and with which routing keys (None: aio-pika's default, the
    queue's name, as a fanout exchange's bindings have always been made); ``also``: more
    fanout exchanges it is bound to, added later than the rest (:func:`declare` declares
    them last)."""

    name: str
    arguments: dict[str, Any] | None
    bound_to: str | None
    keys: tuple[str | None, ...] = (None,)
    also: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Topology:
    """The RabbitMQ objects of one group. ``queue_type``: the replicas' queues'
    ``x-queue-type`` (classic or quorum); ``stream_max_age`` / ``stream_max_bytes``: the
    stream's retention (``x-max-age``; ``x-max-length-bytes``, 0: no bound); ``routed``:
    the group has sub-groups (its replicas publish to :attr:`routed_exchange`)."""

    group: str
    queue_type: str = "classic"
    stream_max_age: str = "7D"
    stream_max_bytes: int = 0
    routed: bool = False

    @classmethod
    def of(cls, settings: Settings, routed: bool = False) -> Topology:
        """The topology a replica with ``settings`` uses (``routed``: its group has
        sub-groups)."""
        return cls(settings.group, settings.queue_type, settings.stream_max_age,
                   settings.stream_max_bytes, routed)

    @property
    def exchange(self) -> str:
        """The group's fanout exchange (the stream and whole replicas' queues are bound to
        it)."""
        return f"crdt.{self.group}"

    @property
    def routed_exchange(self) -> str:
        """The topic exchange a group with sub-groups publishes to (bound to
        :attr:`exchange` with ``#``)."""
        return f"crdt.{self.group}.routed"

    @property
    def publish_to(self) -> str:
        """The exchange replicas publish their messages to."""
        return self.routed_exchange if self.routed else self.exchange

    @staticmethod
    def routing_key(subgroup: str) -> str:
        """The routing key of a message of ``subgroup`` (``""``: the common part)."""
        return f"sub.{subgroup}" if subgroup else "common"

    #: The routing key of what the replicas that hold every sub-group (and the stream)
    #: receive only: no replica holding one sub-group has its queue bound to it.
    WHOLE = "whole"

    def queue(self, replica_id: str) -> str:
        return f"crdt.{self.group}.{replica_id}"

    def holder(self, replica_id: str) -> str:
        """The holder queue of ``replica_id`` (or of a principal, for
        :class:`~crdt_ops.transport.amqp.holder.Holder`'s ``sole``): ``crdt.G.<id>.held``."""
        return f"{self.queue(replica_id)}.held"

    @property
    def stream(self) -> str:
        return f"crdt.{self.group}.log"

    @property
    def stream_exchange(self) -> str:
        """The fanout exchange bound to :attr:`stream` only: what a member's queue refused
        goes into the stream through it (``crdt.G.tolog``)."""
        return f"crdt.{self.group}.tolog"

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
        """The group's exchanges (all durable): the fanout ones, and with sub-groups the
        topic one last."""
        fanouts = (self.exchange, self.dead_letter_exchange, self.founder,
                   self.stream_exchange)
        return (*fanouts, self.routed_exchange) if self.routed else fanouts

    def exchange_type(self, name: str) -> str:
        """``topic`` for :attr:`routed_exchange`, ``fanout`` for the others."""
        return "topic" if self.routed and name == self.routed_exchange else "fanout"

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
        return (Queue(self.stream, self.stream_arguments(), self.exchange,
                      also=(self.stream_exchange,)),
                Queue(self.dead_letter_queue,
                      {"x-queue-type": "quorum"} if self.queue_type == "quorum" else None,
                      self.dead_letter_exchange),
                Queue(self.founders, {"x-queue-type": "stream"}, self.founder))

    def objects(self, replica_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """The names of the queues and of the exchanges the group has on the broker with
        these replicas: what deleting the group means (its topic exchange included, which
        it has if its replicas have sub-groups, even when this topology is not ``routed``)."""
        exchanges = list(self.exchanges)
        if self.routed_exchange not in exchanges:
            exchanges.append(self.routed_exchange)
        return ([self.queue(r) for r in replica_ids] + [q.name for q in self.shared()],
                exchanges)

    def member(self, replica_id: str, subgroup: str | None = None) -> Queue:
        """Replica ``replica_id``'s own queue, bound to the group's exchange; for a replica
        that holds one ``subgroup`` only, to :attr:`routed_exchange` with the keys of that
        sub-group and of the common part."""
        args = {"x-queue-type": self.queue_type}
        if subgroup is None or not self.routed:
            return Queue(self.queue(replica_id), args, self.exchange)
        return Queue(self.queue(replica_id), args, self.routed_exchange,
                     (self.routing_key(""), self.routing_key(subgroup)))

    def reaches_member(self, key: str, subgroup: str | None = None) -> bool:
        """Whether a message published to :attr:`publish_to` with routing key ``key``
        reaches the queue of a member holding ``subgroup`` (None: every sub-group), by
        the bindings :meth:`member` gives that queue: one bound to :attr:`exchange` gets
        everything (the routed exchange is bound to it with ``#``); one bound to
        :attr:`routed_exchange` gets only its keys."""
        q = self.member("", subgroup)
        return q.bound_to == self.exchange or key in q.keys


async def declare(channel: AbstractChannel, topology: Topology) -> dict[str, AbstractExchange]:
    """Declare the group's exchanges and shared queues with their bindings (idempotent);
    returns the exchanges by name. Raises aiormq's ChannelAccessRefused for a broker user
    that may not declare them (provisioned by an administrator instead)."""
    async def exchange(name: str) -> AbstractExchange:
        return await channel.declare_exchange(
            name, aio_pika.ExchangeType(topology.exchange_type(name)), durable=True)

    shared = topology.shared()
    # last: a broker user whose permissions were set before they existed may declare all
    # the rest, and is refused these (it goes on with what an administrator provisioned)
    later = [name for q in shared for name in q.also]
    exchanges = {name: await exchange(name) for name in topology.exchanges
                 if name not in later}
    if topology.routed:  # everything published reaches the fanout, hence the stream
        await exchanges[topology.exchange].bind(exchanges[topology.routed_exchange], "#")
    queues = {}
    for q in shared:
        queues[q.name] = await channel.declare_queue(q.name, durable=True,
                                                     arguments=q.arguments)
        if q.bound_to is not None:
            await queues[q.name].bind(exchanges[q.bound_to])
    for q in shared:
        for name in q.also:
            exchanges[name] = exchanges.get(name) or await exchange(name)
            await queues[q.name].bind(exchanges[name])
    return exchanges


async def declare_member(channel: AbstractChannel, topology: Topology, replica_id: str,
                         subgroup: str | None = None) -> AbstractQueue:
    """Declare replica ``replica_id``'s queue and bind it (:meth:`Topology.member`;
    ``subgroup``: the one sub-group the replica holds, None: all)."""
    q = topology.member(replica_id, subgroup)
    queue = await channel.declare_queue(q.name, durable=True, arguments=q.arguments)
    await bind_member(queue, q)
    if q.bound_to != topology.exchange:  # a queue of before the group had sub-groups
        await queue.unbind(topology.exchange)  # (RabbitMQ: no such binding is no error)
    return queue


async def bind_member(queue: AbstractQueue, q: Queue) -> None:
    """Bind ``queue`` as ``q`` says (idempotent)."""
    for key in q.keys:
        await queue.bind(q.bound_to or "", key)
