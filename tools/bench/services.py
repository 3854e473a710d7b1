"""``python -m tools.bench services``: time from a Start request at web to
``power_actual`` "on" visible at web, through the real services, beside the same
flow done "the old way" (HTTP, then AMQP request/reply calls web -> logic -> worker)
and done as the origin story's "without" flow (a database and casts).

The flows run on one broker, one after the other, each as four OS processes
(web, logic and two workers, each worker of capacity ``max(200, N)``) plus this
process as the HTTP client. A container is a local ``sleep 1000000`` process
started by :class:`services.runtime.ProcessRuntime` (in every flow). Each flow
first creates N containers (untimed; each with its own owner, so logic's
per-owner quota never applies), then starts and waits for two warm-up
containers (not counted), then starts the N containers **one at a time**: the
next Start is sent once the previous container is "on" at web. Times are
:func:`time.perf_counter` in this process.

1. **crdt-ops**: ``crdt-ops web``, ``crdt-ops logic`` and two ``crdt-ops worker``
   processes (``python -m services.cli``) in a group ``bench-<random>``, stores in
   SQLite in a temporary directory, default settings (``--heartbeat-s 1``, as the
   demo). The client follows ``GET /api/events`` (Server-Sent Events). Latency of
   a container: from just before ``POST /api/containers/{id}/start`` is sent
   until the SSE event whose record shows ``power_actual`` "on" is read. Web
   answers the Start with 202 once the write is durable in its own store; logic
   sees it through the broker, places it (a write), the worker sees that, starts
   the process and writes ``power_actual``, and web sees that write.
   Where the time goes: the 202, the time logic placed it and the worker started
   it (the timestamps, wall clock to the millisecond, of their ``placing`` and
   ``started`` log lines), and when web showed the assignment (an SSE event).
2. **Old way** (written for this benchmark only, in this file): a web of the same
   HTTP API, keeping the records in memory; ``POST .../start`` calls logic's
   ``place`` and answers when that returns, with ``power_actual`` "on". Logic
   picks the least loaded worker (in memory; same capacity and quota rules,
   no liveness) and calls that worker's ``start``, which runs
   ``ProcessRuntime.start`` and replies. Calls are aio-pika request/reply (the
   RPC tutorial's pattern): one request queue per service ``bench-old-<random>.<service>``
   (not durable) fed through the default exchange, transient JSON messages with
   ``reply_to`` (the caller's exclusive, server-named reply queue) and
   ``correlation_id``; channels with publisher confirms (aio-pika's default); a
   request is acked after it is handled. Latency: from just before the ``POST``
   is sent until its answer (showing "on") is read. Nothing is durable, and
   nothing retries if a service or the broker is down.
3. **db-casts** (written for this benchmark only, in :mod:`tools.bench.dbflow`,
   which says it in full): web writes the Start (``desired`` "on") to a PostgreSQL
   table and answers 202 once committed; a trigger's NOTIFY tells logic (LISTEN),
   which casts ``start`` to a worker (a persistent message to its durable queue,
   no reply); the worker starts the process and casts the result back; logic
   writes it to the table; the trigger's NOTIFY tells web, which sends it on its
   SSE stream ``GET /api/events``, followed by the client as crdt-ops' web. The
   latency and stages are taken as crdt-ops' (placed and started from the row).
   PostgreSQL: ``--pg-dsn`` (default ``CRDT_OPS_PG_DSN``, else
   ``postgresql://postgres@127.0.0.1:5432/test``), a schema per run, dropped
   afterwards; if none answers within 2 s the flow is skipped, said in one line.

Afterwards every container process is killed (its process group, from the
runtime directories' pid files and the records' pids) and checked gone, the
services are stopped (SIGTERM), the groups' queues and exchanges deleted (and the
db-casts run's schema dropped). CPU: each process's CPU time over the timed phase
(``/proc``), in percent of one core; the broker's counts all its work, other clients'
included; ``postgres`` (db-casts only) the server processes of the services'
connections.

``--samples FILE`` writes every timed Start's stages (JSON lines); ``--profile DIR``
runs the crdt-ops services under cProfile (slower: to find where the time goes);
``--trace DIR`` stamps each step of a Start in every crdt-ops service and prints the
steps' p10/p50/p90 (:mod:`tools.bench.trace`).

Percentiles are nearest-rank (p99 of 200 samples is the 198th smallest). A flow
that fails (a Start not "on" within 30 s, a service exiting, a crdt-ops
service reconnecting to the broker) is retried from scratch, with new names, up
to three times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import aio_pika
import aiohttp
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from crdt_ops.subgroups import split
from services import model
from tools import harness
from tools.bench import consume, trace
from tools.bench.broker import (
    DEFAULT_URL,
    broker_info,
    delete_group_async,
    new_group,
)
from tools.bench.census import census, census_table
from tools.bench.cpu import BrokerCpu, percent, proc_cpu, self_cpu
from tools.bench.machine import load_average, platform_info, revision
from tools.bench.quick import fill_defaults
from tools.bench.report import Progress, first_left, info_lines, markdown_table
from tools.bench.retry import ATTEMPTS, Disturbed, retry_cleanup, with_retries
from tools.bench.stats import nearest_rank
from tools.harness import free_port

DEFAULT_CONTAINERS = 200
QUICK_CONTAINERS = 20
MIN_CAPACITY = 200  # per worker
WORKERS = ("worker-1", "worker-2")
#: containers started (and waited for) before the timed ones, not counted: at least this
#: many, and one per worker (:func:`warmups`)
WARMUP = 2
COMMAND = "sleep 1000000"
START_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0
FLOWS = ("crdt-ops", "old-way", "db-casts")
#: The db-casts flow's PostgreSQL unless ``--pg-dsn`` or ``CRDT_OPS_PG_DSN`` names another.
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"

#: Stages of a Start, in the order they happen: name -> what it is.
STAGES = {
    "answered": "web answered the Start (crdt-ops: 202 Accepted, durable in web's store; "
                "old way: the answer, on; db-casts: 202, the UPDATE committed)",
    "placed": "logic placed it (crdt-ops: its log line; old way: before calling the worker; "
              "db-casts: before casting to the worker)",
    "started": "the worker started the process (crdt-ops: its log line; old way, db-casts: "
               "ProcessRuntime.start returned)",
    "assigned@web": "web showed the assignment (crdt-ops: an SSE event)",
    "on@web": "power_actual on visible at web (crdt-ops, db-casts: the SSE event; old way: "
              "the answer)",
}


# ---------------------------------------------------------------- small helpers


def kill_containers(run_dirs: Sequence[Path], pids: Sequence[int]) -> int:
    """SIGKILL the process group of every container recorded in ``run_dirs``' pid
    files or in ``pids``; wait until they are gone; then stop the lease guard of each
    of ``run_dirs`` (a worker's guard outlives it, and would make its directory again
    once the benchmark removed it: services/guard.py). Returns how many containers there
    were; raises RuntimeError if any is still alive after 10 s."""
    from services import guard
    from services.pids import alive
    from services.runtime import ProcessRuntime

    found = set(pids)
    for d in run_dirs:
        if d.is_dir():
            found.update(ProcessRuntime(d).running().values())
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in found):
        time.sleep(0.05)
    left = [p for p in found if alive(p)]
    if left:
        raise RuntimeError(f"container processes still alive: {left[:10]}")
    for d in run_dirs:
        guard.stop(d)
    return len(found)


class Services:
    """The OS processes of one flow, with their logs in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(os.environ, **(env or {})))

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise Disturbed(f"{name} exited with status {p.returncode}:\n{self.tail(name)}")

    def check_connected(self, what: str = "the run") -> None:
        """Raise :class:`Disturbed` if a service's log says it reconnected to the broker
        (a measurement across a reconnection is not one of the platform at work)."""
        for name in self.procs:
            if "reconnected to the broker" in self.tail(name, 10**7):
                raise Disturbed(f"{name} reconnected to the broker during {what}")

    def tail(self, name: str, chars: int = 2000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def cpu(self) -> dict[str, float | None]:
        return {name: proc_cpu(p.pid) for name, p in self.procs.items()}

    def stop(self) -> dict[str, float]:
        """SIGTERM every process, wait for all (SIGKILL after 20 s); seconds each took."""
        t0 = time.monotonic()
        took = {}
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                p.wait(timeout=max(0.1, 20 - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            took[name] = time.monotonic() - t0
        return took


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout: float, what: str,
                   services: Services | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if services is not None:
            services.check()
        with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError):
            if await cond():
                return
        await asyncio.sleep(0.1)
    raise Disturbed(f"timed out after {timeout:g}s waiting for {what}")


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        return await resp.json() if resp.status == 200 else None


# ---------------------------------------------------------------- results


@dataclass
class Sample:
    """One timed Start: seconds since it was sent (perf_counter) for each stage seen."""

    cid: str
    wall_t0: float  # time.time() when the Start was sent (to place log lines)
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.stages["on@web"]


@dataclass
class FlowResult:
    flow: str
    description: str
    samples: list[Sample]
    seconds: float  # wall time of the timed phase
    cpu: dict[str, float | None]  # process -> CPU seconds over the timed phase
    attempts: int = 1
    #: crdt-ops service -> its event loop's worst stall over its run (None: not said)
    stalls: dict[str, Stall | None] = field(default_factory=dict)
    #: counter -> how much it grew over the timed phase (see :func:`time_starts`)
    counts: dict[str, float] = field(default_factory=dict)

    def totals(self) -> list[float]:
        return [s.total for s in self.samples]

    def stage(self, name: str) -> list[float]:
        return [s.stages[name] for s in self.samples if name in s.stages]


# ---------------------------------------------------------------- 1. crdt-ops


class EventWatch:
    """Follows web's ``GET /api/events`` and resolves waiters on the records it shows."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.first_assigned: dict[str, float] = {}
        self._waiters: list[tuple[str, Callable[[dict[str, Any]], bool],
                                  asyncio.Future[float]]] = []
        self.connected = asyncio.Event()

    def expect(self, cid: str, pred: Callable[[dict[str, Any]], bool]
               ) -> asyncio.Future[float]:
        """A future of the perf_counter time an event of ``cid`` satisfies ``pred``."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append((cid, pred, fut))
        return fut

    async def follow(self, session: aiohttp.ClientSession, url: str) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with session.get(url, timeout=timeout) as resp:
            resp.raise_for_status()
            data: list[str] = []
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(": connected"):
                    self.connected.set()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    self._event(json.loads("\n".join(data)), time.perf_counter())
                    data = []

    def _event(self, event: dict[str, Any], now: float) -> None:
        cid, rec = event["id"], event.get("record")
        if rec is None:
            self.records.pop(cid, None)
            return
        self.records[cid] = rec
        if rec.get("assigned_node") and rec.get("power_desired") == "on":
            self.first_assigned.setdefault(cid, now)
        keep = []
        for w in self._waiters:
            if w[2].done():
                continue
            if w[0] == cid and w[1](rec):
                w[2].set_result(now)
            else:
                keep.append(w)
        self._waiters = keep


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ (.*)$")
_PLACING = re.compile(r"^placing (\w+) on ")
_STARTED = re.compile(r"^\S+: started (\w+) as pid ")


def log_times(path: Path, pattern: re.Pattern[str]) -> dict[str, float]:
    """Container id -> wall time (time.time(), to the millisecond) of its first log
    line in ``path`` that ``pattern`` matches (after the timestamp, level, logger)."""
    out: dict[str, float] = {}
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        hit = pattern.match(m.group(2))
        if hit and hit.group(1) not in out:
            out[hit.group(1)] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return out


def replica_id(service: str) -> str:
    """The crdt-ops replica id of ``service`` (``web``, ``logic`` or a worker's node
    name): a worker's is ``worker.<node>``, under its principal."""
    return service if service in ("web", "logic") else f"worker.{service}"


@dataclass
class Options:
    url: str
    containers: int
    capacity: int
    batch_delay_ms: float | None
    progress: Callable[[str], None]
    profile_dir: Path | None = None
    #: stamp the crdt-ops services' steps into this directory (:mod:`tools.bench.trace`)
    trace_dir: Path | None = None
    pg_dsn: str = DEFAULT_PG_DSN
    #: the crdt-ops workers' node names, and how many cells they are split into (in
    #: blocks, in order; one cell: ``main``)
    workers: tuple[str, ...] = WORKERS
    cells: int = 1
    #: the workers' --lease-s (None: the default)
    lease_s: float | None = None
    #: web's and logic's --heartbeat-s (the demo's 1 s unless told)
    heartbeat_s: float = 1.0
    #: the workers' --heartbeat-s (the demo's 1 s unless told; None: their own default,
    #: a beat of their node: services.main.worker_heartbeat)
    worker_heartbeat_s: float | None = 1.0
    #: give each crdt-ops service a Prometheus endpoint (``Platform.metrics_ports``)
    metrics: bool = False
    #: the crdt-ops services' --consume (queue: a queue of their own; stream: the stream;
    #: None: each its own default, services.main)
    consume: str | None = None
    #: the crdt-ops services' --disk-sync (first: on the disk, then published; alongside)
    disk_sync: str = "first"

    def cell_of(self) -> dict[str, str]:
        """Each worker's cell (block by block; ``main`` when there is one cell)."""
        if self.cells == 1:
            return dict.fromkeys(self.workers, model.DEFAULT_CELL)
        return {w: f"c{i * self.cells // len(self.workers)}" for i, w in enumerate(self.workers)}


def _post_creates(base: str, n: int, tag: str) -> list[str]:
    """``n`` creates through ``POST /api/containers`` at ``base``, one at a time over one
    keep-alive HTTP/1.1 connection (``http.client``, blocking). Raises RuntimeError on
    an answer other than 201."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    cids = []
    try:
        for i in range(n):
            conn.request("POST", "/api/containers",
                         json.dumps({"name": f"{tag}-{i}", "owner": f"{tag}-owner-{i}"}),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            if resp.status != 201:
                raise RuntimeError(f"create answered {resp.status}: {body}")
            cids.append(str(body["id"]))
    finally:
        conn.close()
    return cids


async def create_records(base: str, n: int, tag: str) -> list[str]:
    """Create ``n`` container records through web at ``base`` with a sequential client
    (the next request after the last answer) and return their ids. The client runs in a
    thread with a plain ``http.client`` connection, so that what it measures is web's
    answer, not this process's event loop (which follows web's event stream) or an
    asyncio HTTP client's overhead (about 0.5 ms of CPU per request here)."""
    return await asyncio.to_thread(_post_creates, base, n, tag)


@dataclass
class Platform:
    """The crdt-ops services of one run, up: their processes, web's base URL, an HTTP
    session, the SSE follower of ``/api/events`` and the pids of the containers started."""

    services: Services
    base: str
    session: aiohttp.ClientSession
    watch: EventWatch
    follower: asyncio.Task[None]
    pids: list[int]
    #: service -> the port of its Prometheus endpoint (with ``Options.metrics``)
    metrics_ports: dict[str, int] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def running_platform(opt: Options, workdir: Path) -> AsyncIterator[Platform]:
    """web, logic and two workers (capacity ``opt.capacity``) as processes in a new group,
    stores and logs in ``workdir``, up and following web's events; afterwards the services
    stopped, every container process killed and the group deleted from the broker."""
    group = new_group()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    services = Services(workdir)
    workers, cell_of = opt.workers, opt.cell_of()
    cells = ",".join(sorted(set(cell_of.values())))
    run_dirs = [workdir / f"run-{w}" for w in workers]
    pids: list[int] = []
    ports = {name: free_port() for name in ("web", "logic", *workers)} if opt.metrics else {}
    env = {"CRDT_OPS_LOG": "INFO", "CRDT_OPS_RUNTIME": "process"}
    if opt.trace_dir is not None:
        trace.clear(opt.trace_dir)
    try:
        for name, cmd in [("web", ["web", "--port", str(port), "--host", "127.0.0.1",
                                   "--cells", cells]),
                          ("logic", ["logic", "--cells", cells])] + [
                (w, ["worker", "--node", w, "--capacity", str(opt.capacity),
                     "--command", COMMAND, "--runtime-dir", str(workdir / f"run-{w}"),
                     "--cell", cell_of[w],
                     *([] if opt.lease_s is None else ["--lease-s", str(opt.lease_s)])])
                for w in workers]:
            extra = ([] if opt.batch_delay_ms is None
                     else ["--batch-delay-ms", str(opt.batch_delay_ms)])
            if opt.consume is not None:
                extra += ["--consume", opt.consume]
            if opt.disk_sync != "first":
                extra += ["--disk-sync", opt.disk_sync]
            if name in ports:
                extra += ["--metrics-port", str(ports[name])]
            beat = opt.heartbeat_s if name in ("web", "logic") else opt.worker_heartbeat_s
            if beat is not None:
                extra += ["--heartbeat-s", f"{beat:g}"]
            prof = ([] if opt.profile_dir is None
                    else ["-m", "cProfile", "-o", str(opt.profile_dir / f"{name}.prof")])
            launch = (["-m", "services.cli"] if opt.trace_dir is None else
                      ["-m", "tools.bench.trace", str(opt.trace_dir),
                       name if name in ("web", "logic") else "worker", "services.cli"])
            services.start(name, [sys.executable, *prof, *launch, *cmd, "--amqp-url",
                                  opt.url, "--group", group, "--replica-id", replica_id(name),
                                  "--store",
                                  str(workdir / f"{name}.sqlite"), *extra], env)
        opt.progress(f"crdt-ops: group {group}: web, logic, {len(workers)} workers in cells "
                     f"{cells} started; web on :{port}")
        connector = aiohttp.TCPConnector(limit=8)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def workers_known() -> bool:
                health = await _get_json(session, f"{base}/healthz")
                return health is not None and all(  # their beats: in their cell's group,
                    any(split(c)[0] == replica_id(w)  # on their node's channel
                        for g in health["groups"].values() for c in g["clock"])
                    for w in workers)

            await wait_for(workers_known, READY_TIMEOUT_S, "web to answer and to know every "
                           "worker", services)
            watch = EventWatch()
            follower = asyncio.create_task(watch.follow(session, f"{base}/api/events"))
            try:
                await asyncio.wait_for(watch.connected.wait(), 10)
                yield Platform(services, base, session, watch, follower, pids, ports)
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await follower
                # web's SSE handler notices the closed stream only when it writes to it
                # (else at its 15 s keep-alive, which also holds up web's shutdown): one
                # more change makes it write now
                with contextlib.suppress(Exception):
                    await create_records(base, 1, "nudge")
                    await asyncio.sleep(0.2)
    finally:
        took = services.stop()
        n = kill_containers(run_dirs, pids)
        slowest = max(took, key=lambda k: took[k]) if took else "-"
        opt.progress(f"crdt-ops: services stopped (SIGTERM to exit: slowest {slowest} "
                     f"{took.get(slowest, 0):.1f} s), {n} container processes killed")
        for g in model.groups(group, sorted(set(cell_of.values()))):
            await delete_group_async(opt.url, g,
                                     [replica_id(s) for s in ("web", "logic", *workers)],
                                     opt.progress)


_WORST_STALL = re.compile(r"its event loop's worst stall was ([0-9.]+) ms, ([0-9]+)s after")


class Stall(NamedTuple):
    """A service's worst event-loop stall: how long (s) and when (s after its start)."""

    s: float
    at_s: float


def worst_stall(path: Path) -> Stall | None:
    """The worst event-loop stall a service's log says it had, in the line its replica
    logs when it stops (crdt_ops.transport.loop_lag); None if there is none."""
    text = path.read_text(errors="replace") if path.exists() else ""
    found = _WORST_STALL.findall(text)
    return Stall(float(found[-1][0]) / 1000, float(found[-1][1])) if found else None


async def crdt_ops_flow(opt: Options, workdir: Path) -> FlowResult:
    async with running_platform(opt, workdir) as p:
        result = await _crdt_ops_measure(
            opt, p, (lambda: census(p.metrics_ports)) if p.metrics_ports else None)
    # said by each service as it stopped
    result.stalls = {name: worst_stall(workdir / f"{name}.log") for name in ("web", "logic",
                                                                             *opt.workers)}
    return result


def _on(rec: dict[str, Any]) -> bool:
    return rec.get("power_actual") == "on"


async def timed_start(p: Platform, cid: str) -> Sample:
    """Send a Start for ``cid`` and wait until web shows it on (raises :class:`Disturbed`
    after START_TIMEOUT_S); the sample of its stages. The container's pid is noted."""
    session, base, watch, follower = p.session, p.base, p.watch, p.follower
    fut = watch.expect(cid, _on)
    sample = Sample(cid, time.time())
    t0 = time.perf_counter()
    async with session.post(f"{base}/api/containers/{cid}/start") as resp:
        await resp.read()
        if resp.status != 202:
            raise RuntimeError(f"start answered {resp.status}")
    sample.stages["answered"] = time.perf_counter() - t0
    try:
        pending: set[asyncio.Future[Any]] = {fut, follower}
        done, _ = await asyncio.wait(pending, timeout=START_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        fut.cancel()
    if fut not in done:
        p.services.check()
        raise Disturbed(f"{cid} not on at web after {START_TIMEOUT_S:g}s "
                        f"(record: {watch.records.get(cid)}; events stream "
                        f"{'ended' if follower.done() else 'open'})")
    sample.stages["on@web"] = fut.result() - t0
    if cid in watch.first_assigned:
        sample.stages["assigned@web"] = watch.first_assigned[cid] - t0
    p.pids.append(int(watch.records[cid]["pid"]))
    return sample


def warmups(opt: Options) -> int:
    """How many warm-up Starts a platform of ``opt.workers`` gets: :data:`WARMUP`, and at
    least one per worker (logic places each on the least loaded node, so each worker
    starts one), so that no worker's first Start (its first container process, its first
    reaction) is timed, however many workers the platform has."""
    return max(WARMUP, len(opt.workers))


async def _crdt_ops_measure(opt: Options, p: Platform,
                            counters: Callable[[], dict[str, float]] | None = None
                            ) -> FlowResult:
    n = opt.containers
    services = p.services
    cids = await create_records(p.base, n, "bench")
    warm = await create_records(p.base, warmups(opt), "warmup")
    opt.progress(f"crdt-ops: created {n} + {len(warm)} warm-up containers; warming up")

    async def start(cid: str) -> Sample:
        return await timed_start(p, cid)

    timed = await time_starts(opt, "crdt-ops", warm, cids, start, services, counters)
    samples = timed.samples
    # stages from the services' log lines (wall clock, to the millisecond)
    placed = log_times(services.workdir / "logic.log", _PLACING)
    started: dict[str, float] = {}
    for w in opt.workers:
        started.update(log_times(services.workdir / f"{w}.log", _STARTED))
    for s in samples:
        if s.cid in placed:
            s.stages["placed"] = placed[s.cid] - s.wall_t0
        if s.cid in started:
            s.stages["started"] = started[s.cid] - s.wall_t0
    services.check_connected()
    return FlowResult("crdt-ops", "crdt-ops web/logic/worker (replicas over RabbitMQ; "
                      "SSE at web)", samples, timed.seconds, timed.cpu, counts=timed.counts)


#: Seconds :func:`time_starts` waits after the last Start before it reads the counters:
#: the consumers' batches of the last Starts are counted once logged and acked, which is
#: up to ``inbound.LINGER_S`` (0.1 s) after their first delivery.
COUNT_SETTLE_S = 0.5


@dataclass
class Timed:
    """What :func:`time_starts` measured over its timed phase."""

    samples: list[Sample]
    seconds: float  # wall time (perf_counter)
    cpu: dict[str, float | None]  # process -> CPU seconds
    counts: dict[str, float]  # counter -> how much it grew


async def time_starts(opt: Options, label: str, warm: Sequence[str], cids: Sequence[str],
                      start: Callable[[str], Awaitable[Sample]], services: Services,
                      counters: Callable[[], dict[str, float]] | None = None) -> Timed:
    """Start the ``warm`` containers, let their trailing writes settle (1 s), then
    the timed phase: ``start`` each of ``cids``, one at a time. Returns the timed
    samples, the phase's seconds and each process's CPU seconds over it (the
    services', ``broker``, ``client``: this process), and how much each of
    ``counters()``'s values grew over it (read just before the first timed Start and
    :data:`COUNT_SETTLE_S` after the last); raises :class:`Disturbed` if a service exited before or
    during it."""
    for cid in warm:
        await start(cid)
    await asyncio.sleep(1.0)
    services.check()
    n = len(cids)
    opt.progress(f"{label}: timing {n} Starts, one at a time")
    count0 = counters() if counters else {}
    cpu0, broker, self0 = services.cpu(), BrokerCpu(), self_cpu()
    t_begin = time.perf_counter()
    samples = []
    for i, cid in enumerate(cids):
        samples.append(await start(cid))
        if (i + 1) % 50 == 0:
            opt.progress(f"{label}: {i + 1}/{n}, median so far "
                         f"{1000 * statistics.median(s.total for s in samples):.1f} ms")
    seconds = time.perf_counter() - t_begin
    cpu1, cpu = services.cpu(), {}
    if counters:  # a consumer counts a batch once it is logged and acked, a linger late
        await asyncio.sleep(COUNT_SETTLE_S)
    count1 = counters() if counters else {}
    for name, before in cpu0.items():
        after = cpu1.get(name)
        cpu[name] = None if after is None or before is None else after - before
    cpu["broker"] = broker.used()
    cpu["client"] = self_cpu() - self0
    services.check()
    return Timed(samples, seconds, cpu, {k: count1[k] - v for k, v in count0.items()})


# ---------------------------------------------------------------- 2. the old way


class RpcClient:
    """Request/reply calls over RabbitMQ (aio-pika's RPC tutorial pattern): the
    request goes to the callee's queue through the default exchange, with
    ``reply_to`` this caller's exclusive queue and a fresh ``correlation_id``."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self.futures: dict[str, asyncio.Future[Any]] = {}
        self.replies: AbstractQueue | None = None

    async def start(self) -> RpcClient:
        self.replies = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.replies.consume(self._on_reply, no_ack=True)
        return self

    async def _on_reply(self, msg: AbstractIncomingMessage) -> None:
        fut = self.futures.pop(msg.correlation_id or "", None)
        if fut is not None and not fut.done():
            fut.set_result(json.loads(msg.body))

    async def call(self, queue: str, method: str, timeout: float = START_TIMEOUT_S,
                   **params: Any) -> Any:
        assert self.replies is not None
        corr = uuid.uuid4().hex
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures[corr] = fut
        try:
            await self.channel.default_exchange.publish(
                aio_pika.Message(json.dumps({"method": method, "params": params}).encode(),
                                 content_type="application/json", correlation_id=corr,
                                 reply_to=self.replies.name,
                                 delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                routing_key=queue)
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self.futures.pop(corr, None)
        if not reply.get("ok"):
            raise RuntimeError(f"{queue}.{method}: {reply.get('error')}")
        return reply["result"]


Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


async def rpc_serve(channel: AbstractChannel, queue_name: str, handler: Handler) -> None:
    """Answer the requests of ``queue_name`` with ``handler(method, params)``."""
    queue = await channel.declare_queue(queue_name, durable=False, auto_delete=False)

    async def on_request(msg: AbstractIncomingMessage) -> None:
        async with msg.process(requeue=False):
            try:
                req = json.loads(msg.body)
                reply = {"ok": True, "result": await handler(req["method"], req["params"])}
            except Exception as e:
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            if msg.reply_to:
                await channel.default_exchange.publish(
                    aio_pika.Message(json.dumps(reply).encode(),
                                     content_type="application/json",
                                     correlation_id=msg.correlation_id,
                                     delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                    routing_key=msg.reply_to)

    await queue.consume(on_request)


def old_queue(prefix: str, service: str) -> str:
    return f"{prefix}.{service}"


async def _old_worker(conn: aio_pika.abc.AbstractConnection, a: argparse.Namespace) -> None:
    from services.runtime import ProcessRuntime

    runtime = ProcessRuntime(Path(a.runtime_dir), COMMAND)

    async def handle(method: str, p: dict[str, Any]) -> Any:
        if method == "start":
            pid = runtime.start(p["cid"])
            return {"pid": pid, "power_actual": "on", "started": time.time()}
        if method == "stop":
            runtime.stop(p["cid"])
            return {"power_actual": "off"}
        raise ValueError(f"no method {method!r}")

    channel = await conn.channel()
    await channel.set_qos(prefetch_count=100)
    await rpc_serve(channel, old_queue(a.prefix, a.node), handle)


async def _old_logic(conn: aio_pika.abc.AbstractConnection, a: argparse.Namespace) -> None:
    workers = a.workers.split(",")
    load = dict.fromkeys(workers, 0)
    per_owner: dict[str, int] = {}
    placed: dict[str, tuple[str, str]] = {}  # cid -> (node, owner)
    rpc = await RpcClient(await conn.channel()).start()
    quota = 20

    async def handle(method: str, p: dict[str, Any]) -> Any:
        cid = p["cid"]
        if method == "place":
            if cid in placed:
                raise ValueError(f"{cid} is placed already")
            owner = p["owner"]
            if per_owner.get(owner, 0) >= quota:
                raise ValueError(f"owner {owner!r} already runs {quota} containers (quota)")
            free = [w for w in workers if load[w] < a.capacity]
            if not free:
                raise ValueError("no worker node with free capacity")
            node = min(free, key=lambda w: (load[w], w))
            load[node] += 1
            per_owner[owner] = per_owner.get(owner, 0) + 1
            placed[cid] = (node, owner)
            decided = time.time()
            try:
                got = await rpc.call(old_queue(a.prefix, node), "start", cid=cid)
            except BaseException:
                load[node] -= 1
                per_owner[owner] -= 1
                placed.pop(cid, None)
                raise
            return {"assigned_node": node, "placed": decided, **got}
        if method == "stop":
            if cid not in placed:
                return {"power_actual": "off"}
            node, owner = placed.pop(cid)
            load[node] -= 1
            per_owner[owner] -= 1
            return await rpc.call(old_queue(a.prefix, node), "stop", cid=cid)
        raise ValueError(f"no method {method!r}")

    channel = await conn.channel()
    await channel.set_qos(prefetch_count=100)
    await rpc_serve(channel, old_queue(a.prefix, "logic"), handle)


async def _old_web(conn: aio_pika.abc.AbstractConnection, a: argparse.Namespace
                   ) -> aiohttp.web.AppRunner:
    from aiohttp import web

    records: dict[str, dict[str, Any]] = {}
    rpc = await RpcClient(await conn.channel()).start()
    logic = old_queue(a.prefix, "logic")
    routes = web.RouteTableDef()

    @routes.post("/api/containers")
    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        cid = uuid.uuid4().hex[:12]
        records[cid] = {"id": cid, "name": body["name"], "owner": body.get("owner") or "anonymous",
                        "power_desired": "off", "power_actual": "off", "assigned_node": None,
                        "pid": None}
        return web.json_response(records[cid], status=201)

    @routes.get("/api/containers/{cid}")
    async def get_one(request: web.Request) -> web.Response:
        rec = records.get(request.match_info["cid"])
        if rec is None:
            return web.json_response({"error": "no such container"}, status=404)
        return web.json_response(rec)

    @routes.post("/api/containers/{cid}/{action:start|stop}")
    async def change(request: web.Request) -> web.Response:
        rec = records.get(request.match_info["cid"])
        if rec is None:
            return web.json_response({"error": "no such container"}, status=404)
        action = request.match_info["action"]
        rec["power_desired"] = "on" if action == "start" else "off"
        try:
            if action == "start":
                got = await rpc.call(logic, "place", cid=rec["id"], owner=rec["owner"])
                rec.update(assigned_node=got["assigned_node"], pid=got["pid"],
                           power_actual=got["power_actual"])
                return web.json_response(dict(rec, placed=got["placed"],
                                              started=got["started"]))
            got = await rpc.call(logic, "stop", cid=rec["id"])
            rec.update(power_actual=got["power_actual"], pid=None, assigned_node=None)
            return web.json_response(rec)
        except Exception as e:
            return web.json_response({"error": str(e)}, status=503)

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", a.port).start()
    return runner


async def _old_service(a: argparse.Namespace) -> None:
    conn = await aio_pika.connect(a.url, client_properties={
        "connection_name": f"crdt-ops bench old-way {a.role}"})
    runner = None
    async with conn:
        if a.role == "web":
            runner = await _old_web(conn, a)
        elif a.role == "logic":
            await _old_logic(conn, a)
        else:
            await _old_worker(conn, a)
        await until_stopped(conn)
        if runner is not None:
            await runner.cleanup()


async def until_stopped(conn: aio_pika.abc.AbstractConnection) -> None:
    """Return on SIGTERM or SIGINT, or when ``conn`` closes (a flow's service process)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    closed = asyncio.ensure_future(conn.closed())
    await asyncio.wait({asyncio.ensure_future(stop.wait()), closed},
                       return_when=asyncio.FIRST_COMPLETED)


def old_service_main(argv: Sequence[str]) -> int:
    """A service of the old way, as its own process (started by :func:`old_way_flow`)."""
    p = argparse.ArgumentParser(prog="python -m tools.bench.services _old-way")
    p.add_argument("role", choices=("web", "logic", "worker"))
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--node", default="")
    p.add_argument("--workers", default=",".join(WORKERS))
    p.add_argument("--capacity", type=int, default=MIN_CAPACITY)
    p.add_argument("--runtime-dir", default="")
    asyncio.run(_old_service(p.parse_args(argv)))
    return 0


async def _consumers(url: str, queues: Sequence[str]) -> bool:
    """Whether each of ``queues`` exists and has a consumer (passive declarations: any
    queue's durability)."""
    conn = await aio_pika.connect(url)
    async with conn:
        for q in queues:
            ch = await conn.channel()
            try:
                declared = await ch.declare_queue(q, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False
            if not declared.declaration_result.consumer_count:
                return False
    return True


def start_roles(services: Services, me: list[str], common: list[str], port: int,
                workdir: Path) -> None:
    """Start a flow's web (on ``port``), logic and workers: the command ``me`` with each
    role's arguments, then ``common``; a worker's containers under ``workdir/run-<w>``."""
    services.start("web", [*me, "web", "--port", str(port), *common])
    services.start("logic", [*me, "logic", *common])
    for w in WORKERS:
        services.start(w, [*me, "worker", "--node", w, "--runtime-dir",
                           str(workdir / f"run-{w}"), *common])


async def wait_ready(session: aiohttp.ClientSession, base: str, url: str, queues: list[str],
                     what: str, services: Services) -> None:
    """Wait until web answers ``/healthz`` and each of ``queues`` has a consumer."""

    async def ready() -> bool:
        return (await _get_json(session, f"{base}/healthz") is not None
                and await _consumers(url, queues))

    await wait_for(ready, READY_TIMEOUT_S, what, services)


async def old_way_flow(opt: Options, workdir: Path) -> FlowResult:
    prefix = new_group("bench-old")
    queues = [old_queue(prefix, s) for s in ("logic", *WORKERS)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    services = Services(workdir)
    run_dirs = [workdir / f"run-{w}" for w in WORKERS]
    pids: list[int] = []
    me = [sys.executable, "-m", "tools.bench.services", "_old-way"]
    common = ["--url", opt.url, "--prefix", prefix, "--capacity", str(opt.capacity)]
    try:
        start_roles(services, me, common, port, workdir)
        opt.progress(f"old way: queues {prefix}.*: web, logic, {', '.join(WORKERS)} started "
                     f"(pids {', '.join(str(p.pid) for p in services.procs.values())}); "
                     f"web on :{port}")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:

            await wait_ready(session, base, opt.url, queues, "the old way's services",
                             services)
            return await _old_way_measure(opt, session, base, services, pids)
    finally:
        services.stop()
        n = kill_containers(run_dirs, pids)
        opt.progress(f"old way: services stopped, {n} container processes killed")
        await retry_cleanup(f"deleting queues {prefix}.*", opt.progress,
                            lambda: harness.delete_queues(opt.url, queues))


async def _old_way_measure(opt: Options, session: aiohttp.ClientSession, base: str,
                           services: Services, pids: list[int]) -> FlowResult:
    n = opt.containers
    cids = await create_records(base, n, "bench")
    warm = await create_records(base, WARMUP, "warmup")
    opt.progress(f"old way: created {n} + {WARMUP} warm-up containers; warming up")
    timeout = aiohttp.ClientTimeout(total=START_TIMEOUT_S)

    async def start(cid: str) -> Sample:
        sample = Sample(cid, time.time())
        t0 = time.perf_counter()
        try:
            async with session.post(f"{base}/api/containers/{cid}/start",
                                    timeout=timeout) as resp:
                body = await resp.json()
        except TimeoutError:
            services.check()
            raise Disturbed(f"{cid}: no answer after {START_TIMEOUT_S:g}s") from None
        t1 = time.perf_counter()
        if resp.status != 200 or body.get("power_actual") != "on":
            services.check()
            raise Disturbed(f"{cid}: start answered {resp.status}: {body}")
        sample.stages["answered"] = sample.stages["on@web"] = t1 - t0
        sample.stages["placed"] = body["placed"] - sample.wall_t0
        sample.stages["started"] = body["started"] - sample.wall_t0
        pids.append(int(body["pid"]))
        return sample

    timed = await time_starts(opt, "old way", warm, cids, start, services)
    return FlowResult("old-way", "old way: HTTP, then AMQP RPC web -> logic -> worker",
                      timed.samples, timed.seconds, timed.cpu)


# ---------------------------------------------------------------- running, reporting


def run_flow(flow: str, opt: Options) -> FlowResult:
    """Run ``flow`` from scratch (new names, a new work directory) until an attempt
    succeeds, at most :data:`~tools.bench.retry.ATTEMPTS` times; the work
    directory (the services' logs) of the last failed attempt is kept."""
    fn: Callable[[Options, Path], Awaitable[FlowResult]]
    if flow == "db-casts":
        from tools.bench.dbflow import db_casts_flow
        fn = db_casts_flow
    else:
        fn = crdt_ops_flow if flow == "crdt-ops" else old_way_flow
    workdir = Path()

    def once(attempt: int) -> FlowResult:
        nonlocal workdir
        workdir = Path(tempfile.mkdtemp(prefix=f"crdt-ops-bench-{flow}-"))
        try:
            result = asyncio.run(fn(opt, workdir))
        except Exception:
            if attempt < ATTEMPTS:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        result.attempts = attempt
        shutil.rmtree(workdir, ignore_errors=True)
        return result

    try:
        return with_retries(flow, opt.progress, once, retrying="retrying from scratch",
                            verbose=True)
    except Exception:
        opt.progress(f"{flow}: logs kept in {workdir}")
        raise


def machine(url: str) -> dict[str, str]:
    """The machine, software and broker a result was measured on, and the load."""
    return {
        **platform_info(),
        "aio-pika": aio_pika.__version__,
        "aiohttp": aiohttp.__version__,
        "broker": broker_info(url),
        "crdt-ops": revision(),
        "load": f"{load_average(', ')} (1/5/15 min, at the start)",
    }


def _ms(x: float) -> str:
    return f"{1000 * x:.1f}"


def table(results: Sequence[FlowResult]) -> str:
    """p50/p99 (and more, in ms) of Start -> on at web per flow, and the ratios of
    crdt-ops to the old way and to db-casts (those whose flows ran)."""
    head = ("flow", "containers", "p50 ms", "p99 ms", "mean ms", "min ms", "max ms",
            "timed phase s")
    rows = []
    for r in results:
        t = r.totals()
        rows.append((r.flow, str(len(t)), _ms(nearest_rank(t, 0.5)), _ms(nearest_rank(t, 0.99)),
                     _ms(statistics.fmean(t)), _ms(min(t)), _ms(max(t)), f"{r.seconds:.1f}"))
    by = {r.flow: r for r in results}
    for other in ("old-way", "db-casts"):
        if "crdt-ops" not in by or other not in by:
            continue
        a, b = by["crdt-ops"].totals(), by[other].totals()
        stats: list[Callable[[list[float]], float]] = [
            lambda x: nearest_rank(x, 0.5), lambda x: nearest_rank(x, 0.99), statistics.fmean,
            min, max]
        p50, p99, mean, low, high = (f"{f(a) / f(b):.1f}x" for f in stats)
        rows.append((f"ratio crdt-ops/{other}", "", p50, p99, mean, low, high, ""))
    return markdown_table(head, rows, first_left(len(head)))


def targets(results: Sequence[FlowResult]) -> list[str]:
    """The issue's targets for Start -> on at web, each with its verdict and numbers
    (those whose flows ran): crdt-ops p50 <= the db-casts flow's p50, <= 2x the old
    way's (the non-durable floor) p50, and p99 <= 2.5x the old way's p99."""
    by = {r.flow: r.totals() for r in results}
    if "crdt-ops" not in by:
        return []
    mine = by["crdt-ops"]
    out = []
    for other, q, factor in (("db-casts", 0.5, 1.0), ("old-way", 0.5, 2.0),
                             ("old-way", 0.99, 2.5)):
        if other not in by:
            continue
        a, b = nearest_rank(mine, q), nearest_rank(by[other], q)
        name = f"p{round(100 * q)}"
        bound = other if factor == 1.0 else f"{factor:g}x {other}"
        out.append(f"  crdt-ops {name} <= {bound} {name}: {'yes' if a <= factor * b else 'NO'} "
                   f"({_ms(a)} vs {_ms(b)} ms, {a / b:.1f}x)")
    return ["Targets (issue 14), Start -> on at web:", *out] if out else []


def stage_table(results: Sequence[FlowResult]) -> str:
    """Per flow and stage: p50/p99 of the time since the Start was sent."""
    head = ("flow", "stage (ms since Start sent)", "seen", "p50", "p99")
    rows = []
    for r in results:
        for name in STAGES:
            xs = r.stage(name)
            if not xs or (r.flow == "old-way" and name == "on@web"):  # = answered
                continue
            rows.append((r.flow, name, f"{len(xs)}/{len(r.samples)}", _ms(nearest_rank(xs, 0.5)),
                         _ms(nearest_rank(xs, 0.99))))
    return markdown_table(head, rows, first_left(len(head), 2))


def cpu_table(results: Sequence[FlowResult]) -> str:
    """Per flow: each process's CPU over the timed phase, in % of one core (``?``:
    not readable; ``-``: the flow has no such process)."""
    names = list(dict.fromkeys(n for r in results for n in r.cpu))
    head = ("flow", *names)
    rows = []
    for r in results:
        rows.append((r.flow, *(percent(r.cpu[n], r.seconds) if n in r.cpu else "-"
                               for n in names)))
    return markdown_table(head, rows, first_left(len(head)))


def report(results: Sequence[FlowResult], info: dict[str, str], opt: Options) -> str:
    out = ["crdt-ops services benchmark: Start request at web -> power_actual on visible at web",
           ""]
    out += info_lines(info)
    out += [
        "",
        f"{opt.containers} containers per flow (created first, untimed), started one at a "
        f"time (sequentially: the next Start is sent once",
        f"the previous one is on at web), after {WARMUP} warm-up Starts (not counted). "
        f"2 workers of capacity {opt.capacity}; a container is a",
        f"local '{COMMAND}' process (services.runtime.ProcessRuntime). Percentiles are "
        f"nearest-rank." + ("" if opt.batch_delay_ms is None else
                            f" crdt-ops services run with --batch-delay-ms "
                            f"{opt.batch_delay_ms:g}.")
        + ("" if opt.profile_dir is None else " crdt-ops services run under cProfile."),
        "",
        table(results),
        "",
    ]
    goals = targets(results)
    out += [*goals, ""] if goals else []
    for r in results:
        out.append(f"  {r.flow:<9} {r.description}"
                   + (f" (attempt {r.attempts})" if r.attempts > 1 else ""))
    out += ["", "Where the time goes:", "", stage_table(results), ""]
    out += [f"  {k:<13} {v}" for k, v in STAGES.items()]
    out += ["", "CPU over the timed phase, % of one core (broker: all its work):", "",
            cpu_table(results)]
    for r in results:
        if r.counts:
            out += ["", f"Messages and log commits per timed Start at each {r.flow} service "
                    "(its Prometheus counters over the timed phase; duplicates: messages it "
                    "had already, mostly its own coming back through its queue; synced: "
                    "commits that waited for a disk sync):", "",
                    census_table(r.counts, ("web", "logic", *opt.workers), len(r.samples))]
        if r.stalls:
            out += ["", f"Worst event-loop stall of each {r.flow} service over its whole run "
                    "(creates, warm-up and timed Starts; as each said when it stopped), ms "
                    "(seconds after the service started): "
                    + ", ".join(f"{k} " + ("?" if v is None else
                                           f"{1000 * v.s:.1f} ({v.at_s:.0f} s)")
                                for k, v in r.stalls.items())]
    return "\n".join(out)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``services`` subcommand."""
    p = subparsers.add_parser(
        "services", help="Start -> power_actual on at web: crdt-ops services vs AMQP RPC "
                         "and vs PostgreSQL + AMQP casts",
        description="Time from POST /api/containers/{id}/start at web to power_actual 'on' "
                    "visible at web, through crdt-ops web/logic/worker processes (watched "
                    "through GET /api/events), through the same flow done with AMQP "
                    "request/reply calls web -> logic -> worker, and done with a PostgreSQL "
                    "table, LISTEN/NOTIFY and AMQP casts; p50/p99 and their ratios.")
    configure(p)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--containers", type=int, default=None, metavar="N",
                   help=f"containers started (timed) per flow (default {DEFAULT_CONTAINERS}; "
                        f"--quick: {QUICK_CONTAINERS})")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast run (a smoke test for CI, not a measurement)")
    p.add_argument("--url", default=DEFAULT_URL,
                   help="the broker (default: AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/)")
    p.add_argument("--capacity", type=int, default=None,
                   help=f"capacity of each worker (default max({MIN_CAPACITY}, N))")
    p.add_argument("--flow", action="append", choices=FLOWS,
                   help="run only this flow (repeatable; default: all)")
    p.add_argument("--pg-dsn", default=os.environ.get("CRDT_OPS_PG_DSN", DEFAULT_PG_DSN),
                   metavar="DSN",
                   help="PostgreSQL of the db-casts flow (default: CRDT_OPS_PG_DSN, else "
                        f"{DEFAULT_PG_DSN}); if none answers within 2 s the flow is skipped")
    p.add_argument("--batch-delay-ms", type=float, default=None,
                   help="the crdt-ops services' --batch-delay-ms (default: theirs, 5)")
    p.add_argument("--samples", type=Path, default=None, metavar="FILE",
                   help="also write every timed Start (flow, id, stages in ms) as JSON lines")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="run the crdt-ops services under cProfile, writing DIR/<service>.prof "
                        "(slows them down: for finding where the time goes, not a measurement)")
    p.add_argument("--trace", type=Path, default=None, metavar="DIR",
                   help="stamp each step of a Start in the crdt-ops services (files in DIR) "
                        "and print the steps' p10/p50/p90 (tools/bench/trace.py; adds about "
                        "a microsecond a stamp: for finding where the time goes)")
    consume.add_argument(p, None)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=main)


def db_casts_unavailable(dsn: str, info: dict[str, str]) -> str | None:
    """Why the db-casts flow cannot run (asyncpg missing, or no PostgreSQL answers at
    ``dsn`` within 2 s), or None if it can (then ``info["postgres"]`` says which)."""
    try:
        from tools.bench import dbflow
    except ImportError as e:
        return f"asyncpg cannot be imported ({e}; install the bench extra); flow not run"
    got = asyncio.run(dbflow.pg_version(dsn))
    if got.startswith("PostgreSQL"):
        info["postgres"] = f"{got} at {dbflow.redact(dsn)}"
        return None
    return (f"no PostgreSQL answers at {dbflow.redact(dsn)} within {dbflow.CONNECT_TIMEOUT_S:g} s "
            f"({got}); flow not run")


def main(args: argparse.Namespace) -> int:
    """Run ``services`` with parsed arguments; print the report to stdout.
    Returns 0, or 1 if a flow failed on every attempt."""
    fill_defaults(args, {"containers": (DEFAULT_CONTAINERS, QUICK_CONTAINERS)})
    n = args.containers
    if n < 1:
        raise SystemExit("--containers must be at least 1")
    opt = Options(url=args.url, containers=n, capacity=args.capacity or max(MIN_CAPACITY, n),
                  batch_delay_ms=args.batch_delay_ms,
                  progress=Progress(enabled=not args.quiet), profile_dir=args.profile,
                  trace_dir=args.trace,
                  pg_dsn=args.pg_dsn, metrics=True, consume=args.consume,
                  disk_sync=args.disk_sync)
    for d in (opt.profile_dir, opt.trace_dir):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
    info = machine(opt.url)
    opt.progress(f"services: {n} Starts per flow, on {info['cpu']}, broker {info['broker']}")
    results = []
    failed = []
    skipped = []
    for flow in args.flow or FLOWS:
        if flow == "db-casts" and (why := db_casts_unavailable(opt.pg_dsn, info)) is not None:
            skipped.append(f"SKIPPED db-casts: {why}")
            opt.progress(skipped[-1])
            continue
        try:
            results.append(run_flow(flow, opt))
        except Exception as e:
            failed.append(f"{flow}: {type(e).__name__}: {e}")
    if results:
        print(report(results, info, opt), flush=True)
    if opt.trace_dir is not None and any(r.flow == "crdt-ops" for r in results):
        found, broken = trace.steps(opt.trace_dir)
        print(f"\nA crdt-ops Start step by step (stamps in each service: "
              f"tools/bench/trace.py; {broken} Starts whose chain of stamps was broken "
              f"left out):\n\n{trace.step_table(found)}", flush=True)
        print("\nSocket reads and writes of each crdt-ops service per Start traced (each one "
              "wakes another process of this machine, or is woken by one):\n\n"
              f"{trace.socket_table(trace.socket_ops(opt.trace_dir))}", flush=True)
    if args.samples is not None:
        with open(args.samples, "w", encoding="utf-8") as out:
            for r in results:
                for smp in r.samples:
                    out.write(json.dumps({"flow": r.flow, "id": smp.cid, **{
                        k: round(1000 * v, 3) for k, v in smp.stages.items()}}) + "\n")
    for line in skipped:
        print(line, flush=True)
    for f in failed:
        print(f"FAILED {f}", flush=True)
    opt.progress("done")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_old-way"]:
        sys.exit(old_service_main(sys.argv[2:]))
    parser = argparse.ArgumentParser(prog="python -m tools.bench.services")
    configure(parser)
    sys.exit(main(parser.parse_args()))
