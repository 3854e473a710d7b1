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
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

#: Seconds to wait for a probe to come back before publishing another.
PROBE_WAIT_S = 1.0


async def stream_takes_writes(conn: AbstractConnection, stream: str,
                              probe: Callable[[str], aio_pika.Message],
                              via: str | None = None, wait_s: float = PROBE_WAIT_S) -> int:
    """Publish ``probe(message_id)`` into the stream named ``stream`` (through the fanout
    exchange ``via`` bound to it, which a replica's broker user may write to; None: the
    default exchange, routed by the stream's name; a fresh message id each time) until
    one of them is read back from the stream, by a consumer from ``x-stream-offset: next``
    (RabbitMQ "Streams") that subscribed just before it was published; a new channel, a
    new consumer and a new probe every ``wait_s`` seconds (a consumer that subscribed
    while the stream was starting may never be served: rabbitmq/rabbitmq-server#4133).
    Returns how many probes were published (1: the stream took the first). A probe stays
    in the stream (and, through ``via``, reaches every queue bound to it): make it a
    message every reader takes harmlessly (a replica's heartbeat). Raises what aio-pika
    raises when the connection or a channel fails (the caller tries again once
    reconnected); waits for as long as the stream keeps dropping them."""
    tries = 0
    while True:
        tries += 1
        if await _probe_once(conn, stream, probe, via, wait_s):
            return tries


async def _probe_once(conn: AbstractConnection, stream: str,
                      probe: Callable[[str], aio_pika.Message], via: str | None,
                      wait_s: float) -> bool:
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

        await queue.consume(take, arguments={"x-stream-offset": "next"})
        if via is None:
            await channel.default_exchange.publish(probe(message_id), routing_key=stream,
                                                   timeout=30)
        else:
            exchange = await channel.get_exchange(via, ensure=False)
            await exchange.publish(probe(message_id), routing_key="", timeout=30)
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
