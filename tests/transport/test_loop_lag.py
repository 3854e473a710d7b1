"""The event loop's stall probe (crdt_ops.transport.loop_lag): a loop held by work that
does not yield is seen, logged once per interval, and counted in the histogram."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from crdt_ops.transport import metrics
from crdt_ops.transport.loop_lag import LoopLag


def _lag_count(replica: str) -> float:
    for metric in metrics.LOOP_LAG.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("replica") == replica:
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
    assert _lag_count("lag-test") >= 5
