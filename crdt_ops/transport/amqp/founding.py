"""Founding a group and retiring a replica, over the broker (the rules are in
:mod:`crdt_ops.membership`): the founding claim that makes one replica a group's first
member, and the retirement an operator publishes for a replica gone for good."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from crdt_ops.replica import Replica
from crdt_ops.subgroups import channels_of
from crdt_ops.transport.amqp.connection import connect_first
from crdt_ops.transport.amqp.deletion import exists
from crdt_ops.transport.amqp.recovery import channels, throwaway_id
from crdt_ops.transport.amqp.stream_ready import stream_takes_writes
from crdt_ops.transport.auth import message, signer_of
from crdt_ops.transport.config import Settings
from crdt_ops.transport.signing import Signer
from crdt_ops.transport.topology import Topology


async def claim_founding(conn: AbstractConnection, settings: Settings, replica_id: str,
                         signer: Signer | None) -> bool:
    """Publish ``replica_id``'s claim to found the group to the exchange
    ``crdt.G.founder``, then read the first claim of the stream ``crdt.G.founders``:
    True if it is this replica's. Every replica reads the same first claim (a stream
    keeps its order and its messages: reading takes nothing out), so one group has one
    founder however many claim at once."""
    names, me = Topology.of(settings), replica_id.encode()
    channel = await conn.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(names.founder)
        with contextlib.suppress(aio_pika.exceptions.DeliveryError):
            await exchange.publish(message(settings, me, signer), routing_key="", timeout=30)
        await channel.set_qos(prefetch_count=1)
        stream = await channel.get_queue(names.founders)
        first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def take(msg: AbstractIncomingMessage) -> None:
            if not first.done():
                first.set_result(msg.body)

        await stream.consume(take, no_ack=False, arguments={"x-stream-offset": "first"})
        async with asyncio.timeout(30):  # not wait_for: it can swallow a stop (gh-86296)
            return await first == me
    finally:
        # bounded (a stop signal cancelled us, and the process is waiting to end), but never
        # cut short: a close cancelled halfway was sent again later for a channel the broker
        # had closed, and RabbitMQ closes the whole connection for that ("channel_error:
        # expected 'channel.open'"), every group on a shared connection with it
        with contextlib.suppress(Exception):  # TimeoutError included
            async with asyncio.timeout(5):  # as above: wait_for could swallow a stop
                await asyncio.shield(channel.close())


class RetirementRefused(ValueError):
    """A retirement not published: its replica still runs, or the group's stream holds no
    message of it (a mistyped id?). No retirement was sent (the stream's probe, a heartbeat
    of a throwaway id every reader skips, may have been)."""


async def publish_retirement(settings: Settings, replica_id: str, force: bool = False) -> int:
    """Announce to ``settings.group`` that ``replica_id`` is gone for good, naming its
    last operation found in the stream (replicas count it until they delivered that
    one; with sub-groups, its last operation on each of its channels). Returns how many
    operations it issued (that sequence number, or the sum over its channels). The
    replicas that hold one sub-group of a group that has them learn of the retirement from
    the others' heartbeats, which relay it. Publishes nothing before the group's stream took
    a probe (:func:`~crdt_ops.transport.amqp.stream_ready.stream_takes_writes`: a broker
    that just restarted confirms and drops what reaches a stream still starting, and a
    replica joining later would never learn of the retirement).

    Raises :class:`RetirementRefused`, unless ``force``, while the replica still runs (a
    connection holds its holder queue: :mod:`~crdt_ops.transport.amqp.holder`; a retired
    replica may write no more, and stop it first, or let it leave: ``AmqpNode.leave()``),
    and when the stream holds no message of it (a retirement is for good: a mistyped id
    could never be used again, and the replica meant would still hold stability back)."""
    names = Topology.of(settings)
    conn = await connect_first(settings.amqp_urls)
    async with conn:
        if not force and await exists(conn, names.holder(replica_id), False) is not None:
            raise RetirementRefused(
                f"{replica_id} still runs (a connection holds its holder queue "
                f"{names.holder(replica_id)}): stop it first (or let it retire itself: "
                "AmqpNode.leave()); --force retires it all the same, and it writes no more")
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.exchange)
        nobody = Replica(throwaway_id("retire-"))  # a heartbeat every reader skips
        await stream_takes_writes(
            conn, names.stream,
            lambda mid: message(settings, nobody.clock_message(), message_id=mid),
            via=names.exchange, to_stream=names.stream_exchange)
        found = channels_of(await channels(conn, settings, exchange, "retire-"), replica_id)
        if not found and not force:
            raise RetirementRefused(
                f"group {settings.group}'s stream holds no message of {replica_id}: is the "
                "id right (its logs and the group's metrics name it)? A retirement is for "
                "good; --force retires it all the same")
        lasts = found or {replica_id: 0}
        await exchange.publish(
            message(settings, Replica.retirement(replica_id, lasts), signer_of(settings)),
            routing_key="")
        return sum(lasts.values())
