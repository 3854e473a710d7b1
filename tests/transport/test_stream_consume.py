"""Replicas that read the group's stream instead of a queue of their own
(``consume="stream"``, crdt_ops/transport/amqp/stream_consumer.py): they converge with
replicas that have queues, have no queue on the broker, read on from the offset they
logged after a restart and after the broker restarts (a queue's consumer is made again
too: crdt_ops/transport/amqp/consumer.py), and a bad message is dead-lettered without
stopping them. Over the real broker, and a throwaway node (tools.rabbitnode)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest

from crdt_ops.replica import Replica
from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.amqp.inbound import stored_offset
from crdt_ops.transport.amqp.stream_consumer import STREAM_OFFSET, StreamConsumer, offset_mark
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import DurableReplica
from crdt_ops.transport.store import Store, StoreUnavailable
from crdt_ops.transport.topology import Topology
from tests.broker import dead_letters, group_settings, node, started, until
from tests.transport.test_stream_ready import restart_twice
from tools.harness import delete_group_async
from tools.rabbitnode import RabbitNode


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    """A new group whose replicas read its stream (``reading(s, rid, "queue")``: one
    with a queue of its own)."""
    for s in group_settings(amqp_url, tmp_path, heartbeat_s=0.3, replicas=("a", "b", "q")):
        yield Settings(**{**s.__dict__, "consume": "stream"})


def reading(s: Settings, rid: str, consume: str = "stream") -> AmqpNode:
    return node(Settings(**{**s.__dict__, "consume": consume}), rid)


async def has_queue(url: str, name: str) -> bool:
    conn = await aio_pika.connect(url)
    async with conn:
        try:
            await (await conn.channel()).declare_queue(name, passive=True)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False


async def count(n: AmqpNode, by: int, times: int) -> None:
    for _ in range(times):
        async with n.write() as r:
            r.counter("n").increment(by)


@pytest.mark.asyncio
async def test_stream_readers_and_queue_owners_converge_and_readers_have_no_queue(
        settings: Settings) -> None:
    a, b, q = reading(settings, "a"), reading(settings, "b"), reading(settings, "q", "queue")
    try:
        for n in (a, b, q):
            await n.start()
        await asyncio.gather(count(a, 1, 30), count(b, 100, 30), count(q, 10_000, 30))
        want = 30 * 10_101
        await until(lambda: all(n.replica.counter("n").value == want for n in (a, b, q)), 30,
                    "every write everywhere")
        names = Topology.of(settings)
        assert not await has_queue(settings.amqp_url, names.queue("a"))
        assert not await has_queue(settings.amqp_url, names.queue("b"))
        assert await has_queue(settings.amqp_url, names.queue("q"))
        await until(lambda: stored_offset(a.durable) is not None
                    and stored_offset(b.durable) is not None, 10, "the readers' offsets logged")
        # heard through the stream: logic's liveness rule works with it as with a queue
        assert a.heard_through() > 0 and b.heard_through() > 0
        assert all(v == "ok" for v in a.health().values()), a.health()
    finally:
        await asyncio.gather(*(n.stop() for n in (a, b, q)))


@pytest.mark.asyncio
async def test_a_restarted_reader_reads_on_from_the_offset_it_logged(
        settings: Settings) -> None:
    a, b = reading(settings, "a"), reading(settings, "b")
    await a.start()
    await b.start()
    try:
        await count(a, 1, 200)
        await until(lambda: b.replica.counter("n").value == 200, 20, "a's writes at b")
        # with their offset, whichever commit logged them (the batch's, b's heartbeat's)
        await until(lambda: not b.durable.unlogged, 10, "b's deliveries logged")
        await b.stop()
        await count(a, 1, 50)
        await a.flush()
        b = reading(settings, "b")
        offset = stored_offset(b.durable)
        assert offset is not None
        await b.start()
        await until(lambda: b.replica.counter("n").value == 250, 20, "what b missed")
        # read on from its offset: what it had logged (200 of a's operations in many
        # messages) did not come again
        assert b.replica.stats["duplicates"] <= 2, b.replica.stats
        await until(lambda: (stored_offset(b.durable) or 0) > offset, 10, "the offset moved")
    finally:
        await asyncio.gather(a.stop(), b.stop())


@pytest.mark.asyncio
async def test_a_bad_message_is_dead_lettered_and_the_reader_goes_on(settings: Settings) -> None:
    async with started(settings, "a", "b") as (a, b):
        conn = await aio_pika.connect(settings.amqp_url)
        async with conn:
            exchange = await (await conn.channel()).get_exchange(
                Topology.of(settings).exchange)
            await exchange.publish(aio_pika.Message(b"not a crdt-ops message"), routing_key="")
        await count(a, 1, 5)
        await until(lambda: b.replica.counter("n").value == 5, 20, "a's writes after it")
        await until(lambda: a.dead_lettered == 1 and b.dead_lettered == 1, 20,
                    "the bad message dead-lettered by each reader")
        letters = await asyncio.to_thread(dead_letters, settings.amqp_url, settings.group)
        assert [d.get("x-crdt-reason") for d in letters] == ["undecodable"] * 2, letters


@pytest.mark.asyncio
async def test_readers_lose_nothing_and_read_on_across_broker_restarts(
        rabbit: RabbitNode, tmp_path: Path, fast_reconnects: None) -> None:
    """Reader a writes every 2 ms while the broker stops and starts again (``stop_app``
    and ``start_app``, then a SIGKILL and a start); reader b and queue owner q get every
    one of a's operations, and b consumed again from its offset on each connection
    instead of from the stream's start. The replicas reconnect every 20 ms."""
    s = Settings(amqp_url=rabbit.url, group=f"sc-{uuid.uuid4().hex[:8]}", heartbeat_s=0.3,
                 gap_timeout_s=1.0, store=str(tmp_path))
    a, b, q = reading(s, "a"), reading(s, "b"), reading(s, "q", "queue")
    for n in (a, b, q):
        await n.start()
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            async with a.write() as r:
                r.counter("n").increment()
            await asyncio.sleep(0.002)

    task = asyncio.create_task(writer())
    try:
        await restart_twice(rabbit, 0.5)
        await asyncio.sleep(2.0)
        stop.set()
        await task
        written = time.monotonic()
        await until(lambda: a.confirmed_through() > written, 30,
                    "every write of a confirmed by the broker")
        want = a.replica.clock["a"]
        assert want > 300
        for n in (b, q):
            await until(lambda n=n: n.replica.clock.get("a", 0) >= want, 30,  # type: ignore[misc]
                        f"{n.replica_id} to get a's {want} operations")
        assert b.replica.counter("n").value == q.replica.counter("n").value \
            == a.replica.counter("n").value
        # b read on from its offset after its reconnections: what it had logged did not
        # come again (a re-read from the stream's start would bring back hundreds). It
        # consumed again on at least one later connection; not always on each: a
        # connection that dies again before its consumer goes out (a slow start_app in CI,
        # then the SIGKILL 0.5 s later) gets none, the next one does
        assert b._stream_in is not None and b._stream_in.consumes >= 2
        assert b.replica.stats["duplicates"] < want / 4, b.replica.stats
        # q's consumer of its queue, made through aiormq, was made again too
        assert q._consumer is not None and q._consumer.consumes >= 2
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*(n.stop() for n in (a, b, q)), return_exceptions=True)
        await delete_group_async(rabbit.url, s.group, ["q"])


