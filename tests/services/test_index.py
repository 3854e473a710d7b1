"""Logic's index (services/index.py) against the full pass it replaces: after any
sequence of changes to container records and their placements in cells, the index kept
from the joined records' change events (services/containers.py) equals one rebuilt from
every record, and the decisions taken from it (services/logic.py ``plan`` over
the pending records) equal the decisions of the full pass over every record. The same for a
worker's records (``NodeRecords``). And the sliced full pass the services run
(``reload``, yielding between slices) ends equal to a full pass in one go however changes
interleave with its slices, and finds drift (changes the view missed)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_ops import Replica
from services import model
from services.containers import Containers
from services.index import ContainerIndex, NodeRecords, _differing
from services.logic import Decision, decisions, plan

IDS = [f"c{i}" for i in range(8)]
OWNERS = ["ann", "bob", None]
NODES = ["n1", "n2", "n3"]
EPOCHS = ["e1", "e2"]
CELLS = ["a", "b"]

change = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(IDS), st.sampled_from(OWNERS),
              st.sampled_from([None, "x"])),
    st.tuples(st.just("power"), st.sampled_from(IDS), st.sampled_from(["on", "off"])),
    st.tuples(st.just("assign"), st.sampled_from(IDS), st.sampled_from(CELLS),
              st.sampled_from([None, *NODES]), st.sampled_from([None, *EPOCHS])),
    st.tuples(st.just("copy"), st.sampled_from(IDS), st.sampled_from(CELLS),
              st.sampled_from(NODES), st.sampled_from(["on", "off"]), st.integers(0, 2)),
    st.tuples(st.just("home"), st.sampled_from(IDS), st.sampled_from([None, *CELLS]),
              st.sampled_from([None, *NODES])),
    st.tuples(st.just("unplace"), st.sampled_from(IDS), st.sampled_from(CELLS),
              st.sampled_from(NODES)),
    st.tuples(st.just("reason"), st.sampled_from(IDS), st.sampled_from([None, "quota", "full"])),
    st.tuples(st.just("delete"), st.sampled_from(IDS)),
)
#: node -> (its live epoch, its capacity, fresh, how many its worker counts running)
live_nodes = st.dictionaries(st.sampled_from(NODES),
                             st.tuples(st.sampled_from(EPOCHS), st.integers(0, 3),
                                       st.booleans(), st.integers(0, 3)))


def apply(r: Replica, ch: tuple[object, ...]) -> None:
    """One change, to ``r`` (a replica holding every key: the platform's and the cells')."""
    kind, cid = ch[0], str(ch[1])
    rec = model.container(r, cid)
    if kind == "create":
        rec.register("owner").set(ch[2])  # type: ignore[arg-type]
        rec.register("name").set(ch[3])  # type: ignore[arg-type]
    elif kind == "power":
        rec.register("power_desired").set(ch[2])  # type: ignore[arg-type]
    elif kind == "assign":  # as logic places: the record names the home; the placement
        home = (str(ch[2]), str(ch[3] or NODES[0]))  # (None: a placement naming no node)
        rec.register("cell").set(home[0])
        rec.register("node").set(home[1])
        placed = model.placement(r, home, cid)
        placed.register("assigned_node").set(ch[3])  # type: ignore[arg-type]
        placed.register("assigned_epoch").set(ch[4])  # type: ignore[arg-type]
    elif kind == "copy":
        placed = model.placement(r, (str(ch[2]), str(ch[3])), cid)
        placed.register("power_desired").set(ch[4])  # type: ignore[arg-type]
        placed.register("restart_generation").set(ch[5])  # type: ignore[arg-type]
    elif kind == "home":
        rec.register("cell").set(ch[2])  # type: ignore[arg-type]
        rec.register("node").set(ch[3])  # type: ignore[arg-type]
    elif kind == "unplace":
        r.remove(model.placement_key((str(ch[2]), str(ch[3])), cid))
    elif kind == "reason":
        rec.register("rejected_reason").set(ch[2])  # type: ignore[arg-type]
    else:
        r.remove(model.CONTAINERS + cid)


def index_state(idx: ContainerIndex) -> tuple[object, ...]:
    return (idx.records, idx.on_at, idx.owner_on, idx.unassigned_on, idx.rejected,
            idx.unsynced)


def full_pass(r: Replica, live: dict[str, model.Node], fresh: set[str],
              quota: int) -> list[tuple[str, str | None, str | None]]:
    """The decisions the full pass over every record takes (the rules before the index)."""
    records = model.containers(r)

    def placed(c: model.Container) -> bool:
        n = live.get(c.assigned_node or "")
        return n is not None and c.assigned_epoch == n.epoch

    running = [c for c in records if c.power_desired == "on" and placed(c)]
    load = Counter(c.assigned_node or "" for c in running)
    for name, n in live.items():  # what its worker counts running, when that is more
        load[name] = max(load[name], n.running)
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
    Containers(r).subscribe(model.CONTAINERS, kept.changed)
    for ch in changes:
        apply(r, ch)
    rebuilt = ContainerIndex()
    rebuilt.load(Containers(r))
    assert index_state(kept) == index_state(rebuilt)
    live = {name: model.Node(name, capacity, 0, running, epoch, 30_000)
            for name, (epoch, capacity, _, running) in nodes.items()}
    fresh = {name for name, (_, _, is_fresh, _) in nodes.items() if is_fresh}
    assert writes(decisions(kept, live, fresh, quota)) == full_pass(r, live, fresh, quota)


@settings(max_examples=300, deadline=None)
@given(st.lists(change, min_size=10, max_size=60))
def test_a_nodes_records_kept_from_events_equal_a_full_pass(
        changes: list[tuple[object, ...]]) -> None:
    r = Replica("worker")
    kept = {n: NodeRecords(n, prefix=model.placements("a", n)) for n in NODES}
    for k in kept.values():
        r.subscribe(k.prefix, k.changed)
    for ch in changes:
        apply(r, ch)
    for name, k in kept.items():
        rebuilt = NodeRecords(name, prefix=k.prefix)
        rebuilt.load(r)
        assert k.records == rebuilt.records, name


def views() -> list[ContainerIndex | NodeRecords]:
    """Logic's index and each node's records (of cell a)."""
    return [ContainerIndex(),
            *(NodeRecords(n, prefix=model.placements("a", n)) for n in NODES)]


def source(v: ContainerIndex | NodeRecords, r: Replica) -> Replica | Containers:
    """What ``v`` is kept from: logic's index from the joined records, a node's records
    from its cell's placements."""
    return Containers(r) if isinstance(v, ContainerIndex) else r


