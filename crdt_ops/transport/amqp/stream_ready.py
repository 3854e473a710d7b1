"""Whether the group's stream takes writes: checked after every (re)connection, before a
replica publishes anything.

RabbitMQ confirms a message routed to a stream that is still starting, and drops it there.
Measured on this project's machine (RabbitMQ 3.10.8, one node, a fanout exchange bound to a
classic queue and a stream; ``BENCHMARKS.md``, "The stream drops what is published while it
starts"): a publisher that reconnected every 20 ms and published every 2 ms through a
``stop_app`` / ``start_app`` and a SIGKILL and a start found 103-263 of its 666-837
confirmed messages missing from the stream in three runs; the
same publisher waiting for a probe first, none. A related open RabbitMQ issue:
"Streams: Loosing messages during fail-over" (rabbitmq/rabbitmq-server#9457).

A replica's queue then holds such a message, and the replicas that were up apply it; but a
replica that joins later, or re-reads the stream for a gap, never finds it, and waits for it
for good. So after a connection is made, nothing is published until a probe routed to the
stream was read back from it: from then on the stream's writer runs, and what is published
is kept.

That holds per connection: aio-pika's robust connection marks itself connected, then
reopens its channels, and only then calls its reconnect callbacks, so a publish that was
waiting for the connection can go out on a reopened channel before its owner heard of the
reconnection (seen in this project's test with reconnections every 20 ms: 2 of 5 runs lost
thousands of operations from the stream). :class:`StreamGate` closes that window: it
remembers the very connection on which a probe came back, and hands out a channel to
publish on only while that is the connection in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import aiormq.abc
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)

#: Seconds to wait for a probe to come back before publishing another.
PROBE_WAIT_S = 1.0
#: How RabbitMQ (3.10 to 3.13) words a 404 for a stream that exists but is not up yet, as
#: after a restart: "home node '...' of durable queue '...' in vhost '/' is down or
#: inaccessible". A probe that meets it tries again; any other 404 (no such stream) raises.
STARTING = "is down or inaccessible"


async def stream_takes_writes(conn: AbstractConnection, stream: str,
                              probe: Callable[[str], aio_pika.Message],
                              via: str | None = None, wait_s: float = PROBE_WAIT_S,
                              to_stream: str = "") -> int:
    """Publish ``probe(message_id)`` into the stream named ``stream`` (through the fanout
    exchange ``via`` bound to it, which a replica's broker user may write to; None: the
    default exchange, routed by the stream's name; a fresh message id each time) until
    one of them is read back from the stream, by a consumer from ``x-stream-offset: next``
    (RabbitMQ "Streams") that subscribed just before it was published; a new channel, a
    new consumer and a new probe every ``wait_s`` seconds (a consumer that subscribed
    while the stream was starting may never be served: rabbitmq/rabbitmq-server#4133).
    Returns how many probes were published (1: the stream took the first). A probe stays
    in the stream (and, through ``via``, reaches every queue bound to it): make it a
    message every reader takes harmlessly (a replica's heartbeat). ``to_stream``: the
    exchange into the stream alone that a probe ``via`` refused goes to
    (:func:`into_stream`). Raises what aio-pika
    raises when the connection or a channel fails (the caller tries again once
    reconnected), and ChannelNotFoundEntity if there is no such stream; waits for as long
    as the stream keeps dropping them, or is not up yet (:data:`STARTING`)."""
    tries = 0
    while True:
        tries += 1
        if await _probe_once(conn, stream, probe, via, wait_s, to_stream):
            return tries


async def into_stream(channel: AbstractChannel, via: AbstractExchange, stream: str,
                      msg: aio_pika.Message, to_stream: str = "") -> None:
    """Publish ``msg`` (a probe, a marker) through the group's fanout exchange ``via``, which
    routes it into the stream ``stream`` and the members' queues, and await the confirm.
    If the broker nacks it (a member queue at its length limit with ``x-overflow:
    reject-publish`` refused it; a replica's own, say, before it consumes its queue), it
    goes straight into the stream instead, on ``channel`` (with publisher confirms), as the
    publisher's refused messages do (:mod:`~crdt_ops.transport.amqp.publisher`): through
    ``to_stream``, the fanout exchange bound to the stream alone
    (:attr:`Topology.stream_exchange
    <crdt_ops.transport.topology.Topology.stream_exchange>`), or with "" the default
    exchange, routed by the stream's name (which a narrow broker user may not write to).
    Raises what aio-pika raises otherwise."""
    try:
        await via.publish(msg, routing_key="", timeout=30)
    except aio_pika.exceptions.DeliveryError:
        straight = (await channel.get_exchange(to_stream, ensure=False) if to_stream
                    else channel.default_exchange)
        await straight.publish(msg, routing_key=stream, timeout=30)


async def _probe_once(conn: AbstractConnection, stream: str,
                      probe: Callable[[str], aio_pika.Message], via: str | None,
                      wait_s: float, to_stream: str) -> bool:
    """One probe on a channel of its own: whether it came back within ``wait_s``."""
    channel = await conn.channel(publisher_confirms=True)
    try:
        await channel.set_qos(prefetch_count=100)  # a stream consumer needs a prefetch
        queue = await channel.get_queue(stream, ensure=False)
        message_id = f"probe-{uuid.uuid4().hex}"
        back = asyncio.Event()
        closing = False

        async def take(msg: AbstractIncomingMessage) -> None:
            if msg.message_id == message_id:
                back.set()
            # (a stream consumer must ack, or its prefetch runs out on a busy stream
            # before the probe comes) but never once the channel is being closed: a frame
            # on a channel the client closed makes RabbitMQ close the whole connection
            # ("expected 'channel.open'"), every group sharing it with it
            if not closing:
                await msg.ack()

        try:
            await queue.consume(take, arguments={"x-stream-offset": "next"})
        except aiormq.exceptions.ChannelNotFoundEntity as e:
            if STARTING not in str(e):
                raise  # no such stream
            await asyncio.sleep(wait_s)  # not recovered yet after the broker's restart
            return False
        if via is None:
            await channel.default_exchange.publish(probe(message_id), routing_key=stream,
                                                   timeout=30)
        else:
            exchange = await channel.get_exchange(via, ensure=False)
            await into_stream(channel, exchange, stream, probe(message_id), to_stream)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await back.wait()
        return back.is_set()
    finally:
        closing = True
        # bounded, never cut short (see founding.claim_founding's close)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await asyncio.shield(channel.close())


class StreamUnchecked(ConnectionError):
    """A publish was refused before it went out: the connection it would go out on is not
    the one on which the stream last took a probe (a reconnection came in between). Nothing
    was sent; publish again after :meth:`StreamGate.ready`."""


def link_of(conn: AbstractConnection) -> aiormq.abc.AbstractConnection | None:
    """The AMQP connection that ``conn`` (an aio-pika connection, robust or not) runs on
    now: a new object after each reconnection; None while it has none."""
    transport = getattr(conn, "transport", None)
    return None if transport is None else transport.connection


class StreamGate:
    """Publish only where the stream took a probe. :meth:`ready` probes the stream
    (:func:`stream_takes_writes`) unless it already took one on the connection in use now,
    one probe at a time for all callers; :meth:`channel` gives the channel to publish on,
    or raises :class:`StreamUnchecked` if a reconnection came after the last probe.

    ``conn`` returns the aio-pika connection (None before one is made); ``stream``,
    ``probe``, ``via`` and ``to_stream`` are :func:`stream_takes_writes`' arguments.
    ``hold``, if given, is awaited on each new connection before its probe: it returns once
    that connection may publish for this replica (its holder queue: :mod:`.holder`).
    :attr:`probed_on` is the AMQP connection on which the last probe came back (None: none
    yet, or :meth:`forget` was called)."""

    def __init__(self, conn: Callable[[], AbstractConnection | None], stream: str,
                 probe: Callable[[str], aio_pika.Message], via: str | None = None,
                 wait_s: float = PROBE_WAIT_S,
                 hold: Callable[[AbstractConnection], Awaitable[None]] | None = None,
                 to_stream: str = "") -> None:
        self.conn, self.stream, self.probe, self.via, self.wait_s = (
            conn, stream, probe, via, wait_s)
        self.to_stream = to_stream
        self.hold = hold
        self.probed_on: aiormq.abc.AbstractConnection | None = None
        self._probing = asyncio.Lock()

    def _current(self) -> tuple[AbstractConnection, aiormq.abc.AbstractConnection | None]:
        conn = self.conn()
        if conn is None:
            raise StreamUnchecked("not connected to the broker")
        return conn, link_of(conn)

    async def ready(self) -> int:
        """Return once the stream took a probe on the connection in use: at once if it did
        already, else after probing (returns the probes published: 0 if none was needed;
        more than 1: the stream dropped what was routed to it meanwhile). Raises what
        aio-pika raises if the connection fails meanwhile (try again once reconnected)."""
        conn, link = self._current()
        if link is not None and link is self.probed_on:
            return 0
        async with self._probing:
            probes = 0
            while True:
                conn, link = self._current()
                if link is not None and link is self.probed_on:
                    return probes
                await conn.ready()  # a robust connection: once reconnected
                link = link_of(conn)
                if self.hold is not None:
                    await self.hold(conn)
                probes += await self.probe_on(conn)
                if link is not None and link_of(conn) is link:
                    self.probed_on = link  # else a reconnection came meanwhile: again

    async def probe_on(self, conn: AbstractConnection) -> int:
        """Probe the stream on ``conn`` (:func:`stream_takes_writes` with this gate's
        arguments), outside the gate's lock, and return the probes published; publishing
        stays closed until :meth:`ready` (for what ``hold`` reads before it returns)."""
        return await stream_takes_writes(conn, self.stream, self.probe, self.via,
                                         self.wait_s, self.to_stream)

    def forget(self) -> None:
        """Hold and probe again before the next publish, on this connection too."""
        self.probed_on = None

    async def channel(self, channel: AbstractChannel) -> aiormq.abc.AbstractChannel:
        """The AMQP channel under ``channel`` to publish on now, with nothing awaited
        between this and the publish; raises :class:`StreamUnchecked` if it runs on another
        connection than the one on which the stream last took a probe, and aio-pika's
        ChannelInvalidStateError if ``channel`` is closed."""
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
        underlay = await channel.get_underlay_channel()
        if self.probed_on is None or underlay.connection is not self.probed_on:
            raise StreamUnchecked("reconnected since the stream took a probe; probing again "
                                  "before publishing")
        return underlay
