"""Group commit: a lone writer never waits for a batch, concurrent writers share
commits. Over the real broker, with a batching delay long enough to see."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings
from tests.broker import delete_group, new_group
from tools.bench.amqp import KEY, seed_stream
from tools.bench.broker import delete_group_async

DELAY_MS = 3000.0


@pytest.fixture
def node(amqp_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AmqpNode]:
    """Replica a of a new group; ``request.param``: its ``disk_sync`` (default "first")."""
    group = new_group()
    yield AmqpNode(Settings(amqp_url=amqp_url, group=group, replica_id="a", heartbeat_s=30.0,
                            store=str(tmp_path / "a.sqlite"), batch_delay_ms=DELAY_MS,
                            disk_sync=getattr(request, "param", "first")))
    delete_group(amqp_url, group, ["a"])


@pytest.mark.asyncio
async def test_sequential_writes_commit_at_once_and_concurrent_ones_share_commits(
        node: AmqpNode) -> None:
    commits: list[int] = []
    node.durable.on_committed.append(commits.append)
    await node.start()
    try:
        async with node.write() as r:  # joined the group (founded it) and wrote once
            r.counter("n").increment(0)
        del commits[:]
        t0 = time.monotonic()
        for i in range(5):  # one writer, each write right after the last one's commit
            async with node.write() as r:
                r.counter("n").increment(i + 1)
        sequential_s = time.monotonic() - t0
        # with a batching delay each of writes 2..5 would wait DELAY_MS for company
        assert sequential_s < DELAY_MS / 1000, sequential_s
        assert len(commits) == 5

        async def one(i: int) -> None:
            async with node.write() as r:
                r.register(f"r{i}").set(i)

        del commits[:]
        for _ in range(2):
            await asyncio.gather(*(one(i) for i in range(20)))
        assert 2 <= len(commits) <= 4, commits  # 40 writers, a commit per round or two
        assert node.replica.counter("n").value == 15
    finally:
        await node.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("node", ["first", "alongside"], indirect=True)
async def test_a_lone_write_commits_on_its_own_turn_of_the_loop(node: AmqpNode) -> None:
    """No other callback runs between a lone write and its commit (each one there would
    delay the write's publication; the writer then waits for the disk sync, while the
    loop runs); a second write in the same turn goes through the flusher, so a writer
    that never awaits anything else still lets the loop run."""
    await node.start()
    try:
        loop = asyncio.get_running_loop()

        async def write() -> None:
            async with node.write() as r:
                r.counter("n").increment(1)

        await write()
        await asyncio.sleep(0)  # a new turn of the loop
        unsent: list[int] = []
        loop.call_soon(lambda: unsent.append(node.replica.unsent))
        await write()
        await asyncio.sleep(0)  # ("first": the write did not let the loop turn)
        assert unsent == [0]  # committed before the callback queued ahead of it ran
        first, second = loop.create_task(write()), loop.create_task(write())  # one turn
        loop.call_soon(lambda: unsent.append(node.replica.unsent))  # runs after both
        await asyncio.gather(first, second)
        assert unsent == [0, 1]  # the second waited for the flusher
        assert node.replica.unsent == 0 and node.replica.counter("n").value == 4
    finally:
        await node.stop()


@pytest.mark.asyncio
async def test_a_replica_that_only_writes_takes_snapshots(tmp_path: Path) -> None:
    """Its own operations count toward --snapshot-every like delivered ones: a restart
    replays the log since the last snapshot, not every write it ever made (web wrote
    150,000 operations for 50,000 records and replayed all of them at each start)."""
    from crdt_ops.transport.durable import DurableReplica

    settings = Settings(group="g", replica_id="w", store=str(tmp_path / "w.sqlite"),
                        membership="open", snapshot_every=50)
    durable = DurableReplica.open(settings)
    try:
        for i in range(120):
            async with durable.write() as r:
                r.register(f"k{i}").set(i)
        assert durable.store.get("snapshot") is not None
        assert durable.store.log_size() < 50
    finally:
        durable.store.close()
    again = DurableReplica.open(settings)
    try:
        assert again.replica.get("k119") == 119 and dict(again.replica.clock) == {"w": 120}
    finally:
        again.store.close()


@pytest.mark.asyncio
async def test_a_stream_of_small_messages_is_replayed_in_batches(amqp_url: str,
                                                                 tmp_path: Path) -> None:
    """A joining replica reads the stream one message at a time at the broker's pace; what
    arrives within recovery.STREAM_LINGER_S shares one transaction (one disk sync), so a
    replay of 1-operation messages does not cost a sync per message or two."""
    group, ops = new_group(), 3000
    try:
        # one operation per message, by a writer that admitted "fresh"
        await seed_stream(amqp_url, Settings(group=group), ops, 1)
        node = AmqpNode(Settings(amqp_url=amqp_url, group=group, replica_id="fresh",
                                 heartbeat_s=30.0, store=str(tmp_path / "fresh.sqlite")))
        appends = 0
        append = node.durable.store.append

        def counted(received: Any, produced: Any, sync: bool = True, meta: Any = None) -> int:
            nonlocal appends
            appends += 1
            return append(received, produced, sync, meta)

        node.durable.store.append = counted  # type: ignore[method-assign]
        await node.start()
        try:
            assert node.replica.counter(KEY).value == ops
        finally:
            await node.stop()
        # 3,000 messages in at most 300 transactions (about 3 messages each without the wait)
        assert appends <= ops // 10, appends
    finally:
        await delete_group_async(amqp_url, group, ["fresh"], lambda _: None)


@pytest.mark.asyncio
async def test_a_delivery_is_applied_at_once_and_logged_with_what_comes_within_the_linger(
        amqp_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery is applied as it arrives (its change is visible at once), and logged
    and acknowledged up to LINGER_S later, with what arrived meanwhile: deliveries that come
    close together share transactions; one that comes alone is logged alone."""
    from crdt_ops.transport.amqp import inbound
    from tests.broker import started, until

    monkeypatch.setattr(inbound, "LINGER_S", 1.5)
    group = new_group()
    s = Settings(amqp_url=amqp_url, group=group, heartbeat_s=30.0, store=str(tmp_path))
    try:
        async with started(s, "a", "b") as (a, b):
            logged: list[tuple[float, int]] = []  # b's transactions holding deliveries
            append = b.durable.store.append

            def counted(received: Any, produced: Any, sync: bool = True,
                        meta: Any = None) -> int:
                received = list(received)
                if received:
                    logged.append((time.monotonic(), len(received)))
                return append(received, produced, sync, meta)

            b.durable.store.append = counted  # type: ignore[method-assign]
            await asyncio.sleep(2.0)  # quiet: whatever lingered is logged
            logged.clear()
            t0 = time.monotonic()
            async with a.write() as r:
                r.register("x").set(1)
            await until(lambda: b.replica.get("x") == 1, 5, "the delivery applied at b")
            assert time.monotonic() - t0 < 1.0 and not logged  # applied, not logged yet
            await until(lambda: logged, 5, "b to log the lone delivery")
            assert logged[0][0] - t0 >= 1.0 and logged[0][1] == 1  # after the linger, alone
            logged.clear()
            for i in range(100):  # one message every few ms: each in its own message
                await _set(a, i)
                await asyncio.sleep(0.003)
            await until(lambda: b.replica.get("y99") == 99, 20, "the burst at b")
            await asyncio.sleep(2.0)  # the last lingering batch
            # (under load a's publisher may have joined the burst into a few messages, even
            # one: codec.coalesce; then few deliveries came, and few transactions hold them)
            total = sum(n for _, n in logged)
            assert total >= 1 and len(logged) <= max(2, total // 10), logged
    finally:
        await delete_group_async(amqp_url, group, ["a", "b"], lambda _: None)


async def _set(node: AmqpNode, i: int) -> None:
    async with node.write() as r:
        r.register(f"y{i}").set(i)
