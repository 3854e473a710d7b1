"""Over the real broker, a record whose updates became causally stable is settled by the
node without anyone calling compact(): held as one frozen tuple, with its value."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings
from tests.broker import delete_group, new_group, until


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    group = new_group()
    yield Settings(amqp_url=amqp_url, group=group, heartbeat_s=0.2, store=str(tmp_path))
    delete_group(amqp_url, group, ["a", "b"])


def node(s: Settings, rid: str, store: Path) -> AmqpNode:
    return AmqpNode(Settings(**{**s.__dict__, "replica_id": rid, "store": str(store)}))


@pytest.mark.asyncio
async def test_a_stable_record_settles_by_itself(settings: Settings, tmp_path: Path) -> None:
    a, b = node(settings, "a", tmp_path / "a.sqlite"), node(settings, "b", tmp_path / "b.sqlite")
    await a.start()
    await b.start()
    try:
        for i in range(600):  # more than one settling step (Replica.SETTLE_STEP)
            async with a.write() as r:
                m = r.map(f"containers/{i}")
                m.register("name").set(f"c{i}")
                m.map("workers").map("n1").register("pid").set(i)
        want = {"name": "c599", "workers": {"n1": {"pid": 599}}}
        await until(lambda: b.replica.get("containers/599") == want, 30, "b to have them all")

        def settled(n: AmqpNode) -> bool:
            return all(type(n.replica._root.settled.get(f"containers/{i}")) is tuple
                       for i in range(600))

        await until(lambda: settled(a) and settled(b), 30, "every record settled at a and b")
        assert a.replica.get("containers/7") == b.replica.get("containers/7") == {
            "name": "c7", "workers": {"n1": {"pid": 7}}}
        assert a.replica.metadata_size() == b.replica.metadata_size() <= 600 + 10
    finally:
        await a.stop()
        await b.stop()
