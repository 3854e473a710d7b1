"""The causal buffer on its own: order, duplicates, indexing, bound, missing()."""

from __future__ import annotations

import pytest

from crdt_ops import BufferFull, Replica
from crdt_ops.causal import CausalBuffer
from crdt_ops.errors import WaitingCapReached
from crdt_ops.ops import Batch, Kind, ObjType, Op

OP = Op(("n",), ObjType.PNCOUNTER, Kind.COUNTER_ADD, p=1)


def batch(origin: str, first: int, n: int = 1, **deps: int) -> Batch:
    return Batch(origin, first, dict(deps), [OP] * n)


def deliver_all(buf: CausalBuffer, *batches: Batch) -> list[tuple[str, int]]:
    """Offer batches in the given order; return (origin, first_seq) in delivery order."""
    order = []
    for b in batches:
        if buf.is_duplicate(b):
            continue
        buf.hold(b)
        while (ready := buf.pop_ready()) is not None:
            if not buf.is_duplicate(ready):
                order.append((ready.origin, ready.first_seq))
                buf.delivered(ready.origin, ready.last_seq)
    return order


def test_early_arrivals_wait_for_their_origin_and_dependencies() -> None:
    buf = CausalBuffer()
    got = deliver_all(buf, batch("b", 1, a=2), batch("a", 2), batch("a", 1))
    assert got == [("a", 1), ("a", 2), ("b", 1)]
    assert buf.clock == {"a": 2, "b": 1} and len(buf) == 0


def test_duplicates_and_overlaps_are_dropped_by_sequence() -> None:
    buf = CausalBuffer()
    got = deliver_all(buf, batch("a", 1, 3), batch("a", 1, 3), batch("a", 2, 1), batch("a", 3, 2))
    assert got == [("a", 1), ("a", 3)]  # the overlap [3, 4] is released; 3 is skipped on apply
    assert buf.clock == {"a": 4}


def test_a_delivery_wakes_only_what_waits_on_it() -> None:
    buf = CausalBuffer()
    for i in range(2, 200):
        buf.hold(batch("x", i))  # waits on x
    buf.hold(batch("y", 1, z=1))  # waits on z
    buf.delivered("q", 1)
    assert buf.pop_ready() is None
    assert sum(len(h) for h in buf._waiters.values()) == 199
    buf.delivered("z", 1)
    ready = buf.pop_ready()
    assert ready is not None and ready.origin == "y" and buf.pop_ready() is None
    assert sum(len(h) for h in buf._waiters.values()) == 198  # x's waiters untouched


def test_missing_lists_the_gaps() -> None:
    buf = CausalBuffer()
    buf.delivered("a", 1)
    buf.hold(batch("a", 5))
    buf.hold(batch("b", 1, c=3))
    assert buf.missing() == {"a": (2, 4), "c": (1, 3)}


def test_bound_refuses_with_a_clear_error_and_changes_nothing() -> None:
    buf = CausalBuffer(max_ops=10)
    buf.hold(batch("a", 2, 8))
    with pytest.raises(BufferFull, match="max 10"):
        buf.hold(batch("b", 2, 3))
    assert len(buf) == 8 and list(buf.waiting()) == [batch("a", 2, 8)]


def test_replica_bound_leaves_state_untouched() -> None:
    a, r = Replica("a"), Replica("r", max_buffered_ops=5)
    a.counter("n").increment()
    first = a.outgoing()
    for _ in range(7):
        a.counter("n").increment()
    later = a.outgoing()
    before = r.snapshot()
    with pytest.raises(BufferFull):
        r.receive(later[0])
    assert r.snapshot() == before
    for m in first + later:
        r.receive(m)
    assert r.state() == {"n": 8}


