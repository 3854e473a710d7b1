"""The CPU a bare aio-pika consumer spends per message: the floor under what a replica
spends per delivery, measured on the machine and in the run it is compared with.

A consumer process declares a durable classic queue of its own (as a replica's member
queue is), consumes it with manual acknowledgements, one ``basic.ack`` per message and a
prefetch of 1,000 (crdt-ops' default), and does nothing else with a message. This process
publishes ``messages`` persistent messages of ``size`` bytes to it at ``rate`` per second
(publisher confirms). The consumer's CPU (``time.process_time()``: user + system, every
thread) from its first delivery to its last, divided by the deliveries after the first,
is the floor: what receiving and acknowledging one message costs with aio-pika at that rate,
waking the event loop for each one at low rates. A replica does at least this for each
delivery, and then decodes, applies, logs it (:mod:`crdt_ops.transport.amqp.inbound`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from dataclasses import dataclass
from multiprocessing.queues import Queue as MpQueue

import aio_pika

#: Seconds the consumer may take to come up, and the publishing to end, before the
#: measurement is given up.
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Floor:
    """A measured floor: ``ms_per_message`` of CPU at ``rate`` messages a second."""

    ms_per_message: float
    rate: float
    messages: int
    size: int


async def _consume(url: str, queue: str, messages: int, out: MpQueue[object]) -> None:
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=1000)
        q = await channel.declare_queue(queue, durable=True)
        got, first = 0, 0.0
        done = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal got, first
            await message.ack()
            got += 1
            if got == 1:
                first = time.process_time()
            if got == messages:
                done.set()

        tag = await q.consume(on_message)
        out.put("ready")
        await asyncio.wait_for(done.wait(), TIMEOUT_S)
        out.put((time.process_time() - first) / (messages - 1))
        await q.cancel(tag)
        await q.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()


def _consumer(url: str, queue: str, messages: int, out: MpQueue[object]) -> None:
    try:
        asyncio.run(_consume(url, queue, messages, out))
    except BaseException as e:  # reported to the parent, which raises it
        out.put(e if isinstance(e, Exception) else RuntimeError(repr(e)))


async def _publish(url: str, queue: str, messages: int, rate: float, size: int) -> None:
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        body = b"x" * size
        t0 = time.monotonic()
        for i in range(messages):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue)
    finally:
        await conn.close()


def consumer_floor(url: str, rate: float, messages: int = 200, size: int = 240) -> Floor:
    """Measure the floor at ``rate`` messages a second (``messages`` of ``size`` bytes)
    over the broker at ``url``. Raises ValueError for a rate not above 0 or fewer than 2
    messages; RuntimeError (with the consumer's error) if the consumer fails or does not
    report within :data:`TIMEOUT_S`; aio-pika's errors if publishing fails."""
    if rate <= 0 or messages < 2:
        raise ValueError(f"the floor needs a rate above 0 and 2 messages or more, not "
                         f"{rate:g}/s and {messages}")
    ctx = multiprocessing.get_context("spawn")
    out: MpQueue[object] = ctx.Queue()
    queue = f"bench-floor-{uuid.uuid4().hex[:10]}"
    proc = ctx.Process(target=_consumer, args=(url, queue, messages, out),
                       name="bench-floor-consumer", daemon=True)
    proc.start()
    try:
        if (said := out.get(timeout=TIMEOUT_S)) != "ready":
            raise RuntimeError(f"the floor's consumer failed: {said!r}")
        asyncio.run(_publish(url, queue, messages, rate, size))
        result = out.get(timeout=TIMEOUT_S)
        if not isinstance(result, float):
            raise RuntimeError(f"the floor's consumer failed: {result!r}")
        return Floor(1000 * result, rate, messages, size)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
