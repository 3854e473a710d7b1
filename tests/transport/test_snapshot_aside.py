"""A pumped replica's snapshot is encoded in a forked child (crdt_ops.transport.forking):
the event loop goes on while it is encoded, what is written meanwhile stays in the log
to be replayed onto it, and a restart restores everything. A real SQLite store and real
child processes; no broker (the durable replica is driven directly)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crdt_ops.transport import forking
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import DurableReplica

pytestmark = pytest.mark.skipif(not forking.AVAILABLE, reason="needs os.fork")


def _settings(tmp_path: Path) -> Settings:
    return Settings(group="g", replica_id="w", store=str(tmp_path / "w.sqlite"),
                    membership="open", snapshot_every=50)


def _write(durable: DurableReplica, first: int, n: int) -> None:
    for i in range(first, first + n):
        durable.replica.register(f"k{i}").set(i)
        durable.commit()  # counts its own operations toward the next snapshot


def _slow_in_child(seconds: float, then: Callable[[], bytes] = bytes) -> Callable[[], bytes]:
    """An encoder that sleeps ``seconds`` first when it runs in a forked child (a large
    replica takes a while there), then returns ``then()``; in this process, at once."""
    parent = os.getpid()

    def encode() -> bytes:
        if os.getpid() != parent:
            time.sleep(seconds)
        return then()

    return encode


def _pumped(tmp_path: Path, snapshot: Callable[[DurableReplica], Callable[[], bytes]]
            ) -> DurableReplica:
    """A new durable replica as a transport pumps it (snapshots are taken aside), whose
    snapshot encoder is ``snapshot(durable)`` (given the replica's own)."""
    durable = DurableReplica.open(_settings(tmp_path))
    durable.pumping = True
    durable.replica.snapshot = snapshot(durable)  # type: ignore[method-assign]
    return durable


def _restarted(tmp_path: Path) -> list[object]:
    """The values k0, k1, ... that the replica holds once restored from its store (its
    clock says how many it wrote)."""
    again = DurableReplica.open(_settings(tmp_path))
    try:
        return [again.replica.get(f"k{i}") for i in range(again.replica.clock.get("w", 0))]
    finally:
        again.store.close()


@pytest.mark.asyncio
async def test_the_loop_goes_on_while_a_child_encodes_and_nothing_is_lost(
        tmp_path: Path) -> None:
    durable = _pumped(tmp_path, lambda d: _slow_in_child(0.5, d.replica.snapshot))
    try:
        _write(durable, 0, 50)  # the 50th starts a snapshot aside
        aside = durable._aside
        assert aside is not None
        await asyncio.sleep(0.05)  # the task committed, and forked the child
        # the loop is free: these writes run while the child encodes
        t0 = time.monotonic()
        _write(durable, 50, 20)
        await asyncio.sleep(0.1)
        assert not aside.done() and time.monotonic() - t0 < 0.5
        await aside
        assert durable.store.get("snapshot") is not None
        # the snapshot holds k0..k49; the 20 written meanwhile are still in the log
        assert durable.store.log_size() == 20
    finally:
        durable.store.close()
    assert _restarted(tmp_path) == list(range(70))


@pytest.mark.asyncio
async def test_a_child_that_fails_leaves_the_old_snapshot_and_log(tmp_path: Path) -> None:
    def broken() -> bytes:
        raise MemoryError("the child ran out of memory")

    durable = _pumped(tmp_path, lambda _: broken)
    try:
        _write(durable, 0, 50)
        assert durable._aside is not None
        await durable._aside
        assert durable.store.get("snapshot") is None and durable.store.log_size() == 50
    finally:
        durable.store.close()
    assert _restarted(tmp_path) == list(range(50))


@pytest.mark.asyncio
async def test_closing_kills_a_child_still_encoding(tmp_path: Path) -> None:
    durable = _pumped(tmp_path, lambda _: _slow_in_child(60))
    _write(durable, 0, 50)
    aside = durable._aside
    assert aside is not None
    await asyncio.sleep(0.2)  # the child is running
    t0 = time.monotonic()
    await durable.close()
    assert aside.done() and time.monotonic() - t0 < 10


@pytest.mark.asyncio
async def test_a_child_over_its_time_limit_is_killed() -> None:
    child = forking.fork_child(_slow_in_child(60))
    t0 = time.monotonic()
    with pytest.raises(forking.ChildFailed, match="killed by signal 9"):
        await child.result(timeout_s=0.3)
    assert time.monotonic() - t0 < 10
    with pytest.raises(ChildProcessError):  # reaped: no zombie left behind
        os.waitpid(child.pid, os.WNOHANG)
