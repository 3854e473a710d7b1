"""A node used out of its life: before ``start()`` or after ``stop()``, a clear error that
says what to do, and nothing written or sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt_ops.transport.config import Settings
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from tests.broker import group_settings, node


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    yield from group_settings(amqp_url, tmp_path, heartbeat_s=0.5, replicas=("a",))


@pytest.mark.asyncio
async def test_a_stopped_amqp_node_refuses_to_start_or_write_again(settings: Settings) -> None:
    """Its store is closed at stop: a start would retry for ever against it, a write fail
    with a store error. Both say instead that a new node is needed."""
    a = node(settings, "a")
    await a.start()
    async with a.write() as r:
        r.counter("n").increment()
    await a.stop()
    with pytest.raises(RuntimeError, match="was stopped and its store closed: make a new node"):
        await a.start()
    with pytest.raises(RuntimeError, match="was stopped"):
        a.write()
    again = node(settings, "a")  # what the message says works, and kept the write
    await again.start()
    try:
        assert again.replica.counter("n").value == 1
    finally:
        await again.stop()


@pytest.mark.asyncio
async def test_a_stop_waits_for_the_broker_to_confirm_what_was_just_written(
        settings: Settings) -> None:
    """A stop cancelled the publisher at once: what was written just before stayed
    unconfirmed in the store. A sole principal's process stopped so was deposed at its
    next start if another ran meanwhile, though the group had its operations. A stop now
    waits (at most ``STOP_DRAIN_S``, while connected) for the confirms."""
    from crdt_ops.transport.store import Store

    a = node(settings, "a")
    await a.start()
    for i in range(20):
        async with a.write() as r:
            r.counter("n").increment(i + 1)
    await a.stop()
    store = Store(Path(a.settings.store))
    try:
        assert store.unconfirmed_operations() == 0
    finally:
        store.close()


@pytest.mark.asyncio
async def test_a_stop_goes_on_past_a_task_that_swallows_its_cancellation(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A stop awaited its cancelled tasks without a bound: one that swallowed its
    cancellation (``asyncio.wait_for`` can, on Python 3.11) held the stop for good."""
    import contextlib
    import logging
    import time

    from crdt_ops.transport.amqp import node as node_module

    monkeypatch.setattr(node_module, "STOP_WAIT_S", 0.3)
    a = node(settings, "a")
    await a.start()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # swallowed
                await asyncio.sleep(0.05)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)  # (in its sleep: a task cancelled before it began just ends)
    a._tasks.append(task)
    t0 = time.monotonic()
    with caplog.at_level(logging.ERROR):
        await a.stop()
    took = time.monotonic() - t0
    assert took < 5, took
    assert "its task stubborn did not end within" in caplog.text, (took, caplog.records)
    release.set()
    await asyncio.wait({task}, timeout=15)
    assert task.done()


@pytest.mark.asyncio
async def test_the_last_member_leaves_at_once(settings: Settings) -> None:
    """A retiring replica waits until every other member has its operations: the last one
    has nobody to wait for (it waited the whole bound, 30 s, and said its operations were
    not everywhere)."""
    import time

    a = node(settings, "a")
    await a.start()
    async with a.write() as r:
        r.counter("n").increment()
    t0 = time.monotonic()
    await a.leave()
    assert time.monotonic() - t0 < 10


@pytest.mark.asyncio
async def test_an_amqp_node_stopped_before_it_started_says_so(settings: Settings) -> None:
    a = node(settings, "a")
    await a.stop()
    with pytest.raises(RuntimeError, match="was stopped"):
        await a.start()


@pytest.mark.asyncio
async def test_a_memory_node_off_its_bus_refuses_to_write() -> None:
    """Before start() and after stop() the bus would drop what it sends, and a peer would
    wait for ever for what came after it: the write is refused, nothing applied."""
    bus = MemoryBus()
    a, b = MemoryNode(bus, "a"), MemoryNode(bus, "b")
    await b.start()
    with pytest.raises(RuntimeError, match=r"await node\.start\(\) before writing"):
        async with a.write() as r:
            r.counter("n").increment()
    assert a.replica.state() == {}
    await a.start()
    async with a.write() as r:
        r.counter("n").increment()
    await a.stop()
    with pytest.raises(RuntimeError, match="not on its bus"):
        await a.flush()


@pytest.mark.asyncio
async def test_a_memory_node_is_an_async_context_manager_as_an_amqp_node_is() -> None:
    bus = MemoryBus()
    async with MemoryNode(bus, "a") as a, MemoryNode(bus, "b") as b:
        async with a.write() as r:
            r.counter("n").increment()
        for _ in range(3):  # the bus delivers on later turns of the loop
            await asyncio.sleep(0)
        assert b.replica.counter("n").value == 1
    assert bus.nodes == []



def test_a_node_s_steps_are_named_apart_in_its_log_lines() -> None:
    """Both the publisher's and the inbound's step were logged as "run"."""
    from crdt_ops.transport.amqp.inbound import Inbound
    from crdt_ops.transport.amqp.node import AmqpNode, _step_name
    from crdt_ops.transport.amqp.publisher import Publisher

    assert _step_name(Publisher.run.__get__(object.__new__(Publisher))) == "publisher"
    assert _step_name(Inbound.run.__get__(object.__new__(Inbound))) == "inbound"
    assert _step_name(AmqpNode._heartbeat.__get__(object.__new__(AmqpNode))) == "heartbeat"
