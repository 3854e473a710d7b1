"""``python -m tools.bench amqp``: crdt-ops over RabbitMQ beside raw aio-pika,
on one broker, in one run.

Every measurement uses its own group ``bench-<random>`` (so its own exchange,
queues and stream, named as :class:`~crdt_ops.transport.config.Settings` names them),
stores in a temporary directory, and deletes the group's queues and exchanges
afterwards. Messages are persistent and published with publisher confirms
throughout; queues are durable classic queues, and a stream is bound to the
group's fanout exchange, as in crdt-ops' topology. Times are
:func:`time.monotonic` (CLOCK_MONOTONIC, one clock for every process of the
machine, so times taken in different processes compare).

1. **Ceiling** (raw aio-pika, three OS processes): the fanout exchange, three
   durable queues and the stream are declared first. Process ``a`` publishes N
   persistent messages with confirms, as crdt-ops' outbox publisher does
   (``gather`` over rounds of at most 1,000 unconfirmed publishes, the same
   message properties), and each body is one encoded crdt-ops operation message
   (a counter increment, as in 2.). Each process (``a`` too, as a crdt-ops origin
   gets its own messages back) consumes one queue as crdt-ops' consumer does:
   prefetch 1,000, whatever is ready taken as a batch, one ``ack(multiple=True)``
   per batch, nothing else done with the body. Reported: the publish rate (first
   publish to last confirm) and the rate at which all 3 queues were consumed
   (first publish to the last message consumed at the last queue).
2. **crdt-ops end to end** (three ``AmqpNode`` in three OS processes, stores in
   SQLite): replica ``a`` issues N counter increments and ``b`` and ``c`` apply
   them; each process polls its counter every 2 ms. The rate is N over the time
   from the first operation issued to the N-th applied at the last replica.
   Unbatched: ``Settings(batch_ops=1)`` and one write per operation (so one
   operation per message), from many concurrent writers (compared with the
   ceiling) and from one sequential writer. Batched: ``batch_ops=500``, 500
   operations per write.
3. **Latency** at default batching (``batch_ops=500``, ``batch_delay_ms=5``):
   ``a`` sets the register ``lat`` to 1, 2, 3, ... at a steady 1,000 operations
   per second (catching up after a late tick), calling ``flush()`` after each
   tick of 1 ms; ``b`` and ``c`` subscribe to it, and a change event showing
   value ``k`` marks every operation up to ``k`` as applied then (one origin:
   its operations are applied in order). Latency of an operation: from just
   before its ``set()`` at ``a`` to its application at the later of ``b`` and
   ``c``. Run twice: three OS processes (as deployed; CLOCK_MONOTONIC is one
   clock for all of them), and three nodes in one process and event loop (one
   clock by construction, but the nodes share one core).
4. **Replay**: N counter increments of a replica ``seed`` (a sans-IO
   :class:`~crdt_ops.replica.Replica`, sealed into messages of 500 operations,
   or of 1) are published, with confirms, to the group's exchange, whose stream
   (declared as crdt-ops declares it) keeps them. Raw aio-pika reads the stream
   once (the ceiling, in messages per second); then a fresh ``AmqpNode``
   (empty store) joins the group, and its ``start()`` is timed: it connects,
   declares, and replays the stream up to a marker it publishes; afterwards its
   counter must equal N.

CPU columns: CPU time of each process over the measurement (a process's
``getrusage``; the broker's from ``/proc`` when it runs on this machine, all of
its work, other clients' included), in percent of one core.

A measurement that fails (the broker restarting, a replica that had to
reconnect) is retried, with a new group, up to three times. The targets (from
the issue) are printed with the verdicts; the exit status does not depend on
them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import multiprocessing
import os
import queue
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from crdt_ops.replica import Replica
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology, declare, declare_member
from tools.bench import trace
from tools.bench.broker import DEFAULT_URL, broker_info, delete_group, new_group
from tools.bench.cpu import BrokerCpu, percent, self_cpu
from tools.bench.machine import load_average, platform_info, revision
from tools.bench.report import Progress, info_lines, markdown_table, thousands
from tools.bench.retry import ATTEMPTS, Disturbed, with_retries
from tools.bench.stats import nearest_rank

#: Targets from the issue.
TARGET_UNBATCHED_RATIO = 0.8
TARGET_BATCHED_OPS_PER_S = 20_000
TARGET_P99_MS = 50.0
TARGET_REPLAY_OPS_PER_S = 50_000

LATENCY_RATE = 1000  # operations per second
ROLES = ("a", "b", "c")  # replica ids; "a" is the origin
KEY = "bench"  # the counter replicas 2. and 4. increment
LAT_KEY = "lat"  # the register 3. sets
BATCHED_OPS = 500  # batch_ops and operations per write of the batched rows
WRITERS = 64  # concurrent writers of the unbatched row
PREFETCH = Settings().prefetch
RETRY_PAUSE_S = 3.0  # between attempts of a measurement

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    raw_msgs: int
    unbatched_ops: int
    sequential_ops: int
    batched_ops: int
    latency_s: float
    replay_ops: int
    replay_1op_ops: int


FULL = Sizes(raw_msgs=10_000, unbatched_ops=6_000, sequential_ops=1_500, batched_ops=200_000,
             latency_s=10.0, replay_ops=100_000, replay_1op_ops=10_000)
QUICK = Sizes(raw_msgs=500, unbatched_ops=500, sequential_ops=100, batched_ops=5_000,
              latency_s=1.0, replay_ops=5_000, replay_1op_ops=500)

SECTIONS = ("raw", "unbatched", "batched", "latency", "replay")


# ---------------------------------------------------------------- results


@dataclass
class Row:
    section: str
    what: str
    setup: str
    ops: int | None
    messages: int | None
    seconds: float | None
    result: str
    target: str = "-"
    met: bool | None = None
    cpu: str = "-"
    value: float = 0.0  # the number the target is about (rate, or p99 in ms)


def _count(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    head = ("#", "measurement", "setup", "ops", "messages", "s", "result", "target", "met",
            "CPU % (a/b/c/broker)")
    lines = [(r.section, r.what, r.setup, _count(r.ops), _count(r.messages),
              "-" if r.seconds is None else f"{r.seconds:.2f}", r.result, r.target,
              "-" if r.met is None else "yes" if r.met else "NO", r.cpu) for r in rows]
    return markdown_table(head, lines, "lllrrrrlll")


# ---------------------------------------------------------------- helpers


def op_message(origin: str = ROLES[0]) -> bytes:
    """One encoded crdt-ops operation message: a counter increment by ``origin``."""
    r = Replica(origin, max_batch_ops=2, members=())
    r.found()  # a writer the group's replicas accept: it founds itself (crdt_ops.membership)
    r.counter(KEY).increment()
    (body,) = r.outgoing()
    return body


def metric(name: str, replica: str) -> float:
    """This process's value of the Prometheus sample ``name`` of ``replica``, summed over its
    groups (0 if none)."""
    from prometheus_client import REGISTRY

    return sum(sample.value for family in REGISTRY.collect() for sample in family.samples
               if sample.name == name and sample.labels.get("replica") == replica)


def node_settings(url: str, group: str, replica_id: str, store_dir: str,
                  **kw: Any) -> Settings:
    return Settings(amqp_url=url, group=group, replica_id=replica_id,
                    store=os.path.join(store_dir, f"{replica_id}.sqlite"), **kw)


async def issue(node: Any, ops: int, per_write: int, writers: int) -> None:
    """``ops`` increments of :data:`KEY` at ``node``, ``per_write`` per ``write()``
    block, from ``writers`` concurrent tasks."""
    shares = [ops // writers + (1 if k < ops % writers else 0) for k in range(writers)]

    async def writer(n: int) -> None:
        while n:
            m = min(per_write, n)
            async with node.write() as r:
                c = r.counter(KEY)
                for _ in range(m):
                    c.increment()
            n -= m

    await asyncio.gather(*(writer(n) for n in shares if n))


async def wait_published(node: Any, timeout: float) -> None:
    """Until the broker confirmed everything in ``node``'s outbox."""
    deadline = time.monotonic() + timeout
    while node.store.unconfirmed(limit=1):
        if time.monotonic() > deadline:
            raise TimeoutError("the outbox was not confirmed in time")
        await asyncio.sleep(0.002)


