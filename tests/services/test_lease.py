"""The lease rule (services/lease.py and services/liveness.py), sans-IO: the rules one
by one, then random histories of a worker and logic over a FIFO broker, with pauses,
slow confirms and slow queues, checked for the guarantee: logic never declares an
epoch gone while that epoch's lease can still hold."""

from __future__ import annotations

import asyncio
import heapq
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services import lease, model
from services.lease import Lease
from services.liveness import Liveness


def test_a_confirmed_beat_renews_from_when_it_was_written() -> None:
    ls = Lease("e1", 8.0)
    assert not ls.may_run(0.0)  # not held before the first confirmed beat
    assert ls.renew(10.0, 10.5)
    assert ls.deadline == 18.0 and ls.run_until == 16.0
    assert ls.may_run(15.9) and not ls.may_run(16.0)
    assert not ls.lapsed(17.9) and ls.lapsed(18.0)


def test_a_late_confirmation_or_a_beat_after_the_end_renews_nothing() -> None:
    ls = Lease("e1", 8.0)
    assert ls.renew(0.0, 0.1)
    assert not ls.renew(1.0, 3.5)  # seen 2.5 s after writing: more than a quarter lease
    assert not ls.renew(8.0, 8.1)  # written once the lease had run out
    assert ls.deadline == 8.0
    assert not ls.renew(-1.0, -0.9)  # an older beat does not shorten it


def test_an_epoch_never_held_within_its_lease_is_over() -> None:
    """Every beat confirmed later than a quarter of the lease (a slow broker): the epoch was
    never held, so nothing ran, and logic, which received its beats, kept taking the node
    for fresh: what it placed there waited for as long. The epoch is over after one lease
    (the worker starts another, and logic places anew)."""
    ls = Lease("e1", 8.0, began=100.0)
    assert not ls.renew(101.0, 103.5)  # confirmed 2.5 s after: too late
    assert not ls.lapsed(107.9) and ls.lapsed(108.0)
    held = Lease("e2", 8.0, began=100.0)
    assert held.renew(107.0, 107.1)  # held at last: over at its deadline only
    assert not held.lapsed(114.9) and held.lapsed(115.0)
    assert not Lease("e3", 8.0).lapsed(1e9)  # when it began is not known: held or not


def test_a_lease_file_round_trips_and_a_missing_one_is_none(tmp_path: Path) -> None:
    f = tmp_path / lease.LEASE_FILE
    assert lease.load(f) is None
    ls = Lease("abc", 12.0, 100.0)
    lease.save(f, ls, 4242)
    saved = lease.load(f)
    assert saved is not None and saved.lease == ls and saved.worker_pid == 4242
    f.write_text("{not json")
    assert lease.load(f) is None
    with pytest.raises(ValueError, match="more than 0"):
        Lease("x", 0)


def test_silence_while_logic_cannot_hear_proves_nothing() -> None:
    live = Liveness(started=0.0, margin_s=1.0)
    live.heard("n1", "e1", 5.0)
    # logic heard nothing routed after 6.0 (the broker went away): however late it is
    assert not live.gone("n1", "e1", "e1", lease_s=8.0, heard_through=6.0)
    # once it has heard everything up to 5 + 8 x 1.25 + 1 = 16, the epoch is gone
    assert not live.gone("n1", "e1", "e1", lease_s=8.0, heard_through=15.9)
    assert live.gone("n1", "e1", "e1", lease_s=8.0, heard_through=16.0)
    # a node that announced another epoch: the old one is over at once
    assert live.gone("n1", "e1", "e2", lease_s=8.0, heard_through=6.0)


def test_logic_restarting_counts_every_epoch_as_heard_at_its_start() -> None:
    live = Liveness(started=100.0)
    assert not live.gone("n1", "e1", "e1", lease_s=8.0, heard_through=110.0)
    assert not live.fresh("n1", "e1", 8.0, 110.0)  # nothing new goes to an unheard node
    live.heard("n1", "e1", 111.0)
    assert live.fresh("n1", "e1", 8.0, 112.0)


