"""``python -m tools.bench cells``: the services with many workers in cells (issue 15).

Two platforms on one broker, up side by side, each web, logic and its workers as OS
processes (:func:`tools.bench.services.running_platform`: every worker's lease
``--lease-s``, default 8 s, so a beat every 1.6 s: ``services.lease.beat_interval_s``;
web's and logic's transport heartbeat ``--heartbeat-s``, default 1 s as the demo's; the
workers' ``--worker-heartbeat-s``, default theirs: a beat, ``services.main.worker_heartbeat``):

1. **baseline**: 2 workers in one cell;
2. **cells**: ``--workers`` workers (default 40) in ``--cells`` cells (default 4), in
   blocks (worker-1 .. worker-10 in cell c0, ...).

Only one platform runs at a time: every process of the other one (its services and their
lease guards) is stopped (SIGSTOP) meanwhile, and continued (SIGCONT) when its turn
comes, :data:`RESUMED_SETTLE_S` before anything of it is measured. For each platform, in
turn: how many messages each worker received per second while the platform was idle
(``--idle-s``, default 10 s: heartbeats only), read from the workers' own Prometheus
endpoints (``crdt_ops_batch_messages_sum``: messages their consumers handled), and the
CPU the workers, their lease guards, logic, web and the broker used meanwhile (``/proc``).
Then Start->on for ``--containers`` containers (default 200) per platform, started one at
a time as ``python -m tools.bench services`` times them (from just before the ``POST
.../start`` until web's event stream shows it on), in ``--rounds`` rounds (default 4): in
each round a block of the Starts on each platform, the baseline first in odd rounds and
second in even ones. So both platforms are timed over the same minutes, and a machine
whose speed drifts (a shared VM's does, by half within an hour) moves both: the ratio
is measured side by side, and each round's ratio of medians shows its spread. Meanwhile,
the messages each worker received per second; each worker's resident memory (``VmRSS``)
at the end. (A stopped service's event loop is late by the stop, so the services' worst
event-loop stalls are not reported here; ``python -m tools.bench services`` reports them.)

Then the baseline is stopped and, on the cells platform, every worker of cell c0 is
killed (SIGKILL): its containers must move to other cells, once the workers' leases ran
out (logic's rule, services/liveness.py). Reported: how many moved, how long until the
last one was on again in another cell, and that none of them was still running in c0 (its
guard stopped each container when the lease ran out: its pid is gone).

Last, **the floor** (:mod:`tools.bench.floor`): the CPU a bare aio-pika consumer spends per
message at the rate a worker of the cells platform received messages during the Starts,
beside what the workers spent per message (all their CPU over all their messages); and what
the workers' messages would cost at that floor, in share of a core. On a machine whose cores
the workers share with web, logic and the broker, this bounds how close the two platforms
can come, whatever crdt-ops does per delivery. Each platform gets one warm-up Start per
worker first (:func:`tools.bench.services.warmups`).

Targets (issue 15): Start->on p50 and p99 of the cells platform within 1.2x of the
baseline's; a worker's received messages per second and resident memory follow its cell
(the cells platform's workers receive about what the baseline's do, not 20 times more).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.lease import DEFAULT_LEASE_S, beat_interval_s
from services.pids import alive
from tools.bench import consume
from tools.bench.broker import DEFAULT_URL, broker_info
from tools.bench.census import SERIES, metric_sums
from tools.bench.cpu import BrokerCpu, proc_cpu
from tools.bench.floor import Floor, consumer_floor
from tools.bench.machine import platform_info, revision
from tools.bench.platform import rss_bytes
from tools.bench.quick import fill_defaults
from tools.bench.report import Progress, markdown_table
from tools.bench.retry import Disturbed, with_retries
from tools.bench.services import (
    Options,
    Platform,
    Sample,
    Timed,
    create_records,
    running_platform,
    time_starts,
    timed_start,
    warmups,
)
from tools.bench.stats import nearest_rank

IDLE_S = 10.0
#: Rounds of the timed phase: in each, a block of Starts on each platform.
ROUNDS = 4
#: Seconds a continued platform runs before anything of it is measured: the timers that
#: came due while it was stopped fire, and its beats and heartbeats go out.
RESUMED_SETTLE_S = 2.0
#: Seconds the floor's consumer is measured for (at least 10 messages).
FLOOR_S = 8.0
MOVE_TIMEOUT_S = 120.0


@dataclass
class Run:
    """One platform's measurements."""

    label: str
    workers: int
    cells: int
    p50_ms: float
    p99_ms: float
    idle_msgs_per_s: list[float]  # per worker
    busy_msgs_per_s: list[float]  # per worker, over the timed Starts
    #: per worker, the messages it received over the timed Starts, per Start
    msgs_per_start: list[float]
    rss_mb: list[float]  # per worker, at the end
    #: messages per second logic and web received while idle (they hold every cell)
    idle_front: dict[str, float] = field(default_factory=dict)
    #: share of one core over the timed Starts: every worker together, logic, web, broker
    cpu: dict[str, float] = field(default_factory=dict)
    #: share of one core over the idle window: every worker together, their guards
    #: together, logic, web, broker
    idle_cpu: dict[str, float] = field(default_factory=dict)
    #: each round's Start->on median over the baseline's (the cells platform only)
    round_ratios: list[float] = field(default_factory=list)
    moved: int = 0
    move_s: float | None = None
    left_running: int = 0
    notes: list[str] = field(default_factory=list)


