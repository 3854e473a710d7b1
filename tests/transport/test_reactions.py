"""A delivery and the reaction it causes are logged in one transaction (one disk sync):
a subscriber that writes when a change arrives gets its operations into the store with
the delivery, before the delivery is acknowledged; a delivery alone is logged without a
disk sync (the next transaction with one makes it durable); and a delivery whose store failed
after it was applied is not logged (it comes again)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crdt_ops import Replica
from crdt_ops.events import ChangeEvent
from crdt_ops.transport.amqp import inbound
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import DurableReplica
from crdt_ops.transport.store import Store, StoreUnavailable
from tests.broker import group_settings, node, until


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    yield from group_settings(amqp_url, tmp_path, heartbeat_s=30.0)


@pytest.mark.asyncio
@pytest.mark.parametrize("linger_s", [inbound.LINGER_S, 0.0], ids=["linger", "no-linger"])
async def test_a_reaction_is_logged_with_the_delivery_that_caused_it(
        settings: Settings, linger_s: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch waits REACTION_TURNS turns of the loop for its reactions, then lingers; with
    no linger, the turns alone must be enough for the reaction to share its transaction."""
    monkeypatch.setattr(inbound, "LINGER_S", linger_s)
    a, b = node(settings, "a"), node(settings, "b")
    await a.start()
    await b.start()
    # b's store writes: (received, produced, synced: with a disk sync, or one after it)
    transactions: list[tuple[int, int, bool]] = []
    append, sync = b.store.append, b.store.sync

    def counting(received: Iterable[bytes], produced: Iterable[bytes],
                 sync: bool = True, meta: Any = None) -> int:
        received, produced = list(received), list(produced)
        transactions.append((len(received), len(produced), sync))
        return append(received, produced, sync, meta)

    def syncing() -> None:  # (on the sync's thread)
        sync()
        transactions[:] = [(r, p, True) for r, p, _ in transactions]

    b.store.append = counting  # type: ignore[method-assign]
    b.store.sync = syncing  # type: ignore[method-assign]
    wake = asyncio.Event()

    def changed(event: ChangeEvent) -> None:
        if event.key == "ping":
            wake.set()

    b.replica.subscribe("ping", changed)

    async def react() -> None:  # as a service does: woken by the event, then writes
        while True:
            await wake.wait()
            wake.clear()
            async with b.write() as r:
                r.register("pong").set(r.register("ping").value)

    reacting = asyncio.get_running_loop().create_task(react())
    try:
        for n in range(1, 6):
            async with a.write() as r:
                r.register("ping").set(n)
            await until(lambda n=n: a.replica.register("pong").value == n, 20, f"pong {n}")
        await b.flush()  # its last reaction's sync may still run (a has its pong already)
        reactions = [t for t in transactions if t[1]]
        assert reactions, transactions
        # each reaction went to the store with the delivery of the ping it answers, in a
        # transaction made durable (b sends it) by a disk sync of its own or one after it
        assert all(received and sync for received, _, sync in reactions), transactions
        assert sum(received for received, _, _ in transactions) >= 5
        del transactions[:]
        async with a.write() as r:  # nobody reacts: b logs it without a disk sync
            r.register("other").set(1)
        await until(lambda: transactions, 20, "b to log the delivery")
        assert transactions == [(1, 0, False)]
    finally:
        reacting.cancel()
        await a.stop()
        await b.stop()


def test_deliveries_held_when_the_store_failed_are_not_logged(
        offline_durable: DurableReplica) -> None:
    writer = Replica("w")
    writer.found()
    founding = writer.outgoing()
    writer.counter("n").increment()
    delivery = writer.outgoing()
    durable = offline_durable

    async def run() -> None:
        for m in founding + delivery:
            durable.replica.receive(m)
        held = durable.hold(founding + delivery)
        failure = StoreUnavailable("disk full (simulated)")
        durable.store_failed(failure)
        with pytest.raises(StoreUnavailable) as raised:
            durable.log_delivered(held)
        assert raised.value is failure  # the failure reported, not a new one
        await durable.store_works()  # memory restored from the store: without them
        assert durable.replica.counter("n").value == 0
        assert durable.log_delivered(held) is False  # the token is from before the restore
        durable.commit()
        await durable.close()

    asyncio.run(run())
    assert Store(durable.settings.store).load()[1] == [], "nothing was logged"