def test_a_beat_confirmed_late_but_in_time_keeps_its_epoch_alive_at_logic() -> None:
    """Why logic waits a quarter lease more than the lease: a worker paused for most of
    its lease writes a beat just before the end; the broker routes it slowly (within
    the quarter, so it renews), after a probe of logic's that came back quickly."""
    ls, live = Lease("e1", 8.0), Liveness(started=0.0, margin_s=0.0)
    assert ls.renew(0.0, 0.03)
    live.heard("n1", "e1", 0.02)  # b1 received
    # paused until 6.5; b2 written then, routed at 8.4, its confirm seen at 8.45
    assert ls.renew(6.5, 8.45) and ls.deadline == 14.5
    # logic's probe published at 8.1 came back before b2 was routed: heard through 8.1
    assert not live.gone("n1", "e1", "e1", lease_s=8.0, heard_through=8.1)
    assert live.gone("n1", "e1", "e1", lease_s=8.0, heard_through=10.02)
    live.heard("n1", "e1", 8.5)  # b2 received
    assert not live.gone("n1", "e1", "e1", lease_s=8.0, heard_through=14.5)


def test_an_epoch_presumed_fresh_at_the_start_until_a_receipt_or_its_time() -> None:
    """Logic restarting may place on an epoch whose record's last beat is recent by the
    wall clocks (presumed fresh), but presumption never delays or hastens ``gone``."""
    live = Liveness(started=100.0, margin_s=1.0)
    live.presume("n1", "e1", until=105.0)
    assert live.fresh("n1", "e1", 8.0, 100.5) and live.fresh("n1", "e1", 8.0, 105.0)
    assert not live.fresh("n1", "e1", 8.0, 105.1)  # its time is up, nothing received
    assert not live.fresh("n2", "e1", 8.0, 100.5)  # another node: not presumed
    # gone by receipts only: heard at the start, 100 + 8 x 1.25 + 1 = 111
    assert not live.gone("n1", "e1", "e1", lease_s=8.0, heard_through=110.9)
    assert live.gone("n1", "e1", "e1", lease_s=8.0, heard_through=111.0)
    live.heard("n1", "e1", 106.0)  # a receipt supersedes the presumption
    assert live.fresh("n1", "e1", 8.0, 113.0) and not live.fresh("n1", "e1", 8.0, 114.5)
    live.forget(set())
    assert not live.fresh("n1", "e1", 8.0, 100.5)


@dataclass(order=True)
class Event:
    at: float
    kind: str = field(compare=False)
    data: tuple[float, ...] = field(compare=False, default=())


