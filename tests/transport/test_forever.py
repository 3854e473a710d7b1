"""A node's pumping loops (``AmqpNode._forever``: the flusher, the publisher, the consumer,
the heartbeat, ...) end on the node's stop, also when a step swallowed the stop's
cancellation, as ``asyncio.wait_for`` can on Python 3.11 (CPython gh-86296): the loop
then started the next step, which waited for good, and the stop with it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings


@pytest.mark.asyncio
async def test_a_step_that_swallows_the_stop_does_not_start_again(tmp_path: Path) -> None:
    node = AmqpNode(Settings(group="forever", replica_id="a", store=str(tmp_path / "a.db")))
    steps = 0

    async def swallowing() -> None:
        nonlocal steps
        steps += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return  # swallowed, as wait_for may

    task = asyncio.create_task(node._forever(swallowing))
    try:
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.wait({task}, timeout=5)  # not wait_for: that would wait for good
        assert task.done() and task.cancelled(), f"the loop went on: {steps} steps"
        assert steps == 1
    finally:
        if not task.done():  # the test failed: end the step that swallowed the stop
            task.get_coro().close()
        node.store.close()