# ---------------------------------------------------------------- worker processes

_PROFILER: cProfile.Profile | None = None


async def _wait_event(ev: MpEvent, timeout: float, what: str) -> None:
    if not await asyncio.to_thread(ev.wait, timeout):
        raise TimeoutError(f"no {what} signal after {timeout:.0f}s")


def _worker(spec: dict[str, Any], results: MpQueue[Any], go: MpEvent, stop: MpEvent) -> None:
    """Entry point of a worker process (raw or crdt-ops): runs ``spec["main"]`` (a
    module-level coroutine function of another benchmark, pickled by name) when the
    spec has one, else this module's worker of ``spec["kind"]``. ``spec["trace"]``
    (``{"dir": ..., "role": ...}``): stamp it (:data:`tools.bench.trace.HOP_POINTS`)."""
    global _PROFILER
    if spec.get("profile"):
        _PROFILER = cProfile.Profile()
    if spec.get("trace"):  # bench hop --trace: this process's steps stamped from now on
        trace.install(Path(spec["trace"]["dir"]), spec["trace"]["role"], trace.HOP_POINTS)
    try:
        main = spec.get("main") or {"raw": _raw_worker, "node": _node_worker,
                                    "latency": _latency_worker}[spec["kind"]]
        asyncio.run(main(spec, results, go, stop))
    except BaseException:
        results.put(("error", spec["role"], traceback.format_exc()))
    finally:
        if _PROFILER is not None:
            _PROFILER.dump_stats(spec["profile"])


def _profile(on: bool) -> None:
    if _PROFILER is not None:
        if on:
            _PROFILER.enable()
        else:
            _PROFILER.disable()


async def await_go(role: str, results: MpQueue[Any], go: MpEvent) -> tuple[float, float]:
    """Report ``role`` ready, wait for the go signal, start the profiler (if any);
    this process's CPU seconds and the monotonic time at go."""
    results.put(("ready", role, None))
    await _wait_event(go, 120, "go")
    cpu0, t0 = self_cpu(), time.monotonic()
    _profile(True)
    return cpu0, t0


