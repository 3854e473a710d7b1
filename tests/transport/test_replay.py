"""A store's log replayed into a replica whose settings changed since it was logged: what
the replica refuses now is left out (and read again from the group's stream), not a
refusal to start."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from crdt_ops.replica import Replica
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import DurableReplica


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", group="g", replica_id="b",
                    store=str(tmp_path / "b.sqlite"), membership="open", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kept_in, says", [
    ("log", "30 logged messages were refused as its log was replayed"),
    ("snapshot", "its snapshot held 30 operations waiting"),
])
def test_a_store_holding_more_waiting_than_a_lower_cap_allows_still_opens(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, kept_in: str, says: str) -> None:
    """50 operations of x waited (x 1 was late) and were kept, in the store's log or its
    snapshot; the replica was started again with ``--max-waiting-per-origin 20``: the
    replay raised WaitingCapReached (``Replica.from_snapshot``: BufferFull), and every
    start failed the same way until the setting went back."""
    x = Replica("x")
    sent = []
    for _ in range(51):
        x.counter("c").increment()
        sent += x.outgoing()
    durable = DurableReplica.open(_settings(tmp_path))
    for m in sent[1:]:
        assert durable.replica.receive(m)
        durable.log_delivered(durable.hold([m]))
    assert durable.replica.buffered == 50
    if kept_in == "snapshot":
        durable.snapshot()  # the 50 waiting ones in the snapshot, the log dropped
    asyncio.run(durable.close())
    with caplog.at_level(logging.WARNING):
        again = DurableReplica.open(_settings(tmp_path, max_waiting_per_origin=20))
    try:
        assert again.replica.buffered == 20  # x 2..21; x 22..51 left out
        assert says in caplog.text
        for m in sent:  # x 1, and the rest read again from the stream
            again.replica.receive(m)
        assert again.replica.clock == {"x": 51} and again.replica.buffered == 0
    finally:
        asyncio.run(again.close())


def test_a_write_sealed_by_a_delivery_is_in_the_outbox_when_its_block_returns(
        tmp_path: Path) -> None:
    """A delivery that writes a key a ``write()`` block wrote seals the block's operations
    while the block is open (:meth:`Replica._deliver`); the transport took "no unsent
    operation" for "committed already", and the block returned before its write was in
    the store: a crash then lost a write the writer had been told was durable."""
    other = Replica("x")
    other.register("k").set("theirs")
    (theirs,) = other.outgoing()

    async def run() -> None:
        durable = DurableReplica.open(_settings(tmp_path))
        try:
            async with durable.write() as r:
                r.register("k").set("mine")
                assert durable.replica.receive(theirs)  # (as the block awaits something)
                assert durable.replica.unsent == 1  # sealed, not yet handed out
            assert [m for _, m in durable.store.unconfirmed()], "not in the outbox"
            assert durable.replica.unsent == 0
        finally:
            await durable.close()
    asyncio.run(run())


def test_its_own_batch_left_out_of_the_replay_is_still_claimed(tmp_path: Path) -> None:
    """b wrote after x 1..51 (x 2..51 had waited for x 1), and started again with a cap
    of 20 waiting operations per origin: its own batch, which waits for x 22..51, found no
    room and was left out of the replay, and with it the claim that b had published b 1
    .. 30. b then wrote b 1 again, with other operations: every peer dropped it as a
    duplicate, and the group diverged. The claim now stands: b reads its past back from
    the group's history before it writes (``Replica.unmet_claims``)."""
    x = Replica("x")
    sent = []
    for _ in range(51):
        x.counter("c").increment()
        sent += x.outgoing()

    async def run() -> None:
        durable = DurableReplica.open(_settings(tmp_path))
        for m in sent[1:] + sent[:1]:
            durable.replica.receive(m)
            durable.log_delivered(durable.hold([m]))
        async with durable.write() as r:
            for _ in range(30):
                r.counter("mine").increment()
        await durable.close()
        again = DurableReplica.open(_settings(tmp_path, max_waiting_per_origin=20))
        try:
            assert again.replica.own_seq == 0
            assert again.replica.unmet_claims()["b"] == (1, 30)
        finally:
            await again.close()
    asyncio.run(run())
