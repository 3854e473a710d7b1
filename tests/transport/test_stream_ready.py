"""After a broker restart nothing a replica publishes is missing from the group's stream
(RabbitMQ confirms and drops what is routed to a stream that is still starting:
crdt_ops.transport.amqp.stream_ready). Over the real broker, and over a throwaway node
(tools.rabbitnode) restarted mid-run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aio_pika
import aiormq
import pytest

from crdt_ops import Replica
from crdt_ops.ops import Heartbeat
from crdt_ops.transport.amqp import AmqpNode, publish_retirement
from crdt_ops.transport.amqp.connection import FailoverConnection
from crdt_ops.transport.amqp.stream_ready import (
    StreamGate,
    StreamUnchecked,
    link_of,
    stream_takes_writes,
)
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology, declare
from crdt_ops.wire import codec
from tests.broker import new_group, until
from tools.harness import delete_group_async
from tools.rabbitnode import RabbitNode


def probe(message_id: str) -> aio_pika.Message:
    return aio_pika.Message(Replica("probe").clock_message(), message_id=message_id)


@pytest.mark.asyncio
async def test_a_stream_that_takes_writes_takes_the_first_probe_and_keeps_it(
        amqp_url: str) -> None:
    group = new_group()
    names = Topology.of(Settings(group=group))
    try:
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            await declare(await conn.channel(), names)
            assert await stream_takes_writes(conn, names.stream, probe) == 1
            channel = await conn.channel()
            await channel.set_qos(prefetch_count=10)
            got: asyncio.Queue[str | None] = asyncio.Queue()

            async def take(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
                await got.put(msg.message_id)

            await (await channel.get_queue(names.stream)).consume(
                take, arguments={"x-stream-offset": "first"})
            first = await asyncio.wait_for(got.get(), 10)
            assert first is not None and first.startswith("probe-")
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await stream_takes_writes(conn, f"crdt.{group}.no-such-stream", probe)
    finally:
        await delete_group_async(amqp_url, group, [])


@pytest.mark.asyncio
async def test_the_gate_hands_out_a_channel_only_on_the_connection_its_probe_came_back_on(
        rabbit: RabbitNode) -> None:
    """aio-pika's robust connection reopens its channels before it calls its reconnect
    callbacks, and a publish waiting for the connection goes out on the reopened channel
    then: before its owner could probe the restarted stream. The gate refuses a channel
    on any connection but the one the last probe came back on."""
    names = Topology.of(Settings(group=new_group()))
    conn = await FailoverConnection.open([rabbit.url], reconnect_interval=0.05)
    try:
        pub = await conn.channel(publisher_confirms=True)
        await declare(pub, names)
        gate = StreamGate(lambda: conn, names.stream, probe)
        with pytest.raises(StreamUnchecked):  # no probe yet
            await gate.channel(pub)
        assert await gate.ready() == 1
        before = await gate.channel(pub)
        assert await gate.ready() == 0  # probed on this connection already
        await asyncio.to_thread(rabbit.stop_app)
        await asyncio.to_thread(rabbit.start_app)
        await until(lambda: not pub.is_closed and link_of(conn) is not None
                    and link_of(conn) is not gate.probed_on, 60,
                    "the publishing channel reopened on a new connection")
        with pytest.raises(StreamUnchecked):
            await gate.channel(pub)
        assert await _ready_once_settled(gate) >= 1
        after = await gate.channel(pub)
        assert after is not before and after.connection is link_of(conn)
        await after.basic_publish(b"kept", routing_key=names.stream, timeout=30)
    finally:
        await conn.close()


async def _ready_once_settled(gate: StreamGate, within_s: float = 30.0) -> int:
    """``gate.ready()``, tried again while the restarted broker still refuses what aio-pika's
    robust connection restores on a new connection (RabbitMQ, booting, answers NOT_FOUND
    for a stream whose member is not started yet, and the connection goes again: a probe
    under way then fails, aiormq raising a bare Exception for its closed channel). The
    transport's callers try again the same way (a publishing round, the node's reconnect)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await gate.ready()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