async def finish(role: str, out: dict[str, Any], results: MpQueue[Any], stop: MpEvent,
                 cpu0: float) -> None:
    """Report ``out``, wait for the stop signal (the others may still be busy), stop
    the profiler, report the CPU seconds used since ``cpu0``."""
    results.put(("done", role, out))
    await _wait_event(stop, 600, "stop")
    _profile(False)
    results.put(("cpu", role, self_cpu() - cpu0))


@contextlib.asynccontextmanager
async def started_node(spec: dict[str, Any]) -> AsyncIterator[Any]:
    """The spec's ``AmqpNode`` (replica ``role`` of ``group``), started; stopped on exit."""
    from crdt_ops.transport.amqp import AmqpNode

    node = AmqpNode(node_settings(spec["url"], spec["group"], spec["role"], spec["store_dir"],
                                  batch_ops=spec["batch_ops"],
                                  consume=spec.get("consume", "queue"),
                                  disk_sync=spec.get("disk_sync", "first")))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def _raw_worker(spec: dict[str, Any], results: MpQueue[Any], go: MpEvent,
                      stop: MpEvent) -> None:
    s = Settings(group=spec["group"])
    role, n = spec["role"], spec["ops"]
    conn = await aio_pika.connect(spec["url"], client_properties={
        "connection_name": f"crdt-ops bench raw {role}"})
    try:
        pub = await conn.channel(publisher_confirms=True)
        consume = await conn.channel()
        await consume.set_qos(prefetch_count=PREFETCH)
        names = Topology.of(s)
        exchange = await pub.get_exchange(names.exchange)
        q = await consume.get_queue(names.queue(role))
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        got = 0

        async def drain() -> float:
            nonlocal got
            while got < n:
                batch = [await inbox.get()]
                while len(batch) < PREFETCH and not inbox.empty():
                    batch.append(inbox.get_nowait())
                await batch[-1].ack(multiple=True)
                got += len(batch)
            return time.monotonic()

        await q.consume(inbox.put, no_ack=False)
        cpu0, t0 = await await_go(role, results, go)
        drainer = asyncio.create_task(drain())
        out: dict[str, Any] = {"start": t0}
        if spec["origin"]:
            body: bytes = spec["body"]
            for i in range(0, n, PREFETCH):
                await asyncio.gather(*(
                    exchange.publish(aio_pika.Message(
                        body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        app_id="crdt-ops", type="crdt_ops.v1.Envelope"),
                        routing_key="", timeout=30)
                    for _ in range(min(PREFETCH, n - i))))
            out["published"] = time.monotonic()
        out["applied"] = await asyncio.wait_for(drainer, spec["timeout"])
        out["messages"] = got
        await finish(role, out, results, stop, cpu0)
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def _node_worker(spec: dict[str, Any], results: MpQueue[Any], go: MpEvent,
                       stop: MpEvent) -> None:
    role, n = spec["role"], spec["ops"]
    async with started_node(spec) as node:
        cpu0, t0 = await await_go(role, results, go)
        out: dict[str, Any] = {"start": t0}
        if spec["origin"]:
            await issue(node, n, spec["per_write"], spec["writers"])
            out["issued"] = time.monotonic()
        counter = node.replica.counter(KEY)
        deadline = t0 + spec["timeout"]
        while counter.value < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {role} applied {counter.value} of {n} operations "
                                   f"in {spec['timeout']:.0f}s")
            await asyncio.sleep(0.002)
        out["applied"] = time.monotonic()
        if spec["origin"]:
            await wait_published(node, spec["timeout"])
            out["published"] = time.monotonic()
        out["value"] = counter.value
        out["messages"] = metric("crdt_ops_batch_messages_sum", role)
        out["batches"] = metric("crdt_ops_batch_messages_count", role)
        out["published_msgs"] = metric("crdt_ops_messages_published_total", role)
        out["reconnects"] = metric("crdt_ops_reconnects_total", role)
        await finish(role, out, results, stop, cpu0)


@dataclass
class PhaseResult:
    done: dict[str, dict[str, Any]]
    cpu: dict[str, float]
    broker_cpu: float | None
    window: float  # seconds from go to stop, the CPU columns' denominator

    @property
    def start(self) -> float:
        return float(self.done[ROLES[0]]["start"])

    @property
    def end(self) -> float:
        return max(float(d["applied"]) for d in self.done.values())

    def cpu_text(self) -> str:
        parts = [percent(self.cpu.get(r), self.window) for r in ROLES]
        return "/".join([*parts, percent(self.broker_cpu, self.window)])


def _collect(results: MpQueue[Any], kind: str, count: int, timeout: float,
             procs: Sequence[multiprocessing.process.BaseProcess]) -> dict[str, Any]:
    got: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            what, role, data = results.get(timeout=0.5)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"worker {dead[0].name} exited with status "
                                   f"{dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f}s for {count - len(got)} worker(s) "
                                   f"to report {kind!r}") from None
            continue
        if what == "error":
            raise RuntimeError(f"worker {role} failed:\n{data}")
        if what != kind:
            raise RuntimeError(f"worker {role} sent {what!r}, expected {kind!r}")
        got[role] = data
    return got


