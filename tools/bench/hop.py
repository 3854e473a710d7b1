"""``python -m tools.bench hop``: the latency of one durable hop between two replicas,
beside raw aio-pika doing the same ping-pong, and under a steady load; in one run.

The benchmark issue 14 asks for ("a durable hop in about a millisecond"). All times are
in milliseconds, taken with :func:`time.monotonic` (CLOCK_MONOTONIC: one clock for every
process of the machine, so times taken in different processes compare). Every
measurement runs in OS processes of its own (as :mod:`tools.bench.amqp` runs them) in a
fresh group ``bench-hop-<random>``, whose queues, stream and exchanges are deleted
afterwards; a measurement during which a replica had to reconnect is run again, with a
new group, up to three times.

1. **crdt-ops ping-pong**: replicas ``a`` and ``b`` are
   :class:`~crdt_ops.transport.amqp.AmqpNode` in two processes, each with a durable
   SQLite store in a temporary directory and default settings (``batch_ops=500``,
   ``batch_delay_ms=5``, managed membership). ``a`` notes the time ``t0``, sets the
   register ``ping`` to ``n`` through ``node.write()`` (the block returns once the write
   is durable in ``a``'s outbox); ``b`` hears the change (``replica.subscribe``, as the
   services' worker does), notes the time, and from a task sets the register ``pong``
   to ``n`` through its ``node.write()``; ``a`` hears that change and notes the time,
   then sends ``n + 1``. **Hop 1** is ``b`` hearing ``ping n`` minus ``t0``; **hop 2** is
   ``a`` hearing ``pong n`` minus ``b`` hearing ``ping n``. ``--warmup`` round trips
   first, not counted, then ``--round-trips`` timed ones.
2. **raw aio-pika ping-pong**, the baseline: the same two roles as plain aio-pika
   clients on the same topology (the group's durable fanout exchange, a durable classic
   queue per side and the stream bound to it, as crdt-ops declares them, so each side
   also gets its own messages back and the broker writes every message to the stream
   too). ``a`` publishes ``ping n`` (a persistent message, publisher confirms) and awaits
   its confirm; ``b``, on delivery, notes the time and publishes ``pong n`` the same
   way, then acks; ``a`` notes the time ``pong n`` is delivered. Hops as in 1., same
   number of round trips.
3. **load**: at each of ``--rates`` (operations per second in total) for ``--seconds``,
   ``--writers`` concurrent tasks at ``a`` each set the register ``lat`` to the next
   number ``k`` through its own ``node.write()``, paced by a 1 ms ticker releasing the
   operations due (catching up after a late tick); ``a`` notes when it made each set.
   ``b`` notes when it heard each value (:class:`tools.bench.amqp.Watch`: one origin's
   sets are applied in order, so hearing ``k`` means every set up to ``k`` was
   applied). Latency of an operation: heard at ``b`` minus set at ``a``. The rate
   actually issued (first to last set) is shown beside the rate asked for; a fresh pair
   of processes and group per rate.

In every process a task sleeps 1 ms in a loop and records how much later than due it
woke: the worst is the **event loop's worst stall** of that side over the measurement
(the raw clients are measured the same way, for comparison).

``--trace DIR`` stamps each step of 1.'s hops in both replicas (their ``write()``, the
commit, aiormq's publish, the socket writes and reads, ``Replica.receive``, the change
event) and prints each step's p10/p50/p90 after the report (:mod:`tools.bench.trace`):
where a hop's time goes beside the raw one's.

Targets (issue 14; printed with verdicts, the exit status does not depend on them): one
hop p50 <= 2 ms, p99 <= 10 ms and <= 1.5x the raw ping-pong's p50 of the same run;
under 1,000 concurrent-writer ops/s, p99 <= 20 ms. ``--quick`` is a small slice for the
tests (50 round trips, 200 ops/s for 1 s), not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from crdt_ops.events import ChangeEvent
from crdt_ops.transport.config import Settings
from crdt_ops.transport.loop_lag import LoopLag
from crdt_ops.transport.topology import Topology
from tools.bench import consume, trace
from tools.bench.amqp import (
    LAT_KEY,
    PREFETCH,
    RETRY_PAUSE_S,
    PhaseResult,
    Watch,
    await_go,
    declare_raw,
    finish,
    machine,
    metric,
    run_workers,
    started_node,
)
from tools.bench.args import at_least
from tools.bench.broker import DEFAULT_URL, delete_group, new_group
from tools.bench.cpu import percent
from tools.bench.machine import load_average
from tools.bench.report import Progress, info_lines, markdown_table, thousands
from tools.bench.retry import ATTEMPTS, Disturbed, with_retries
from tools.bench.stats import nearest_rank

#: Targets from issue 14 (milliseconds, and the ratio to raw aio-pika's p50).
TARGET_HOP_P50_MS = 2.0
TARGET_HOP_P99_MS = 10.0
TARGET_RAW_RATIO = 1.5
TARGET_LOAD_P99_MS = 20.0
TARGET_LOAD_RATE = 1_000  # the rate the load target is about (ops/s)
#: A rate counts as reached when at least this share of it was issued.
RATE_REACHED = 0.95

ROLES = ("a", "b")  # replica ids; "a" pings and issues the load, "b" answers and watches
PING, PONG = "ping", "pong"  # the registers of the crdt-ops ping-pong
STALL_TICK_S = 0.001  # the loop-stall probe's sleep


@dataclass(frozen=True)
class Sizes:
    round_trips: int
    warmup: int
    rates: tuple[int, ...]
    seconds: float
    writers: int


FULL = Sizes(round_trips=500, warmup=50, rates=(1_000, 10_000), seconds=5.0, writers=100)
QUICK = Sizes(round_trips=50, warmup=5, rates=(200,), seconds=1.0, writers=100)


# ---------------------------------------------------------------- in the worker processes


def stall_watch() -> LoopLag:
    """The event loop's worst stall while the measurement runs: the library's probe
    (crdt_ops.transport.loop_lag) with a tick of :data:`STALL_TICK_S`, no warnings."""
    return LoopLag(tick_s=STALL_TICK_S, warn_s=float("inf"))


async def stalled(watch: LoopLag) -> dict[str, float]:
    """Stop ``watch``; ``stall`` (its worst lateness, s) and ``stall_at`` (s after start)."""
    await watch.stop()
    return {"stall": watch.worst_s, "stall_at": watch.worst_at}


class Heard:
    """When this side heard each of the other side's numbers 1..total (a change event or
    a delivery showing ``k``: every number up to ``k`` is heard then); ``arrived`` is set
    at each new one."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.times = [0.0] * (total + 1)
        self.upto = 0
        self.arrived = asyncio.Event()

    def heard(self, k: object) -> bool:
        """Note ``k`` as heard now; False if it is not a new number."""
        if not isinstance(k, int) or isinstance(k, bool) or k <= self.upto:
            return False
        now = time.monotonic()
        for j in range(self.upto + 1, min(k, self.total) + 1):
            self.times[j] = now
        self.upto = k
        self.arrived.set()
        return True

    async def wait_for(self, n: int, timeout: float) -> None:
        """Until ``n`` is heard; TimeoutError after ``timeout`` seconds without it."""
        deadline = time.monotonic() + timeout
        while self.upto < n:
            self.arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"heard {self.upto} of {n} after {timeout:.0f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)


