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
watches the group for a moment: a message from a replica, or a consumer on a member queue,
means a replica still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from crdt_ops.errors import InvalidMessage
from crdt_ops.replica import Replica
from crdt_ops.transport.amqp.recovery import read_stream
from crdt_ops.transport.auth import message
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology
from crdt_ops.wire import codec


@dataclass
class Survey:
    """What group ``group`` has on the broker: ``queues`` and ``exchanges`` that exist
    (names), the replica ids its stream names (``members``), and signs that a replica
    still runs: ``consumers`` (member queue -> its consumers) and ``heard`` (replica ids
    whose messages arrived while :func:`survey` watched)."""

    group: str
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    consumers: dict[str, int] = field(default_factory=dict)
    heard: list[str] = field(default_factory=list)

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
        """Whether a replica of the group seems to run (a consumer on a member queue, or a
        message that arrived while it was watched)."""
        return bool(self.consumers or self.heard)


async def _exists(conn: AbstractConnection, name: str, exchange: bool) -> int | None:
    """None if queue (or exchange) ``name`` does not exist; else its consumers (0 for an
    exchange). A passive declaration of what does not exist closes its channel: one
    channel each."""
    channel = await conn.channel()
    try:
        if exchange:
            await channel.declare_exchange(name, passive=True)
            return 0
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.consumer_count or 0)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


#: Prefixes of the throwaway replica ids of operator commands, whose one heartbeat (a
#: marker to read the stream up to) is no member's: ``delete-group``'s and ``retire``'s
#: (:func:`~crdt_ops.transport.amqp.recovery.last_operation`). A member named so is found
#: only when given (``--replica``).
THROWAWAY = ("delete-", "retire-")


def _origin(msg: AbstractIncomingMessage) -> str | None:
    """The replica that sent ``msg`` (an operation batch or a heartbeat), or None (none,
    or an operator command's throwaway id)."""
    try:
        body = codec.decode(msg.body)
    except InvalidMessage:
        return None
    origin = getattr(body, "origin", None)
    if not isinstance(origin, str) or not origin or origin.startswith(THROWAWAY):
        return None
    return origin


async def _read_members(conn: AbstractConnection, settings: Settings, watch_s: float,
                        me: str) -> tuple[set[str], set[str]]:
    """The replica ids the group's stream names, from its start to a marker published now
    by ``me``; then those whose messages arrive within ``watch_s`` seconds after it."""
    channel = await conn.channel(publisher_confirms=True)
    members: set[str] = set()
    heard: set[str] = set()
    try:
        exchange = await channel.get_exchange(Topology.of(settings).exchange)
        marker = message(settings, Replica(me).clock_message(),
                         message_id=f"survey-{uuid.uuid4().hex}")
        async for batch in read_stream(conn, settings, exchange, marker):
            members.update(o for o in map(_origin, batch) if o is not None)
            await batch[-1].ack(multiple=True)
        if watch_s > 0:
            heard = await _watch(conn, settings, watch_s)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return members, heard


async def _watch(conn: AbstractConnection, settings: Settings, watch_s: float) -> set[str]:
    """The replica ids whose messages reach the group's stream within ``watch_s`` s."""
    channel = await conn.channel()
    heard: set[str] = set()
    try:
        await channel.set_qos(prefetch_count=settings.prefetch)
        stream = await channel.get_queue(Topology.of(settings).stream)

        async def take(msg: AbstractIncomingMessage) -> None:
            origin = _origin(msg)
            if origin is not None:
                heard.add(origin)
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
    names = Topology.of(settings)
    found = Survey(settings.group)
    found.exchanges = [x for x in names.exchanges if await _exists(conn, x, True) is not None]
    ids = set(replica_ids)
    me = f"{THROWAWAY[0]}{uuid.uuid4().hex[:8]}"
    if names.exchange in found.exchanges and await _exists(conn, names.stream, False) is not None:
        say(f"reading {names.stream}" + (f", then watching the group {watch_s:g}s for "
                                            "replicas still running" if watch_s > 0 else ""))
        members, heard = await _read_members(conn, settings, watch_s, me)
        found.members, found.heard = sorted(members), sorted(heard)
        ids |= members
    queues, _ = names.objects(sorted(ids))
    for q in queues:
        consumers = await _exists(conn, q, False)
        if consumers is None:
            continue
        found.queues.append(q)
        if consumers and q not in (names.stream, names.founders):  # (stream counts linger)
            found.consumers[q] = consumers
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