def run_workers(specs: Sequence[dict[str, Any]], timeout: float) -> PhaseResult:
    """Run one worker process per spec; start them together once all are ready."""
    ctx = multiprocessing.get_context("spawn")
    results: MpQueue[Any] = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(s, results, go, stop), name=f"bench-{s['role']}",
                         daemon=True) for s in specs]
    for p in procs:
        p.start()
    try:
        _collect(results, "ready", len(specs), 120, procs)
        broker = BrokerCpu()
        t_go = time.monotonic()
        go.set()
        done = _collect(results, "done", len(specs), timeout + 30, procs)
        stop.set()
        window = time.monotonic() - t_go
        broker_cpu = broker.used()
        cpu = _collect(results, "cpu", len(specs), 60, procs)
        for p in procs:
            p.join(60)
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
    return PhaseResult(done, cpu, broker_cpu, window)


# ---------------------------------------------------------------- 1. the ceiling


async def declare_raw(url: str, s: Settings, roles: Sequence[str]) -> None:
    """Declare the group's topology of ``s`` and the queues of ``roles``, as the replicas do."""
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        names = Topology.of(s)  # as the replicas declare it
        await declare(ch, names)
        for r in roles:
            await declare_member(ch, names, r)


@dataclass
class Context:
    url: str
    sizes: Sizes
    progress: Callable[[str], None]
    profile_dir: str | None
    timeout: float


def retried(what: str, ctx: Context, once: Callable[[], T]) -> T:
    """``once()``, a measurement with a new group each time, tried up to
    :data:`~tools.bench.retry.ATTEMPTS` times :data:`RETRY_PAUSE_S` apart."""
    return with_retries(what, ctx.progress, lambda _attempt: once(), pause_s=RETRY_PAUSE_S,
                        retrying=f"retrying with a new group in {RETRY_PAUSE_S:g} s "
                                 "(the broker may be restarting)")


def _profile_path(ctx: Context, name: str, role: str) -> str | None:
    if ctx.profile_dir is None:
        return None
    return os.path.join(ctx.profile_dir, f"{name}-{role}.prof")


def measure_raw(ctx: Context) -> list[Row]:
    n, body = ctx.sizes.raw_msgs, op_message()

    def once() -> PhaseResult:
        group = new_group()
        try:
            asyncio.run(declare_raw(ctx.url, Settings(group=group), ROLES))
            specs = [{"kind": "raw", "role": r, "origin": r == ROLES[0], "url": ctx.url,
                      "group": group, "ops": n, "body": body, "timeout": ctx.timeout,
                      "profile": _profile_path(ctx, "raw", r)} for r in ROLES]
            return run_workers(specs, ctx.timeout)
        finally:
            delete_group(ctx.url, group, ROLES, ctx.progress)

    ctx.progress(f"1. raw aio-pika: {n:,} messages of {len(body)} bytes to 3 queues + stream")
    res = retried("raw", ctx, once)
    pub_s = res.done[ROLES[0]]["published"] - res.start
    all_s = res.end - res.start
    ctx.progress(f"   published {n / pub_s:,.0f} msg/s, consumed at all 3 {n / all_s:,.0f} msg/s")
    setup = f"{len(body)} B body, <={PREFETCH:,} unconfirmed, 3 queues + stream"
    return [
        Row("1", "raw aio-pika: publish", setup, None, n, pub_s, f"{thousands(n / pub_s)} msg/s",
            cpu=res.cpu_text(), value=n / pub_s),
        Row("1", "raw aio-pika: consumed at all 3 queues", "prefetch 1,000, ack per batch",
            None, n, all_s, f"{thousands(n / all_s)} msg/s", cpu=res.cpu_text(), value=n / all_s),
    ]


# ---------------------------------------------------------------- 2. end to end


def measure_nodes(ctx: Context, name: str, what: str, ops: int, batch_ops: int,
                  per_write: int, writers: int) -> Row:
    def once() -> PhaseResult:
        group = new_group()
        store_dir = tempfile.mkdtemp(prefix=f"crdt-ops-{group}-")
        try:
            specs = [{"kind": "node", "role": r, "origin": r == ROLES[0], "url": ctx.url,
                      "group": group, "ops": ops, "batch_ops": batch_ops,
                      "per_write": per_write, "writers": writers, "store_dir": store_dir,
                      "timeout": ctx.timeout, "profile": _profile_path(ctx, name, r)}
                     for r in ROLES]
            res = run_workers(specs, ctx.timeout)
        finally:
            delete_group(ctx.url, group, ROLES, ctx.progress)
            shutil.rmtree(store_dir, ignore_errors=True)
        if any(d["reconnects"] for d in res.done.values()):
            raise Disturbed("a replica reconnected to the broker during the measurement")
        return res

    ctx.progress(f"2. crdt-ops {what}: {ops:,} operations, batch_ops={batch_ops}, "
                 f"{per_write} op(s) per write, {writers} writer(s)")
    res = retried(name, ctx, once)
    seconds = res.end - res.start
    origin = res.done[ROLES[0]]
    msgs = int(origin["published_msgs"])
    issue_s = origin["issued"] - res.start
    pub_s = origin["published"] - res.start
    received = {r: res.done[r]["messages"] / max(res.done[r]["batches"], 1) for r in ROLES[1:]}
    ctx.progress(f"   {ops / seconds:,.0f} ops/s applied at all 3 ({seconds:.2f}s); all issued "
                 f"(durable) after {issue_s:.2f}s, confirmed after {pub_s:.2f}s; {msgs:,} "
                 "messages published; messages per consumer batch: "
                 f"{', '.join(f'{r} {v:.1f}' for r, v in received.items())}")
    setup = f"batch_ops={batch_ops}, {per_write} op/write, {writers} writer(s)"
    return Row("2", f"crdt-ops {what}", setup, ops, msgs, seconds,
               f"{thousands(ops / seconds)} ops/s", cpu=res.cpu_text(), value=ops / seconds)


