"""The retake check's bookkeeping (crdt_ops/transport/amqp/retake.py), without a broker: one
check per link shared by every caller, run again after a failure or a cancel, never two at
once, and deposition only when another wrote and operations wait unsent. What it reads
over a real broker is tested in tests/transport/test_groups.py."""

from __future__ import annotations

import asyncio

import pytest

from crdt_ops.transport.amqp.retake import Reader, RetakeCheck


class Group:
    """A reader's answers, and how often it was asked."""

    def __init__(self, others: set[str] | None = None, unsent: int = 0) -> None:
        self.found, self.pending = others or set(), unsent
        self.reads = self.passes = 0
        self.running = 0
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None

    async def others(self) -> set[str]:
        self.reads += 1
        self.running += 1
        try:
            assert self.running == 1, "two checks read at once"
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            return self.found
        finally:
            self.running -= 1

    def passed(self) -> None:
        self.passes += 1

    def reader(self, name: str) -> Reader:
        return Reader(name, lambda: self.pending, self.others, self.passed)


def check(*groups: Group) -> tuple[RetakeCheck, list[int]]:
    deposed: list[int] = []
    c = RetakeCheck("logic.a", "logic", lambda: deposed.append(1))
    c.readers += [g.reader(f"g{i}") for i, g in enumerate(groups)]
    return c, deposed


@pytest.mark.asyncio
async def test_deposed_only_when_another_wrote_in_some_group_and_operations_wait() -> None:
    for others, unsent, outcome in ((set(), 0, True), (set(), 3, True),
                                    ({"logic.b"}, 0, True), ({"logic.b"}, 3, False)):
        quiet, written = Group(unsent=unsent), Group(others)  # (in the second group only)
        c, deposed = check(quiet, written)
        assert await c.passed(object()) is outcome
        assert deposed == ([] if outcome else [1])
        assert (quiet.reads, written.reads) == (1, 1)  # every group read, always
        assert quiet.passes == (1 if outcome else 0)  # (where it stood kept if deposed)


@pytest.mark.asyncio
async def test_one_check_per_link_run_again_after_a_failure_or_a_cancel() -> None:
    g = Group()
    c, _ = check(g)
    link = object()
    assert await asyncio.gather(c.passed(link), c.passed(link)) == [True, True]
    assert await c.passed(link) and g.reads == 1  # (shared, and kept for its link)
    g.fail = ConnectionError("lost again")
    other = object()
    with pytest.raises(ConnectionError):
        await c.passed(other)
    g.fail = None
    assert await c.passed(other) and g.reads == 3  # a failed check runs again
    g.gate = asyncio.Event()
    third = object()
    waiting = asyncio.ensure_future(c.passed(third))
    while g.running == 0:  # (its read under way)
        await asyncio.sleep(0)
    assert c._outcome is not None
    c._outcome.cancel()  # (aiormq may cancel what runs on a stuck connection)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    g.gate.set()
    assert await c.passed(third) and g.reads == 5  # a cancelled one runs again


@pytest.mark.asyncio
async def test_a_check_for_an_earlier_link_is_ended_before_the_next_begins() -> None:
    g = Group()
    g.gate = asyncio.Event()
    c, _ = check(g)
    old = asyncio.ensure_future(c.passed(object()))
    while g.running == 0:
        await asyncio.sleep(0)
    new = asyncio.ensure_future(c.passed(object()))  # reconnected again meanwhile
    await asyncio.sleep(0.01)
    assert g.running == 1 and g.reads == 2  # the old read ended, the new one runs alone
    g.gate.set()
    assert await new
    with pytest.raises(asyncio.CancelledError):
        await old