class Replies:
    """The answering side's replies, each a task: when the last one (``total``) is done,
    or one failed, :attr:`done` is set."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tasks: set[asyncio.Task[None]] = set()
        self.failed: list[BaseException] = []
        self.done = asyncio.Event()

    def start(self, k: int, reply: Callable[[int], Any]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(reply(k))
        self.tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                self.failed.append(exc)
                self.done.set()
            elif k == self.total:
                self.done.set()
        task.add_done_callback(finished)

    async def wait(self, timeout: float) -> None:
        await asyncio.wait_for(self.done.wait(), timeout)
        if self.failed:
            raise self.failed[0]


async def _crdt_pingpong(spec: dict[str, Any], results: MpQueue[Any], go: MpEvent,
                         stop: MpEvent) -> None:
    """One side of 1. (``spec["role"]``: ``a`` pings, ``b`` answers)."""
    role, total, timeout = spec["role"], spec["rounds"], spec["timeout"]
    async with started_node(spec) as node:
        heard = Heard(total)
        replies = Replies(total)

        async def pong(k: int) -> None:
            async with node.write() as r:
                r.register(PONG).set(k)

        def on_change(ev: ChangeEvent) -> None:
            if heard.heard(ev.new) and role == ROLES[1]:
                replies.start(ev.new, pong)

        async def ping(k: int) -> None:
            async with node.write() as r:
                r.register(PING).set(k)

        node.replica.subscribe(PONG if role == ROLES[0] else PING, on_change)
        cpu0, _ = await await_go(role, results, go)
        out = await _play(role, total, timeout, heard, replies, ping)
        out.update(reconnects=metric("crdt_ops_reconnects_total", role))
        await finish(role, out, results, stop, cpu0)


async def _play(role: str, total: int, timeout: float, heard: Heard, replies: Replies,
                ping: Callable[[int], Awaitable[None]]) -> dict[str, Any]:
    """One side of a ping-pong, after the go: ``a`` sends ping 1..``total`` through
    ``ping`` (each once the pong before it was heard), noting when each was sent and
    accepted; ``b`` answers (``replies``). Returns those times, when each was heard, and
    the side's worst event-loop stall."""
    stall = stall_watch()
    stall.start()
    out: dict[str, Any] = {}
    if role == ROLES[0]:
        sent, accepted = [0.0] * (total + 1), [0.0] * (total + 1)
        for n in range(1, total + 1):
            sent[n] = time.monotonic()
            await ping(n)
            accepted[n] = time.monotonic()
            await heard.wait_for(n, timeout)
        out.update(sent=sent, accepted=accepted)
    else:
        await replies.wait(timeout * 2)
    out.update(await stalled(stall))
    out.update(heard=heard.times)
    return out


