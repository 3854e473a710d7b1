"""``crdt-ops delete-group`` over the real broker, as a process: it finds a group's members
in its stream (a queue reader and a stream reader), refuses while one still runs or
without --yes (no terminal to ask on), and deletes everything the group has, and nothing
before it is told to."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aiormq
import pytest

from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology
from tests.broker import group_settings, node, rabbitmqctl


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    yield from group_settings(amqp_url, tmp_path, heartbeat_s=0.3, replicas=("q", "s"))


def delete_group(s: Settings, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", "delete-group", "--group",
                           s.group, "--amqp-url", s.amqp_url, *flags],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


async def existing(s: Settings) -> set[str]:
    names = Topology.of(s)
    queues, exchanges = names.objects(["q", "s"])
    found = set()
    conn = await aio_pika.connect(s.amqp_url)
    async with conn:
        for name in queues + exchanges:
            channel = await conn.channel()
            try:
                if name in exchanges:
                    await channel.declare_exchange(name, passive=True)
                else:
                    await channel.declare_queue(name, passive=True)
                found.add(name)
            except aiormq.exceptions.ChannelNotFoundEntity:
                pass
    return found


async def used_by(s: Settings) -> None:
    """Replica q (a queue of its own) and s (the stream) write, then stop."""
    q = node(Settings(**{**s.__dict__, "consume": "queue"}), "q")
    r = node(Settings(**{**s.__dict__, "consume": "stream"}), "s")
    for n in (q, r):
        await n.start()
    for n in (q, r):
        async with n.write() as w:
            w.counter("n").increment()
        await n.flush()
    await asyncio.gather(q.stop(), r.stop())


def test_a_stopped_group_is_deleted_once_told_to(settings: Settings) -> None:
    asyncio.run(used_by(settings))
    names = Topology.of(settings)
    everything = {names.queue("q"), names.stream, names.founders, names.dead_letter_queue,
                  *names.exchanges}
    assert asyncio.run(existing(settings)) == everything

    for bad in ("-1", "inf", "nan", "abc"):
        refused = delete_group(settings, "--watch-s", bad)
        assert refused.returncode == 2 and "--watch-s" in refused.stderr, refused
    asked = delete_group(settings, "--watch-s", "0.5")  # no terminal: it cannot ask
    assert asked.returncode == 1, asked
    assert "pass --yes" in asked.stderr and "nothing deleted" in asked.stderr
    assert asyncio.run(existing(settings)) == everything

    done = delete_group(settings, "--watch-s", "0.5", "--yes")
    assert done.returncode == 0, done
    assert "members q, s" in done.stdout, done.stdout
    assert f"  queue    {names.queue('q')}\n" in done.stdout
    assert f"  stream   {names.stream}\n" in done.stdout
    assert f"  exchange {names.exchange}\n" in done.stdout
    assert asyncio.run(existing(settings)) == set()

    again = delete_group(settings, "--watch-s", "0", "--yes")
    assert again.returncode == 0 and "nothing to delete" in again.stdout, again


@pytest.mark.asyncio
async def test_a_group_whose_replica_still_runs_is_not_deleted(settings: Settings) -> None:
    a = node(Settings(**{**settings.__dict__, "consume": "stream"}), "s")
    await a.start()
    try:
        refused = await asyncio.to_thread(delete_group, settings, "--watch-s", "1.5", "--yes")
        assert refused.returncode == 1, refused
        assert "still running: s " in refused.stderr and "nothing deleted" in refused.stderr, \
            refused
        assert Topology.of(settings).stream in await existing(settings)
    finally:
        await a.stop()


@pytest.mark.asyncio
async def test_a_running_replica_is_found_by_its_holder_queue_without_watching(
        settings: Settings) -> None:
    """``--watch-s 0`` watches nothing, and a stream reader has no queue whose consumers
    would show: the holder queue its connection holds still tells that it runs (it used to
    be deleted under it). It is named by its whole id, dots and all."""
    a = node(Settings(**{**settings.__dict__, "consume": "stream"}), "web.host-1")
    await a.start()
    try:
        refused = await asyncio.to_thread(delete_group, settings, "--watch-s", "0", "--yes")
        assert refused.returncode == 1, refused
        assert "still running: web.host-1 (" in refused.stderr, refused.stderr
        assert "nothing deleted" in refused.stderr
        assert Topology.of(settings).stream in await existing(settings)
    finally:
        await a.stop()
    done = await asyncio.to_thread(delete_group, settings, "--watch-s", "0", "--yes")
    assert done.returncode == 0, done  # stopped: its holder queue went with its connection


def test_a_deletion_the_broker_refuses_says_what_it_had_deleted(settings: Settings) -> None:
    """A broker user that may read and write but not configure: the first deletion is
    refused, and the command says so, and that it had deleted nothing."""
    asyncio.run(used_by(settings))
    user, password = f"nodelete-{settings.group}", "pw"
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, "^$", ".*", ".*")
        url = settings.amqp_url.replace("guest:guest@", f"{user}:{password}@")
        refused = delete_group(Settings(**{**settings.__dict__, "amqp_url": url}),
                               "--watch-s", "0", "--yes")
        assert refused.returncode == 1, refused
        assert "refused to delete" in refused.stderr and "after deleting 0" in refused.stderr, \
            refused.stderr
        assert Topology.of(settings).exchange in asyncio.run(existing(settings))
    finally:
        rabbitmqctl("delete_user", user)
