"""A replica whose store lost its latest transactions (an older copy of the store put back,
or an OS crash or a power loss that undid what was not on the disk yet) while the group
kept the operations those transactions held: before it writes again, it reads them back
from the group's stream, so its next operation follows them instead of reusing their
sequence numbers (which every other replica would drop as duplicates: the group would
never converge). Over the real broker, with replicas that read the group's stream (from
the offset they logged last) and with replicas that have a queue of their own (from a
little before their last commit of their own messages)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.amqp.recovery import PAST_END_S
from crdt_ops.transport.amqp.stream_consumer import STREAM_OFFSET
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import COMMITTED_AT
from crdt_ops.transport.store import Store
from tests.broker import group_settings, node, until


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    for s in group_settings(amqp_url, tmp_path / "stores", heartbeat_s=0.3):
        yield Settings(**{**s.__dict__, "consume": "stream"})


def _files(s: Settings, rid: str) -> list[Path]:
    base = Path(s.store) / f"{rid}.sqlite"
    return [p for p in (base, Path(f"{base}-wal"), Path(f"{base}-shm")) if p.exists()]


def _copy(s: Settings, rid: str, to: Path) -> None:
    to.mkdir(parents=True, exist_ok=True)
    for p in _files(s, rid):
        shutil.copy2(p, to / p.name)


def _put_back(s: Settings, rid: str, saved: Path) -> None:
    for p in _files(s, rid):
        p.unlink()
    for p in saved.iterdir():
        shutil.copy2(p, Path(s.store) / p.name)


def _put(s: Settings, rid: str, key: str, value: bytes) -> None:
    """Set ``key`` in the store of replica ``rid`` (stopped)."""
    store = Store(Path(s.store) / f"{rid}.sqlite")
    try:
        store.put(key, value)
    finally:
        store.close()


async def _pair(s: Settings) -> tuple[AmqpNode, AmqpNode]:
    """Replicas a and b of ``s``'s group, started (a stopped again if b fails to start)."""
    a, b = node(s, "a"), node(s, "b")
    await a.start()
    try:
        await b.start()
    except BaseException:
        await a.stop()
        raise
    return a, b


async def _saved_after_first_write(s: Settings, a: AmqpNode, b: AmqpNode,
                                   to: Path) -> AmqpNode:
    """a writes once (b has it), stops, and its store is copied to ``to``; returns a
    started again."""
    await _add(a, 1)
    await until(lambda: b.replica.counter("n").value == 1, 10, "b to have a's first write")
    await a.stop()
    _copy(s, "a", to)
    a = node(s, "a")
    await a.start()
    return a


async def _add(n: AmqpNode, by: int) -> None:
    async with n.write() as r:
        r.counter("n").increment(by)


@pytest.mark.asyncio
@pytest.mark.parametrize("consume", ["stream", "queue"])
async def test_a_replica_restored_from_an_older_store_reads_its_own_later_writes_back_first(
        settings: Settings, tmp_path: Path, consume: str) -> None:
    settings = Settings(**{**settings.__dict__, "consume": consume})
    a, b = await _pair(settings)
    try:
        a = await _saved_after_first_write(settings, a, b, tmp_path / "saved")
        await _add(a, 10)  # the store saved lacks this write, which the group has
        await until(lambda: b.replica.counter("n").value == 11, 10, "b to have a's second")
        lost_seq = a.replica.own_seq
        await a.stop()
        _put_back(settings, "a", tmp_path / "saved")
        a = node(settings, "a")
        await a.start()
        # it read its lost write back before start() returned: the next one follows it
        assert a.replica.own_seq == lost_seq
        await _add(a, 100)
        assert a.replica.own_seq == lost_seq + 1
        await until(lambda: a.replica.counter("n").value == b.replica.counter("n").value == 111,
                    10, "both replicas to hold all three writes")
    finally:
        for n in (a, b):
            await n.stop()