async def _raw_pingpong(spec: dict[str, Any], results: MpQueue[Any], go: MpEvent,
                        stop: MpEvent) -> None:
    """One side of 2.: plain aio-pika on the group's topology (declared beforehand)."""
    role, total, timeout = spec["role"], spec["rounds"], spec["timeout"]
    conn = await aio_pika.connect(spec["url"], client_properties={
        "connection_name": f"crdt-ops bench hop raw {role}"})
    try:
        pub = await conn.channel(publisher_confirms=True)
        sub = await conn.channel()
        await sub.set_qos(prefetch_count=PREFETCH)
        names = Topology.of(Settings(group=spec["group"]))
        exchange = await pub.get_exchange(names.exchange)
        queue = await sub.get_queue(names.queue(role))
        heard = Heard(total)
        replies = Replies(total)
        want = b"pong" if role == ROLES[0] else b"ping"

        async def publish(kind: bytes, k: int) -> None:
            await exchange.publish(
                aio_pika.Message(kind + b" %d" % k,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="", timeout=30)

        async def pong(k: int) -> None:
            await publish(b"pong", k)

        async def on_message(message: AbstractIncomingMessage) -> None:
            kind, _, number = message.body.partition(b" ")
            if kind == want and heard.heard(int(number)) and role == ROLES[1]:
                replies.start(int(number), pong)
            await message.ack()

        async def ping(k: int) -> None:
            await publish(b"ping", k)  # returns once confirmed

        await queue.consume(on_message, no_ack=False)
        cpu0, _ = await await_go(role, results, go)
        out = await _play(role, total, timeout, heard, replies, ping)
        out.update(reconnects=0)
        await finish(role, out, results, stop, cpu0)
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def issue_at_rate(node: Any, total: int, rate: int, writers: int,
                        timeout: float) -> dict[str, Any]:
    """Set the register :data:`~tools.bench.amqp.LAT_KEY` to 1..total at ``node``, from
    ``writers`` concurrent tasks, each set in a ``node.write()`` of its own, at ``rate``
    per second in total (a 1 ms ticker releases the sets due). When each set was made
    (``mutated``) and accepted (``accepted``: its block returned, durable), and the rate
    issued (first to last set)."""
    mutated, accepted = [0.0] * (total + 1), [0.0] * (total + 1)
    permits = asyncio.Semaphore(0)
    claimed = issued = 0

    async def writer() -> None:
        nonlocal claimed, issued
        while True:
            await permits.acquire()
            if claimed >= total:
                return
            claimed += 1
            async with node.write() as r:  # nothing awaited before the set: sets go in order
                issued += 1
                k = issued
                mutated[k] = time.monotonic()
                r.register(LAT_KEY).set(k)
            accepted[k] = time.monotonic()

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(writer()) for _ in range(writers)]
    try:
        t0 = time.monotonic()
        released = 0
        while released < total:
            due = min(total, int((time.monotonic() - t0) * rate) + 1)
            for _ in range(due - released):
                permits.release()
            released = due
            await asyncio.sleep(0.001)
        for _ in range(writers):
            permits.release()  # each writer takes one more, finds nothing left, returns
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    finally:
        for task in tasks:
            task.cancel()
    span = mutated[total] - mutated[1]
    return {"mutated": mutated, "accepted": accepted,
            "issued_rate": (total - 1) / span if span > 0 else float(total)}


