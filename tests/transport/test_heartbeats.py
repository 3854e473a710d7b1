"""Heartbeats: sent only when a replica had nothing else to say, and never logged by others."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt_ops.transport.amqp.node import BEAT_AT_LEAST_EVERY
from crdt_ops.transport.config import Settings
from tests.broker import group_settings, started, until


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    yield from group_settings(amqp_url, tmp_path, heartbeat_s=0.3)


@pytest.mark.asyncio
async def test_a_replica_that_writes_sends_no_heartbeat_and_its_writes_still_settle(
        settings: Settings) -> None:
    async with started(settings, "a", "b") as (a, b):
        await until(lambda: a.heartbeats > 0 and b.heartbeats > 0, 10,
                    "both to beat while idle")
        quiet = a.heartbeats
        for _ in range(30):  # a write every 0.1 s for 3 s: 10 heartbeat ticks
            async with a.write() as r:
                r.counter("n").increment()
            await asyncio.sleep(0.1)
        # one every BEAT_AT_LEAST_EVERY ticks (its whole clock), give or take the tick
        # under way when the writes began and ended (every tick: 10)
        assert BEAT_AT_LEAST_EVERY == 5
        assert 1 <= a.heartbeats - quiet <= 3, (quiet, a.heartbeats)
        await until(lambda: b.replica.counter("n").value == 30, 10, "b to have a's writes")
        # b's heartbeats told a what b delivered: every write of a's is stable at a
        await until(lambda: a.replica.stable_lag() == 0, 10, "a's writes stable at a")
        idle = a.heartbeats
        await until(lambda: a.heartbeats >= idle + 2, 10, "a to beat again once idle")


@pytest.mark.asyncio
async def test_a_heartbeat_received_is_not_logged(settings: Settings) -> None:
    async with started(settings, "a", "b") as (a, b):
        async with a.write() as r:
            r.counter("n").increment()
        await until(lambda: b.replica.counter("n").value == 1, 10, "b to have a's write")
        await asyncio.sleep(0.5)  # what follows from the write (the echoes) settles
        size, mine, theirs = b.store.log_size(), b.heartbeats, a.heartbeats
        await until(lambda: a.heartbeats >= theirs + 5, 10, "a to beat five times")
        # b's log grew by its own heartbeats (logged with its outbox) and nothing else
        mine = b.heartbeats - mine
        assert b.store.log_size() - size in (mine, mine + 1), (b.store.log_size() - size, mine)