# ---------------------------------------------------------------- 3. latency


class Watch:
    """When a replica applied each of the origin's register sets 1..total: a change
    event showing ``k`` means every set up to ``k`` is applied (one origin, in order)."""

    def __init__(self, node: Any, total: int) -> None:
        self.total = total
        self.times = [0.0] * (total + 1)
        self.upto = 0
        node.replica.subscribe(LAT_KEY, self._on_change)

    def _on_change(self, ev: Any) -> None:
        k = ev.new
        if isinstance(k, int) and k > self.upto:
            now = time.monotonic()
            for j in range(self.upto + 1, min(k, self.total) + 1):
                self.times[j] = now
            self.upto = k

    async def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.upto < self.total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"applied {self.upto} of {self.total} register sets")
            await asyncio.sleep(0.005)


def time_commits(node: Any) -> list[float]:
    """Record how long each SQLite transaction of ``node``'s store takes (the
    benchmark wraps the instance's methods; the transport is unchanged)."""
    took: list[float] = []
    for name in ("append", "confirm"):
        method = getattr(node.store, name)

        def timed(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                took.append(time.perf_counter() - t)
        setattr(node.store, name, timed)
    return took


async def tick(origin: Any, total: int, rate: int) -> dict[str, Any]:
    """Set the register to 1..total at ``rate`` per second (catching up after a late
    tick), ``flush()`` after each tick of 1 ms; when each set was made and accepted."""
    reg = origin.replica.register(LAT_KEY)
    commits = time_commits(origin)
    mutated = [0.0] * (total + 1)
    accepted = [0.0] * (total + 1)  # when flush() returned: durable in the origin's outbox
    flushes: set[asyncio.Task[None]] = set()

    def on_flushed(first: int, last: int) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            flushes.discard(task)
            now = time.monotonic()
            for j in range(first, last + 1):
                accepted[j] = now
        return done

    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    issued = 0
    stall, stall_at, last_tick = 0.0, 0.0, t0  # the loop's longest pause between ticks
    while issued < total:
        now = time.monotonic()
        if now - last_tick > stall:
            stall, stall_at = now - last_tick, last_tick - t0
        last_tick = now
        due = min(total, int((now - t0) * rate) + 1)
        first = issued + 1
        while issued < due:
            issued += 1
            mutated[issued] = time.monotonic()
            reg.set(issued)
        task = loop.create_task(origin.flush())
        flushes.add(task)
        task.add_done_callback(on_flushed(first, issued))
        await asyncio.sleep(1 / rate)
    t_issued = time.monotonic()
    while flushes:
        await asyncio.sleep(0.001)
    return {"t0": t0, "seconds": t_issued - t0, "mutated": mutated, "accepted": accepted,
            "stall": stall, "stall_at": stall_at, "commits": sorted(commits)}


def latencies(origin: dict[str, Any], seen: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Latency figures from :func:`tick`'s record and the receivers' :class:`Watch` times."""
    mutated, accepted = origin["mutated"], origin["accepted"]
    total = len(mutated) - 1
    applied = [max(times[k] for times in seen) for k in range(total + 1)]
    worst = max(range(1, total + 1), key=lambda k: applied[k] - mutated[k])
    return {"lat": sorted(applied[k] - mutated[k] for k in range(1, total + 1)),
            "durable": sorted(accepted[k] - mutated[k] for k in range(1, total + 1)),
            "worst_at": mutated[worst] - origin["t0"], "rate": total / origin["seconds"],
            "seconds": origin["seconds"], "stall": origin["stall"],
            "stall_at": origin["stall_at"], "commits": origin["commits"]}


async def _latency(url: str, group: str, store_dir: str, seconds: float, rate: int,
                   batch_ops: int) -> dict[str, Any]:
    """The three nodes in this process and event loop."""
    from crdt_ops.transport.amqp import AmqpNode

    total = int(seconds * rate)
    # the metrics are per process and replica id: count what this run adds
    reconnects0 = sum(metric("crdt_ops_reconnects_total", r) for r in ROLES)
    msgs0 = metric("crdt_ops_messages_published_total", ROLES[0])
    nodes = [AmqpNode(node_settings(url, group, r, store_dir, batch_ops=batch_ops))
             for r in ROLES]
    started: list[Any] = []
    try:
        for node in nodes:
            await node.start()
            started.append(node)
        watches = [Watch(node, total) for node in nodes[1:]]
        broker = BrokerCpu()
        cpu0 = self_cpu()
        origin = await tick(nodes[0], total, rate)
        for w in watches:
            await w.wait(60)
        window = time.monotonic() - origin["t0"]
        out = latencies(origin, [w.times for w in watches])
        out.update(
            window=window, cpu=f"{percent(self_cpu() - cpu0, window)} (1 process)",
            broker_cpu=broker.used(),
            reconnects=sum(metric("crdt_ops_reconnects_total", r) for r in ROLES) - reconnects0,
            messages=metric("crdt_ops_messages_published_total", ROLES[0]) - msgs0)
        return out
    finally:
        for node in started:
            with contextlib.suppress(Exception):
                await node.stop()
        for node in nodes:
            if node not in started:
                node.store.close()


async def _latency_worker(spec: dict[str, Any], results: MpQueue[Any], go: MpEvent,
                          stop: MpEvent) -> None:
    """One node of the three-process latency run."""
    role, total = spec["role"], spec["ops"]
    async with started_node(spec) as node:
        watch = None if spec["origin"] else Watch(node, total)
        cpu0, t0 = await await_go(role, results, go)
        out: dict[str, Any] = {"start": t0}
        if watch is None:
            out.update(await tick(node, total, spec["rate"]))
            out["applied"] = time.monotonic()
        else:
            await watch.wait(spec["seconds"] + 60)
            out.update(times=watch.times, applied=time.monotonic())
        out["published_msgs"] = metric("crdt_ops_messages_published_total", role)
        out["reconnects"] = metric("crdt_ops_reconnects_total", role)
        await finish(role, out, results, stop, cpu0)


def measure_latency(ctx: Context, batch_ops: int, processes: bool) -> Row:
    seconds = ctx.sizes.latency_s
    total = int(seconds * LATENCY_RATE)

    def once() -> dict[str, Any]:
        group = new_group()
        store_dir = tempfile.mkdtemp(prefix=f"crdt-ops-{group}-")
        try:
            if processes:
                specs = [{"kind": "latency", "role": r, "origin": r == ROLES[0],
                          "url": ctx.url, "group": group, "ops": total, "rate": LATENCY_RATE,
                          "seconds": seconds, "batch_ops": batch_ops, "store_dir": store_dir}
                         for r in ROLES]
                res = run_workers(specs, seconds + 90)
                origin = res.done[ROLES[0]]
                out = latencies(origin, [res.done[r]["times"] for r in ROLES[1:]])
                out.update(cpu="/".join(percent(res.cpu.get(r), res.window) for r in ROLES),
                           window=res.window, broker_cpu=res.broker_cpu,
                           reconnects=sum(d["reconnects"] for d in res.done.values()),
                           messages=origin["published_msgs"])
            else:
                out = asyncio.run(_latency(ctx.url, group, store_dir, seconds, LATENCY_RATE,
                                           batch_ops))
        finally:
            delete_group(ctx.url, group, ROLES, ctx.progress)
            shutil.rmtree(store_dir, ignore_errors=True)
        if out["reconnects"]:
            raise Disturbed("a replica reconnected to the broker during the measurement")
        return out

    where = "3 processes" if processes else "3 nodes in 1 process"
    ctx.progress(f"3. latency at {LATENCY_RATE:,} ops/s for {seconds:g}s, batch_ops={batch_ops}, "
                 f"{where}")
    out = retried("latency", ctx, once)
    lat: list[float] = out["lat"]
    p50, p99 = 1000 * statistics.median(lat), 1000 * nearest_rank(lat, 0.99)
    worst = 1000 * lat[-1]
    durable: list[float] = out["durable"]
    commits: list[float] = out["commits"] or [0.0]
    ctx.progress(f"   p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms (an operation "
                 f"issued {out['worst_at']:.2f}s into the run); issued at {out['rate']:,.0f} "
                 f"ops/s; write() accepted (durable at a) after p50 "
                 f"{1000 * statistics.median(durable):.1f} ms, p99 "
                 f"{1000 * nearest_rank(durable, 0.99):.1f} ms; longest pause of a's event loop "
                 f"between 1 ms ticks {1000 * out['stall']:.0f} ms at {out['stall_at']:.2f}s; "
                 f"a's {len(commits)} SQLite transactions took p50 "
                 f"{1000 * statistics.median(commits):.2f} ms, p99 "
                 f"{1000 * nearest_rank(commits, 0.99):.1f} ms, max {1000 * commits[-1]:.1f} ms")
    setup = f"batch_ops={batch_ops}, batch_delay_ms={Settings().batch_delay_ms:g}; {where}"
    return Row("3", f"latency a -> last of b, c at {out['rate']:,.0f} ops/s", setup, len(lat),
               int(out["messages"]), out["seconds"],
               f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.0f} ms",
               f"p99 < {TARGET_P99_MS:g} ms", p99 < TARGET_P99_MS,
               f"{out['cpu']}/{percent(out['broker_cpu'], out['window'])}", value=p99)


# ---------------------------------------------------------------- 4. replay


async def seed_stream(url: str, s: Settings, ops: int, batch_ops: int) -> int:
    """Put ``ops`` counter increments by replica ``seed``, ``batch_ops`` per message,
    into the group's stream (declared as crdt-ops declares it); returns the messages."""
    seed = Replica("seed", max_batch_ops=batch_ops + 1, members=())
    seed.found()  # a writer the group's replicas accept (crdt_ops.membership),
    seed.admit("fresh")  # and the replica that replays: a member once the replay is done
    c = seed.counter(KEY)
    bodies: list[bytes] = []
    for i in range(0, ops, batch_ops):
        for _ in range(min(batch_ops, ops - i)):
            c.increment()
        bodies += seed.outgoing()
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        names = Topology.of(s)
        ex = (await declare(ch, names))[names.exchange]
        for i in range(0, len(bodies), PREFETCH):
            await asyncio.gather(*(
                ex.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                            app_id="crdt-ops", type="crdt_ops.v1.Envelope"),
                           routing_key="", timeout=30)
                for body in bodies[i:i + PREFETCH]))
    return len(bodies)