def received(port: int) -> float:
    """Messages a service's consumers handled so far (its Prometheus endpoint)."""
    return metric_sums(port).get(SERIES["received"], 0.0)


def _rates(p: Platform, names: tuple[str, ...], before: dict[str, float],
           seconds: float) -> list[float]:
    return [(received(p.metrics_ports[n]) - before[n]) / seconds for n in names]


def guard_pids(workdir: Path) -> list[int]:
    """The lease guards of the workers whose state directories are under ``workdir``
    (processes of their own, ``services.guard``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (d / "cmdline").read_bytes().split(b"\0")
                if b"services.guard" in cmd and any(str(workdir).encode() in c for c in cmd):
                    pids.append(int(d.name))
    return pids


class Stopper:
    """Stops (SIGSTOP) and continues (SIGCONT) every process of platform ``p``: its services
    and their lease guards (under ``workdir``). Its container processes are left alone
    (they sleep). A stopped platform uses no CPU, and its leases do not run out while it
    is stopped for less than a lease: logic, stopped with its workers, counts a node's
    silence from what it heard (services/liveness.py)."""

    def __init__(self, p: Platform, workdir: Path) -> None:
        self.p, self.workdir = p, workdir
        self._stopped: list[int] = []

    def stop(self) -> None:
        """Stop the platform; nothing more if it is stopped already."""
        if self._stopped:
            return
        pids = [proc.pid for proc in self.p.services.procs.values() if proc.poll() is None]
        for pid in pids + guard_pids(self.workdir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                self._stopped.append(pid)

    def resume(self) -> None:
        for pid in self._stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._stopped.clear()


@dataclass
class Side:
    """One platform of the side-by-side run: how it was started, and what it measured."""

    opt: Options
    p: Platform
    workdir: Path
    stopper: Stopper
    todo: list[list[str]] = field(default_factory=list)  # its timed Starts, a block a round
    idle: list[float] = field(default_factory=list)  # msgs/s: every worker, logic, web
    idle_cpu: dict[str, float] = field(default_factory=dict)
    blocks: list[Timed] = field(default_factory=list)

    @property
    def label(self) -> str:
        n, cells = len(self.opt.workers), self.opt.cells
        return f"{n} workers in {cells} cell{'s' * (cells > 1)}"

    def counters(self) -> dict[str, float]:
        return {w: received(self.p.metrics_ports[w]) for w in self.opt.workers}


async def _turn(sides: list[Side], i: int) -> Side:
    """Stop every platform but ``sides[i]``, continue that one and let it settle."""
    for k, side in enumerate(sides):
        if k != i:
            side.stopper.stop()
    sides[i].stopper.resume()
    await asyncio.sleep(RESUMED_SETTLE_S)
    return sides[i]


async def _idle(side: Side, idle_s: float) -> None:
    """What ``side``'s workers, logic and web received, and the CPU they, the guards and the
    broker used, over ``idle_s`` seconds of an idle platform."""
    p, workers = side.p, side.opt.workers
    watched = (*workers, "logic", "web")
    before = {w: received(p.metrics_ports[w]) for w in watched}
    cpu_before, broker = _idle_cpu(p, workers, side.workdir), BrokerCpu()
    await asyncio.sleep(idle_s)
    side.idle = _rates(p, watched, before, idle_s)
    cpu_after = _idle_cpu(p, workers, side.workdir)
    side.idle_cpu = {k: (cpu_after[k] - cpu_before[k]) / idle_s for k in cpu_before}
    side.idle_cpu["broker"] = (broker.used() or 0.0) / idle_s


def _blocks(cids: list[str], rounds: int) -> list[list[str]]:
    """``cids`` in ``rounds`` consecutive blocks of (nearly) equal size."""
    n = len(cids)
    return [cids[r * n // rounds:(r + 1) * n // rounds] for r in range(rounds)]


def _run(side: Side) -> Run:
    """``side``'s measurements over all its blocks, as a :class:`Run`."""
    workers, blocks = side.opt.workers, side.blocks
    seconds = sum(b.seconds for b in blocks)
    samples = [s for b in blocks for s in b.samples]
    counts = {w: sum(b.counts.get(w, 0.0) for b in blocks) for w in workers}
    used = {k: sum(b.cpu.get(k) or 0.0 for b in blocks)
            for k in ("logic", "web", "broker", *workers)}
    cpu = {"workers": sum(used[w] for w in workers) / seconds,
           **{k: used[k] / seconds for k in ("logic", "web", "broker")}}
    totals = sorted(s.total for s in samples)
    idle, front = side.idle[:len(workers)], dict(zip(("logic", "web"),
                                                     side.idle[len(workers):], strict=True))
    return Run(side.label, len(workers), side.opt.cells, 1000 * nearest_rank(totals, 0.5),
               1000 * nearest_rank(totals, 0.99), idle,
               [counts[w] / seconds for w in workers],
               [counts[w] / max(1, len(samples)) for w in workers],
               [rss_bytes(side.p.services.procs[w].pid) / 2**20 for w in workers], front, cpu,
               side.idle_cpu)


