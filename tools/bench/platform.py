"""``python -m tools.bench platform``: how the platform's cost grows with its size.

One run starts the real services once (``crdt-ops web``, ``logic`` and two ``worker``
processes over the broker, as :mod:`tools.bench.services` starts them, each worker of
capacity 100,000) and grows the platform through ``--sizes`` (default 500, 5,000, 50,000
container records). At each size it reports:

- **create rate**: records created per second through ``POST /api/containers`` by one
  sequential client, over the records added to reach this size;
- **resident bytes per record**, per service: the growth of the process's resident set
  (``VmRSS`` of ``/proc/<pid>/status``) from before the records were added until every
  service is idle again (its CPU under 5 % of a core over a second; at most 120 s),
  divided by the records added;
- **Start -> on**, p50/p99: ``--starts`` containers started one at a time (the next Start
  once the previous container is "on" at web: :func:`tools.bench.services.timed_start`),
  and a **burst** of ``--burst`` Starts sent at once (each from its POST to "on" at web);
- **CPU per Start**, per service: its CPU time over the one-at-a-time Starts divided by
  their number (ms).

Every record has its own owner (logic's quota never applies); started containers keep
running (local ``sleep`` processes) and are killed at the end with the services.
``--quick`` is a small slice for the tests, not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench.broker import DEFAULT_URL
from tools.bench.cpu import proc_cpu
from tools.bench.report import Progress, info_lines, markdown_table
from tools.bench.services import (
    WORKERS,
    Options,
    Platform,
    create_records,
    machine,
    running_platform,
    timed_start,
)
from tools.bench.stats import nearest_rank

DEFAULT_SIZES = (500, 5_000, 50_000)
QUICK_SIZES = (50, 200)
CAPACITY = 100_000
SETTLE_TIMEOUT_S = 120.0
SERVICES = ("web", "logic", *WORKERS)


@dataclass
class SizeResult:
    """What one size of the platform measured."""

    records: int
    create_per_s: float
    rss_per_record: dict[str, float]  # service -> bytes per record added
    sequential_ms: list[float]
    burst_ms: list[float]
    cpu_ms_per_start: dict[str, float | None]
    settle_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def rss_bytes(pid: int) -> int:
    """The resident set of process ``pid`` in bytes (``VmRSS``); 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _pids(p: Platform) -> dict[str, int]:
    return {name: proc.pid for name, proc in p.services.procs.items()}