async def _read_stream(url: str, s: Settings, msgs: int) -> float:
    """Seconds raw aio-pika takes to read ``msgs`` messages of the group's stream from
    its start, as crdt-ops reads it (prefetch 1,000, one ack per batch, body unused)."""
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=PREFETCH)
        names = Topology.of(s)
        stream = await ch.declare_queue(names.stream, durable=True,
                                        arguments=names.stream_arguments())
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        t0 = time.monotonic()
        await stream.consume(inbox.put, no_ack=False, arguments={"x-stream-offset": "first"})
        got = 0
        while got < msgs:
            batch = [await asyncio.wait_for(inbox.get(), 60)]
            while len(batch) < PREFETCH and not inbox.empty():
                batch.append(inbox.get_nowait())
            await batch[-1].ack(multiple=True)
            got += len(batch)
        return time.monotonic() - t0


async def _replay(url: str, group: str, store_dir: str, ops: int,
                  batch_ops: int) -> dict[str, Any]:
    from crdt_ops.transport.amqp import AmqpNode

    msgs = await seed_stream(url, Settings(group=group), ops, batch_ops)
    raw_s = await _read_stream(url, Settings(group=group), msgs)
    fresh = AmqpNode(node_settings(url, group, "fresh", store_dir, batch_ops=batch_ops))
    before = metric("crdt_ops_batch_messages_sum", "fresh")
    batches = metric("crdt_ops_batch_messages_count", "fresh")
    reconnects = metric("crdt_ops_reconnects_total", "fresh")
    broker = BrokerCpu()
    cpu0, t0 = self_cpu(), time.monotonic()
    try:
        await fresh.start()
        seconds = time.monotonic() - t0
        cpu, broker_cpu = self_cpu() - cpu0, broker.used()
        value = fresh.replica.counter(KEY).value
        replayed = metric("crdt_ops_batch_messages_sum", "fresh") - before
        batches = metric("crdt_ops_batch_messages_count", "fresh") - batches
    finally:
        await fresh.stop()
    if value != ops:
        raise RuntimeError(f"the fresh replica has {value} of {ops} operations after start()")
    return {"seconds": seconds, "cpu": cpu, "broker_cpu": broker_cpu, "messages": msgs,
            "raw_s": raw_s,
            "replayed": replayed, "batches": batches,
            "reconnects": metric("crdt_ops_reconnects_total", "fresh") - reconnects}