def round_ratios(base: Side, cells: Side) -> list[float]:
    """Each round's Start->on median of ``cells`` over ``base``'s."""
    return [statistics.median(s.total for s in c.samples)
            / statistics.median(s.total for s in b.samples)
            for b, c in zip(base.blocks, cells.blocks, strict=True)]


async def measure(opts: tuple[Options, Options], dirs: tuple[Path, Path], idle_s: float,
                  rounds: int) -> list[Run]:
    """Both platforms up side by side, one running at a time (the module's doc); then the
    baseline stopped and a cell of the other one killed. Raises :class:`Disturbed` if a
    service reconnected to the broker meanwhile."""
    async with contextlib.AsyncExitStack() as cells_up, \
            contextlib.AsyncExitStack() as base_up:
        sides = [Side(opt, p, d, Stopper(p, d)) for opt, d, p in (
            (opts[0], dirs[0], await base_up.enter_async_context(
                running_platform(opts[0], dirs[0]))),
            (opts[1], dirs[1], await cells_up.enter_async_context(
                running_platform(opts[1], dirs[1]))))]
        try:
            for i in (0, 1):
                side = await _turn(sides, i)
                await _idle(side, idle_s)
                cids = await create_records(side.p.base, side.opt.containers, "bench")
                side.todo = _blocks(cids, rounds)
                warm = await create_records(side.p.base, warmups(side.opt), "warmup")
                side.opt.progress(f"{side.label}: created {len(cids)} + {len(warm)} "
                                  "warm-up containers; warming up")
                for cid in warm:
                    await timed_start(side.p, cid)
            for r in range(rounds):
                for i in (0, 1) if r % 2 == 0 else (1, 0):
                    side = await _turn(sides, i)
                    p = side.p

                    async def start(cid: str, p: Platform = p) -> Sample:
                        return await timed_start(p, cid)

                    side.blocks.append(await time_starts(
                        side.opt, f"{side.label}, round {r + 1} of {rounds}", [],
                        side.todo[r], start, p.services, side.counters))
        finally:
            for side in sides:
                side.stopper.resume()
        for side in sides:
            side.p.services.check_connected(f"the run of {side.label}")
        runs = [_run(side) for side in sides]
        runs[1].round_ratios = round_ratios(*sides)
        await base_up.aclose()
        await _kill_a_cell(opts[1], sides[1].p, runs[1])
    return runs


def _idle_cpu(p: Platform, workers: tuple[str, ...], workdir: Path) -> dict[str, float]:
    """CPU seconds used so far by every worker together, by their lease guards together
    (:func:`guard_pids`), by logic and by web."""
    used = {k: v or 0.0 for k, v in p.services.cpu().items()}
    guards = sum(proc_cpu(pid) or 0.0 for pid in guard_pids(workdir))
    return {"workers": sum(used.get(w, 0.0) for w in workers), "guards": guards,
            "logic": used.get("logic", 0.0), "web": used.get("web", 0.0)}


