"""A delivery read from aiormq (crdt_ops/transport/amqp/delivery.py) says what aio-pika's
message says of the same delivery, and its ack and nack act on the broker; over the real
broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.abc import DeliveredMessage

from crdt_ops.transport.amqp.delivery import Delivery


@pytest_asyncio.fixture
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    conn = await aio_pika.connect(amqp_url)
    try:
        yield await conn.channel()
    finally:
        await conn.close()


async def _consume(channel: AbstractChannel, queue: str, **arguments: object
                   ) -> asyncio.Queue[Delivery]:
    got: asyncio.Queue[Delivery] = asyncio.Queue()

    async def take(delivered: DeliveredMessage) -> None:
        got.put_nowait(Delivery(delivered))

    underlay = await channel.get_underlay_channel()
    await underlay.basic_consume(queue, take, no_ack=False, arguments=arguments)
    return got


@pytest.mark.asyncio
async def test_a_delivery_reads_what_aio_pikas_message_reads(channel: AbstractChannel) -> None:
    name = f"crdt-test-delivery-{uuid.uuid4().hex[:8]}"
    await channel.set_qos(prefetch_count=10)
    stream = await channel.declare_queue(name, durable=True,
                                         arguments={"x-queue-type": "stream"})
    try:
        sent = aio_pika.Message(b"\x00body\xff", headers={"x-crdt-sig": "c2ln", "n": 7},
                                message_id="crdt-ops:a:3", app_id="crdt-ops", user_id="guest",
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(sent, routing_key=name)
        bare = aio_pika.Message(b"plain")  # no headers
        await channel.default_exchange.publish(bare, routing_key=name)
        ours = await _consume(channel, name, **{"x-stream-offset": "first"})
        theirs: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await stream.consume(theirs.put, no_ack=False, arguments={"x-stream-offset": "first"})
        for _ in range(2):
            mine = await asyncio.wait_for(ours.get(), 10)
            pika = await asyncio.wait_for(theirs.get(), 10)
            assert (mine.body, dict(mine.headers), mine.message_id, mine.user_id,
                    mine.app_id) == (pika.body, dict(pika.headers), pika.message_id,
                                     pika.user_id, pika.app_id)
            assert isinstance(mine.headers["x-stream-offset"], int)
            await mine.ack()
            await pika.ack()
        assert mine.body == b"plain" and set(mine.headers) == {"x-stream-offset"}
    finally:
        await channel.queue_delete(name)


@pytest.mark.asyncio
async def test_ack_returns_credit_and_nack_has_a_message_delivered_again(
        channel: AbstractChannel) -> None:
    name = f"crdt-test-delivery-{uuid.uuid4().hex[:8]}"
    await channel.set_qos(prefetch_count=1)
    await channel.declare_queue(name, auto_delete=False)
    try:
        for body in (b"1", b"2", b"3"):
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=name)
        got = await _consume(channel, name)
        first = await asyncio.wait_for(got.get(), 10)
        assert first.body == b"1"
        await asyncio.sleep(0.3)
        assert got.empty()  # prefetch 1: nothing more until it is answered
        await first.nack(requeue=True)
        again = await asyncio.wait_for(got.get(), 10)
        assert again.body == b"1" and again.delivery_tag > first.delivery_tag
        await again.ack()
        second = await asyncio.wait_for(got.get(), 10)
        assert second.body == b"2"
        await second.ack(multiple=True)
        third = await asyncio.wait_for(got.get(), 10)
        assert third.body == b"3"
        await third.ack()
        await asyncio.sleep(0.3)
        assert got.empty()
        declared = await channel.declare_queue(name, passive=True)
        assert declared.declaration_result.message_count == 0  # every one acked
    finally:
        await channel.queue_delete(name)
