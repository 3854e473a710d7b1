"""What a replica has heard through (``AmqpNode.heard_through``), logic's measure of a
node's silence (services/liveness.py): not past operations it holds waiting. Without a
broker: the node is not started, its echoes are set by hand."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from crdt_ops.replica import Replica
from crdt_ops.transport.amqp.node import AmqpNode
from crdt_ops.transport.config import Settings


def test_heard_through_stops_where_operations_began_to_wait(tmp_path: Path) -> None:
    """A worker's beat held at logic (an earlier message of the worker missing there: a
    gap the stream re-read has not filled yet) was counted as heard, since logic's own
    echoes came back after it: its silence looked like the worker's, and logic could
    move its containers while the worker held its lease and ran them."""
    node = AmqpNode(Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", group="g",
                             replica_id="logic", store=str(tmp_path / "l.sqlite"),
                             membership="open"))
    try:
        worker = Replica("worker.n1")
        sent = []
        for _ in range(2):
            worker.map("nodes/n1").register("heartbeat").set(time.time_ns())
            sent += worker.outgoing()
        node._echo.heard_through = 10.0
        node.replica.receive(sent[1])  # the beat before it is missing here
        node._observe()
        held = node.heard_through()
        assert held == 10.0
        node._echo.heard_through = time.monotonic() + 100  # logic's echoes come back
        assert node.heard_through() <= time.monotonic()  # not past the wait's start
        node.replica.receive(sent[0])  # the gap filled: both applied
        node._observe()
        assert node.heard_through() == node._echo.heard_through
    finally:
        asyncio.run(node.durable.close())