async def _kill_a_cell(opt: Options, p: Platform, run: Run) -> None:
    """Kill every worker of cell c0; wait until each container that ran there is on in
    another cell."""
    cell_of = opt.cell_of()
    doomed = [w for w in opt.workers if cell_of[w] == "c0"]
    there = {cid: rec["pid"] for cid, rec in p.watch.records.items()
             if rec.get("cell") == "c0" and rec.get("power_actual") == "on"}
    opt.progress(f"cells: killing the {len(doomed)} workers of cell c0, which run "
                 f"{len(there)} containers")
    t0 = time.monotonic()
    for w in doomed:
        p.services.procs[w].send_signal(signal.SIGKILL)
    for w in doomed:
        p.services.procs[w].wait()
    while True:
        moved = [cid for cid in there
                 if (rec := p.watch.records.get(cid)) is not None and rec.get("cell") != "c0"
                 and rec.get("power_actual") == "on"]
        if len(moved) == len(there):
            break
        if time.monotonic() - t0 > MOVE_TIMEOUT_S:
            raise Disturbed(f"{len(there) - len(moved)} of c0's containers not on in another "
                            f"cell after {MOVE_TIMEOUT_S:g} s")
        await asyncio.sleep(0.1)
    run.moved, run.move_s = len(there), time.monotonic() - t0
    run.left_running = sum(alive(pid) for pid in there.values())
    for cid in there:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            p.pids.append(int(p.watch.records[cid]["pid"]))


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else 0.0


def cpu_per_message(run: Run) -> float:
    """Milliseconds of CPU the workers spent per message they received during the Starts:
    all their CPU (beats, timers and reactions included) over all their messages."""
    msgs = sum(run.busy_msgs_per_s)
    return 1000 * run.cpu["workers"] / msgs if msgs else 0.0


def floor_lines(runs: list[Run], floor: Floor) -> list[str]:
    """What the workers spent per message against the floor (:mod:`tools.bench.floor`),
    and what the workers' messages would cost at the floor."""
    per = ", ".join(f"{r.label} {cpu_per_message(r):.2f} ms" for r in runs)
    at_floor = ", ".join(f"{r.label} {sum(r.busy_msgs_per_s) * floor.ms_per_message / 10:.0f} %"
                         for r in runs)
    return [f"- CPU per message a worker received during the Starts (all the workers' CPU over "
            f"all their messages): {per}. A bare aio-pika consumer (durable queue, persistent "
            f"{floor.size}-byte messages, an ack each; tools/bench/floor.py) at "
            f"{floor.rate:.0f} messages a second spends {floor.ms_per_message:.2f} ms per "
            f"message on this machine, in this run.",
            f"- At that floor, the messages the workers received during the Starts alone "
            f"would take, in % of one core: {at_floor}."]