class Publisher:
    """Publishes 1, 2, 3, ... to a group's exchange (confirms, persistent), one every
    2 ms; after each (re)connection (tried every 20 ms), first what was not confirmed, and
    ``guarded``: only once the stream took a probe."""

    def __init__(self, url: str, group: str, guarded: bool) -> None:
        self.url, self.names, self.guarded = url, Topology.of(Settings(group=group)), guarded
        self.confirmed: set[int] = set()
        self.unconfirmed: set[int] = set()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                conn = await aio_pika.connect(self.url, timeout=5)
            except Exception:
                await asyncio.sleep(0.02)
                continue
            try:
                async with conn:
                    if self.guarded:
                        await stream_takes_writes(conn, self.names.stream, probe)
                    channel = await conn.channel(publisher_confirms=True)
                    exchange = await channel.get_exchange(self.names.exchange)
                    while not self.stop.is_set():
                        if not self.unconfirmed:
                            n += 1
                            self.unconfirmed.add(n)
                        i = min(self.unconfirmed)
                        await exchange.publish(aio_pika.Message(
                            str(i).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                            routing_key="", timeout=10)
                        self.unconfirmed.discard(i)
                        self.confirmed.add(i)
                        await asyncio.sleep(0.002)
            except Exception:
                await asyncio.sleep(0.02)

    async def missing_from_stream(self) -> list[int]:
        """The confirmed numbers the group's stream does not hold."""
        conn = await aio_pika.connect(self.url)
        async with conn:
            channel = await conn.channel()
            await channel.set_qos(prefetch_count=1000)
            held: set[int] = set()

            async def take(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
                if not (msg.message_id or "").startswith("probe-"):
                    held.add(int(msg.body))
                await msg.ack()

            await (await channel.get_queue(self.names.stream)).consume(
                take, arguments={"x-stream-offset": "first"})
            # the stream holds what it holds: read until nothing more came for 1.5 s
            count, quiet_since = -1, time.monotonic()
            while time.monotonic() - quiet_since < 1.5:
                if len(held) != count:
                    count, quiet_since = len(held), time.monotonic()
                await asyncio.sleep(0.1)
            return sorted(self.confirmed - held)


@pytest.mark.asyncio
async def test_publishing_once_the_stream_took_a_probe_loses_nothing_across_restarts(
        rabbit: RabbitNode) -> None:
    """A publisher that waits for :func:`stream_takes_writes` after each reconnection
    finds every message the broker confirmed in the stream, after a ``stop_app`` /
    ``start_app`` and after a SIGKILL and a start. One that does not wait ran beside it;
    the stream dropped some of its confirmed messages in most runs of this test (it is
    said in the failure message, not asserted: RabbitMQ's behaviour, not ours)."""
    url = rabbit.url
    pubs = [Publisher(url, new_group(), guarded) for guarded in (True, False)]
    conn = await aio_pika.connect(url)
    async with conn:
        for pub in pubs:
            topology = Topology.of(Settings(group=pub.names.group))
            await declare(await conn.channel(), topology)
            channel = await conn.channel()
            q = await channel.declare_queue(topology.queue("a"), durable=True)
            await q.bind(topology.exchange)
    tasks = [asyncio.create_task(pub.run()) for pub in pubs]
    try:
        await restart_twice(rabbit, 1.0)
        await asyncio.sleep(1.0)
    finally:
        for pub in pubs:
            pub.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    guarded, unguarded = [await pub.missing_from_stream() for pub in pubs]
    print(f"without the probe: {len(unguarded)} of {len(pubs[1].confirmed)} confirmed "
          f"messages missing from the stream; with it: {len(guarded)} of "
          f"{len(pubs[0].confirmed)}")
    assert len(pubs[0].confirmed) > 300 and not guarded, (
        f"confirmed and missing from the stream: {len(guarded)} of {len(pubs[0].confirmed)} "
        f"({guarded[:10]}...); "
        f"without the probe, {len(unguarded)} of {len(pubs[1].confirmed)}")


async def stream_ids(url: str, group: str) -> list[str]:
    """The message ids the group's stream holds, in order (read until none came for 1 s,
    30 s at most)."""
    return [i for i, _ in await stream_messages(url, group)]


async def stream_messages(url: str, group: str) -> list[tuple[str, bytes]]:
    """The message ids and bodies the group's stream holds, in order (read until none
    came for 1 s, 30 s at most)."""
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=1000)
        ids: list[tuple[str, bytes]] = []

        async def take(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            ids.append((msg.message_id or "", msg.body))
            await msg.ack()

        await (await channel.get_queue(Topology.of(Settings(group=group)).stream)).consume(
            take, arguments={"x-stream-offset": "first"})
        count, quiet_since, start = -1, time.monotonic(), time.monotonic()
        while time.monotonic() - quiet_since < 1.0 and time.monotonic() - start < 30:
            if len(ids) != count:
                count, quiet_since = len(ids), time.monotonic()
            await asyncio.sleep(0.1)
        return ids


async def restart_twice(rabbit: RabbitNode, before_s: float) -> None:
    """``before_s`` seconds, then ``stop_app``, 1 s, ``start_app``; again, with a SIGKILL
    and a start."""
    for down, up in ((rabbit.stop_app, rabbit.start_app), (rabbit.kill, rabbit.start)):
        await asyncio.sleep(before_s)
        await asyncio.to_thread(down)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(up)


def node_of(url: str, group: str, rid: str, store: Path) -> AmqpNode:
    return AmqpNode(Settings(amqp_url=url, group=group, replica_id=rid, store=str(store),
                             heartbeat_s=0.3, gap_timeout_s=1.0))


@pytest.mark.asyncio
async def test_what_is_published_as_the_broker_comes_back_is_in_the_stream(
        rabbit: RabbitNode, tmp_path: Path, fast_reconnects: None) -> None:
    """Replica a writes every 2 ms while the broker stops and starts again (``stop_app``
    and ``start_app``, then a SIGKILL and a start); then a replica that joins (it replays
    the stream) gets every one of a's operations, and the stream shows a probe before
    what a published on each connection. The replicas reconnect every 20 ms, not every
    second: with the probe awaited before each round but no gate on the publish itself,
    2 of 6 runs lost thousands of a's operations from the stream (a round's publish went
    out on a channel reopened before the reconnection was announced); 0 of 11 with it."""
    group, url = new_group(), rabbit.url
    a = node_of(url, group, "a", tmp_path / "a.sqlite")
    await a.start()
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            async with a.write() as r:
                r.counter("n").increment()
            await asyncio.sleep(0.002)

    task = asyncio.create_task(writer())
    joiner: AmqpNode | None = None
    try:
        await restart_twice(rabbit, 0.5)
        await asyncio.sleep(2.0)
        stop.set()
        await task
        written = time.monotonic()
        await until(lambda: a.confirmed_through() > written, 30,
                    "every write of a confirmed by the broker")
        joiner = node_of(url, group, "joiner", tmp_path / "joiner.sqlite")
        async with asyncio.timeout(60):  # admitted by a
            await joiner.start()
        want = a.replica.clock["a"]
        assert want > 300  # it wrote before, during and after the restart
        await until(lambda: joiner is not None and joiner.replica.clock.get("a", 0) >= want,
                    30, f"the joiner to get a's {want} operations from the stream")
        assert joiner.replica.counter("n").value == a.replica.counter("n").value
        # a probed the stream on each of its connections (two at least), the joiner on
        # its one, before they published there; read once both stopped (no more beats)
        await asyncio.gather(a.stop(), joiner.stop())
        ids = await stream_ids(url, group)
        assert sum(i.startswith("probe-") for i in ids) >= 3, ids[:20]
        assert ids[0].startswith("probe-"), ids[:5]
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(a.stop(), *([joiner.stop()] if joiner else []),
                             return_exceptions=True)


@pytest.mark.asyncio
async def test_a_retirement_published_as_the_broker_comes_back_is_in_the_stream(
        rabbit: RabbitNode) -> None:
    """``crdt-ops retire`` run the moment the broker is back (``start_app`` returned: it
    takes connections) waits for the stream to take a probe, finds the retiree's last
    operation, and its retirement is in the stream, for replicas that join later."""
    settings = Settings(amqp_url=rabbit.url, group=new_group())
    names = Topology.of(settings)
    conn = await aio_pika.connect(rabbit.url)
    async with conn:
        await declare(await conn.channel(), names)
    await asyncio.to_thread(rabbit.stop_app)
    await asyncio.to_thread(rabbit.start_app)
    async with asyncio.timeout(90):
        assert await publish_retirement(settings, "gone", force=True) == 0  # (never wrote)
    beats = [hb for _, body in await stream_messages(rabbit.url, settings.group)
             if isinstance(hb := codec.decode(body), Heartbeat)]
    assert any(hb.origin == "gone" and hb.retired for hb in beats), beats
