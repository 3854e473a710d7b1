"""Write policies and origin authentication (crdt_ops.policy), sans-IO: every
replica rejects the same operations, whatever order they arrive in, and converges."""

from __future__ import annotations

import pytest

from crdt_ops import Forbidden, Replica, Rule, Unauthenticated, WritePolicy
from crdt_ops.policy import belongs
from services import model


def test_a_replica_id_belongs_to_its_principal_and_its_extensions_only() -> None:
    assert belongs("web", "web") and belongs("web.host-1", "web")
    assert belongs("worker.n1.host", "worker.n1")
    assert not belongs("worker.n10", "worker.n1") and not belongs("webx", "web")


def test_first_matching_rule_decides_and_captures_must_agree() -> None:
    policy = WritePolicy([Rule(("jobs/*", "by", "{node}"), writers=("worker.{node}",)),
                          Rule(("jobs/*",), writers=("web",)),
                          Rule(("frozen",), writers=())])
    policy.check("worker.a.x", ("jobs/1", "by", "a", "state"))
    policy.check("web.1", ("jobs/1", "name"))
    policy.check("anyone", ("elsewhere",))
    for origin, target in [("worker.b", ("jobs/1", "by", "a")), ("worker.a", ("jobs/1", "name")),
                           ("web", ("frozen",))]:
        with pytest.raises(Forbidden):
            policy.check(origin, target)


def test_a_name_captured_twice_on_the_path_matches_equal_parts_only() -> None:
    policy = WritePolicy([Rule(("placed/{node}/*", "by", "{node}"), writers=("worker.{node}",)),
                          Rule(("placed/*",), writers=("logic",))])
    policy.check("worker.a", ("placed/a/1", "by", "a", "state"))
    policy.check("logic", ("placed/a/1", "by", "b"))  # the first rule does not match it
    for origin, target in [("worker.b", ("placed/a/1", "by", "b")),
                           ("worker.a", ("placed/a/1", "by", "b")),
                           ("worker.b", ("placed/a/1", "by", "a"))]:
        with pytest.raises(Forbidden):
            policy.check(origin, target)


def services() -> dict[str, Replica]:
    ids = ["web", "logic", "worker.w1", "worker.w2"]
    return {i: Replica(i, policy=model.POLICY) for i in ids}


def test_each_service_writes_only_its_fields_locally() -> None:
    r = services()
    model.container(r["web"], "c1").register("power_desired").set("on")
    model.name_home(r["logic"], "c1", ("main", "w1"))
    model.placement(r["logic"], ("main", "w1"), "c1").register("assigned_node").set("w1")
    model.placement(r["logic"], ("main", "w1"), "c1").register("power_desired").set("on")
    model.report(r["worker.w1"], ("main", "w1"), "c1").register("power_actual").set("on")
    model.node(r["worker.w1"], "main", "w1").register("capacity").set(3)
    r["logic"].remove(model.placement_key(("main", "w1"), "c1"))
    r["web"].remove(model.CONTAINERS + "c1")
    denied = [lambda: model.container(r["worker.w1"], "c1").register("power_desired").set("on"),
              lambda: model.placement(r["worker.w1"], ("main", "w1"), "c1")
              .register("power_desired").set("on"),
              lambda: model.report(r["worker.w2"], ("main", "w1"), "c1")
              .register("power_actual").set("on"),
              # its own slot, but in a placement on another node
              lambda: model.placement(r["worker.w2"], ("main", "w1"), "c1").map("workers")
              .map("w2").register("power_actual").set("on"),
              lambda: model.placement(r["web"], ("main", "w1"), "c1")
              .register("assigned_node").set("w2"),
              lambda: model.container(r["web"], "c1").register("node").set("w1"),
              lambda: model.container(r["web"], "c1").register("cell").set("main"),
              lambda: model.container(r["worker.w1"], "c1").register("rejected_reason").set("x"),
              lambda: model.node(r["worker.w2"], "main", "w1").register("capacity").set(9),
              lambda: r["logic"].remove(model.CONTAINERS + "c1"),
              lambda: r["worker.w1"].remove(model.placement_key(("main", "w1"), "c1"))]
    for attempt in denied:
        before = {k: v.state() for k, v in r.items()}
        with pytest.raises(Forbidden):
            attempt()
        assert {k: v.state() for k, v in r.items()} == before
        assert all(not v.unsent or k in ("web", "logic", "worker.w1") for k, v in r.items())


def test_a_rogue_worker_changes_nothing_anywhere_in_any_delivery_order() -> None:
    r = services()
    model.container(r["web"], "c1").register("power_desired").set("on")
    model.name_home(r["logic"], "c1", ("main", "w1"))
    model.placement(r["logic"], ("main", "w1"), "c1").register("assigned_node").set("w1")
    honest = r["web"].outgoing() + r["logic"].outgoing()
    # the rogue runs without the policy (a modified client) under worker w2's name
    rogue = Replica("worker.w2")
    for m in honest:
        rogue.receive(m)
    model.report(rogue, ("main", "w1"), "c1").register("power_actual").set("on")  # w1's slot
    first = rogue.outgoing()
    model.placement(rogue, ("main", "w1"), "c1").register("power_desired").set("on")
    second = rogue.outgoing()
    for name in ("worker.w1", "logic"):
        # in order: the rogue's first message is refused outright
        rep = r[name]
        for m in honest:
            rep.receive(m)
        before = rep.state()
        with pytest.raises(Forbidden):
            rep.receive(first[0])
        assert rep.state() == before
    # out of order: the second waits for the first, which is refused; nothing applies
    late = Replica("late", policy=model.POLICY)
    late.receive(second[0])
    for m in honest:
        late.receive(m)
    with pytest.raises(Forbidden):
        late.receive(first[0])
    assert late.state() == r["worker.w1"].state() == r["logic"].state()
    assert model.containers(late)[0].power_actual == "off"


def test_sender_must_own_the_origin() -> None:
    a, b = Replica("worker.w1"), Replica("web")
    model.report(a, ("main", "w1"), "c1").register("power_actual").set("on")
    msg = a.outgoing()[0]
    with pytest.raises(Unauthenticated):
        b.receive(msg, sender="worker.w2")
    assert b.state() == {} and dict(b.clock) == {}
    assert b.receive(msg, sender="worker.w1") and b.state() != {}