async def _crdt_load(spec: dict[str, Any], results: MpQueue[Any], go: MpEvent,
                     stop: MpEvent) -> None:
    """One side of 3. (``a`` issues, ``b`` watches)."""
    role, total, timeout = spec["role"], spec["ops"], spec["timeout"]
    async with started_node(spec) as node:
        watch = None if role == ROLES[0] else Watch(node, total)
        cpu0, _ = await await_go(role, results, go)
        stall = stall_watch()
        stall.start()
        out: dict[str, Any] = {}
        if watch is None:
            out.update(await issue_at_rate(node, total, spec["rate"], spec["writers"], timeout))
        else:
            await watch.wait(timeout)
            out["heard"] = watch.times
        out.update(await stalled(stall))
        out["reconnects"] = metric("crdt_ops_reconnects_total", role)
        await finish(role, out, results, stop, cpu0)


# ---------------------------------------------------------------- in the parent


@dataclass
class Context:
    url: str
    sizes: Sizes
    progress: Callable[[str], None]
    timeout: float  # seconds one side may wait for the other, per step
    consume: str = "queue"  # the replicas' Settings.consume
    disk_sync: str = "first"  # the replicas' Settings.disk_sync
    #: stamp the crdt-ops ping-pong's replicas into this directory (tools/bench/trace.py)
    trace_dir: Path | None = None


@dataclass
class Row:
    what: str
    samples: int | None = None
    p50: float | None = None  # ms
    p99: float | None = None
    worst: float | None = None
    vs_raw: str = "-"
    rate: str = "-"
    target: str = "-"
    met: bool | None = None
    stall: str = "-"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    head = ("measurement", "samples", "p50 ms", "p99 ms", "max ms", "p50 / raw p50",
            "ops/s asked / issued", "target (issue 14)", "met", "worst loop stall ms (a/b)")
    lines = [(r.what, "-" if r.samples is None else f"{r.samples:,}", _ms(r.p50), _ms(r.p99),
              _ms(r.worst), r.vs_raw, r.rate, r.target,
              "-" if r.met is None else "yes" if r.met else "NO", r.stall) for r in rows]
    return markdown_table(head, lines, "lrrrrrrlll")


def latency_row(what: str, seconds: Sequence[float], stall: str) -> Row:
    """A row of the latencies ``seconds`` (p50, p99, max in ms)."""
    ms = sorted(1000 * x for x in seconds)
    return Row(what, len(ms), statistics.median(ms), nearest_rank(ms, 0.99), ms[-1], stall=stall)


def _stall(res: PhaseResult) -> str:
    return "/".join(f"{1000 * res.done[r]['stall']:.1f}" for r in ROLES)


def _stall_at(res: PhaseResult) -> str:
    """Each side's worst stall and when it was (seconds after the go signal)."""
    return ", ".join(f"{r} {1000 * res.done[r]['stall']:.1f} ms at {res.done[r]['stall_at']:.2f}s"
                     for r in ROLES)


def _cpu(res: PhaseResult) -> str:
    return "/".join([*(percent(res.cpu.get(r), res.window) for r in ROLES),
                     percent(res.broker_cpu, res.window)])


