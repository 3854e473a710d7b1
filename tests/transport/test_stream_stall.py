"""A read of the group's stream whose marker never comes gives up instead of waiting for
good (crdt_ops.transport.amqp.recovery.read_stream, ``READ_STALL_S``). Over the real
broker: the marker is published to an exchange that is not bound to the stream, as a
marker lost to a consumer the broker does not serve would be."""

from __future__ import annotations

import time

import aio_pika
import pytest

from crdt_ops import Replica
from crdt_ops.transport.amqp import recovery
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology, declare
from tests.broker import new_group
from tools.harness import delete_group_async


@pytest.mark.asyncio
async def test_a_read_whose_marker_never_comes_gives_up_after_the_stall_time(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "READ_STALL_S", 1.0)
    group = new_group()
    settings = Settings(amqp_url=amqp_url, group=group)
    names = Topology.of(settings)
    conn = await aio_pika.connect(amqp_url)
    try:
        async with conn:
            channel = await conn.channel(publisher_confirms=True)
            exchanges = await declare(channel, names)
            stream_exchange = exchanges[names.exchange]
            for i in range(3):  # something to read before the marker
                await stream_exchange.publish(
                    aio_pika.Message(Replica(f"w{i}").clock_message()), routing_key="")
            # a fanout bound to nothing: the marker published there never reaches the stream
            nowhere = await channel.declare_exchange(f"crdt.{group}.nowhere",
                                                     aio_pika.ExchangeType.FANOUT,
                                                     auto_delete=True)
            marker = aio_pika.Message(Replica("reader").clock_message(), message_id="marker-1")
            read, started = 0, time.monotonic()
            try:
                with pytest.raises(recovery.StreamStalled, match="marker-1"):
                    async for batch in recovery.read_stream(conn, settings, nowhere, marker):
                        read += len(batch)
                        for m in batch:
                            await m.ack()
            finally:  # (auto_delete goes with a last binding: this one never had one)
                await (await conn.channel()).exchange_delete(nowhere.name)
            waited = time.monotonic() - started
            assert read == 3  # what the stream held was read before the read gave up
            assert 1.0 <= waited < 10, waited
    finally:
        await delete_group_async(amqp_url, group, [])