def test_the_offset_is_stored_in_the_transaction_of_the_deliveries_it_covers(
        tmp_path: Path) -> None:
    """A transaction that fails stores neither the deliveries nor the offset: a replica
    never reads on past a message it did not log."""
    store = Store(tmp_path / "s.sqlite")
    try:
        store.append([b"one"], [], sync=False, meta={STREAM_OFFSET: b"7"})
        assert store.get(STREAM_OFFSET) == b"7" and store.log_size() == 1
        # the second delivery's row fails in SQLite, after the first one's went in
        store.db.execute("CREATE TEMP TRIGGER refuse BEFORE INSERT ON log WHEN NEW.data = "
                         "X'6661696c' BEGIN SELECT RAISE(ABORT, 'refused'); END")
        with pytest.raises(StoreUnavailable, match="refused"):
            store.append([b"two", b"fail"], [], sync=False, meta={STREAM_OFFSET: b"9"})
        assert store.get(STREAM_OFFSET) == b"7" and store.log_size() == 1
    finally:
        store.close()


def test_an_offset_is_logged_by_whichever_write_logs_its_deliveries(
        offline_durable: DurableReplica) -> None:
    """A heartbeat's or a reaction's commit that logs deliveries before their batch ends
    logs their offset too; a restore from the store drops the offsets held with what it
    dropped."""
    writer = Replica("w")
    writer.found()
    writer.admit("r")
    writer.counter("n").increment()
    one = writer.outgoing()
    writer.counter("n").increment()
    two = writer.outgoing()
    durable = offline_durable

    async def run() -> None:
        for m in one:
            durable.replica.receive(m)
        durable.hold(one, {STREAM_OFFSET: 7})
        durable.hold([], {STREAM_OFFSET: 5})  # a re-read's lower mark: the highest holds
        durable.replica.counter("mine").increment()  # a reaction writes: its commit first
        durable.commit()
        assert durable.store.get(STREAM_OFFSET) == b"7" and durable.mark(STREAM_OFFSET) == 7
        assert durable.unlogged == 0
        for m in two:
            durable.replica.receive(m)
        durable.hold(two, {STREAM_OFFSET: 9})
        durable.store_failed(StoreUnavailable("disk full (simulated)"))
        await durable.store_works()  # restored without `two`: its offset is not logged
        durable.commit()
        assert durable.store.get(STREAM_OFFSET) == b"7" and durable.mark(STREAM_OFFSET) == 7
        durable.forget_mark(STREAM_OFFSET)  # a stream declared anew: read from its start
        assert durable.store.get(STREAM_OFFSET) == b"" and durable.mark(STREAM_OFFSET) is None
        await durable.close()

    asyncio.run(run())