def _run_pair(ctx: Context, what: str, main: Callable[..., Any], raw: bool,
              traced: bool = False, **spec: Any) -> PhaseResult:
    """Both sides of a measurement in two processes, in a fresh group deleted afterwards;
    run again (new group) when disturbed or failed, up to :data:`ATTEMPTS` times.
    ``traced``: each side stamped into ``ctx.trace_dir`` (that attempt's stamps only)."""
    def once(_attempt: int) -> PhaseResult:
        group = new_group("bench-hop")
        store_dir = tempfile.mkdtemp(prefix=f"crdt-ops-{group}-")
        ctx.progress(f"   group {group}")
        trace_dir = ctx.trace_dir if traced else None
        if trace_dir is not None:
            trace.clear(trace_dir)
        try:
            if raw:
                asyncio.run(declare_raw(ctx.url, Settings(group=group), ROLES))
            specs = [{"main": main, "kind": what, "role": r, "url": ctx.url, "group": group,
                      "consume": ctx.consume, "disk_sync": ctx.disk_sync,
                      "store_dir": store_dir, "batch_ops": Settings().batch_ops,
                      "timeout": ctx.timeout,
                      "trace": (None if trace_dir is None
                                else {"dir": str(trace_dir), "role": f"hop-{r}"}),
                      **spec} for r in ROLES]
            res = run_workers(specs, 2 * ctx.timeout + spec.get("seconds", 0.0))
        finally:
            delete_group(ctx.url, group, ROLES, ctx.progress)
            shutil.rmtree(store_dir, ignore_errors=True)
        if any(d["reconnects"] for d in res.done.values()):
            raise Disturbed("a replica reconnected to the broker during the measurement")
        return res

    return with_retries(what, ctx.progress, once, pause_s=RETRY_PAUSE_S,
                        retrying=f"retrying with a new group in {RETRY_PAUSE_S:g} s")


def measure_pingpong(ctx: Context, raw: bool) -> list[Row]:
    """1. (``raw`` False) or 2.: the rows of hop 1 and hop 2."""
    sz = ctx.sizes
    total = sz.warmup + sz.round_trips
    name = "raw aio-pika" if raw else "crdt-ops"
    ctx.progress(f"{'2' if raw else '1'}. {name} ping-pong: {sz.warmup} warm-up + "
                 f"{sz.round_trips} timed round trips, a and b in 2 processes")
    res = _run_pair(ctx, f"{name} ping-pong", _raw_pingpong if raw else _crdt_pingpong, raw,
                    traced=not raw, rounds=total)
    a, b = res.done[ROLES[0]], res.done[ROLES[1]]
    timed = range(sz.warmup + 1, total + 1)
    hop1 = [b["heard"][n] - a["sent"][n] for n in timed]
    hop2 = [a["heard"][n] - b["heard"][n] for n in timed]
    trip = sorted(a["heard"][n] - a["sent"][n] for n in timed)
    own = sorted(a["accepted"][n] - a["sent"][n] for n in timed)
    ctx.progress(f"   round trip p50 {1000 * statistics.median(trip):.2f} ms, p99 "
                 f"{1000 * nearest_rank(trip, 0.99):.2f} ms; a's "
                 f"{'write durable' if not raw else 'publish confirmed'} after p50 "
                 f"{1000 * statistics.median(own):.2f} ms; worst loop stall "
                 f"{_stall_at(res)}; CPU % a/b/broker {_cpu(res)}")
    stall = _stall(res)
    if raw:
        return [latency_row("raw aio-pika hop 1: a publishes -> delivered at b", hop1, stall),
                latency_row("raw aio-pika hop 2: b publishes -> delivered at a", hop2, stall)]
    return [latency_row("crdt-ops hop 1: a's write() -> change event at b", hop1, stall),
            latency_row("crdt-ops hop 2: b's write() -> change event at a", hop2, stall)]


def measure_load(ctx: Context, rate: int) -> Row:
    """3. at ``rate`` operations per second."""
    sz = ctx.sizes
    total = max(2, int(rate * sz.seconds))
    ctx.progress(f"3. load: {rate:,} ops/s for {sz.seconds:g}s from {sz.writers} concurrent "
                 "writers at a, latency to b")
    res = _run_pair(ctx, f"load at {rate:,} ops/s", _crdt_load, False, ops=total, rate=rate,
                    writers=sz.writers, seconds=sz.seconds)
    a, b = res.done[ROLES[0]], res.done[ROLES[1]]
    row = latency_row(f"crdt-ops load: a's write() -> change event at b, {sz.writers} writers",
                      [b["heard"][k] - a["mutated"][k] for k in range(1, total + 1)], _stall(res))
    durable = sorted(a["accepted"][k] - a["mutated"][k] for k in range(1, total + 1))
    issued = float(a["issued_rate"])
    reached = issued >= RATE_REACHED * rate
    row.rate = f"{rate:,} / {thousands(issued)}" + ("" if reached else " (not reached)")
    if rate == TARGET_LOAD_RATE:
        row.target = f"p99 <= {TARGET_LOAD_P99_MS:g} ms"
        row.met = reached and row.p99 is not None and row.p99 <= TARGET_LOAD_P99_MS
    ctx.progress(f"   p50 {_ms(row.p50)} ms, p99 {_ms(row.p99)} ms, max {_ms(row.worst)} ms; "
                 f"issued {issued:,.0f} ops/s; a's write() durable after p50 "
                 f"{1000 * statistics.median(durable):.2f} ms, p99 "
                 f"{1000 * nearest_rank(durable, 0.99):.2f} ms; worst loop stall "
                 f"{_stall_at(res)}; CPU % a/b/broker {_cpu(res)}")
    return row


