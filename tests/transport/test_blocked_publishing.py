"""A replica whose messages the broker does not confirm says so: while the broker's memory
alarm blocks publishers, ``/healthz``'s ``publish`` part, the
``crdt_ops_publish_wait_seconds`` gauge and one log line say how long its messages have
waited; the writes stay in its store and go out once the alarm clears. Over the real
broker, whose memory alarm is raised for a few seconds (for every connection)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt_ops.transport import metrics
from crdt_ops.transport.config import Settings
from tests.broker import group_settings, memory_watermark, rabbitmqctl, started, until


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    for s in group_settings(amqp_url, tmp_path, heartbeat_s=0.2):
        yield Settings(**{**s.__dict__, "gap_timeout_s": 1.0})


@pytest.mark.asyncio
async def test_messages_the_broker_does_not_confirm_are_reported_then_go_out(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="crdt_ops.transport.amqp.node")
    async with started(settings, "a", "b") as (a, b):
        gauge = metrics.PUBLISH_WAIT.labels("a", settings.group)
        async with a.write():
            a.replica.counter("n").increment()
        await until(lambda: b.replica.counter("n").value == 1, 10, "b has a's first write")
        # (the gauge, set each heartbeat tick, may catch a heartbeat in flight: a few ms)
        assert a.health()["publish"] == "ok" and gauge._value.get() < settings.gap_timeout_s
        watermark = memory_watermark()
        try:
            rabbitmqctl("set_vm_memory_high_watermark", "0")  # the broker blocks publishers
            async with a.write():  # durable in a's store: the write is answered
                a.replica.counter("n").increment()
            await until(lambda: a.health()["publish"] != "ok", 10, "a says its write waits")
            said = a.health()["publish"]
            assert "waited" in said and "alarm" in said, said
            await until(lambda: gauge._value.get() > settings.gap_timeout_s, 5,
                        "the gauge shows the wait")  # (set each heartbeat tick)
            assert b.replica.counter("n").value == 1  # nothing went out meanwhile
        finally:
            rabbitmqctl("set_vm_memory_high_watermark", *watermark)
        await until(lambda: b.replica.counter("n").value == 2, 20, "the write goes out")
        await until(lambda: a.health()["publish"] == "ok"
                    and gauge._value.get() < settings.gap_timeout_s, 10,
                    "a says its messages are confirmed again")
    lines = [r.getMessage() for r in caplog.records if r.name == "crdt_ops.transport.amqp.node"
             and r.getMessage().startswith("replica a:")]
    stalled = [m for m in lines if "for the broker's confirm" in m]
    assert len(stalled) == 1, stalled  # said once, not every tick
    assert any("confirms its messages again" in m for m in lines)


def test_an_idle_replica_waits_for_nothing() -> None:
    """The wait counts from the oldest unconfirmed row or the last confirm, the later: a
    write after a quiet spell has waited no longer than itself, and a backlog that drains
    (confirms coming) is not a stall."""
    from crdt_ops.transport.amqp.publisher import Publisher

    class Durable:
        outbox_since: float | None = None

    pub = Publisher.__new__(Publisher)
    pub.durable = Durable()  # type: ignore[assignment]
    pub.confirmed_at = 100.0  # the last confirm, long ago
    assert pub.waiting_s(1000.0) == 0.0
    pub.durable.outbox_since = 999.5  # a write half a second ago
    assert pub.waiting_s(1000.0) == pytest.approx(0.5)
    pub.confirmed_at = 999.8  # the broker confirmed a message since
    assert pub.waiting_s(1000.0) == pytest.approx(0.2)


@pytest.fixture
def slow_beats(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    for s in group_settings(amqp_url, tmp_path, heartbeat_s=10.0):
        yield Settings(**{**s.__dict__, "prefetch": 100})


@pytest.mark.asyncio
async def test_a_backlog_goes_out_page_after_page_once_the_broker_takes_it(
        slow_beats: Settings) -> None:
    """Written while the broker blocked publishers, 1,000 messages wait in the outbox, ten
    times what one round fetches (``prefetch`` 100). Once the alarm clears they all go out
    at once, round after round; they used to go a round per later commit (a heartbeat's,
    every ``heartbeat_s``: 10 s here)."""
    async with started(slow_beats, "a", "b") as (a, b):
        watermark = memory_watermark()
        try:
            rabbitmqctl("set_vm_memory_high_watermark", "0")
            for _ in range(1000):
                async with a.write():
                    a.replica.counter("n").increment()
        finally:
            rabbitmqctl("set_vm_memory_high_watermark", *watermark)
        await until(lambda: b.replica.counter("n").value == 1000, 8,
                    "the whole backlog at b before a's next heartbeat")
