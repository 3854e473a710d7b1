"""freeze_survivors (crdt_ops/transport/collector.py): what survives a full garbage
collection is frozen, so the next one scans only what survived since; frozen objects are
still freed by reference counting; the CRDT state leaves no garbage cycles behind when
records are overwritten or removed (a cycle among frozen objects is collected only after
the next rescan)."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from crdt_ops.replica import Replica
from crdt_ops.transport.collector import freeze_survivors, stop_freezing


class Thing:
    """A tracked object that a weak reference can watch."""


@pytest.fixture
def freezing() -> Iterator[None]:
    freeze_survivors()
    try:
        yield
    finally:
        stop_freezing()


def test_a_full_collection_freezes_its_survivors(freezing: None) -> None:
    frozen = gc.get_freeze_count()
    kept = [Thing() for _ in range(10_000)]
    gc.collect()  # a full collection: the things survive it, and are frozen
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert not any(t is kept[0] for t in gc.get_objects(generation=2))
    # a full collection the collector starts by itself does the same: objects that
    # live on, allocated until CPython runs one (a quarter more than it kept: a few
    # hundred thousand at most)
    before = gc.get_freeze_count()
    more: list[Thing] = []
    while gc.get_freeze_count() == before and len(more) < 5_000_000:
        more.extend(Thing() for _ in range(10_000))
    assert gc.get_freeze_count() > before, "no full collection froze anything"
    assert len(kept) == 10_000


def test_a_frozen_object_is_still_freed_when_nothing_refers_to_it(freezing: None) -> None:
    things = [Thing() for _ in range(1_000)]
    watch = weakref.ref(things[0])
    gc.collect()
    assert gc.get_freeze_count() >= len(things)
    del things
    assert watch() is None  # reference counting, no collection needed


def test_stop_freezing_hands_the_frozen_objects_back_to_the_collector() -> None:
    freeze_survivors()
    stop_freezing()
    assert gc.get_freeze_count() == 0
    cycle = Thing()
    cycle.me = cycle  # type: ignore[attr-defined]
    watch = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert watch() is None


def test_the_crdt_state_leaves_no_garbage_cycles() -> None:
    gc.collect()
    r = Replica("logic")
    for i in range(500):
        rec = r.map(f"containers/c{i}")
        for field, value in (("name", f"c{i}"), ("owner", "u"), ("power_desired", "off")):
            rec.register(field).set(value)
    r.outgoing()
    assert gc.collect() == 0
    for i in range(500):
        r.map(f"containers/c{i}").register("power_desired").set("on")
        if i % 2:
            r.remove(f"containers/c{i}")
    r.outgoing()
    r.compact()
    assert gc.collect() == 0


def test_a_cycle_among_frozen_objects_is_collected_after_the_next_rescan() -> None:
    """A frozen object that dies in a cycle (a closed connection's, an event stream's) is
    left alone until the frozen objects are handed back, every ``rescan_s``: then the next
    full collection frees it, and freezes again. Only the test's own collections run:
    an automatic one during the wait (another thread allocating) would hand the frozen
    objects back itself, and the test's last collection, once rescan_s after it, would
    hand back what the one before froze."""
    automatic = gc.isenabled()
    gc.disable()
    # a second between hand-backs: the last two collections, one right after the other,
    # fall within one even on a loaded machine (0.2 s failed once in CI)
    freeze_survivors(rescan_s=1.0)
    try:
        cycle = Thing()
        cycle.me = cycle  # type: ignore[attr-defined]
        watch = weakref.ref(cycle)
        gc.collect()  # it survives, and is frozen
        del cycle
        gc.collect()  # frozen: not scanned
        assert watch() is not None
        time.sleep(1.05)
        gc.collect()  # past rescan_s: this one hands the frozen objects back
        gc.collect()  # and this one scans them all, and freezes the survivors again
        assert watch() is None
        assert gc.get_freeze_count() > 0
    finally:
        stop_freezing()
        if automatic:
            gc.enable()
