"""wait_set (crdt_ops/transport/waiting.py): a service loop that waits on an event with a
timeout stops when cancelled, also when the cancellation arrives in the loop iteration
that sets the event. ``asyncio.wait_for`` on Python 3.11 swallows that cancellation
(CPython gh-86296), and the loop then runs on for good: logic, the worker, web's event
streams and the store's batching waited that way. And jittered: the waits of periodic
duties."""

from __future__ import annotations

import asyncio
import random
import statistics

import pytest

from crdt_ops.transport.waiting import JITTER, jittered, wait_set


async def _service_loop(wake: asyncio.Event, woken: list[bool]) -> None:
    while True:  # as logic's and the worker's loops: clear, work, wait for the next change
        wake.clear()
        woken.append(await wait_set(wake, 1.0))


@pytest.mark.asyncio
async def test_a_cancellation_as_the_event_is_set_stops_the_loop() -> None:
    for delay in (0.0, 0.01):
        wake, woken = asyncio.Event(), list[bool]()
        task = asyncio.create_task(_service_loop(wake, woken))
        await asyncio.sleep(delay)
        wake.set()
        task.cancel()  # in the same loop iteration
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 3)  # the loop swallowing it would time out here


@pytest.mark.asyncio
async def test_it_says_whether_the_event_was_set() -> None:
    wake = asyncio.Event()
    assert await wait_set(wake, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, wake.set)
    assert await wait_set(wake, 5) is True
    assert await wait_set(wake, 0) is True  # set already: no wait


def test_a_periodic_wait_strays_from_its_period_by_at_most_the_jitter_and_not_on_average(
        ) -> None:
    """jittered: each wait of a duty due every ``period`` is drawn from period x (1 -/+
    JITTER), so that the duties of a process's groups, started together, do not stay in
    step; on average the duty still runs every ``period``."""
    assert jittered(2.0, lambda: 0.0) == pytest.approx(2.0 * (1 - JITTER))
    assert jittered(2.0, lambda: 0.5) == pytest.approx(2.0)
    assert jittered(2.0, lambda: 1.0) == pytest.approx(2.0 * (1 + JITTER))
    rng = random.Random(7)
    waits = [jittered(2.0, rng.random) for _ in range(20_000)]
    assert min(waits) >= 2.0 * (1 - JITTER) and max(waits) <= 2.0 * (1 + JITTER)
    assert statistics.fmean(waits) == pytest.approx(2.0, rel=0.01)
    # spread over the whole range, not a few values: a tenth of the range holds a tenth
    width = 2 * JITTER * 2.0
    band = [w for w in waits if 2.0 <= w < 2.0 + width / 10]
    assert 0.07 < len(band) / len(waits) < 0.13
