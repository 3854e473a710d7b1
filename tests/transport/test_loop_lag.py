"""The event loop's stall probe (crdt_ops.transport.loop_lag): a loop held by work that
does not yield is seen, logged once per interval, and counted in the histogram."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from crdt_ops.transport import metrics
from crdt_ops.transport.loop_lag import LoopLag


def _lag_sample(replica: str, suffix: str) -> float:
    """The histogram's ``_count`` or ``_sum`` (seconds) for ``replica``."""
    for metric in metrics.LOOP_LAG.collect():
        for sample in metric.samples:
            if sample.name.endswith(suffix) and sample.labels.get("replica") == replica:
                return sample.value
    return 0.0


@pytest.mark.asyncio
async def test_a_held_loop_is_seen_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    lag = LoopLag("lag-test", tick_s=0.01, warn_s=0.2, warn_every_s=60)
    lag.start()
    assert lag.running
    await asyncio.sleep(0.05)
    assert lag.worst_s < 0.2  # an idle loop is not held
    with caplog.at_level(logging.WARNING, logger="crdt_ops.transport.loop_lag"):
        for _ in range(2):
            time.sleep(0.3)  # work that does not yield
            await asyncio.sleep(0.05)
    worst = await lag.stop()
    assert not lag.running
    assert 0.25 <= worst < 1.0 and lag.worst_at > 0
    held = [r for r in caplog.records if "event loop was held" in r.getMessage()]
    assert len(held) == 1, held  # the second stall came within warn_every_s
    assert "lag-test" in held[0].getMessage()
    # every wake-up is counted; the late ones add up to the stalls seen (how many wake-ups
    # there were depends on how fast a busy machine ran the fast ticks after the start)
    assert _lag_sample("lag-test", "_count") >= 1
    assert _lag_sample("lag-test", "_sum") >= worst


@pytest.mark.asyncio
async def test_the_probe_ticks_fast_only_while_there_is_work() -> None:
    """Idle, it wakes once per idle tick; busy() makes it tick fast at once, for
    busy_for_s; then it slows down again."""
    lag = LoopLag(tick_s=0.01, idle_tick_s=0.2, busy_for_s=0.1)
    lag.start()
    await asyncio.sleep(0.15)  # the first busy_for_s after the start: fast
    await asyncio.sleep(0.6)
    quiet = lag.ticks
    await asyncio.sleep(0.6)
    assert lag.ticks - quiet <= 4, lag.ticks - quiet  # 0.6 s at one tick per 0.2 s
    before = lag.ticks
    lag.busy()
    await asyncio.sleep(0.09)
    assert lag.ticks - before >= 5  # woken at once, then every 10 ms
    await asyncio.sleep(0.5)
    settled = lag.ticks
    await asyncio.sleep(0.6)
    assert lag.ticks - settled <= 4  # idle again
    await lag.stop()


@pytest.mark.asyncio
async def test_work_arriving_after_a_quiet_spell_is_timed_from_its_arrival() -> None:
    """The probe sleeps its idle tick; work arrives and holds the loop at once: the stall
    is seen though no fast tick fell due during it."""
    lag = LoopLag(tick_s=0.01, idle_tick_s=5.0, busy_for_s=0.05)
    lag.start()
    await asyncio.sleep(0.2)  # idle now
    lag.busy()
    time.sleep(0.3)  # the work holds the loop before the probe runs again
    await asyncio.sleep(0.05)
    assert 0.25 <= lag.worst_s < 1.0
    await lag.stop()


@pytest.mark.asyncio
async def test_one_probe_serves_every_user_until_the_last_stops() -> None:
    lag = LoopLag(tick_s=0.01)
    lag.start()
    lag.start()  # a second node of the same process
    await lag.stop()
    assert lag.running
    await lag.stop()
    assert not lag.running