def report(runs: list[Run], opt: Options, idle_s: float, rounds: int,
           floor: Floor | None = None) -> str:
    info = platform_info()
    lines = [f"## crdt-ops services with workers in cells ({revision()})", "",
             f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores; broker "
             f"{broker_info(opt.url)}. {opt.containers} Starts one at a "
             f"time per platform, in {rounds} rounds of a block on each (side by side: "
             f"the platform not timed is stopped); workers' lease {opt.lease_s:g} s (a beat every "
             f"{beat_interval_s(opt.lease_s or DEFAULT_LEASE_S):g} s); transport heartbeat "
             f"of web and logic {opt.heartbeat_s:g} s, of the workers "
             + (f"{opt.worker_heartbeat_s:g} s" if opt.worker_heartbeat_s is not None
                else "their default") + f"; idle window {idle_s:g} s.",
             ""]
    rows = [(r.label, f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
             f"{_mean(r.idle_msgs_per_s):.1f} (max {max(r.idle_msgs_per_s):.1f})",
             f"{_mean(r.busy_msgs_per_s):.1f} (max {max(r.busy_msgs_per_s):.1f})",
             f"{_mean(r.msgs_per_start):.2f} (max {max(r.msgs_per_start):.2f})",
             f"{_mean(r.rss_mb):.1f} (max {max(r.rss_mb):.1f})",
             f"{r.idle_front['logic']:.0f} / {r.idle_front['web']:.0f}",
             " / ".join(f"{100 * r.cpu[k]:.0f}" for k in ("workers", "logic", "web", "broker")),
             " / ".join(f"{100 * r.idle_cpu[k]:.1f}"
                        for k in ("workers", "guards", "logic", "web", "broker")))
            for r in runs]
    lines.append(markdown_table(["platform", "Start->on p50 ms", "p99 ms",
                                 "msgs/s a worker received, idle", "... during the Starts",
                                 "msgs a worker received per Start", "worker RSS MB",
                                 "msgs/s logic / web received, idle",
                                 "% of a core during the Starts: all workers / logic / web / "
                                 "broker",
                                 "% of a core idle: all workers / their guards / logic / web / "
                                 "broker"], rows, "lrrrrrrrrr"))
    base, cells = runs[0], runs[-1]
    lines += ["", f"- Start->on p50 {cells.p50_ms / base.p50_ms:.2f}x the baseline's, p99 "
              f"{cells.p99_ms / base.p99_ms:.2f}x (target: within 1.2x)."]
    if cells.move_s is not None:
        lines.append(f"- Cell c0's workers killed: {cells.moved} containers on again in other "
                     f"cells after {cells.move_s:.1f} s; {cells.left_running} of their old "
                     "processes still running (0: none ran twice).")
    if cells.round_ratios:
        lines.append("- Each round's Start->on median over the baseline's, in the order run: "
                     + ", ".join(f"{x:.2f}x" for x in cells.round_ratios) + ".")
    if floor is not None:
        lines += floor_lines(runs, floor)
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("cells", help="the services with many workers in cells",
                              description=__doc__)
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--workers", type=int, default=None, help="default 40; --quick: 4")
    p.add_argument("--cells", type=int, default=None, help="default 4; --quick: 2")
    p.add_argument("--containers", type=int, default=None, help="default 200; --quick: 6")
    p.add_argument("--lease-s", type=float, default=None, help="default 8 s; --quick: 4 s")
    p.add_argument("--heartbeat-s", type=float, default=1.0,
                   help="web's and logic's transport heartbeat (default 1 s, as the demo's)")
    p.add_argument("--worker-heartbeat-s", type=float, default=None,
                   help="the workers' transport heartbeat (default: theirs, a beat of their "
                        "node when that is longer than 2 s: services.main.worker_heartbeat)")
    consume.add_argument(p, None)
    p.add_argument("--idle-s", type=float, default=None,
                   help=f"default {IDLE_S:g} s; --quick: 1 s")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"rounds of the timed phase, each a block of Starts on each platform "
                        f"(default {ROUNDS}; --quick: 2)")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast run (a smoke test for the tests, not a measurement): "
                        "4 workers in 2 cells, 6 Starts, a 4 s lease, 1 s idle")
    p.set_defaults(run=main)


#: option -> (its default, its default with --quick)
DEFAULTS = {"workers": (40, 4), "cells": (4, 2), "containers": (200, 6), "lease_s": (8.0, 4.0),
            "idle_s": (IDLE_S, 1.0), "rounds": (ROUNDS, 2)}


def main(args: argparse.Namespace) -> int:
    fill_defaults(args, DEFAULTS)
    if args.workers < args.cells or args.cells < 2 or args.rounds < 1 \
            or args.containers < args.rounds:
        print("python -m tools.bench cells: --cells must be at least 2 and at most --workers, "
              "--rounds at least 1 and --containers at least --rounds", file=sys.stderr)
        return 2
    progress = Progress()
    opts = []
    for workers, cells in ((2, 1), (args.workers, args.cells)):
        names = tuple(f"worker-{i + 1}" for i in range(workers))
        opts.append(Options(url=args.url, containers=args.containers,
                            capacity=max(50, 2 * args.containers // workers + 1),
                            batch_delay_ms=None, progress=progress, workers=names, cells=cells,
                            lease_s=args.lease_s, heartbeat_s=args.heartbeat_s,
                            worker_heartbeat_s=args.worker_heartbeat_s, metrics=True,
                            consume=args.consume, disk_sync=args.disk_sync))

    def once(attempt: int) -> list[Run]:
        with tempfile.TemporaryDirectory(prefix="crdt-ops-bench-cells-") as a, \
                tempfile.TemporaryDirectory(prefix="crdt-ops-bench-cells-") as b:
            return asyncio.run(measure((opts[0], opts[1]), (Path(a), Path(b)), args.idle_s,
                                       args.rounds))
    # a port picked for a metrics endpoint may be taken by the time its service binds
    runs = with_retries("cells", progress, once)
    for run in runs:
        progress(f"cells: {run.label}: p50 {run.p50_ms:.1f} ms")
    rate = max(_mean(runs[-1].busy_msgs_per_s), 1.0)
    progress(f"cells: the floor: a bare aio-pika consumer at {rate:.0f} messages a second")
    floor = consumer_floor(args.url, rate, messages=max(10, round(FLOOR_S * rate)))
    print(report(runs, opts[-1], args.idle_s, args.rounds, floor))
    return 0