def measure_replay(ctx: Context, ops: int, batch_ops: int) -> Row:
    def once() -> dict[str, Any]:
        group = new_group()
        store_dir = tempfile.mkdtemp(prefix=f"crdt-ops-{group}-")
        try:
            out = asyncio.run(_replay(ctx.url, group, store_dir, ops, batch_ops))
        finally:
            delete_group(ctx.url, group, ["fresh"], ctx.progress)
            shutil.rmtree(store_dir, ignore_errors=True)
        if out["reconnects"]:
            raise Disturbed("a replica reconnected to the broker during the measurement")
        return out

    ctx.progress(f"4. replay: {ops:,} operations in {batch_ops}-operation messages into the "
                 "stream, then a fresh replica's start()")
    out = retried("replay", ctx, once)
    rate, raw_rate = ops / out["seconds"], out["messages"] / out["raw_s"]
    ctx.progress(f"   {rate:,.0f} ops/s ({out['replayed']:,.0f} messages replayed in "
                 f"{out['seconds']:.2f}s, {out['replayed'] / max(out['batches'], 1):.1f} "
                 f"per batch applied); raw aio-pika read the same stream at {raw_rate:,.0f} "
                 f"msg/s ({out['raw_s']:.2f}s)")
    cpu = (f"{percent(out['cpu'], out['seconds'])} (fresh)/"
           f"{percent(out['broker_cpu'], out['seconds'])}")
    return Row("4", f"replay into a fresh replica, {batch_ops}-op messages",
               f"stream: {batch_ops} op(s) per message", ops, int(out["messages"]),
               out["seconds"], f"{thousands(rate)} ops/s (raw read {out['raw_s']:.2f} s)",
               f">= {TARGET_REPLAY_OPS_PER_S:,} ops/s",
               rate >= TARGET_REPLAY_OPS_PER_S, cpu, value=rate)


# ---------------------------------------------------------------- the run


def machine(url: str) -> dict[str, str]:
    """The machine, software and broker a result was measured on, and the load."""
    return {
        **platform_info(),
        "aio-pika": aio_pika.__version__,
        "broker": broker_info(url),
        "crdt-ops": revision(),
        "load": load_average("/"),
    }


