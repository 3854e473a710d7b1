"""A name written concurrently with two types: both entries are kept, the value shows the
one of the highest type number, and that type stays writable everywhere, by the same rule
at every replica (``ORMap.check``); the other type is refused, locally and remotely."""

from __future__ import annotations

import pytest

from crdt_ops import Replica, TypeConflict
from tests.core.test_bad_input import (
    assert_rejected,
    batch,
    counter_add,
    pb_value,
    register_set,
)


def exchange(*replicas: Replica) -> None:
    """Deliver every replica's outgoing messages to every other one."""
    out = [(r, r.outgoing()) for r in replicas]
    for r, msgs in out:
        for other in replicas:
            if other is not r:
                for m in msgs:
                    other.receive(m)


def conflicted() -> tuple[Replica, Replica]:
    """``x`` written as a counter at a and as a register at b, concurrently, then
    exchanged: both replicas have seen both."""
    a, b = Replica("a"), Replica("b")
    a.counter("x").increment(3)
    b.register("x").set("hi")
    exchange(a, b)
    return a, b


def test_the_value_shows_the_highest_type_and_that_type_stays_writable() -> None:
    a, b = conflicted()
    assert a.get("x") == b.get("x") == "hi"  # a register (3) over a counter (2)
    for r in (a, b):
        with pytest.raises(TypeConflict, match="'x' holds a register, not a counter"):
            r.counter("x")
    a.register("x").set("from a")
    exchange(a, b)
    assert a.get("x") == b.get("x") == "from a"
    assert a.stats["rejected"] == b.stats["rejected"] == 0


def test_after_a_remove_the_name_is_written_again_with_its_type() -> None:
    """The case that once made a name unwritable by either type, even after a remove."""
    a, b = conflicted()
    a.remove("x")
    exchange(a, b)
    assert "x" not in a.state() and "x" not in b.state()
    b.register("x").set("again")
    exchange(a, b)
    assert a.get("x") == b.get("x") == "again"


def test_a_third_replica_decides_as_the_two_did() -> None:
    """A write of the winning type by a replica that had seen both is applied everywhere;
    one of the losing type by a replica that had seen only that type (concurrent with the
    register) is applied everywhere too; a replica that receives them in another order
    converges to the same state."""
    a, b = Replica("a"), Replica("b")
    c = Replica("c")
    a.counter("x").increment()
    first_a = a.outgoing()
    b.register("x").set("b")
    first_b = b.outgoing()
    for m in first_b:
        a.receive(m)
    a.register("x").set("a saw both")  # a's second write, the winning type
    second_a = a.outgoing()
    b.receive(first_a[0])
    # c hears b, then a's second write before its first (buffered until the first comes)
    for m in [*first_b, *second_a, *first_a]:
        c.receive(m)
    for m in second_a:
        b.receive(m)
    assert a.state() == b.state() == c.state() == {"x": "a saw both"}
    assert a.stats["rejected"] == b.stats["rejected"] == c.stats["rejected"] == 0


def test_a_remote_write_of_the_losing_type_by_a_writer_that_saw_both_is_refused() -> None:
    """The remote half of the rule: a writer ``w`` that had seen both types (its deps name
    a's counter and b's register) and writes the counter is refused with a type conflict,
    and nothing changes; the register from the same writer is applied."""
    a, b = conflicted()
    deps = [("a", a.own_seq), ("b", b.own_seq)]
    assert_rejected(a, batch([counter_add(["x"])], origin="w", deps=deps), TypeConflict,
                    reason="type-conflict")
    assert a.receive(batch([register_set(["x"], pb_value("w"), timestamp=2**40)], origin="w",
                           deps=deps))
    assert a.get("x") == "w"


def test_a_write_made_before_a_delivery_is_sealed_as_written_then() -> None:
    """A batch's ``deps`` was the writer's clock as the batch was sealed: r wrote ``k`` as a
    counter, delivered s's concurrent write of ``k`` as a register, then sealed its own, which
    every other replica refused as a write of the losing type by a writer that saw both;
    r's later operations waited behind it everywhere, for good."""
    r, s = Replica("r"), Replica("s")
    r.counter("k").increment()
    s.register("k").set("v")
    by_s = s.outgoing()
    for m in by_s:
        r.receive(m)
    r.counter("n").increment()  # after the delivery
    by_r = r.outgoing()
    for m in by_r:
        s.receive(m)  # (refused before: TypeConflict)
    t = Replica("t")
    for m in by_s + by_r:
        t.receive(m)
    assert r.clock == s.clock == t.clock == {"r": 2, "s": 1}
    assert r.state() == s.state() == t.state() and not s.buffered and not t.rejected


def test_a_write_a_change_callback_makes_in_a_delivery_is_sealed_before_the_next() -> None:
    """One ``receive`` delivers t's batch, whose change event makes r write ``k``, then
    the batch of s it held, which wrote ``k`` as a register after t's: r's write was sealed
    after both, and refused everywhere else."""
    r, s, t = Replica("r"), Replica("s"), Replica("t")
    r.subscribe("trigger", lambda event: r.counter("k").increment())
    t.register("trigger").set(1)
    by_t = t.outgoing()
    for m in by_t:
        s.receive(m)
    s.register("k").set("v")
    by_s = s.outgoing()
    for m in by_s + by_t:  # s's held at r until t's comes
        r.receive(m)
    by_r = r.outgoing()
    for other in s, t:
        for m in by_r + by_s:
            other.receive(m)
    assert r.clock == s.clock == t.clock == {"r": 1, "s": 1, "t": 1}
    assert r.state() == s.state() == t.state() and not t.rejected and not s.buffered


def test_a_delivery_of_other_keys_leaves_what_is_unsent_one_batch() -> None:
    """What a replica writes between two ``outgoing()`` calls (a ``write()`` block) goes
    out as one batch, applied atomically everywhere, though a delivery came between its
    writes, as long as that delivery wrote none of its keys."""
    from crdt_ops.wire import codec

    r, s = Replica("r"), Replica("s")
    r.register("a").set(1)
    s.register("b").set(2)
    for m in s.outgoing():
        r.receive(m)
    r.register("c").set(3)
    (one,) = r.outgoing()
    batch = codec.decode(one)
    assert batch.first_seq == 1 and len(batch.ops) == 2 and dict(batch.deps) == {"s": 1}
    s.receive(one)
    assert s.state() == r.state() == {"a": 1, "b": 2, "c": 3}
