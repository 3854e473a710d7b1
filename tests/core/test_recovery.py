"""The re-read rule of the RabbitMQ transport (crdt_ops/transport/amqp/recovery.py), without
a broker: when a gap or a drop calls for reading the stream again, and how the patience
backs off for a sender whose gap never fills."""

from __future__ import annotations

from crdt_ops.clock import few
from crdt_ops.transport.amqp.recovery import MAX_GAP_BACKOFF, GapWatch


def test_a_gap_is_reread_only_once_it_waited_longer_than_the_patience() -> None:
    w = GapWatch(gap_timeout_s=10, last_reread=0)
    missing = {"a": (3, 4)}
    assert w.reason(now=109, missing=missing, waiting_since=100, dropped=False) is None
    assert w.reason(now=110.5, missing=missing, waiting_since=100, dropped=False) == "gap"
    assert w.reason(now=500, missing={}, waiting_since=100, dropped=False) is None
    assert w.reason(now=500, missing=missing, waiting_since=None, dropped=False) is None


def test_dropped_messages_are_reread_once_the_patience_passed_since_the_last_reread() -> None:
    w = GapWatch(gap_timeout_s=10, last_reread=100)
    assert w.reason(now=105, missing={}, waiting_since=None, dropped=True) is None
    assert w.reason(now=111, missing={}, waiting_since=None, dropped=True) == "dropped"
    assert w.reason(now=111, missing={}, waiting_since=None, dropped=False) is None


def test_a_gap_that_never_fills_doubles_the_patience_up_to_the_cap() -> None:
    w = GapWatch(gap_timeout_s=10)
    stuck_span = {"forger": (2**62, 2**63)}
    for _ in range(10):
        w, stuck = w.reread(now=1.0, before=stuck_span, after=stuck_span)
        assert stuck == stuck_span
    assert w.backoff == MAX_GAP_BACKOFF and w.patience == 10 * MAX_GAP_BACKOFF
    assert w.last_reread == 1.0
    # a gap the stream filled does not back off; a new sender's gap is not "stuck"
    w2, stuck = GapWatch(10).reread(now=2.0, before={"a": (1, 2)}, after={"b": (5, 5)})
    assert w2.backoff == 1 and stuck == {}
    assert w.quiet().backoff == 1 and w.quiet().last_reread == 1.0


def test_few_names_at_most_five_senders() -> None:
    spans = {f"r{i}": (i, i + 1) for i in range(7)}
    assert few(spans) == "r0 0..1, r1 1..2, r2 2..3, r3 3..4, r4 4..5 and 2 more"
