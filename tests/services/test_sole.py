"""A logic or a worker whose principal's holder queue another process took over while it
was cut off stops (services/main.py ``_unless_sole_lost``): its loop is cancelled and the
service exits with status 1, for its supervisor to start it again as the standby."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from crdt_ops.errors import Deposed
from services.main import _unless_sole_lost


class Node:
    """What ``_unless_sole_lost`` reads of an AmqpGroups: ``sole_lost()``."""

    def __init__(self, after_s: float | None) -> None:
        self.after_s = after_s

    async def sole_lost(self) -> None:
        if self.after_s is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(self.after_s)


def _run(after_s: float | None, loop: Any) -> None:
    asyncio.run(_unless_sole_lost(Node(after_s), loop))  # type: ignore[arg-type]


def test_a_loop_whose_process_lost_its_principal_s_queue_is_stopped() -> None:
    cancelled = []

    async def decide_for_ever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
    with pytest.raises(Deposed, match="took over while this one was cut off"):
        _run(0.05, decide_for_ever())
    assert cancelled == [True]


def test_a_loop_that_ends_or_fails_on_its_own_is_what_it_was() -> None:
    async def ends() -> None:
        await asyncio.sleep(0.01)

    async def fails() -> None:
        raise ValueError("the loop's own failure")
    _run(None, ends())
    with pytest.raises(ValueError, match="the loop's own failure"):
        _run(None, fails())