def judge_hops(crdt: Sequence[Row], raw: Sequence[Row]) -> None:
    """Set the targets and verdicts of the crdt-ops hop rows (beside the raw rows of the
    same hops, when there are)."""
    for i, row in enumerate(crdt):
        if row.p50 is None or row.p99 is None:
            continue
        base = raw[i].p50 if i < len(raw) else None
        row.target = f"p50 <= {TARGET_HOP_P50_MS:g}, p99 <= {TARGET_HOP_P99_MS:g}"
        row.met = row.p50 <= TARGET_HOP_P50_MS and row.p99 <= TARGET_HOP_P99_MS
        if base:
            ratio = row.p50 / base
            row.vs_raw = f"{ratio:.2f}x"
            row.target += f", <= {TARGET_RAW_RATIO:g}x raw"
            row.met = row.met and ratio <= TARGET_RAW_RATIO


def run(ctx: Context) -> tuple[list[Row], list[str]]:
    """All the measurements; the rows and the names of those that failed."""
    rows: list[Row] = []
    failed: list[str] = []

    def part(what: str, fn: Callable[[], Row | list[Row]]) -> list[Row]:
        try:
            got = fn()
            return got if isinstance(got, list) else [got]
        except Exception as e:
            ctx.progress(f"{what} FAILED: {type(e).__name__}: {e}")
            failed.append(what)
            return [Row(f"{what}: FAILED ({type(e).__name__})")]

    crdt = part("crdt-ops ping-pong", lambda: measure_pingpong(ctx, raw=False))
    raw = part("raw aio-pika ping-pong", lambda: measure_pingpong(ctx, raw=True))
    judge_hops(crdt, raw)
    rows += crdt + raw
    for rate in ctx.sizes.rates:
        rows += part(f"load at {rate:,} ops/s", functools.partial(measure_load, ctx, rate))
    return rows, failed


def worst_stall(rows: Sequence[Row]) -> str:
    """The worst loop stall over the crdt-ops rows, in words."""
    worst: tuple[float, str, str] | None = None
    for r in rows:
        if r.what.startswith("crdt-ops") and r.stall != "-":
            for side, ms in zip(ROLES, r.stall.split("/"), strict=True):
                if worst is None or float(ms) > worst[0]:
                    worst = (float(ms), side, r.what.split(":")[0])
    if worst is None:
        return "-"
    return f"{worst[0]:.1f} ms (replica {worst[1]}, {worst[2]})"


