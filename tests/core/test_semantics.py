"""Each type's concurrent semantics, with concurrency built by hand."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt_ops import ChangeEvent, Replica
from tests.support import exchange, send


def pair() -> tuple[Replica, Replica]:
    return Replica("a"), Replica("b")


def test_counters_sum_concurrent_increments_and_decrements() -> None:
    a, b = pair()
    a.counter("n").increment(5)
    b.counter("n").decrement(2)
    b.counter("n").increment(10)
    a.gcounter("g").increment(3)
    b.gcounter("g").increment(4)
    exchange(a, b)
    assert a.state() == b.state() == {"n": 13, "g": 7}


def test_orset_add_wins_over_concurrent_remove() -> None:
    a, b = pair()
    a.set("s").add("x")
    exchange(a, b)
    a.set("s").remove("x")
    b.set("s").add("x")
    exchange(a, b)
    assert a.set("s").value == b.set("s").value == frozenset({"x"})


def test_orset_remove_of_observed_add_removes() -> None:
    a, b = pair()
    a.set("s").add("x")
    b.set("s").add("x")
    exchange(a, b)
    b.set("s").remove("x")
    exchange(a, b)
    assert a.state() == b.state() == {"s": frozenset()}


def test_orset_keeps_equal_python_values_of_other_types_apart() -> None:
    a, b = pair()
    a.set("s").add(1)
    b.set("s").add(1.0)
    exchange(a, b)
    a.set("s").remove(1)
    exchange(a, b)
    assert [type(v) for v in a.set("s").value] == [float]
    assert a.state() == b.state()


def test_flag_enable_wins() -> None:
    a, b = pair()
    a.flag("f").enable()
    exchange(a, b)
    a.flag("f").disable()
    b.flag("f").enable()
    exchange(a, b)
    assert a.flag("f").value is b.flag("f").value is True
    a.flag("f").disable()
    exchange(a, b)
    assert a.flag("f").value is b.flag("f").value is False


def test_lww_ties_break_on_replica_id() -> None:
    a, b = pair()  # both logical clocks: equal timestamps
    a.register("r").set("from a")
    b.register("r").set("from b")
    assert a.register("r").timestamp == b.register("r").timestamp
    exchange(a, b)
    assert a.register("r").value == b.register("r").value == "from b"


def test_lww_later_write_wins_whatever_the_wall_clocks() -> None:
    a = Replica("a", wall_clock=lambda: 1_000_000)
    b = Replica("b", wall_clock=lambda: 10)  # far behind
    a.register("r").set("early, fast clock")
    exchange(a, b)
    b.register("r").set("later, slow clock")
    exchange(a, b)
    assert a.register("r").value == b.register("r").value == "later, slow clock"


def test_lww_concurrent_writes_pick_the_greatest_timestamp() -> None:
    a = Replica("a", wall_clock=lambda: 500)
    b = Replica("b", wall_clock=lambda: 100)
    a.register("r").set("a")
    b.register("r").set("b")
    exchange(a, b)
    assert a.register("r").value == b.register("r").value == "a"


def test_mvregister_keeps_concurrent_writes_until_one_supersedes_them() -> None:
    a, b = pair()
    a.mvregister("v").set(1)
    b.mvregister("v").set(2)
    exchange(a, b)
    assert a.mvregister("v").value == b.mvregister("v").value == frozenset({1, 2})
    b.mvregister("v").set(3)
    exchange(a, b)
    assert a.state() == b.state() == {"v": frozenset({3})}


def test_map_remove_resets_what_it_observed_and_concurrent_update_survives() -> None:
    a, b = pair()
    rec = a.map("containers/c1")
    rec.register("name").set("web")
    rec.counter("restarts").increment(5)
    rec.set("tags").add("x")
    exchange(a, b)
    b.remove("containers/c1")
    a.map("containers/c1").counter("restarts").increment(2)
    exchange(a, b)
    assert a.state() == b.state() == {"containers/c1": {"restarts": 2}}


def test_map_field_remove_then_sequential_reuse_starts_fresh() -> None:
    a, b = pair()
    a.map("m").set("tags").add("old")
    a.map("m").counter("n").increment(3)
    exchange(a, b)
    b.map("m").remove("tags")
    b.map("m").remove("n")
    exchange(a, b)
    assert a.state() == {"m": {}}
    a.map("m").set("tags").add("new")
    a.map("m").counter("n").increment()
    exchange(a, b)
    assert a.state() == b.state() == {"m": {"tags": frozenset({"new"}), "n": 1}}


def test_concurrent_removes_of_a_counter_field_subtract_once() -> None:
    a, b, c = Replica("a"), Replica("b"), Replica("c")
    a.map("m").counter("n").increment(4)
    exchange(a, b, c)
    a.map("m").remove("n")
    b.map("m").remove("n")
    c.map("m").counter("n").increment(1)
    exchange(a, b, c)
    assert a.state() == b.state() == c.state() == {"m": {"n": 1}}


def test_nested_maps_and_every_type_in_a_record() -> None:
    a, b = pair()
    rec = a.map("containers/c1")
    rec.register("power_desired").set("on")
    rec.flag("pinned").enable()
    rec.mvregister("note").set("hi")
    rec.map("limits").counter("cpu").increment(2)
    exchange(a, b)
    assert b.state() == {"containers/c1": {
        "power_desired": "on", "pinned": True, "note": frozenset({"hi"}), "limits": {"cpu": 2}}}


def test_change_events_for_local_and_remote_changes() -> None:
    a, b = pair()
    seen: list[ChangeEvent] = []
    b.subscribe("containers/", seen.append)
    b.map("containers/c1").register("power_desired").set("on")
    a.map("containers/c2").register("power_desired").set("off")
    a.counter("other").increment()
    exchange(a, b)
    assert [(e.key, e.old, e.new, e.origin) for e in seen] == [
        ("containers/c1", None, {"power_desired": "on"}, "b"),
        ("containers/c2", None, {"power_desired": "off"}, "a"),
    ]


def test_a_failing_callback_does_not_stop_others_or_the_replica() -> None:
    a = Replica("a")
    got: list[str] = []

    def boom(e: ChangeEvent) -> None:
        raise RuntimeError("subscriber bug")

    a.subscribe("", boom)
    unsubscribe = a.subscribe("", lambda e: got.append(e.key))
    a.counter("x").increment()
    unsubscribe()
    a.counter("x").increment()
    assert got == ["x"] and a.counter("x").value == 2


def test_own_messages_coming_back_are_dropped() -> None:
    a = Replica("a")
    a.counter("n").increment()
    msgs = a.outgoing()
    assert [a.receive(m) for m in msgs * 3] == [False] * 3  # nothing new: nothing to log
    assert a.state() == {"n": 1} and a.stats["duplicates"] == 3


def test_receive_says_whether_a_message_brought_anything() -> None:
    a, b = pair()
    a.counter("n").increment()
    first = a.outgoing()
    a.counter("n").increment()
    second = a.outgoing()
    assert b.receive(second[0]) is True  # held, waiting for the first: must be kept
    assert b.receive(second[0]) is False and b.state() == {}
    assert b.receive(first[0]) is True and b.state() == {"n": 2}
    assert b.receive(first[0]) is False


def test_items_lists_one_prefix_in_key_order() -> None:
    a = Replica("a")
    a.map("containers/b").register("name").set("x")
    a.map("containers/a").register("name").set("y")
    a.map("nodes/n1").counter("running").increment()
    a.counter("containers-total").increment()
    a.map("containers/gone").register("name").set("z")
    a.remove("containers/gone")
    assert a.items("containers/") == [("containers/a", {"name": "y"}),
                                      ("containers/b", {"name": "x"})]
    assert a.items() == sorted(a.state().items())
    assert a.get("containers/gone", "none") == "none"


@given(st.lists(st.tuples(st.sampled_from(["c/", "d/", "c", "cc/"]),
                          st.text("abz", min_size=0, max_size=3), st.booleans()),
                max_size=40),
       st.sampled_from(["", "c/", "c", "d/", "x"]), st.none() | st.text("c/abz", max_size=4),
       st.none() | st.integers(-1, 6))
def test_items_and_keys_page_in_key_order(writes: list[tuple[str, str, bool]], prefix: str,
                                          after: str | None, limit: int | None) -> None:
    """items()/keys() with a prefix, a cursor and a limit are the sorted visible keys
    of state() with that prefix, after the cursor, cut at the limit; a snapshot keeps
    them (the key index is rebuilt from it)."""
    a = Replica("a")
    for prefix_, name, remove in writes:
        key = prefix_ + name
        if remove:
            a.remove(key)
        else:
            a.map(key).register("v").set(name)
    for r in (a, Replica.from_snapshot(a.snapshot())):
        want = sorted((k, v) for k, v in r.state().items() if k.startswith(prefix)
                      and (after is None or k > after))
        if limit is not None:
            want = want[:max(limit, 0)]
        assert r.items(prefix, after=after, limit=limit) == want
        assert r.keys(prefix, after=after, limit=limit) == [k for k, _ in want]


def test_heartbeat_feeds_stability() -> None:
    a, b = Replica("a", members=list("ab")), Replica("b", members=list("ab"))
    a.counter("n").increment()
    send(a, b)
    assert a.stable_clock() == {}  # b has not said it delivered a:1
    b.heartbeat()
    send(b, a)
    assert a.stable_clock() == {"a": 1}


def test_an_open_group_is_never_stable() -> None:
    a, b = pair()
    a.counter("n").increment()
    send(a, b)
    b.heartbeat()
    send(b, a)
    assert a.stable_clock() == {}  # nobody agreed who else may write


@pytest.mark.parametrize("bad", ["", 7, "x" * 300])
def test_replica_id_is_checked(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        Replica(bad)  # type: ignore[arg-type]