@pytest.mark.asyncio
async def test_a_logged_offset_past_the_streams_end_is_read_from_the_start(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """The stream was declared anew (a new broker, say) since the replica logged its
    offset: the read from there would wait for ever for a marker that lies before it. It
    learns so from the offset the stream took its marker at (at once; it waited
    PAST_END_S for silence before, which a group whose replicas write never gave), says
    why, and reads the stream from its start."""
    caplog.set_level(logging.WARNING, logger="crdt_ops.transport.amqp.node")
    a, b = await _pair(settings)
    try:
        await _add(b, 5)
        await until(lambda: a.replica.counter("n").value == 5, 10, "a to have b's write")
        await a.stop()
        _put(settings, "a", STREAM_OFFSET, b"1000000")  # far past the stream's end
        a = node(settings, "a")
        t0 = time.monotonic()
        await asyncio.wait_for(a.start(), PAST_END_S + 15)
        assert time.monotonic() - t0 < PAST_END_S
        assert any("past the end of the stream" in r.getMessage() for r in caplog.records)
        await _add(b, 5)
        await until(lambda: a.replica.counter("n").value == b.replica.counter("n").value == 10,
                    10, "both replicas to hold both writes")
    finally:
        for n in (a, b):
            await n.stop()


@pytest.mark.asyncio
async def test_a_queue_reader_whose_lost_writes_claimed_an_older_delivery_reads_it_back_first(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A replica with a queue of its own reads back only what was published from a little
    before its last commit of its own. A lost write of its own may follow a delivery
    published earlier than that (it sat in the queue meanwhile): read back alone, the write
    would wait for it, and the replica's next operation would reuse its sequence number.
    Its own messages told the group it had that delivery, so it reads the whole stream
    before it writes. The store put back says its last commit came after the delivery was
    published (as a heartbeat committed while the delivery sat in the queue would)."""
    caplog.set_level(logging.WARNING, logger="crdt_ops.transport.amqp.node")
    monkeypatch.setattr("crdt_ops.transport.amqp.node.RESUME_MARGIN_S", 0.2)
    settings = Settings(**{**settings.__dict__, "consume": "queue"})
    a, b = await _pair(settings)
    try:
        a = await _saved_after_first_write(settings, a, b, tmp_path / "saved")
        await _add(b, 5)  # the store saved lacks b's write, delivered to a after it
        await until(lambda: a.replica.counter("n").value == 6, 10, "a to have b's write")
        # b's write is now older than what a reads back: RabbitMQ takes a stream's start
        # time in whole seconds and attaches at the chunk before it (heartbeats, every
        # 0.3 s, write chunks between), so the read may begin up to about 1.3 s early
        await asyncio.sleep(2.5)
        last_commit_ms = time.time_ns() // 1_000_000
        await _add(a, 10)  # follows b's write
        await until(lambda: b.replica.counter("n").value == 16, 10, "b to have a's second")
        lost_seq = a.replica.own_seq
        await a.stop()
        _put_back(settings, "a", tmp_path / "saved")
        _put(settings, "a", COMMITTED_AT, str(last_commit_ms).encode())
        a = node(settings, "a")
        await a.start()
        assert a.replica.own_seq == lost_seq
        assert a.replica.counter("n").value == 16
        assert any("lost operations it had told the group" in r.getMessage()
                   for r in caplog.records)
        await _add(a, 100)
        await until(lambda: a.replica.counter("n").value == b.replica.counter("n").value == 116,
                    10, "both replicas to hold every write")
    finally:
        for n in (a, b):
            await n.stop()


async def _a_writes(s: Settings, by: int, total: int) -> AmqpNode:
    """a and b started, a adds ``by`` (b then has ``total``), both stopped; returns a."""
    a, b = await _pair(s)
    try:
        await _add(a, by)
        await until(lambda: b.replica.counter("n").value == total, 10, "b to have a's write")
    finally:
        for n in (a, b):
            await n.stop()
    return a


@pytest.mark.asyncio
async def test_an_empty_store_under_an_id_whose_first_messages_are_gone_refuses_to_start(
        settings: Settings, tmp_path: Path) -> None:
    """The stream no longer holds a replica's first messages (its retention; here it was
    declared anew): started on an empty store under the same id, the replica found its
    later messages waiting for the first ones, and its next write took sequence number 1
    again, which every peer dropped as a duplicate (a review's reproduction). It refuses to
    start, saying what to do, before it writes anything."""
    import aio_pika

    from crdt_ops import OwnPastMissing

    stream = (await _a_writes(settings, 1, 1)).topology.stream
    conn = await aio_pika.connect(settings.amqp_url)
    async with conn:
        await (await conn.channel()).queue_delete(stream)  # what it held is gone
    # a's store has its first write; the new stream does not
    before = (await _a_writes(settings, 10, 11)).replica.own_seq
    again = node(Settings(**{**settings.__dict__, "store": str(tmp_path / "empty")}), "a")
    with pytest.raises(OwnPastMissing, match="Start a new replica in its place"):
        await asyncio.wait_for(again.start(), 30)
    await again.stop()
    assert before > 1 and again.replica.own_seq == 0 and again.replica.outgoing() == []
