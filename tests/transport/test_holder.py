"""One process at a time runs a replica (crdt_ops/transport/amqp/holder.py): a second
one started with the same replica id waits, saying why, until the first stops; over the
real broker."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings
from tests.broker import group_settings, rabbitmqctl, until


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    yield from group_settings(amqp_url, tmp_path, heartbeat_s=0.3, replicas=("a", "k"))


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


@pytest.mark.asyncio
async def test_a_killed_process_leaves_no_wait(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL: the OS closes its connection, the broker drops its holder queue at once,
    and the replica started again from the same store is up within seconds (not after
    the broker's heartbeat timeout, 60 s)."""
    store = tmp_path / "killed.sqlite"
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "replica", "--amqp-url", settings.amqp_url,
         "--group", settings.group, "--replica-id", "k", "--store", str(store),
         "--heartbeat-s", "0.3", "--state-file", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await until(state.exists, 30, "the replica process to be up")
    finally:
        proc.kill()
        proc.wait()
    again = AmqpNode(Settings(**{**settings.__dict__, "replica_id": "k",
                                 "store": str(store)}))
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(again.start(), 20)
        assert time.monotonic() - t0 < 10
    finally:
        await again.stop()


@pytest.mark.asyncio
async def test_a_broker_user_that_may_not_declare_it_runs_unguarded_and_says_so(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="crdt_ops.transport.amqp.holder")
    g = re.escape(f"crdt.{settings.group}")
    user, password = f"noholder-{settings.group}", "pw"
    rabbitmqctl("add_user", user, password)
    try:  # everything a replica "a" declares, but not its holder queue
        rabbitmqctl("set_permissions", "-p", "/", user,
                    f"^{g}(\\.(log|dlx|dead|founder|founders|routed|a))?$", ".*", ".*")
        url = settings.amqp_url.replace("guest:guest@", f"{user}:{password}@")
        n = AmqpNode(Settings(**{**settings.__dict__, "amqp_url": url, "replica_id": "a",
                                 "store": f"{settings.store}/a.sqlite"}))
        try:
            await asyncio.wait_for(n.start(), 20)
            async with n.write() as r:
                r.counter("n").increment(1)
        finally:
            await n.stop()
        assert any("may not declare" in r.getMessage() for r in caplog.records)
    finally:
        rabbitmqctl("delete_user", user)