def run(ctx: Context, sections: Sequence[str]) -> tuple[list[Row], list[str]]:
    """Measure the parts named in ``sections``; returns the rows and the failures."""
    sz = ctx.sizes
    rows: list[Row] = []
    failed: list[str] = []
    raw: Row | None = None

    def part(what: str, fn: Callable[..., Row | list[Row]], *args: Any,
             **kw: Any) -> list[Row]:
        try:
            one = fn(*args, **kw)
            got = one if isinstance(one, list) else [one]
        except Exception as e:
            ctx.progress(f"{what} FAILED: {type(e).__name__}: {e}")
            failed.append(what)
            got = [Row("?", what, "-", None, None, None, f"failed ({type(e).__name__})")]
        rows.extend(got)
        return got

    if "raw" in sections:
        got = part("raw aio-pika", measure_raw, ctx)
        raw = got[1] if len(got) == 2 else None
    if "unbatched" in sections:
        for name, what, ops, writers in (
                ("unbatched", f"unbatched, {WRITERS} concurrent writers", sz.unbatched_ops,
                 WRITERS),
                ("sequential", "unbatched, 1 sequential writer", sz.sequential_ops, 1)):
            got = part(f"crdt-ops {what}", measure_nodes, ctx, name, what, ops, batch_ops=1,
                       per_write=1, writers=writers)
            if raw is not None and got[0].seconds is not None:
                row, goal = got[0], TARGET_UNBATCHED_RATIO * raw.value
                row.target = f">= {TARGET_UNBATCHED_RATIO}x raw = {thousands(goal)}/s"
                row.met = row.value >= goal
                row.result += f" ({row.value / raw.value:.2f}x raw)"
    if "batched" in sections:
        what = f"batched, {BATCHED_OPS} ops per write"
        got = part(f"crdt-ops {what}", measure_nodes, ctx, "batched", what, sz.batched_ops,
                   batch_ops=BATCHED_OPS, per_write=BATCHED_OPS, writers=1)
        if got[0].seconds is not None:
            got[0].target = f">= {TARGET_BATCHED_OPS_PER_S:,} ops/s"
            got[0].met = got[0].value >= TARGET_BATCHED_OPS_PER_S
    if "latency" in sections:
        for processes in (True, False):
            part(f"latency, {'3 processes' if processes else '1 process'}", measure_latency,
                 ctx, Settings().batch_ops, processes)
    if "replay" in sections:
        for ops, batch_ops in ((sz.replay_ops, BATCHED_OPS), (sz.replay_1op_ops, 1)):
            part(f"replay, {batch_ops}-op messages", measure_replay, ctx, ops, batch_ops)
    return rows, failed


def report(rows: Sequence[Row], info: dict[str, str], quick: bool,
           failed: Sequence[str]) -> str:
    out = ["crdt-ops over RabbitMQ beside raw aio-pika (persistent messages, publisher "
           "confirms, durable classic queues, a stream bound)", ""]
    out += info_lines(info)
    if quick:
        out += ["", "--quick: a smoke run with small sizes, not a measurement"]
    out += ["", table(rows), "", "Targets (from the issue):"]
    for r in rows:
        if r.met is not None:
            out.append(f"  {'met    ' if r.met else 'NOT met'}  {r.what}: {r.result} "
                       f"(target {r.target})")
    if failed:
        out += ["", f"FAILED (after {ATTEMPTS} attempts each): {', '.join(failed)}"]
    return "\n".join(out)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``amqp`` subcommand."""
    p = subparsers.add_parser(
        "amqp", help="crdt-ops through RabbitMQ beside raw aio-pika: throughput, latency, replay",
        description="crdt-ops replicas through RabbitMQ beside raw aio-pika publishing and "
                    "consuming on the same broker: messages and operations per second at 3 "
                    "replicas (unbatched and batched), latency at 1,000 ops/s, and replay of "
                    "the stream into a fresh replica.")
    p.add_argument("--amqp-url", default=DEFAULT_URL,
                   help="the broker (default: $AMQP_URL, else %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast run (a smoke test for CI, not a measurement)")
    p.add_argument("--only", action="append", choices=SECTIONS,
                   help="run only this part (repeatable; default: all)")
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="write cProfile stats of each worker process (parts 1 and 2) to DIR")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    """Run ``amqp`` with parsed arguments; print the report to stdout. Returns 0, or 1
    if a measurement failed (every attempt); the targets do not change it."""
    progress = Progress(enabled=not args.quiet)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        args.profile = os.path.abspath(args.profile)
    ctx = Context(url=args.amqp_url, sizes=QUICK if args.quick else FULL, progress=progress,
                  profile_dir=args.profile, timeout=60.0 if args.quick else 180.0)
    info = machine(args.amqp_url)
    progress(f"amqp: broker {info['broker']}, {info['cpu']}, {info['cores']} cores")
    sections = [s for s in SECTIONS if not args.only or s in args.only]
    rows, failed = run(ctx, sections)
    info["load"] += f" at the start, {load_average('/')} at the end (1/5/15 min)"
    print(report(rows, info, args.quick, failed), flush=True)
    progress("done" if not failed else f"done; failed: {', '.join(failed)}")
    return 1 if failed else 0
