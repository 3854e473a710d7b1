"""Deleting a group from the broker: what ``crdt-ops delete-group`` does.

A group's objects on the broker (:meth:`Topology.objects
<crdt_ops.transport.topology.Topology.objects>`) are its exchanges, its stream, the stream
of founding claims, its dead-letter queue, and a queue for each member that reads through a
queue of its own (``consume="queue"``; a stream reader has none). Which members there are
is read from the group's stream: every replica publishes heartbeats or operations, so each
one's id is there, whatever it reads through.

Deleting a group deletes its history with it. A replica of it started again afterwards
declares the group anew, empty; its store still holds the old group's state and clock, so
it must start from a new store (or from ``--bootstrap``). :func:`survey` therefore also
looks for replicas still running: a member's holder queue (``crdt.G.<id>.held``, which a
running replica's connection holds exclusively: :mod:`~crdt_ops.transport.amqp.holder`),
a consumer on a member queue, or a message from a replica while it watches the group for a
moment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from crdt_ops.transport.amqp.recovery import THROWAWAY, origin_of, origins
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology


@dataclass
class Survey:
    """What group ``group`` has on the broker: ``queues`` and ``exchanges`` that exist
    (names), the replica ids its stream names (``members``), and signs that a replica
    still runs: ``held`` (replica ids whose holder queue a connection holds), ``consumers``
    (replica id -> the consumers of its member queue) and ``heard`` (replica ids whose
    messages arrived while :func:`survey` watched)."""

    group: str
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    consumers: dict[str, int] = field(default_factory=dict)
    heard: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)

    def kind(self, name: str) -> str:
        """What ``name``, one of :attr:`queues` or :attr:`exchanges`, is: ``"exchange"``,
        ``"stream"`` (the group's, or its founding claims') or ``"queue"``."""
        if name in self.exchanges:
            return "exchange"
        names = Topology(self.group)
        return "stream" if name in (names.stream, names.founders) else "queue"

    @property
    def empty(self) -> bool:
        """Whether the group has nothing on the broker."""
        return not self.queues and not self.exchanges

    @property
    def in_use(self) -> bool:
        """Whether a replica of the group seems to run (:attr:`running` is not empty)."""
        return bool(self.running)

    @property
    def running(self) -> list[str]:
        """The replica ids that seem to run: holding their holder queue, consuming their
        member queue, or heard while the group was watched."""
        return sorted(set(self.held) | set(self.consumers) | set(self.heard))


async def exists(conn: AbstractConnection, name: str, exchange: bool) -> int | None:
    """None if queue (or exchange) ``name`` does not exist; else its consumers (0 for an
    exchange, and for an exclusive queue another connection holds: the broker refuses even a
    passive declaration of it, ``RESOURCE_LOCKED``). A passive declaration of what does not
    exist closes its channel: one channel each."""
    channel = await conn.channel()
    try:
        if exchange:
            await channel.declare_exchange(name, passive=True)
            return 0
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.consumer_count or 0)
    except aiormq.exceptions.ChannelLockedResource:
        return 0
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


def _is_member(origin: str) -> bool:
    """Whether sender ``origin`` may be a member: not an operator command's
    :data:`~crdt_ops.transport.amqp.recovery.THROWAWAY` id (a member named so is found only
    when given, ``--replica``)."""
    return not origin.startswith(THROWAWAY)


def _member(body: bytes) -> str | None:
    """The member that sent message ``body`` (operations or a heartbeat), or None (none,
    or not a member: :func:`_is_member`)."""
    sent = origin_of(body)
    return sent[0] if sent is not None and _is_member(sent[0]) else None


async def _members(conn: AbstractConnection, settings: Settings) -> set[str]:
    """The replica ids the group's stream names, from its start to a marker published now."""
    channel = await conn.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(Topology.of(settings).exchange)
        return set(filter(_is_member, await origins(conn, settings, exchange, "delete-")))
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _watch(conn: AbstractConnection, settings: Settings, watch_s: float) -> set[str]:
    """The replica ids whose messages reach the group's stream within ``watch_s`` s."""
    channel = await conn.channel()
    heard: set[str] = set()
    try:
        await channel.set_qos(prefetch_count=settings.prefetch)
        stream = await channel.get_queue(Topology.of(settings).stream)

        async def take(msg: AbstractIncomingMessage) -> None:
            member = _member(msg.body)
            if member is not None:
                heard.add(member)
            await msg.ack()

        await stream.consume(take, arguments={"x-stream-offset": "next"})
        await asyncio.sleep(watch_s)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return heard


async def survey(conn: AbstractConnection, settings: Settings, replica_ids: Iterable[str] = (),
                 watch_s: float = 5.0, say: Callable[[str], None] = lambda line: None
                 ) -> Survey:
    """What ``settings.group`` has on the broker reached by ``conn``, with the queues of
    the members its stream names and of ``replica_ids``; watched for ``watch_s`` seconds
    (0: not watched) for messages of replicas still running. Reads the whole stream
    (progress on stderr; ``say`` is told before) and publishes one heartbeat of a
    throwaway replica id to it, which no replica keeps (its clock is empty)."""
    names = Topology.of(settings, routed=True)  # (a group's topic exchange, if it has one)
    found = Survey(settings.group)
    found.exchanges = [x for x in names.exchanges if await exists(conn, x, True) is not None]
    shared = [q.name for q in names.shared()]
    present = {q: await exists(conn, q, False) for q in shared}
    ids = set(replica_ids)
    if names.exchange in found.exchanges and present[names.stream] is not None:
        say(f"reading {names.stream}" + (f", then watching the group {watch_s:g}s for "
                                            "replicas still running" if watch_s > 0 else ""))
        members = await _members(conn, settings)
        found.members = sorted(members)
        found.heard = sorted(await _watch(conn, settings, watch_s)) if watch_s > 0 else []
        ids |= members
    for r in sorted(ids):  # the member queues, and the holder queues of those running
        q = names.queue(r)
        consumers = await exists(conn, q, False)
        if consumers is not None:
            found.queues.append(q)
        if consumers:  # (not the streams': their consumer counts outlive their channels)
            found.consumers[r] = consumers
        if await exists(conn, names.holder(r), False) is not None:  # held while it runs
            found.held.append(r)
    found.queues += [q for q in shared if present[q] is not None]
    return found


class DeletionRefused(Exception):
    """The broker refused to delete ``name`` (``cause``: its error) after ``deleted``
    were deleted."""

    def __init__(self, name: str, deleted: list[str], cause: BaseException) -> None:
        super().__init__(f"the broker refused to delete {name} ({cause}) after deleting "
                         f"{len(deleted)}: {', '.join(deleted) or 'none'}")
        self.name, self.deleted, self.cause = name, deleted, cause


async def delete(conn: AbstractConnection, found: Survey, strict: bool = True) -> list[str]:
    """Delete what ``found`` lists (queues first, then exchanges), each on a channel of its
    own; returns the names deleted. One already gone is passed over; any other refusal (a
    broker user without the configure permission) raises :class:`DeletionRefused`, naming
    what was deleted before it, or with ``strict`` False is passed over too (a test's
    cleanup)."""
    deleted: list[str] = []
    for name, is_exchange in [(q, False) for q in found.queues] + \
            [(x, True) for x in found.exchanges]:
        channel = await conn.channel()
        try:
            if is_exchange:
                await channel.exchange_delete(name)
            else:
                await channel.queue_delete(name)
            deleted.append(name)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            pass
        except Exception as e:
            if strict:
                raise DeletionRefused(name, deleted, e) from e
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
    return deleted