def watch(v: ContainerIndex | NodeRecords, r: Replica) -> Callable[[], None]:
    """Keep ``v`` from ``r``'s change events; returns the function that stops it."""
    return source(v, r).subscribe(v.prefix, v.changed)


def state(v: ContainerIndex | NodeRecords) -> tuple[object, ...]:
    return index_state(v) if isinstance(v, ContainerIndex) else (v.records,)


def full(v: ContainerIndex | NodeRecords, r: Replica) -> tuple[object, ...]:
    """The state of ``v``'s kind of view rebuilt from every record of ``r`` in one go."""
    rebuilt = ContainerIndex() if isinstance(v, ContainerIndex) \
        else NodeRecords(v.node, prefix=v.prefix)
    rebuilt.load(source(v, r))
    return state(rebuilt)


def step(coro: Coroutine[Any, Any, int]) -> int | None:
    """Run ``coro`` to its next yield to the event loop (``asyncio.sleep(0)``); its result
    once it returned, else None."""
    try:
        coro.send(None)
    except StopIteration as done:
        return int(done.value)
    return None


@settings(max_examples=400, deadline=None)
@given(st.lists(change, max_size=40), st.lists(st.lists(change, max_size=3), max_size=40),
       st.integers(1, 3), st.integers(1, 3))
