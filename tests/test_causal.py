"""The causal buffer on its own: order, duplicates, indexing, bound, missing()."""

from __future__ import annotations

import pytest

from crdt_ops import BufferFull, Replica
from crdt_ops.causal import CausalBuffer
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
