"""Logic's index (services/index.py) against the full pass it replaces: after any
sequence of changes to container records, the index kept from change events equals one
rebuilt from every record, and the decisions taken from it (services/logic.py ``plan`` over
the pending records) equal the decisions of the full pass over every record."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_ops import Replica
from services import model
from services.index import ContainerIndex, NodeRecords
from services.logic import Decision, decisions, plan

IDS = [f"c{i}" for i in range(8)]
OWNERS = ["ann", "bob", None]
NODES = ["n1", "n2", "n3"]
EPOCHS = ["e1", "e2"]

change = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(IDS), st.sampled_from(OWNERS),
              st.sampled_from([None, "x"])),
    st.tuples(st.just("power"), st.sampled_from(IDS), st.sampled_from(["on", "off"])),
    st.tuples(st.just("assign"), st.sampled_from(IDS), st.sampled_from([None, *NODES]),
              st.sampled_from([None, *EPOCHS])),
    st.tuples(st.just("reason"), st.sampled_from(IDS), st.sampled_from([None, "quota", "full"])),
    st.tuples(st.just("delete"), st.sampled_from(IDS)),
)
live_nodes = st.dictionaries(st.sampled_from(NODES),
                             st.tuples(st.sampled_from(EPOCHS), st.integers(0, 3),
                                       st.booleans()))


def apply(r: Replica, ch: tuple[object, ...]) -> None:
    kind, cid = ch[0], str(ch[1])
    rec = model.container(r, cid)
    if kind == "create":
        rec.register("owner").set(ch[2])  # type: ignore[arg-type]
        rec.register("name").set(ch[3])  # type: ignore[arg-type]
    elif kind == "power":
        rec.register("power_desired").set(ch[2])  # type: ignore[arg-type]
    elif kind == "assign":
        rec.register("assigned_node").set(ch[2])  # type: ignore[arg-type]
        rec.register("assigned_epoch").set(ch[3])  # type: ignore[arg-type]
    elif kind == "reason":
        rec.register("rejected_reason").set(ch[2])  # type: ignore[arg-type]
    else:
        r.remove(model.CONTAINERS + cid)


def index_state(idx: ContainerIndex) -> tuple[object, ...]:
    return (idx.records, idx.on_at, idx.owner_on, idx.unassigned_on, idx.rejected)


def full_pass(r: Replica, live: dict[str, model.Node], fresh: set[str],
              quota: int) -> list[tuple[str, str | None, str | None]]:
    """The decisions the full pass over every record takes (the rules before the index)."""
    records = model.containers(r)

    def placed(c: model.Container) -> bool:
        n = live.get(c.assigned_node or "")
        return n is not None and c.assigned_epoch == n.epoch

    running = [c for c in records if c.power_desired == "on" and placed(c)]
    load = Counter(c.assigned_node or "" for c in running)
    per_owner = Counter(c.owner for c in running)
    counts: dict[str | None, int] = {}
    out = plan(records, live, fresh, load, lambda o: counts.setdefault(o, per_owner[o]),
               counts, quota)
    return writes(out)


def writes(ds: list[Decision]) -> list[tuple[str, str | None, str | None]]:
    """The writes decisions call for: (container, node placed on, reason shown)."""
    return [(d.container.id, d.node.name if d.node else None, d.reason) for d in ds
            if d.node is not None or d.reason != d.container.rejected_reason]


@settings(max_examples=500, deadline=None)
@given(st.lists(change, min_size=10, max_size=60), live_nodes, st.integers(1, 3))
def test_the_index_kept_from_events_equals_a_full_pass(
        changes: list[tuple[object, ...]], nodes: dict[str, tuple[str, int, bool]],
        quota: int) -> None:
    r = Replica("logic")
    kept = ContainerIndex()
    r.subscribe(model.CONTAINERS, kept.changed)
    for ch in changes:
        apply(r, ch)
    rebuilt = ContainerIndex()
    rebuilt.load(r)
    assert index_state(kept) == index_state(rebuilt)
    live = {name: model.Node(name, capacity, 0, 0, epoch, 30_000)
            for name, (epoch, capacity, _) in nodes.items()}
    fresh = {name for name, (_, _, is_fresh) in nodes.items() if is_fresh}
    assert writes(decisions(kept, live, fresh, quota)) == full_pass(r, live, fresh, quota)


@settings(max_examples=300, deadline=None)
@given(st.lists(change, min_size=10, max_size=60))
def test_a_nodes_records_kept_from_events_equal_a_full_pass(
        changes: list[tuple[object, ...]]) -> None:
    r = Replica("worker")
    kept = {n: NodeRecords(n) for n in NODES}
    for k in kept.values():
        r.subscribe(model.CONTAINERS, k.changed)
    for ch in changes:
        apply(r, ch)
    for name, k in kept.items():
        rebuilt = NodeRecords(name)
        rebuilt.load(r)
        assert k.records == rebuilt.records, name