def test_a_sliced_pass_interleaved_with_changes_ends_equal_to_a_full_pass(
        before: list[tuple[object, ...]], during: list[list[tuple[object, ...]]],
        slice_keys: int, check_keys: int) -> None:
    """Changes land between the slices of a pass (and between the chunks of its final
    comparison) and after it: each view ends equal to a full pass in one go, and a view
    kept from every event shows no drift. (Fails when the pass sets a record back to a
    value it read before a change, or a change during the pass is lost at the swap.)"""
    r = Replica("logic")
    vs = views()
    for v in vs:
        watch(v, r)
    for ch in before:
        apply(r, ch)
    passes = [v.reload(source(v, r), slice_keys=slice_keys, check_keys=check_keys)
              for v in vs]
    drift: list[int | None] = [None] * len(vs)
    batches = iter(during)
    while any(d is None for d in drift):
        for i, coro in enumerate(passes):
            if drift[i] is None:
                drift[i] = step(coro)
        for ch in next(batches, []):
            apply(r, ch)
    assert drift == [0] * len(vs)
    for v in vs:
        assert v.loaded and state(v) == full(v, r), v
    for batch in batches:  # the rest: kept from events again
        for ch in batch:
            apply(r, ch)
    for v in vs:
        assert state(v) == full(v, r), v


@settings(max_examples=300, deadline=None)
@given(st.lists(change, max_size=30), st.lists(change, min_size=1, max_size=10),
       st.integers(1, 3))
def test_a_sliced_pass_finds_and_repairs_what_the_view_missed(
        seen: list[tuple[object, ...]], missed: list[tuple[object, ...]],
        slice_keys: int) -> None:
    """Changes a view was not told of (its drift): the pass reports drift exactly when the
    view differed from a full pass, and ends equal to it."""
    r = Replica("logic")
    vs = views()
    unsubscribe = [watch(v, r) for v in vs]
    for ch in seen:
        apply(r, ch)
    for off in unsubscribe:
        off()
    for ch in missed:
        apply(r, ch)
    for v in vs:
        watch(v, r)
        differed = state(v) != full(v, r)
        coro = v.reload(source(v, r), slice_keys=slice_keys, check_keys=2)
        drift = None
        while drift is None:
            drift = step(coro)
        assert (drift > 0) == differed, (v, drift)
        assert state(v) == full(v, r), v


def test_the_final_comparison_counts_every_difference() -> None:
    """The derived sets: members missing, extra or different (large sets member by
    member), compared a chunk at a time."""
    def count(kept: Any, built: Any, **kw: Any) -> int:
        coro = _differing(kept, built, chunk=2, **kw)
        n = None
        while n is None:
            n = step(coro)
        return n

    assert count({"a", "b", "c"}, {"a", "b", "c"}) == 0
    assert count({"a", "b", "c"}, {"a", "d"}) == 3  # b, c missing; d extra
    assert count({"k": {"a"}, "j": {"b"}}, {"k": {"a"}, "j": {"c"}}) == 1
    assert count({"k": {"a", "b", "c", "d"}}, {"k": {"a", "b", "c", "e"}}) == 2
    assert count({"k": 1, "j": 2}, {"k": 3}, values=False) == 1
    assert count({}, {"x": 1}) == 1


def test_one_pass_at_a_time() -> None:
    r = Replica("logic")
    idx = ContainerIndex()
    watch(idx, r)
    for cid in ("c1", "c2"):
        apply(r, ("create", cid, "ann", "x"))
    running = idx.reload(Containers(r), slice_keys=1)
    assert step(running) is None  # the first slice is read; it yields
    second = idx.reload(Containers(r))
    try:
        step(second)
    except RuntimeError as e:
        assert "already under way" in str(e)
    else:
        raise AssertionError("a second pass ran while one was under way")
    while step(running) is None:
        pass
    assert idx.loaded and state(idx) == full(idx, r)