def test_a_mark_alone_waits_for_a_write_that_logs_something(
        offline_durable: DurableReplica) -> None:
    """Deliveries that brought nothing new (duplicates, the reader's own messages back,
    heartbeats) cost no transaction: their offset is logged by the next write that logs
    something, a delivery's or the replica's own."""
    durable = offline_durable
    writer = Replica("w")
    writer.found()
    writer.admit("r")
    founding = writer.outgoing()
    writer.counter("n").increment()
    new = writer.outgoing()

    async def run() -> None:
        for m in founding:
            durable.replica.receive(m)
        assert durable.log_delivered(durable.hold(founding, {STREAM_OFFSET: 2}))
        durable.replica.counter("mine").increment()
        durable.commit()  # a write of its own
        log_size = durable.store.log_size()
        assert durable.store.get(STREAM_OFFSET) == b"2"
        held = durable.hold([], {STREAM_OFFSET: 3})  # its own message read back
        assert durable.log_delivered(held)
        held = durable.hold([], {STREAM_OFFSET: 4})  # a heartbeat
        assert durable.log_delivered(held)
        assert durable.store.get(STREAM_OFFSET) == b"2" and durable.mark(STREAM_OFFSET) == 2
        assert durable.store.log_size() == log_size
        for m in new:
            assert durable.replica.receive(m)
        held = durable.hold(new, {STREAM_OFFSET: 5})  # something new: logged, with its mark
        assert durable.log_delivered(held)
        assert durable.store.get(STREAM_OFFSET) == b"5" and durable.mark(STREAM_OFFSET) == 5
        durable.hold([], {STREAM_OFFSET: 6})
        durable.replica.counter("mine").increment()  # the replica's own write logs it
        durable.commit()
        assert durable.store.get(STREAM_OFFSET) == b"6" and durable.mark(STREAM_OFFSET) == 6
        await durable.close()

    asyncio.run(run())


def test_the_offset_to_store_only_moves_forward() -> None:
    def delivered(offset: int | None) -> Any:
        headers = {} if offset is None else {"x-stream-offset": offset}
        return type("Delivered", (), {"headers": headers})()

    def never() -> int:
        raise AssertionError("a batch through a queue needs no stored offset")

    assert offset_mark([delivered(3), delivered(5)], lambda: None) == {STREAM_OFFSET: 5}
    assert offset_mark([delivered(3), delivered(5)], lambda: 4) == {STREAM_OFFSET: 5}
    assert offset_mark([delivered(1), delivered(2)], lambda: 4) is None  # a re-read
    assert offset_mark([delivered(None)], never) is None  # through a queue


def test_a_reader_says_what_the_stream_s_retention_dropped_before_it_read_it(
        caplog: pytest.LogCaptureFixture) -> None:
    reader = StreamConsumer("crdt.g.log", lambda m: None, lambda: 99, "b")
    reader.started_at = 100  # as consume() sets it: the offset after the one logged
    with caplog.at_level("ERROR"):
        reader.check(100)  # it reads on where it left off
        reader.check(None)  # a queue's delivery: no offset
        assert not caplog.records
        reader.check(130)  # the oldest message left is past where it was to read on
    (record,) = caplog.records
    assert "dropped 30 messages this replica never read" in record.getMessage()


@pytest.mark.asyncio
async def test_readers_read_a_stream_deleted_and_declared_again_from_its_start(
        settings: Settings) -> None:
    """An operator deletes the group's stream: the broker cancels the readers' consumers,
    they declare it again, and read the new stream from its first offset (their stored
    offset was in the old one: reading on from it would skip the new stream's first
    messages)."""
    async with started(settings, "a", "b") as (a, b):
        await count(a, 1, 100)
        await until(lambda: b.replica.counter("n").value == 100, 20, "a's writes at b")
        await until(lambda: (stored_offset(b.durable) or 0) > 50, 10, "b's offset logged")
        old = stored_offset(b.durable) or 0
        conn = await aio_pika.connect(settings.amqp_url)
        async with conn:
            await (await conn.channel()).queue_delete(Topology.of(settings).stream)
        await count(a, 1, 5)
        await count(b, 1000, 1)
        # at once, not at the gap watch's next re-read (gap_timeout_s: 10 s)
        await until(lambda: b.replica.counter("n").value == 1105
                    and a.replica.counter("n").value == 1105, 6, "the writes after it")
        assert (stored_offset(b.durable) or 0) < old  # an offset of the new stream
