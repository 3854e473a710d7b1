"""One process at a time runs a replica (crdt_ops/transport/amqp/holder.py): a second
one started with the same replica id waits, saying why, until the first stops; over the
real broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings
from tests.broker import group_settings, until


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    yield from group_settings(amqp_url, tmp_path, heartbeat_s=0.3)


def _as(s: Settings, rid: str, store: str) -> AmqpNode:
    return AmqpNode(Settings(**{**s.__dict__, "replica_id": rid,
                                "store": f"{s.store}/{store}.sqlite"}))


@pytest.mark.asyncio
async def test_a_second_process_of_a_replica_waits_until_the_first_stops(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="crdt_ops.transport.amqp.holder")
    first, second = _as(settings, "a", "first"), _as(settings, "a", "second")
    await first.start()
    starting = asyncio.ensure_future(second.start())
    try:
        async with first.write() as r:
            r.counter("n").increment(1)
        await asyncio.sleep(1.5)
        assert not starting.done()  # it has not joined, read, or written anything
        assert second.replica.counter("n").value == 0
        assert any("runs in another process" in r.getMessage() for r in caplog.records)
        await first.stop()
        await asyncio.wait_for(starting, 15)  # the first is gone: it takes over
        await until(lambda: second.replica.counter("n").value == 1, 10,
                    "the second to read what the first wrote")
    finally:
        starting.cancel()
        await first.stop()
        await second.stop()


@pytest.mark.asyncio
async def test_a_replica_started_again_after_a_stop_does_not_wait(settings: Settings) -> None:
    for _ in range(3):
        n = _as(settings, "a", "a")
        await asyncio.wait_for(n.start(), 10)
        await n.stop()
