"""Publishing while the disk syncs (``--disk-sync alongside``, crdt_ops/transport/durable.py):
a pumped replica commits its writes without waiting for the disk, publishes them, and
syncs on a thread meanwhile; its writers (``write()``, ``flush()``) and the
``on_committed`` hooks are answered once the sync returned. With the default
(``first``) nothing is published before it is on the disk. Over the real broker, with the
sync slowed or failing on purpose (the store's ``sync`` wrapped in the replica under
test)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings
from crdt_ops.transport.store import StoreUnavailable
from tests.broker import group_settings, started, until

SLOW_S = 0.5


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    for s in group_settings(amqp_url, tmp_path / "stores", heartbeat_s=0.3):
        yield dataclasses.replace(s, disk_sync="alongside")


def _held(n: AmqpNode) -> tuple[threading.Event, list[int]]:
    """Hold ``n``'s disk syncs until the event returned is set; the list counts them."""
    go = threading.Event()
    calls: list[int] = []
    real: Callable[[], None] = n.store.sync

    def slow() -> None:
        calls.append(1)
        go.wait(10)
        real()

    n.store.sync = slow  # type: ignore[method-assign]
    return go, calls


async def _add(n: AmqpNode, by: int) -> None:
    async with n.write() as r:
        r.counter("n").increment(by)


@pytest.mark.asyncio
async def test_a_peer_applies_a_write_while_its_writer_waits_for_the_disk(
        settings: Settings) -> None:
    async with started(settings, "a", "b") as (a, b):
        committed: list[int] = []
        a.on_committed.append(committed.append)
        go, calls = _held(a)
        write = asyncio.create_task(_add(a, 5))
        await until(lambda: b.replica.counter("n").value == 5, 10, "b to apply a's write")
        # published before it was on a's disk: its writer and the hooks wait for the disk
        assert calls and not write.done()
        own = a.replica.own_seq
        assert own not in committed
        go.set()
        await asyncio.wait_for(write, 10)
        assert committed[-1] >= own
        # once the sync is back, a write pays no wait of its own
        await asyncio.wait_for(_add(a, 1), 5)
        await until(lambda: b.replica.counter("n").value == 6, 10, "b to apply the next")


@pytest.mark.asyncio
async def test_writes_made_while_a_sync_runs_share_the_next_one(settings: Settings) -> None:
    async with started(settings, "a", "b") as (a, b):
        go, calls = _held(a)
        first = asyncio.create_task(_add(a, 1))
        await until(lambda: len(calls) == 1, 5, "the first write's sync to start")
        later = [asyncio.create_task(_add(a, 1)) for _ in range(20)]
        await until(lambda: b.replica.counter("n").value == 21, 10, "b to apply all 21")
        assert not first.done() and not any(t.done() for t in later)
        go.set()
        await asyncio.wait_for(asyncio.gather(first, *later), 10)
        assert len(calls) <= 3  # one for the first, one (or two) for the other twenty


@pytest.mark.asyncio
async def test_a_failed_sync_tells_the_writer_its_write_may_have_been_published(
        settings: Settings) -> None:
    """The transaction was committed, and published, but the OS refused the sync: the
    write's outcome is unknown. Its writer gets StoreUnavailable saying so; the store counts
    as failed, and resumes once it takes writes (memory restored from it)."""
    async with started(settings, "a", "b") as (a, b):
        real = a.store.sync
        failures = [1]

        def failing() -> None:
            if failures:
                failures.pop()
                raise StoreUnavailable(f"store {a.store.path}: [Errno 5] Input/output error")
            real()

        a.store.sync = failing  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable, match="may have been published"):
            await _add(a, 7)
        await until(lambda: a.store_failure is None, 20, "a's store to resume")
        await until(lambda: b.replica.counter("n").value == 7, 10, "b to have the write")
        # the commit was in the store: memory, restored from it, holds it too
        assert a.replica.counter("n").value == 7
        await _add(a, 1)
        await until(lambda: a.replica.counter("n").value == b.replica.counter("n").value == 8,
                    10, "both to hold both writes")
        assert dict(a.replica.clock) == dict(b.replica.clock)


@pytest.mark.asyncio
async def test_by_default_a_write_is_on_the_disk_before_it_is_published(
        settings: Settings) -> None:
    async with started(dataclasses.replace(settings, disk_sync="first"), "a", "b") as (a, b):
        go, calls = _held(a)
        committed: list[int] = []
        a.on_committed.append(committed.append)
        await asyncio.wait_for(_add(a, 3), 5)  # SQLite's own sync: none held
        assert committed and not calls
        await until(lambda: b.replica.counter("n").value == 3, 10, "b to apply a's write")
        go.set()