def test_waiting_operations_survive_a_snapshot() -> None:
    a, r = Replica("a"), Replica("r")
    a.counter("n").increment()
    m1 = a.outgoing()
    a.counter("n").increment(10)
    m2 = a.outgoing()
    for m in m2:
        r.receive(m)  # waits for a:1
    restored = Replica.from_snapshot(r.snapshot())
    assert restored.buffered == 1 and restored.missing() == {"a": (1, 1)}
    for m in m1:
        restored.receive(m)
    assert restored.state() == {"n": 11} and restored.buffered == 0


# ---------------------------------------------------------------- per-origin cap


def test_per_origin_cap_refuses_only_that_origin_and_changes_nothing() -> None:
    buf = CausalBuffer(max_ops=100, max_per_origin=5)
    buf.hold(batch("evil", 2**62, 3))  # a gap that never fills
    buf.hold(batch("evil", 2**62 + 10, 2))
    before = (len(buf), list(buf.waiting()), buf.waiting_per_origin(), buf.missing())
    with pytest.raises(WaitingCapReached, match="max 5 per origin") as info:
        buf.hold(batch("evil", 2**62 + 20))
    assert isinstance(info.value, BufferFull)  # existing `except BufferFull` handlers cover it
    assert info.value.origin == "evil" and info.value.waits_for == ("evil", 2**62 + 19)
    assert (len(buf), list(buf.waiting()), buf.waiting_per_origin(), buf.missing()) == before
    buf.hold(batch("good", 2, 5))  # other origins still get the rest of the buffer
    assert buf.waiting_per_origin() == {"evil": 5, "good": 5}
    buf.delivered("good", 1)
    ready = buf.pop_ready()
    assert ready is not None and ready.origin == "good" and buf.pop_ready() is None
    assert buf.waiting_per_origin() == {"evil": 5} and len(buf) == 5


def test_per_origin_cap_counts_the_origin_of_the_waiting_batch() -> None:
    buf = CausalBuffer(max_per_origin=2)
    buf.hold(batch("b", 1, 2, ghost=2**63 - 1))  # b's batch waits on a forged dependency
    with pytest.raises(WaitingCapReached):
        buf.hold(batch("b", 3, ghost=2**63 - 1))
    buf.hold(batch("c", 1, ghost=2**63 - 1))  # c is another origin: its own share
    assert buf.waiting_per_origin() == {"b": 2, "c": 1}


def test_a_longer_batch_from_the_same_start_replaces_within_the_cap() -> None:
    buf = CausalBuffer(max_per_origin=4)
    buf.hold(batch("a", 2, 3))
    assert buf.hold(batch("a", 2, 4))  # replaces the 3 held: 4 in all, at the cap
    assert buf.waiting_per_origin() == {"a": 4}
    with pytest.raises(WaitingCapReached):
        buf.hold(batch("a", 2, 5))
    # refused without dropping the batch it would have replaced
    assert list(buf.waiting()) == [batch("a", 2, 4)] and len(buf) == 4


def test_the_global_bound_refuses_a_replacement_without_dropping_the_old_batch() -> None:
    buf = CausalBuffer(max_ops=5)
    buf.hold(batch("a", 2, 2))
    buf.hold(batch("b", 2, 2))
    with pytest.raises(BufferFull):
        buf.hold(batch("a", 2, 4))
    assert len(buf) == 4 and buf.waiting_per_origin() == {"a": 2, "b": 2}


def test_per_origin_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CausalBuffer(max_per_origin=0)


def test_replica_over_the_per_origin_cap_is_untouched_and_recovers_from_a_resend() -> None:
    a, r = Replica("a"), Replica("r", max_waiting_per_origin=3)
    msgs = []
    for i in range(6):
        a.counter("n").increment(i + 1)
        msgs += a.outgoing()
    for m in msgs[1:4]:
        r.receive(m)  # a:2..4 wait for a:1, the cap
    before = r.snapshot()
    with pytest.raises(WaitingCapReached):
        r.receive(msgs[4])
    assert r.snapshot() == before
    for m in msgs:  # the history again, in order (as a stream re-read gives it)
        r.receive(m)
    assert r.state() == {"n": 21} and r.buffered == 0
