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
  their number (ms);
- **message bytes**, mean and largest, of the messages web's stores logged while the
  platform grew to this size and was started (its own creates, and what logic and the
  workers wrote: placements, reports, beats), as they travel (the wire's bytes); those a
  snapshot dropped from the log meanwhile are not counted.

At the largest size it also measures:

- **restart**: each of web, logic and one worker in turn is stopped with SIGTERM (the
  seconds until it exited are shown) and started again with the same command, environment
  and store; the seconds from its start until it serves again: for web, ``/healthz``
  answers 200 and ``GET /api/containers/{id}`` of a known record answers; for logic, a
  Start sent while it was down is "on" at web (logic placed it, and the worker started
  it); for the worker (the one running that container), a Stop sent while it was down is
  "off" at web (it reconciled). Beside it, the length of the service's first full pass
  (its log line), what of the restart its index took;
- **snapshot**: what the durable snapshot costs at that size, which a service takes
  every ``--snapshot-every`` (20,000) operations, encoded in a forked child
  (``crdt_ops/transport/durable.py`` ``snapshot_aside()``): on a copy of logic's store
  (SQLite's backup of the live file), the replica restored from it, then the fork and the
  write (``Store.save_snapshot()``, dropping the log it covers), which hold the event
  loop, and the child's encoding, which does not, timed; beside them
  ``Replica.snapshot()`` on the caller's thread, as the loop was held before.

Every record has its own owner (logic's quota never applies); started containers keep
running (local ``sleep`` processes) and are killed at the end with the services.
``--quick`` is a small slice for the tests, not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from crdt_ops.transport import forking
from crdt_ops.transport.durable import restore
from crdt_ops.transport.store import Store
from tools.bench.broker import DEFAULT_URL
from tools.bench.cpu import proc_cpu
from tools.bench.quick import fill_defaults
from tools.bench.report import Progress, info_lines, markdown_table
from tools.bench.services import (
    WORKERS,
    EventWatch,
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
#: Longest wait for a restarted service to serve, and for a service to exit on SIGTERM.
RESTART_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
#: What "serving again" means, per kind of service restarted.
SERVING = {
    "web": "/healthz 200 and GET /api/containers/{id} answers",
    "logic": "a Start sent while it was down is on at web",
    "worker": "a Stop sent while it was down is off at web",
}
_FIRST_PASS = re.compile(r"records loaded in ([0-9.]+)s")


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
    #: (messages, mean bytes, largest bytes) logged at web at this size (:func:`logged`)
    messages: tuple[int, float, int] = (0, 0.0, 0)


@dataclass
class Restart:
    """One service stopped (SIGTERM) and started again."""

    service: str
    stop_s: float  # from SIGTERM until it exited
    serving_s: float | None  # from its start until it served again (None: it did not)
    first_pass_s: float | None  # its first full pass, from its log (None: none logged)
    failed: str = ""  # why it did not serve again, and where its store and log were kept


@dataclass
class SnapshotCost:
    """The durable snapshot of one store at one size (seconds, bytes)."""

    store: str
    records: int
    restore_s: float
    encode_s: float
    write_s: float
    size: int
    fork_s: float = 0.0  # the fork that starts the child encoding it (holds the loop)
    child_s: float = 0.0  # from the fork until the child's bytes are read (the loop is free)


def rss_bytes(pid: int) -> int:
    """The resident set of process ``pid`` in bytes (``VmRSS``); 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def logged(stores: Sequence[Path], after: dict[Path, int]) -> tuple[int, float, int]:
    """The messages in the logs of ``stores`` (live SQLite stores, read-only) past row id
    ``after[store]`` (0 if absent): how many, their mean bytes and the largest's bytes;
    ``after`` is updated to each log's last row id."""
    n, total, largest = 0, 0, 0
    for path in stores:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            c, s, m, last = db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(max(length(data)), 0),"
                " coalesce(max(id), 0) FROM log WHERE id > ?", (after.get(path, 0),)).fetchone()
        n, total, largest = n + c, total + s, max(largest, m)
        after[path] = max(after.get(path, 0), last)
    return n, (total / n if n else 0.0), largest


def _pids(p: Platform) -> dict[str, int]:
    return {name: proc.pid for name, proc in p.services.procs.items()}


async def settle(p: Platform, timeout: float = SETTLE_TIMEOUT_S,
                 say: Callable[[str], None] | None = None) -> float:
    """Wait until every service used under 5 % of a core over the last second (it has
    applied what it was sent); returns the seconds waited. ``say``: told which services
    were still busy when the wait timed out."""
    t0 = time.monotonic()
    busy: list[str] = []
    while time.monotonic() - t0 < timeout:
        before = {n: proc_cpu(pid) for n, pid in _pids(p).items()}
        await asyncio.sleep(1.0)
        after = {n: proc_cpu(pid) for n, pid in _pids(p).items()}
        busy = [f"{n} {100 * ((after[n] or 0) - (before[n] or 0)):.0f} %" for n in before
                if (after[n] or 0) - (before[n] or 0) > 0.05]
        p.services.check()
        if not busy:
            return time.monotonic() - t0
    if say is not None:
        say(f"platform: still busy after {timeout:g}s (CPU over the last second): "
            f"{', '.join(busy)}")
    return time.monotonic() - t0


async def burst(p: Platform, cids: Sequence[str]) -> list[float]:
    """Send a Start for every one of ``cids`` at once; each one's seconds from its POST
    to "on" at web."""
    async def one(cid: str) -> float:
        sample = await timed_start(p, cid)
        return sample.total

    return list(await asyncio.gather(*(one(c) for c in cids)))


async def grow(opt: Options, p: Platform, size: int, have: int, starts: int, bursts: int,
               say: Callable[[str], None], seen: dict[Path, int]) -> SizeResult:
    """Add records until the platform holds ``size`` (it holds ``have``), then measure.
    ``seen``: the row ids of web's logs already counted (:func:`logged`; updated)."""
    pids = _pids(p)
    rss0 = {n: rss_bytes(pid) for n, pid in pids.items()}
    add = size - have
    t0 = time.perf_counter()
    created: list[str] = []
    while len(created) < add:
        chunk = min(500, add - len(created))
        created += await create_records(p.base, chunk, f"p{size}-{len(created)}")
        say(f"platform: {have + len(created):,}/{size:,} records "
            f"({len(created) / (time.perf_counter() - t0):,.0f}/s)")
    create_s = time.perf_counter() - t0
    settle_s = await settle(p, say=say)
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
    await settle(p, say=say)
    result.messages = logged(_stores_of(p, "web"), seen)
    return result


def _environ(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


def _first_pass(p: Platform, name: str, since: int) -> float | None:
    """The length of the first full pass ``name`` logged after byte ``since`` of its log."""
    path = p.services.workdir / f"{name}.log"
    text = path.read_bytes()[since:].decode(errors="replace") if path.exists() else ""
    found = _FIRST_PASS.findall(text)
    return float(found[0]) if found else None


async def _stop(p: Platform, name: str) -> tuple[list[str], dict[str, str], float]:
    """SIGTERM service ``name`` and wait for it to exit (SIGKILL after STOP_TIMEOUT_S);
    its command and environment, and the seconds it took."""
    proc = p.services.procs[name]
    argv = [str(a) for a in proc.args]  # type: ignore[union-attr]
    env = _environ(proc.pid)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait)
    return argv, env, time.perf_counter() - t0


async def _until(cond: Callable[[], Any], what: str, p: Platform, name: str) -> float:
    """Poll ``cond`` (an awaitable's factory; true: done) every 20 ms; perf_counter when it
    held. Fails after RESTART_TIMEOUT_S, or when service ``name`` exited."""
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, aiohttp.ClientError, asyncio.TimeoutError):
            if await cond():
                return time.perf_counter()
        if p.services.procs[name].poll() is not None:
            break
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{name} restarted did not serve ({what}) within "
                       f"{RESTART_TIMEOUT_S:g}s:\n{p.services.tail(name)}")


async def _follow(p: Platform) -> None:
    """Follow web's events anew (after web restarted)."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        p.follower.cancel()
        await p.follower
    p.watch = EventWatch()
    p.follower = asyncio.create_task(p.watch.follow(p.session, f"{p.base}/api/events"))
    await asyncio.wait_for(p.watch.connected.wait(), 30)


async def _state(p: Platform, cid: str) -> dict[str, Any] | None:
    async with p.session.get(f"{p.base}/api/containers/{cid}") as resp:
        return dict(await resp.json()) if resp.status == 200 else None


async def _post(p: Platform, cid: str, action: str) -> None:
    async with p.session.post(f"{p.base}/api/containers/{cid}/{action}") as resp:
        await resp.read()
        if resp.status != 202:
            raise RuntimeError(f"{action} of {cid} answered {resp.status}")


async def restarts(p: Platform, known: str, spare: str, say: Callable[[str], None]
                   ) -> list[Restart]:
    """Stop and start web, then logic, then the worker that runs ``spare`` (see the module
    docstring); ``known``: a record web must answer for; ``spare``: a record never started
    (logic's Start, then the worker's Stop)."""
    out: list[Restart] = []

    async def restart(name: str, serving: Callable[[], Any], what: str,
                      while_down: Callable[[], Any] | None = None,
                      seen: asyncio.Future[float] | None = None) -> None:
        """``serving``: true once it serves; ``seen``: the future whose result is the
        time it was seen serving (an event at web), else when ``serving`` held."""
        say(f"platform: restarting {name}")
        argv, env, stop_s = await _stop(p, name)
        if while_down is not None:
            await while_down()
        since = (p.services.workdir / f"{name}.log").stat().st_size
        t0 = time.perf_counter()
        p.services.start(name, argv, env)
        try:
            at = await _until(serving, what, p, name)
        except RuntimeError:
            out.append(Restart(name, stop_s, None, _first_pass(p, name, since),
                               _failed(p, name, since)))
            say(f"platform: {name} restarted did not serve: {out[-1].failed}")
            raise
        if seen is not None:
            at = seen.result()
        out.append(Restart(name, stop_s, at - t0, _first_pass(p, name, since)))
        say(f"platform: {name} serving {at - t0:.2f}s after its start "
            f"(it stopped in {stop_s:.2f}s)")
        await settle(p, say=say)

    async def web_serves() -> bool:
        async with p.session.get(f"{p.base}/healthz") as resp:
            await resp.read()
            if resp.status != 200:
                return False
        return await _state(p, known) is not None

    with contextlib.suppress(RuntimeError):  # one that did not serve ends the restarts
        await restart("web", web_serves, SERVING["web"])
        await _follow(p)

        on = p.watch.expect(spare, lambda rec: rec.get("power_actual") == "on")
        await restart("logic", lambda: _done(on), SERVING["logic"],
                      lambda: _post(p, spare, "start"), on)
        record = p.watch.records[spare]
        p.pids.append(int(record["pid"]))
        worker = str(record["assigned_node"])

        off = p.watch.expect(spare, lambda rec: rec.get("power_actual") == "off")
        await restart(worker, lambda: _done(off), SERVING["worker"],
                      lambda: _post(p, spare, "stop"), off)
    return out


def _failed(p: Platform, name: str, since: int) -> str:
    """Why service ``name`` did not serve again (the last line of its log since byte
    ``since``, and its exit status), with its store and log copied to a directory kept
    after the run (to find out why)."""
    proc = p.services.procs[name]
    path = p.services.workdir / f"{name}.log"
    lines = path.read_bytes()[since:].decode(errors="replace").strip().splitlines()
    keep = Path(tempfile.mkdtemp(prefix=f"crdt-ops-platform-{name}-"))
    for f in p.services.workdir.glob(f"{name}.*"):
        shutil.copy2(f, keep / f.name)
    status = "running" if proc.poll() is None else f"exit status {proc.returncode}"
    return f"{lines[-1] if lines else 'no log line'} ({status}; store and log in {keep})"


async def _done(fut: asyncio.Future[float]) -> bool:
    return fut.done()


def snapshot_cost(live_store: Path, workdir: Path, records: int) -> SnapshotCost:
    """The durable snapshot of the replica in ``live_store`` (a service's store, in use):
    copied with SQLite's backup, restored, then ``Replica.snapshot()`` timed on this
    thread (what the event loop was held for before snapshots were taken aside), then as
    ``DurableReplica.snapshot_aside()`` takes it: the fork (holds the loop), the child's
    encoding (does not), and ``Store.save_snapshot()`` (holds it)."""
    copy = workdir / f"snapshot-of-{live_store.name}"
    with contextlib.closing(sqlite3.connect(live_store)) as src, \
            contextlib.closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    store = Store(copy)
    try:
        rid = store.get("replica_id")
        t0 = time.perf_counter()
        replica = restore(store, rid.decode() if rid else "unknown", {})
        t1 = time.perf_counter()
        data = replica.snapshot()
        t2 = time.perf_counter()
        child = forking.fork_child(replica.snapshot)
        t3 = time.perf_counter()
        data = asyncio.run(child.result())
        t4 = time.perf_counter()
        store.save_snapshot(data, store.last_logged())
        t5 = time.perf_counter()
    finally:
        store.close()
        for f in workdir.glob(f"{copy.name}*"):
            f.unlink()
    return SnapshotCost(live_store.name, records, t1 - t0, t2 - t1, t5 - t4, len(data),
                        fork_s=t3 - t2, child_s=t4 - t2)


def _store_of(p: Platform, name: str) -> Path:
    argv = [str(a) for a in p.services.procs[name].args]  # type: ignore[union-attr]
    return Path(argv[argv.index("--store") + 1])


def _stores_of(p: Platform, name: str) -> list[Path]:
    """Service ``name``'s stores: its ``--store`` and one per other group it holds
    (``<store stem>.<group>.sqlite`` beside it)."""
    main = _store_of(p, name)
    return [main, *sorted(main.parent.glob(f"{main.stem}.*.sqlite"))]


def _p(values: list[float], q: float) -> str:
    return f"{nearest_rank(values, q):.0f}" if values else "-"


def report(results: Sequence[SizeResult], info: dict[str, str], args: argparse.Namespace,
           restarted: Sequence[Restart] = (), snap: SnapshotCost | None = None) -> str:
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
            f"{r.messages[1]:,.0f} / {r.messages[2]:,} ({r.messages[0]:,})",
        ])
    head = ["records", "creates/s", f"Start->on ms p50 / p99 ({args.starts} one at a time)",
            f"burst of {args.burst}: ms p50 / p99", "RSS bytes per record (" + " / ".join(
                SERVICES) + ")", "CPU ms per Start (" + " / ".join(SERVICES) + ")",
            "settle s", "message bytes at web: mean / largest (messages)"]
    title = ("The platform from " + " -> ".join(f"{r.records:,}" for r in results)
             + " records: real crdt-ops services over RabbitMQ")
    out = [title, "", *info_lines(info), "", markdown_table(head, rows, "rrllllrl"), ""]
    if restarted:
        out += [f"Restart at {results[-1].records:,} records: SIGTERM, then the same command "
                "and store; seconds from its start until it serves again:", "",
                markdown_table(
                    ["service", "stopped in s", "serving after s", "its first full pass s",
                     "serving means"],
                    [[r.service, f"{r.stop_s:.2f}",
                      "FAILED" if r.serving_s is None else f"{r.serving_s:.2f}",
                      "-" if r.first_pass_s is None else f"{r.first_pass_s:.2f}",
                      SERVING[r.service if r.service in SERVING else "worker"]]
                     for r in restarted], "lrrrl"), ""]
        failed = [r for r in restarted if r.failed]
        if failed:
            out += [f"{r.service} did not serve again: {r.failed}" for r in failed]
            out += ["(the restarts stop at the first service that does not serve again)", ""]
    if snap is not None:
        out += [f"The durable snapshot at {snap.records:,} records (on a copy of logic's "
                "store), taken every --snapshot-every operations: encoded in a forked child "
                "(DurableReplica.snapshot_aside), the event loop is held for the fork and the "
                "write; 'encode ms' is the encoding on this thread, for comparison:", "",
                markdown_table(
                    ["snapshot of", "fork ms", "write ms", "loop held ms",
                     "child ms", "encode ms", "MB", "bytes per record",
                     "restoring the store s"],
                    [[snap.store, f"{1000 * snap.fork_s:,.1f}", f"{1000 * snap.write_s:,.0f}",
                      f"{1000 * (snap.fork_s + snap.write_s):,.0f}",
                      f"{1000 * snap.child_s:,.0f}", f"{1000 * snap.encode_s:,.0f}",
                      f"{snap.size / 1e6:,.1f}", f"{snap.size / snap.records:,.0f}",
                      f"{snap.restore_s:.2f}"]], "lrrrrrrrr"), ""]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Run ``platform`` with parsed arguments; print the report to stdout."""
    fill_defaults(args, {"sizes": (DEFAULT_SIZES, QUICK_SIZES), "starts": (30, 5),
                         "burst": (200, 10)})
    sizes = tuple(args.sizes)
    if list(sizes) != sorted(set(sizes)) or sizes[0] < args.starts + args.burst:
        raise SystemExit("--sizes must grow, and the first must hold --starts + --burst records")
    say = Progress(enabled=not args.quiet)
    opt = Options(url=args.url, containers=0, capacity=CAPACITY, batch_delay_ms=None,
                  progress=say)
    info = machine(opt.url)
    say(f"platform: sizes {', '.join(f'{s:,}' for s in sizes)}, on {info['cpu']}")

    restarted: list[Restart] = []
    snap: list[SnapshotCost] = []

    async def go() -> list[SizeResult]:
        results: list[SizeResult] = []
        with tempfile.TemporaryDirectory(prefix="crdt-ops-platform-") as tmp:
            async with running_platform(opt, Path(tmp)) as p:
                have, seen = 0, dict[Path, int]()
                logged(_stores_of(p, "web"), seen)  # what web logged as it started: not counted
                for size in sizes:
                    results.append(await grow(opt, p, size, have, args.starts, args.burst, say,
                                              seen))
                    have = size
                    r = results[-1]
                    say(f"platform: {size:,} records: Start->on p50 "
                        f"{statistics.median(r.sequential_ms):.0f} ms, "
                        f"{r.create_per_s:,.0f} creates/s")
                if args.restart:
                    say(f"platform: {sizes[-1]:,} records: the durable snapshot")
                    snap.append(await asyncio.to_thread(
                        snapshot_cost, _store_of(p, "logic"), Path(tmp), sizes[-1]))
                    c = snap[-1]
                    say(f"platform: the snapshot: encode {1000 * c.encode_s:,.0f} ms + write "
                        f"{1000 * c.write_s:,.0f} ms, {c.size / 1e6:,.1f} MB (restore "
                        f"{c.restore_s:.2f} s)")
                    spare = await create_records(p.base, 2, "restart")
                    try:
                        restarted.extend(await restarts(p, spare[0], spare[1], say))
                    finally:
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            p.follower.cancel()  # a follower of our own, after web's restart
                            await p.follower
        return results

    results = asyncio.run(go())
    print(report(results, info, args, restarted, snap[0] if snap else None), flush=True)
    say("done")
    return 1 if any(r.failed for r in restarted) else 0


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="records at each step, comma-separated (default "
                        f"{','.join(map(str, DEFAULT_SIZES))}; --quick: "
                        f"{','.join(map(str, QUICK_SIZES))})")
    p.add_argument("--starts", type=int, default=None,
                   help="Starts one at a time per size (default 30; --quick: 5)")
    p.add_argument("--burst", type=int, default=None,
                   help="Starts sent at once per size (default 200; --quick: 10)")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast run (a smoke test for the tests, not a measurement): "
                        "sizes 50,200, 5 Starts and a burst of 10 per size")
    p.add_argument("--url", default=DEFAULT_URL,
                   help="the broker (default: AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/)")
    p.add_argument("--no-restart", dest="restart", action="store_false",
                   help="skip the restart and snapshot measurements at the largest size")
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
