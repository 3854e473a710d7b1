"""Values Python takes as equal (``1``, ``1.0``, ``True``) are kept apart in a set and an
MV register (``crdt_ops.values.value_key``); what they read as is the same at every
replica, whatever order the values arrived in (``crdt_ops.values.value_set``)."""

from __future__ import annotations

from crdt_ops import Replica


def both_ways(a: Replica, b: Replica) -> None:
    out_a, out_b = a.outgoing(), b.outgoing()
    for m in out_a:
        b.receive(m)
    for m in out_b:
        a.receive(m)


def test_a_set_reads_the_same_at_both_replicas() -> None:
    a, b = Replica("a"), Replica("b")
    a.set("t").add(1)
    a.set("t").add(2.0)
    b.set("t").add(True)
    b.set("t").add(2)
    both_ways(a, b)
    for r in (a, b):
        got = r.set("t").value
        assert sorted((type(v).__name__, v) for v in got) == [("bool", True), ("int", 2)]
    assert a.state() == b.state()


def test_removing_one_of_two_equal_values_leaves_the_other() -> None:
    """``2`` and ``2.0`` are two elements: removing one leaves the other, which reads as
    itself (and ``2 in value`` stays true, as Python's equality says)."""
    r = Replica("r")
    s = r.set("t")
    s.add(2)
    s.add(2.0)
    s.remove(2)
    (v,) = s.value
    assert type(v) is float and v == 2.0


def test_an_mv_register_of_concurrent_equal_values_reads_the_same_everywhere() -> None:
    a, b = Replica("a"), Replica("b")
    a.mvregister("m").set(1)
    b.mvregister("m").set(True)
    both_ways(a, b)
    assert [(type(v), v) for v in a.mvregister("m").value] == [(bool, True)]
    assert [(type(v), v) for v in b.mvregister("m").value] == [(bool, True)]
