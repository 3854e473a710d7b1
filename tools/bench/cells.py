"""``python -m tools.bench cells``: the services with many workers in cells (issue 15).

Two platforms, one after the other, on one broker, each web, logic and its workers as OS
processes (:func:`tools.bench.services.running_platform`: every worker's lease
``--lease-s``, default 8 s, so a beat every 1.6 s: ``services.lease.beat_interval_s``;
web's and logic's transport heartbeat ``--heartbeat-s``, default 1 s as the demo's; the
workers' ``--worker-heartbeat-s``, default theirs: a beat, ``services.main.worker_heartbeat``):

1. **baseline**: 2 workers in one cell;
2. **cells**: ``--workers`` workers (default 40) in ``--cells`` cells (default 4), in
   blocks (worker-1 .. worker-10 in cell c0, ...).

For each: how many messages each worker received per second while the platform was idle
(``--idle-s``, default 10 s: heartbeats only), read from the workers' own Prometheus
endpoints (``crdt_ops_batch_messages_sum``: messages their consumers handled), and the
CPU the workers, their lease guards, logic, web and the broker used meanwhile (``/proc``);
then
Start->on for ``--containers`` containers (default 200) started one at a time, as
``python -m tools.bench services`` times them (from just before the ``POST .../start``
until web's event stream shows it on), with the messages each worker received per second
meanwhile; each worker's resident memory (``VmRSS``) at the end.

Then, on the cells platform only, every worker of cell c0 is killed (SIGKILL): its
containers must move to other cells, once the workers' leases ran out (logic's rule,
services/liveness.py). Reported: how many moved, how long until the last one was on
again in another cell, and that none of them was still running in c0 (its guard stopped
each container when the lease ran out: its pid is gone).

Last, **the floor** (:mod:`tools.bench.floor`): the CPU a bare aio-pika consumer spends per
message at the rate a worker of the cells platform received messages during the Starts,
beside what the workers spent per message (all their CPU over all their messages); and what
the workers' messages would cost at that floor, in share of a core. On a machine whose cores
the workers share with web, logic and the broker, this bounds how close the two platforms
can come, whatever crdt-ops does per delivery. And for each platform, logic's, web's and the
slowest worker's worst event-loop stall over the run, as each said when it stopped (a full
garbage collection, or heartbeats in step, shows there first). Each platform gets one
warm-up Start per worker first (:func:`tools.bench.services.warmups`).

Targets (issue 15): Start->on p50 and p99 of the cells platform within 1.2x of the
baseline's; a worker's received messages per second and resident memory follow its cell
(the cells platform's workers receive about what the baseline's do, not 20 times more).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.lease import DEFAULT_LEASE_S, beat_interval_s
from services.runtime import alive
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
    Stall,
    _crdt_ops_measure,
    running_platform,
    worst_stall,
)
from tools.bench.stats import nearest_rank

IDLE_S = 10.0
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
    #: each service's event loop's worst stall over its whole run (None: not said), as it
    #: said when it stopped: logic, web and every worker
    stalls: dict[str, Stall | None] = field(default_factory=dict)
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


async def measure(opt: Options, workdir: Path, idle_s: float, kill_cell: bool) -> Run:
    workers = opt.workers
    async with running_platform(opt, workdir) as p:
        await asyncio.sleep(2.0)  # every worker's first full reconcile and beats settle
        watched = (*workers, "logic", "web")
        before = {w: received(p.metrics_ports[w]) for w in watched}
        cpu_before, broker = _idle_cpu(p, workers, workdir), BrokerCpu()
        await asyncio.sleep(idle_s)
        rates = _rates(p, watched, before, idle_s)
        cpu_after = _idle_cpu(p, workers, workdir)
        idle_cpu = {k: (cpu_after[k] - cpu_before[k]) / idle_s for k in cpu_before}
        idle_cpu["broker"] = (broker.used() or 0.0) / idle_s
        idle, front = rates[:len(workers)], dict(zip(("logic", "web"), rates[len(workers):],
                                                     strict=True))
        result = await _crdt_ops_measure(
            opt, p, lambda: {w: received(p.metrics_ports[w]) for w in workers})
        busy = [result.counts[w] / result.seconds for w in workers]
        per_start = [result.counts[w] / max(1, len(result.totals())) for w in workers]
        rss = [rss_bytes(p.services.procs[w].pid) / 2**20 for w in workers]
        used = {k: v or 0.0 for k, v in result.cpu.items()}
        cpu = {"workers": sum(used.get(w, 0.0) for w in workers) / result.seconds,
               **{k: used.get(k, 0.0) / result.seconds for k in ("logic", "web", "broker")}}
        totals = sorted(result.totals())
        run = Run(f"{len(workers)} workers in {opt.cells} cell{'s' * (opt.cells > 1)}",
                  len(workers), opt.cells, 1000 * nearest_rank(totals, 0.5),
                  1000 * nearest_rank(totals, 0.99), idle, busy, per_start, rss, front, cpu,
                  idle_cpu)
        if kill_cell:
            await _kill_a_cell(opt, p, run)
    run.stalls = {name: worst_stall(workdir / f"{name}.log")
                  for name in ("logic", "web", *workers)}
    return run


def _idle_cpu(p: Platform, workers: tuple[str, ...], workdir: Path) -> dict[str, float]:
    """CPU seconds used so far by every worker together, by their lease guards together
    (processes of their own, found by their state directories under ``workdir``), by
    logic and by web."""
    used = {k: v or 0.0 for k, v in p.services.cpu().items()}
    guards = 0.0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (d / "cmdline").read_bytes().split(b"\0")
                if b"services.guard" in cmd and any(str(workdir).encode() in c for c in cmd):
                    guards += proc_cpu(int(d.name)) or 0.0
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


def report(runs: list[Run], opt: Options, idle_s: float, floor: Floor | None = None) -> str:
    info = platform_info()
    lines = [f"## crdt-ops services with workers in cells ({revision()})", "",
             f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores; broker "
             f"{broker_info(opt.url)}. {opt.containers} Starts one at a "
             f"time per platform; workers' lease {opt.lease_s:g} s (a beat every "
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
    lines += [stall_line(r) for r in runs if r.stalls]
    if floor is not None:
        lines += floor_lines(runs, floor)
    return "\n".join(lines)


def stall_line(run: Run) -> str:
    """Logic's, web's and the slowest worker's worst event-loop stall over the run, and
    when (s after the service's start: the platform starts, creates, warms up, times the
    Starts, then kills a cell), as a report line. A full garbage collection, or heartbeats
    in step, show here first."""
    def said(v: Stall | None) -> str:
        return "?" if v is None else f"{1000 * v.s:.1f} (at {v.at_s:.0f} s)"
    workers = {k: v for k, v in run.stalls.items() if k not in ("logic", "web") and v}
    worst = max(workers, key=lambda k: workers[k].s) if workers else None
    return (f"- Worst event-loop stall over the whole run ({run.label}; as each said when it "
            f"stopped), ms: logic {said(run.stalls.get('logic'))}, web "
            f"{said(run.stalls.get('web'))}, workers "
            + (f"up to {said(workers[worst])} ({worst})" if worst else "?") + ".")


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
    p.add_argument("--quick", action="store_true",
                   help="a small, fast run (a smoke test for the tests, not a measurement): "
                        "4 workers in 2 cells, 6 Starts, a 4 s lease, 1 s idle")
    p.set_defaults(run=main)


#: option -> (its default, its default with --quick)
DEFAULTS = {"workers": (40, 4), "cells": (4, 2), "containers": (200, 6), "lease_s": (8.0, 4.0),
            "idle_s": (IDLE_S, 1.0)}


def main(args: argparse.Namespace) -> int:
    fill_defaults(args, DEFAULTS)
    if args.workers < args.cells or args.cells < 2 or args.containers < 1:
        print("python -m tools.bench cells: --cells must be at least 2 and at most --workers, "
              "--containers at least 1", file=sys.stderr)
        return 2
    progress = Progress()
    runs = []
    for workers, cells, kill in ((2, 1, False), (args.workers, args.cells, True)):
        names = tuple(f"worker-{i + 1}" for i in range(workers))
        opt = Options(url=args.url, containers=args.containers,
                      capacity=max(50, 2 * args.containers // workers + 1), batch_delay_ms=None,
                      progress=progress, workers=names, cells=cells, lease_s=args.lease_s,
                      heartbeat_s=args.heartbeat_s,
                      worker_heartbeat_s=args.worker_heartbeat_s, metrics=True,
                      consume=args.consume)

        def once(attempt: int, opt: Options = opt, kill: bool = kill) -> Run:
            with tempfile.TemporaryDirectory(prefix="crdt-ops-bench-cells-") as tmp:
                return asyncio.run(measure(opt, Path(tmp), args.idle_s, kill))
        # a port picked for a metrics endpoint may be taken by the time its service binds
        runs.append(with_retries(f"cells: {workers} workers", progress, once))
        progress(f"cells: {runs[-1].label}: p50 {runs[-1].p50_ms:.1f} ms")
    rate = max(_mean(runs[-1].busy_msgs_per_s), 1.0)
    progress(f"cells: the floor: a bare aio-pika consumer at {rate:.0f} messages a second")
    floor = consumer_floor(args.url, rate, messages=max(10, round(FLOOR_S * rate)))
    print(report(runs, opt, args.idle_s, floor))
    return 0