def history(seed: int) -> tuple[int, int]:
    """One random history; returns (epochs declared gone, renewals). Raises
    AssertionError if logic declared an epoch gone while its lease could hold."""
    rnd = random.Random(seed)
    L, hb = rnd.choice([4.0, 8.0, 30.0]), rnd.choice([0.5, 1.0])
    ls = Lease("e0", L)
    epoch_no = 0
    live = Liveness(started=0.0, margin_s=0.5)
    heard_through = 0.0
    paused_until = {"worker": 0.0, "logic": 0.0}
    for who in ("worker", "logic"):  # a pause of up to 2.5 leases somewhere
        if rnd.random() < 0.6:
            start = rnd.uniform(0, 60)
            paused_until[who + "_from"] = start
            paused_until[who] = start + rnd.uniform(0, 2.5 * L)
    events: list[Event] = []
    logic_queue: list[tuple[float, str, tuple[float, ...]]] = []  # FIFO by routing time
    gone_at: dict[str, float] = {}
    final: dict[str, float] = {}
    renewals = 0
    seen = 0  # the latest epoch logic received a beat of

    def paused(who: str, t: float) -> bool:
        return paused_until.get(who + "_from", 1e9) <= t < paused_until[who]

    def route_delay() -> float:
        return rnd.uniform(0.001, 0.05) if rnd.random() < 0.85 else rnd.uniform(0.1, L / 3)

    t = 0.0
    next_beat = next_probe = 0.0
    while t < 120:
        if not paused("worker", t):
            if ls.lapsed(t):
                final[ls.epoch] = ls.deadline
                epoch_no += 1
                ls = Lease(f"e{epoch_no}", L)
            if t >= next_beat:
                next_beat = t + hb
                routed = t + route_delay()
                heapq.heappush(events, Event(routed, "route-beat", (t, epoch_no)))
        if not paused("logic", t) and t >= next_probe:
            next_probe = t + 1.0
            heapq.heappush(events, Event(t + route_delay(), "route-probe", (t,)))
        while events and events[0].at <= t:
            ev = heapq.heappop(events)
            if ev.kind in ("route-beat", "route-probe"):
                logic_queue.append((ev.at, ev.kind, ev.data))
                if ev.kind == "route-beat":  # the worker sees the confirm a little later
                    heapq.heappush(events, Event(ev.at + rnd.uniform(0, 0.05), "confirm",
                                                 ev.data))
            elif ev.kind == "confirm":
                written, no = ev.data
                if paused("worker", t):
                    heapq.heappush(events, Event(paused_until["worker"], "confirm", ev.data))
                elif int(no) == epoch_no and ls.renew(written, t):
                    renewals += 1
        if not paused("logic", t):  # logic consumes, in spells slowly, and checks
            for _ in range(rnd.choice([0, 0, 1, 1, 2, 5])):
                if not logic_queue:
                    break
                _, kind, data = logic_queue.pop(0)
                if kind == "route-probe":
                    heard_through = max(heard_through, data[0])
                else:
                    seen = max(seen, int(data[1]))
                    live.heard("n", f"e{int(data[1])}", t)
            current = f"e{seen}"  # what logic's copy of the node record says
            for e in {f"e{i}" for i in range(seen + 1)} - set(gone_at):
                if live.gone("n", e, current, L, heard_through):
                    gone_at[e] = t
        t += 0.05
    final[ls.epoch] = ls.deadline
    for e, at in gone_at.items():
        assert final.get(e, 0.0) <= at, (f"seed {seed}: {e} declared gone at {at:.2f} "
                                         f"but its lease ran to {final.get(e):.2f}")
    return len(gone_at), renewals


def test_random_histories_never_declare_a_holding_lease_gone() -> None:
    declared = renewals = 0
    for seed in range(150):
        g, r = history(seed)
        declared += g
        renewals += r
    assert declared > 10 and renewals > 1000  # the histories did exercise both sides


@pytest.mark.parametrize(("left_s", "lease_s", "why"), [
    (25.0, 20.0, "--lease-s changed from 30 to 20"),  # the lease holds, with another length
    (2.0, 30.0, "the lease of epoch e-old ran out"),  # in its grace: being stopped
])
def test_a_worker_starting_a_new_epoch_stops_the_old_one_s_containers_first(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, left_s: float, lease_s: float,
        why: str) -> None:
    """Logic takes a new epoch announced for the end of the old one and places the old
    one's containers elsewhere at once (services/liveness.py): a worker restarted with
    another ``--lease-s``, or in its lease's grace, used to announce it in its first beat
    while the old epoch's containers still ran."""
    from crdt_ops.transport.memory import MemoryBus, MemoryNode
    from services.runtime import ProcessRuntime
    from services.worker import Worker
    from tests.support import cell_only

    rt = ProcessRuntime(tmp_path)
    rt.start("c1")
    old = lease.Lease("e-old", 30.0, deadline=lease.clock() + left_s)
    lease.save(tmp_path / lease.LEASE_FILE, old, os.getpid())
    wn = cell_only(MemoryNode(MemoryBus(), "worker.n1", policy=model.POLICY))
    at_beats: list[dict[str, int]] = []  # what ran at each beat

    async def run() -> Worker:
        await wn.start()
        worker = Worker(wn, "n1", rt, state_dir=tmp_path, use_guard=False, lease_s=lease_s)
        wn.groups.subscribe(model.node_key(model.DEFAULT_CELL, "n1"),
                            lambda _: at_beats.append(rt.running()))
        task = asyncio.create_task(worker.run())
        while not at_beats and not task.done():
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return worker

    try:
        with caplog.at_level("WARNING"):
            worker = asyncio.run(run())
        assert worker.lease.epoch != "e-old"
        assert at_beats and at_beats[0] == {}, "the new epoch was beaten while c1 ran"
        assert f"stopping 1 containers before starting epoch {worker.lease.epoch} ({why})" \
            in caplog.text
    finally:
        rt.stop_all(rt.running(), grace_s=0.1)
