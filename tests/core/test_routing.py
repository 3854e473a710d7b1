"""The routing rule (which group holds which key) and the one interface over the groups a
process holds (:mod:`crdt_ops.routing`), without I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_ops import ChangeEvent, Replica
from crdt_ops.routing import Groups, NotHeld, Routing

CELLS = Routing("platform", {"cells/{}/": "cell.{}", "admin/": "ops"})


@pytest.mark.parametrize(("key", "group"), [
    ("containers/c1", "platform"),
    ("cells/eu1/nodes/n7", "cell.eu1"),
    ("cells/eu1/", "cell.eu1"),
    ("cells/eu1", "platform"),  # the template needs the "/" that ends the segment
    ("cells//x", "platform"),  # an empty segment names no group
    ("cells/a b/x", "platform"),  # nor one a group name may not hold
    ("admin/users", "ops"),
    ("", "platform"),
])
def test_a_key_lives_in_the_group_its_first_matching_template_names(key: str, group: str) -> None:
    assert CELLS.group_of(key) == group


@pytest.mark.parametrize(("default", "prefixes", "says"), [
    ("", {}, "the default group"),
    ("a/b", {}, "the default group"),
    ("p", {"": "x"}, "must not be empty"),
    ("p", {"a/{}/{}/": "x.{}"}, "at most once"),
    ("p", {"a/": "x.{}"}, "at most once"),
    ("p", {"a/{}": "x.{}"}, "followed by the rest"),
    ("p", {"a/{}/": "x y.{}"}, "group of routing prefix"),
])
def test_a_bad_rule_is_refused_with_what_is_wrong(default: str, prefixes: dict[str, str],
                                                  says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Routing(default, prefixes)


segment = st.sampled_from(["eu1", "eu2", "", "a b", "x"])
keys = st.builds(lambda head, seg, tail: head + seg + tail,
                 st.sampled_from(["cells/", "containers/", "admin/", "c", ""]), segment,
                 st.sampled_from(["", "/", "/nodes/n1", "/containers/c9", "x"]))


@given(keys, st.data())
def test_scans_and_subscriptions_reach_every_group_that_holds_a_matching_key(
        key: str, data: st.DataObject) -> None:
    prefix = key[:data.draw(st.integers(0, len(key)))]
    assert CELLS.may_hold(CELLS.group_of(key), prefix)


def test_a_prefix_that_names_a_cell_is_looked_for_in_that_cell_only() -> None:
    held = ["platform", "cell.eu1", "cell.eu2", "ops"]
    assert [g for g in held if CELLS.may_hold(g, "cells/eu1/")] == ["cell.eu1"]
    assert [g for g in held if CELLS.may_hold(g, "cells/")] == ["platform", "cell.eu1", "cell.eu2"]
    assert [g for g in held if CELLS.may_hold(g, "containers/")] == ["platform"]
    assert [g for g in held if CELLS.may_hold(g, "")] == held


def _groups(*names: str) -> Groups:
    return Groups(CELLS, {g: Replica("r1") for g in names})


writes = st.lists(st.tuples(keys.filter(bool), st.integers(0, 9), st.booleans()), max_size=30)


@settings(max_examples=150)
@given(writes, st.sampled_from(["", "c", "cells/", "cells/eu1/", "containers/", "admin/"]),
       st.one_of(st.none(), keys), st.one_of(st.none(), st.integers(0, 5)))
def test_reads_across_groups_equal_one_replica_holding_every_key(
        ops: list[tuple[str, int, bool]], prefix: str, after: str | None,
        limit: int | None) -> None:
    split, whole = _groups("platform", "cell.eu1", "cell.eu2", "cell.x", "ops"), Replica("r1")
    for key, value, remove in ops:
        for target in (split, whole):
            if remove:
                target.remove(key)
            else:
                target.map(key).counter("n").increment(value)
    assert split.items(prefix, after=after, limit=limit) == whole.items(
        prefix, after=after, limit=limit)
    assert split.keys(prefix, after=after, limit=limit) == whole.keys(
        prefix, after=after, limit=limit)
    for key, _, _ in ops:
        assert split.get(key) == whole.get(key)


def test_each_write_goes_to_its_keys_group_only() -> None:
    g = _groups("platform", "cell.eu1")
    g.map("containers/c1").register("name").set("web-1")
    g.map("cells/eu1/containers/c1").register("node").set("n7")
    assert g.replicas["platform"].keys() == ["containers/c1"]
    assert g.replicas["cell.eu1"].keys() == ["cells/eu1/containers/c1"]
    assert [len(r.outgoing()) for r in g.replicas.values()] == [1, 1]


def test_a_key_of_a_group_not_held_raises_and_changes_nothing() -> None:
    g = _groups("cell.eu1")
    with pytest.raises(NotHeld) as e:
        g.map("cells/eu2/containers/c1").register("node").set("n7")
    assert str(e.value) == ("key 'cells/eu2/containers/c1' lives in group 'cell.eu2', which this "
                            "process does not hold (it holds cell.eu1); join that group or reach "
                            "a process that holds it")
    assert (e.value.group, e.value.held) == ("cell.eu2", ("cell.eu1",))
    with pytest.raises(NotHeld):
        g.get("containers/c1")
    assert g.replicas["cell.eu1"].keys() == [] and not g.replicas["cell.eu1"].unsent
    with pytest.raises(ValueError, match="at least one group"):
        Groups(CELLS, {})


def test_one_subscription_hears_every_group_that_may_hold_its_prefix() -> None:
    g = _groups("platform", "cell.eu1", "cell.eu2")
    heard: list[str] = []

    def hear(event: ChangeEvent) -> None:
        heard.append(event.key)

    unsubscribe = g.subscribe("c", hear)
    g.map("containers/c1").register("name").set("a")
    g.map("cells/eu1/containers/c1").register("node").set("n1")
    g.map("cells/eu2/containers/c2").register("node").set("n2")
    g.map("containers/c3").remove("x")  # a remove of nothing changes nothing
    assert heard == ["containers/c1", "cells/eu1/containers/c1", "cells/eu2/containers/c2"]
    unsubscribe()
    g.map("containers/c1").register("name").set("b")
    g.map("cells/eu1/containers/c1").register("node").set("n3")
    assert len(heard) == 3