def report(rows: Sequence[Row], info: dict[str, str], sizes: Sizes, quick: bool,
           failed: Sequence[str], disk_sync: str = "first") -> str:
    s = Settings()
    out = ["One durable hop between two crdt-ops replicas beside raw aio-pika (persistent "
           "messages, publisher confirms, durable queues, the stream bound), and under load",
           ""]
    out += info_lines({**info, "settings": f"crdt-ops defaults (batch_ops={s.batch_ops}, "
                       f"batch_delay_ms={s.batch_delay_ms:g}, prefetch={s.prefetch}), "
                       f"disk_sync={disk_sync}, SQLite stores in a temporary directory",
                       "sizes": f"{sizes.warmup} warm-up + {sizes.round_trips} timed round "
                       f"trips; load {sizes.seconds:g} s per rate"})
    if quick:
        out += ["", "--quick: a smoke run with small sizes, not a measurement"]
    out += ["", table(rows), "",
            f"Worst event-loop stall of a crdt-ops replica: {worst_stall(rows)}", "",
            "Targets (from issue 14):"]
    for r in rows:
        if r.met is not None:
            out.append(f"  {'met    ' if r.met else 'NOT met'}  {r.what}: p50 {_ms(r.p50)} ms, "
                       f"p99 {_ms(r.p99)} ms"
                       + (f", {r.vs_raw} raw" if r.vs_raw != "-" else "")
                       + (f", {r.rate} ops/s" if r.rate != "-" else "")
                       + f" (target {r.target})")
    if failed:
        out += ["", f"FAILED (after {ATTEMPTS} attempts each): {', '.join(failed)}"]
    return "\n".join(out)


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: "
                                         f"{text!r}") from None
    if not rates or min(rates) < 1:
        raise argparse.ArgumentTypeError(f"rates must be >= 1 op/s, got {text!r}")
    return rates


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``hop`` subcommand."""
    p = subparsers.add_parser(
        "hop", help="one durable hop: crdt-ops ping-pong beside raw aio-pika, and under load",
        description="Two crdt-ops replicas (separate processes, durable stores, default "
                    "settings) play ping-pong through RabbitMQ: p50/p99/max of each hop in ms, "
                    "beside raw aio-pika persistent-with-confirms ping-pong in the same run; "
                    "then the latency at steady rates from many concurrent writers, and "
                    "each side's worst event-loop stall. Targets from issue 14.")
    p.add_argument("--amqp-url", default=DEFAULT_URL,
                   help="the broker (default: $AMQP_URL, else %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help=f"a small, fast run (a smoke test for CI, not a measurement): "
                        f"{QUICK.round_trips} round trips, {QUICK.rates[0]} ops/s for "
                        f"{QUICK.seconds:g} s")
    p.add_argument("--round-trips", type=at_least(1), default=None,
                   help=f"timed round trips per ping-pong (default {FULL.round_trips})")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"untimed round trips first (default {FULL.warmup})")
    p.add_argument("--rates", type=_rates, default=None,
                   help="total ops/s of the load case, comma-separated (default "
                        f"{','.join(str(r) for r in FULL.rates)})")
    p.add_argument("--seconds", type=float, default=None,
                   help=f"seconds of load per rate (default {FULL.seconds:g})")
    p.add_argument("--writers", type=at_least(1), default=None,
                   help=f"concurrent writers of the load case (default {FULL.writers})")
    consume.add_argument(p)
    p.add_argument("--trace", type=Path, default=None, metavar="DIR",
                   help="stamp each step of the crdt-ops ping-pong's hops into DIR and print "
                        "the steps' p10/p50/p90 (tools/bench/trace.py; adds about a "
                        "microsecond a stamp)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    """Run ``hop`` with parsed arguments; print the report to stdout. Returns 0, or 1
    if a measurement failed (every attempt); the targets do not change it."""
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        round_trips=args.round_trips or base.round_trips,
        warmup=base.warmup if args.warmup is None else max(0, args.warmup),
        rates=args.rates or base.rates,
        seconds=args.seconds if args.seconds is not None and args.seconds > 0 else base.seconds,
        writers=args.writers or base.writers)
    progress = Progress(enabled=not args.quiet)
    ctx = Context(url=args.amqp_url, sizes=sizes, progress=progress,
                  timeout=30.0 if args.quick else 60.0, consume=args.consume,
                  disk_sync=args.disk_sync, trace_dir=args.trace)
    if args.trace is not None:
        args.trace.mkdir(parents=True, exist_ok=True)
    info = machine(args.amqp_url)
    progress(f"hop: broker {info['broker']}, {info['cpu']}, {info['cores']} cores")
    rows, failed = run(ctx)
    info["load"] += f" at the start, {load_average('/')} at the end (1/5/15 min)"
    print(report(rows, info, sizes, args.quick, failed, args.disk_sync), flush=True)
    if args.trace is not None:
        found, broken = trace.hop_steps(args.trace)
        print(f"\nA crdt-ops hop step by step (stamps in both replicas: tools/bench/trace.py; "
              f"both directions, warm-up included; {broken} hops whose chain of stamps was "
              f"broken left out):\n\n{trace.step_table(found, unit='hops')}", flush=True)
    progress("done" if not failed else f"done; failed: {', '.join(failed)}")
    return 1 if failed else 0