async def settle(p: Platform, timeout: float = SETTLE_TIMEOUT_S) -> float:
    """Wait until every service used under 5 % of a core over the last second (it has
    applied what it was sent); returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = {n: proc_cpu(pid) for n, pid in _pids(p).items()}
        await asyncio.sleep(1.0)
        after = {n: proc_cpu(pid) for n, pid in _pids(p).items()}
        busy = [n for n in before if (after[n] or 0) - (before[n] or 0) > 0.05]
        p.services.check()
        if not busy:
            return time.monotonic() - t0
    return time.monotonic() - t0


async def burst(p: Platform, cids: Sequence[str]) -> list[float]:
    """Send a Start for every one of ``cids`` at once; each one's seconds from its POST
    to "on" at web."""
    async def one(cid: str) -> float:
        sample = await timed_start(p, cid)
        return sample.total

    return list(await asyncio.gather(*(one(c) for c in cids)))


async def grow(opt: Options, p: Platform, size: int, have: int, starts: int, bursts: int,
               say: Callable[[str], None]) -> SizeResult:
    """Add records until the platform holds ``size`` (it holds ``have``), then measure."""
    pids = _pids(p)
    rss0 = {n: rss_bytes(pid) for n, pid in pids.items()}
    add = size - have
    t0 = time.perf_counter()
    created: list[str] = []
    while len(created) < add:
        chunk = min(500, add - len(created))
        created += await create_records(p.session, p.base, chunk, f"p{size}-{len(created)}")
        say(f"platform: {have + len(created):,}/{size:,} records "
            f"({len(created) / (time.perf_counter() - t0):,.0f}/s)")
    create_s = time.perf_counter() - t0
    settle_s = await settle(p)
    rss1 = {n: rss_bytes(pid) for n, pid in pids.items()}
    result = SizeResult(size, add / create_s,
                        {n: (rss1[n] - rss0[n]) / add for n in pids},
                        [], [], {}, settle_s)
    need = starts + bursts
    targets = created[-need:] if len(created) >= need else created
    seq, bst = targets[:starts], targets[starts:starts + bursts]
    say(f"platform: {size:,} records: {len(seq)} Starts one at a time")
    cpu0 = {n: proc_cpu(pid) for n, pid in pids.items()}
    for cid in seq:
        result.sequential_ms.append(1000 * (await timed_start(p, cid)).total)
    cpu1 = {n: proc_cpu(pid) for n, pid in pids.items()}
    for n in pids:
        a, b = cpu0[n], cpu1[n]
        result.cpu_ms_per_start[n] = (None if a is None or b is None or not seq
                                      else 1000 * (b - a) / len(seq))
    if bst:
        say(f"platform: {size:,} records: a burst of {len(bst)} Starts")
        result.burst_ms = [1000 * s for s in await burst(p, bst)]
    await settle(p)
    return result


def _p(values: list[float], q: float) -> str:
    return f"{nearest_rank(values, q):.0f}" if values else "-"


def report(results: Sequence[SizeResult], info: dict[str, str], args: argparse.Namespace
           ) -> str:
    rows = []
    for r in results:
        rows.append([
            f"{r.records:,}", f"{r.create_per_s:,.0f}",
            f"{_p(r.sequential_ms, 0.5)} / {_p(r.sequential_ms, 0.99)}",
            f"{_p(r.burst_ms, 0.5)} / {_p(r.burst_ms, 0.99)}",
            " / ".join(f"{r.rss_per_record[n]:,.0f}" for n in SERVICES),
            " / ".join("-" if r.cpu_ms_per_start[n] is None
                       else f"{r.cpu_ms_per_start[n]:.1f}" for n in SERVICES),
            f"{r.settle_s:.0f}",
        ])
    head = ["records", "creates/s", f"Start->on ms p50 / p99 ({args.starts} one at a time)",
            f"burst of {args.burst}: ms p50 / p99", "RSS bytes per record (" + " / ".join(
                SERVICES) + ")", "CPU ms per Start (" + " / ".join(SERVICES) + ")",
            "settle s"]
    title = ("The platform from " + " -> ".join(f"{r.records:,}" for r in results)
             + " records: real crdt-ops services over RabbitMQ")
    return "\n".join([title, "", *info_lines(info), "",
                      markdown_table(head, rows, "rrllllr"), ""])


def run(args: argparse.Namespace) -> int:
    """Run ``platform`` with parsed arguments; print the report to stdout."""
    sizes = tuple(args.sizes) if args.sizes else (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if list(sizes) != sorted(set(sizes)) or sizes[0] < args.starts + args.burst:
        raise SystemExit("--sizes must grow, and the first must hold --starts + --burst records")
    say = Progress(enabled=not args.quiet)
    opt = Options(url=args.url, containers=0, capacity=CAPACITY, batch_delay_ms=None,
                  progress=say)
    info = machine(opt.url)
    say(f"platform: sizes {', '.join(f'{s:,}' for s in sizes)}, on {info['cpu']}")

    async def go() -> list[SizeResult]:
        results: list[SizeResult] = []
        with tempfile.TemporaryDirectory(prefix="crdt-ops-platform-") as tmp:
            async with running_platform(opt, Path(tmp)) as p:
                have = 0
                for size in sizes:
                    results.append(await grow(opt, p, size, have, args.starts, args.burst, say))
                    have = size
                    r = results[-1]
                    say(f"platform: {size:,} records: Start->on p50 "
                        f"{statistics.median(r.sequential_ms):.0f} ms, "
                        f"{r.create_per_s:,.0f} creates/s")
        return results

    results = asyncio.run(go())
    print(report(results, info, args), flush=True)
    say("done")
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="records at each step, comma-separated (default "
                        f"{','.join(map(str, DEFAULT_SIZES))}; --quick: "
                        f"{','.join(map(str, QUICK_SIZES))})")
    p.add_argument("--starts", type=int, default=30, help="Starts one at a time per size")
    p.add_argument("--burst", type=int, default=200, help="Starts sent at once per size")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast run (a smoke test for the tests, not a measurement): "
                        "sizes 50,200 (use with --starts 5 --burst 10)")
    p.add_argument("--url", default=DEFAULT_URL,
                   help="the broker (default: AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=run)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``platform`` subcommand."""
    p = subparsers.add_parser(
        "platform", help="how the services' cost grows from 500 to 50,000 records",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    configure(p)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tools.bench.platform")
    configure(parser)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(run(parser.parse_args()))
