"""The ``db-casts`` flow of ``python -m tools.bench services``: the origin story's
"without" flow, a database and casts, as the real baseline of crdt-ops (issue 14).

Written for this benchmark only. Four OS processes (web, logic, two workers; this
module run as ``python -m tools.bench.dbflow ROLE``) share one PostgreSQL table,
``<schema>.containers`` (one row per container: ``id``, ``name``, ``owner``,
``desired``, ``actual``, ``node``, and for the benchmark ``pid`` and the wall-clock
times ``placed`` and ``started``, ``time.time()`` seconds), in a schema of its own
per run (``bench_db_<random>``), and talk over RabbitMQ with one-way casts:

1. web (aiohttp, the same HTTP API as the old way's web) takes
   ``POST /api/containers/{id}/start``, sets the row's ``desired`` to "on" (one
   autocommit ``UPDATE``) and answers 202 once it is committed;
2. a trigger on the table sends ``NOTIFY <schema>_desired`` with the row (on
   commit); logic, ``LISTEN``-ing (asyncpg ``add_listener``), picks the least
   loaded worker (in memory: capacity and the per-owner quota of 20, as the old
   way) and casts ``start`` to it: a persistent message (JSON, delivery mode 2) to
   the worker's durable queue ``<prefix>.<node>`` through the default exchange,
   published with confirms (aio-pika's default), no reply expected;
3. the worker starts the container (:class:`services.runtime.ProcessRuntime`, the
   other flows' ``sleep`` command) and casts the result (node, pid, times) back
   the same way to logic's durable queue ``<prefix>.logic``; a message is acked
   after it is handled (prefetch 100);
4. logic writes the result (``actual`` "on", ``node``, ``pid``) to the row (one
   autocommit ``UPDATE``), and only then acks the cast;
5. the trigger sends ``NOTIFY <schema>_actual`` with the row; web, ``LISTEN``-ing,
   sends it as a Server-Sent Event (``event: container``, ``data: {"id",
   "record"}``) on ``GET /api/events``, the stream the benchmark client follows as
   it follows crdt-ops' web.

Only Start is implemented (no stop, no liveness). Measured by
:func:`db_casts_flow` with the services benchmark's own code: the time from just
before the ``POST`` is sent until the SSE event showing ``power_actual`` "on" is
read (``on@web``), when the 202 was read (``answered``), and the wall times of
logic's cast (``placed``) and of the process started (``started``), from the row.
CPU: the services', the broker's, this process's and ``postgres``: the server
processes (backends) serving the services' connections, from ``/proc`` (the
server's other processes, WAL writer included, are not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg  # type: ignore[import-untyped]
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiohttp import web

from tools import harness
from tools.bench.broker import new_group
from tools.bench.cpu import proc_cpu
from tools.bench.retry import retry_cleanup
from tools.bench.services import (
    COMMAND,
    MIN_CAPACITY,
    WARMUP,
    WORKERS,
    EventWatch,
    FlowResult,
    Options,
    Platform,
    Sample,
    Services,
    create_records,
    kill_containers,
    start_roles,
    time_starts,
    timed_start,
    until_stopped,
    wait_ready,
)
from tools.harness import free_port

#: Seconds a connection to PostgreSQL may take before the flow counts it as absent.
CONNECT_TIMEOUT_S = 2.0
#: Per-owner quota of logic (as the old way's).
QUOTA = 20
DESCRIPTION = ("web -> PostgreSQL, NOTIFY -> logic, persistent AMQP casts logic -> worker -> "
               "logic, logic -> PostgreSQL, NOTIFY -> web; SSE at web")

log = logging.getLogger("dbflow")


def redact(dsn: str) -> str:
    """``dsn`` without its password (for the report)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def pg_version(dsn: str) -> str:
    """``PostgreSQL <version>`` of the server at ``dsn`` if it answers (a connection
    and a query, each within :data:`CONNECT_TIMEOUT_S`), else why not (the error's
    type and message)."""
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S),
                                      CONNECT_TIMEOUT_S + 0.5)
        try:
            version = await asyncio.wait_for(conn.fetchval("SHOW server_version"),
                                             CONNECT_TIMEOUT_S)
        finally:
            await conn.close(timeout=CONNECT_TIMEOUT_S)
    except Exception as e:
        return f"{type(e).__name__}: {e}".strip().rstrip(":")
    return f"PostgreSQL {version}"


def queue_name(prefix: str, service: str) -> str:
    """The durable queue a service's casts go to: ``<prefix>.<service>``."""
    return f"{prefix}.{service}"


def app_name(schema: str, role: str) -> str:
    """The ``application_name`` of a service's PostgreSQL connections (to find their
    server processes)."""
    return f"db-casts {schema} {role}"


def schema_sql(schema: str) -> str:
    """The run's schema: the table, and the trigger that sends a change of
    ``desired`` on channel ``<schema>_desired`` and one of ``actual`` on
    ``<schema>_actual``, the new row as JSON (delivered on commit)."""
    return f"""
        CREATE SCHEMA {schema};
        CREATE TABLE {schema}.containers (
            id text PRIMARY KEY, name text NOT NULL, owner text NOT NULL,
            desired text NOT NULL DEFAULT 'off', actual text NOT NULL DEFAULT 'off',
            node text, pid integer, placed double precision, started double precision);
        CREATE FUNCTION {schema}.notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.desired IS DISTINCT FROM OLD.desired THEN
                PERFORM pg_notify('{schema}_desired', row_to_json(NEW)::text);
            END IF;
            IF NEW.actual IS DISTINCT FROM OLD.actual THEN
                PERFORM pg_notify('{schema}_actual', row_to_json(NEW)::text);
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER containers_notify AFTER UPDATE ON {schema}.containers
            FOR EACH ROW EXECUTE FUNCTION {schema}.notify_change();
    """


def record(row: dict[str, Any]) -> dict[str, Any]:
    """A row as web shows it (the field names of the other flows' webs)."""
    return {"id": row["id"], "name": row["name"], "owner": row["owner"],
            "power_desired": row["desired"], "power_actual": row["actual"],
            "assigned_node": row["node"], "pid": row["pid"], "placed": row["placed"],
            "started": row["started"]}


# ---------------------------------------------------------------- the services


async def _connect(a: argparse.Namespace) -> Any:
    return await asyncpg.connect(a.dsn, timeout=10,
                                 server_settings={"application_name": app_name(a.schema, a.role)})


async def _pool(a: argparse.Namespace) -> Any:
    return await asyncpg.create_pool(
        a.dsn, min_size=2, max_size=2, timeout=10,
        server_settings={"application_name": app_name(a.schema, a.role)})


def _cast(body: dict[str, Any]) -> aio_pika.Message:
    return aio_pika.Message(json.dumps(body).encode(), content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


async def _declare(channel: AbstractChannel, name: str) -> aio_pika.abc.AbstractQueue:
    return await channel.declare_queue(name, durable=True, auto_delete=False)


class _Web:
    """web: the HTTP API over the table, and the SSE stream of its ``actual`` changes."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.table = f"{a.schema}.containers"
        self.streams: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.pool: Any = None
        self.listen: Any = None
        self.runner: web.AppRunner | None = None

    def _on_actual(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        row = json.loads(payload)
        event = {"id": row["id"], "record": record(row)}
        for q in self.streams:
            q.put_nowait(event)

    async def start(self) -> None:
        self.pool = await _pool(self.a)
        self.listen = await _connect(self.a)
        await self.listen.add_listener(f"{self.a.schema}_actual", self._on_actual)
        routes = web.RouteTableDef()

        @routes.post("/api/containers")
        async def create(request: web.Request) -> web.Response:
            body = await request.json()
            row = await self.pool.fetchrow(
                f"INSERT INTO {self.table} (id, name, owner) VALUES ($1, $2, $3) RETURNING *",
                uuid.uuid4().hex[:12], body["name"], body.get("owner") or "anonymous")
            return web.json_response(record(dict(row)), status=201)

        @routes.get("/api/containers/{cid}")
        async def get_one(request: web.Request) -> web.Response:
            row = await self.pool.fetchrow(f"SELECT * FROM {self.table} WHERE id = $1",
                                           request.match_info["cid"])
            if row is None:
                return web.json_response({"error": "no such container"}, status=404)
            return web.json_response(record(dict(row)))

        @routes.post("/api/containers/{cid}/start")
        async def start(request: web.Request) -> web.Response:
            # autocommit: the UPDATE is committed (and its NOTIFY sent) when it returns
            row = await self.pool.fetchrow(
                f"UPDATE {self.table} SET desired = 'on' WHERE id = $1 RETURNING *",
                request.match_info["cid"])
            if row is None:
                return web.json_response({"error": "no such container"}, status=404)
            return web.json_response(record(dict(row)), status=202)

        @routes.get("/api/events")
        async def events(request: web.Request) -> web.StreamResponse:
            """Server-Sent Events: ``event: container`` with ``{"id", "record"}`` after
            each change of a row's ``actual``; starts with ``: connected``."""
            q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
            self.streams.add(q)
            try:
                await resp.prepare(request)
                await resp.write(b": connected\n\n")
                while True:
                    try:
                        event = await asyncio.wait_for(q.get(), 5)
                    except TimeoutError:
                        await resp.write(b": keep-alive\n\n")
                        continue
                    if event is None:
                        break
                    await resp.write(f"event: container\ndata: {json.dumps(event)}\n\n"
                                     .encode())
            except ConnectionResetError:
                pass
            finally:
                self.streams.discard(q)
            return resp

        @routes.get("/healthz")
        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app = web.Application()
        app.add_routes(routes)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.a.port).start()

    async def close(self) -> None:
        for q in self.streams:
            q.put_nowait(None)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.listen is not None:
            await self.listen.close()
        if self.pool is not None:
            await self.pool.close()


class _Logic:
    """logic: places a Start it hears of (NOTIFY) by casting to a worker, and writes
    the worker's result to the table."""

    def __init__(self, a: argparse.Namespace, channel: AbstractChannel) -> None:
        self.a = a
        self.channel = channel
        self.workers: list[str] = a.workers.split(",")
        self.load = dict.fromkeys(self.workers, 0)
        self.per_owner: dict[str, int] = {}
        self.placed: dict[str, str] = {}  # cid -> node
        self.tasks: set[asyncio.Task[None]] = set()
        self.pool: Any = None
        self.listen: Any = None

    async def start(self) -> None:
        self.pool = await _pool(self.a)
        self.listen = await _connect(self.a)
        await self.listen.add_listener(f"{self.a.schema}_desired", self._on_desired)
        # consuming last: a consumer on logic's queue means logic listens too
        queue = await _declare(self.channel, queue_name(self.a.prefix, "logic"))
        await queue.consume(self._on_result)

    def _on_desired(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        task = asyncio.ensure_future(self._place(json.loads(payload)))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("placing failed", exc_info=task.exception())

    async def _place(self, row: dict[str, Any]) -> None:
        cid, owner = row["id"], row["owner"]
        if row["desired"] != "on" or row["actual"] == "on" or cid in self.placed:
            return
        if self.per_owner.get(owner, 0) >= QUOTA:
            log.warning("%s: owner %r already runs %d containers (quota)", cid, owner, QUOTA)
            return
        free = [w for w in self.workers if self.load[w] < self.a.capacity]
        if not free:
            log.warning("%s: no worker node with free capacity", cid)
            return
        node = min(free, key=lambda w: (self.load[w], w))
        self.load[node] += 1
        self.per_owner[owner] = self.per_owner.get(owner, 0) + 1
        self.placed[cid] = node
        await self.channel.default_exchange.publish(
            _cast({"method": "start", "cid": cid, "placed": time.time()}),
            routing_key=queue_name(self.a.prefix, node))

    async def _on_result(self, msg: AbstractIncomingMessage) -> None:
        async with msg.process(requeue=False):
            r = json.loads(msg.body)
            await self.pool.execute(
                f"UPDATE {self.a.schema}.containers SET actual = $2, node = $3, pid = $4, "
                f"placed = $5, started = $6 WHERE id = $1",
                r["cid"], r["actual"], r["node"], r["pid"], r["placed"], r["started"])

    async def close(self) -> None:
        if self.listen is not None:
            await self.listen.close()
        if self.pool is not None:
            await self.pool.close()


async def _worker(a: argparse.Namespace, channel: AbstractChannel) -> None:
    """worker: starts the container of each ``start`` cast and casts the result back."""
    from services.runtime import ProcessRuntime

    runtime = ProcessRuntime(Path(a.runtime_dir), COMMAND)
    to_logic = queue_name(a.prefix, "logic")

    async def on_start(msg: AbstractIncomingMessage) -> None:
        async with msg.process(requeue=False):
            r = json.loads(msg.body)
            pid = runtime.start(r["cid"])
            started = time.time()
            await channel.default_exchange.publish(
                _cast({"cid": r["cid"], "node": a.node, "pid": pid, "actual": "on",
                       "placed": r["placed"], "started": started}),
                routing_key=to_logic)

    queue = await _declare(channel, queue_name(a.prefix, a.node))
    await queue.consume(on_start)


async def _service(a: argparse.Namespace) -> None:
    conn = await aio_pika.connect(a.url, client_properties={
        "connection_name": f"crdt-ops bench db-casts {a.role}"})
    async with conn:
        channel = await conn.channel()  # publisher confirms: aio-pika's default
        await channel.set_qos(prefetch_count=100)
        part: _Web | _Logic | None = None
        if a.role == "web":
            part = _Web(a)
            await part.start()
        elif a.role == "logic":
            part = _Logic(a, channel)
            await part.start()
        else:
            await _worker(a, channel)
        await until_stopped(conn)
        if part is not None:
            await part.close()


def service_main(argv: Sequence[str]) -> int:
    """A service of the db-casts flow, as its own process (started by
    :func:`db_casts_flow`)."""
    p = argparse.ArgumentParser(prog="python -m tools.bench.dbflow")
    p.add_argument("role", choices=("web", "logic", "worker"))
    p.add_argument("--url", required=True, help="the broker")
    p.add_argument("--dsn", required=True, help="PostgreSQL")
    p.add_argument("--schema", required=True)
    p.add_argument("--prefix", required=True, help="of the queues' names")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--node", default="")
    p.add_argument("--workers", default=",".join(WORKERS))
    p.add_argument("--capacity", type=int, default=MIN_CAPACITY)
    p.add_argument("--runtime-dir", default="")
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_service(p.parse_args(argv)))
    return 0


# ---------------------------------------------------------------- the flow


class DbServices(Services):
    """The flow's processes; :meth:`cpu` adds ``postgres``, the server processes
    serving their connections (found once they are up, by ``application_name``)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.pg_pids: list[int] = []

    def cpu(self) -> dict[str, float | None]:
        out = super().cpu()
        used = [proc_cpu(p) for p in self.pg_pids]
        out["postgres"] = (None if not used or any(u is None for u in used)
                           else sum(u for u in used if u is not None))
        return out


async def db_casts_flow(opt: Options, workdir: Path) -> FlowResult:
    """Set up the run's schema and queues, start web, logic and the workers, time
    ``opt.containers`` Starts one at a time; afterwards the services stopped, the
    container processes killed, the schema dropped and the queues deleted."""
    schema = f"bench_db_{uuid.uuid4().hex[:10]}"
    prefix = new_group("bench-db")
    queues = [queue_name(prefix, s) for s in ("logic", *WORKERS)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    services = DbServices(workdir)
    run_dirs = [workdir / f"run-{w}" for w in WORKERS]
    pids: list[int] = []
    admin = await asyncpg.connect(opt.pg_dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        await admin.execute(schema_sql(schema))
        conn = await aio_pika.connect(opt.url)
        async with conn:
            ch = await conn.channel()
            for q in queues:
                await _declare(ch, q)
        me = [sys.executable, "-m", "tools.bench.dbflow"]
        common = ["--url", opt.url, "--dsn", opt.pg_dsn, "--schema", schema, "--prefix", prefix,
                  "--capacity", str(opt.capacity)]
        start_roles(services, me, common, port, workdir)
        opt.progress(f"db-casts: schema {schema}, queues {prefix}.*: web, logic, "
                     f"{', '.join(WORKERS)} started (pids "
                     f"{', '.join(str(p.pid) for p in services.procs.values())}); web on :{port}")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:

            await wait_ready(session, base, opt.url, queues, "the db-casts services",
                             services)
            services.pg_pids = [r["pid"] for r in await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1",
                app_name(schema, "%"))]
            watch = EventWatch()
            follower = asyncio.create_task(watch.follow(session, f"{base}/api/events"))
            try:
                await asyncio.wait_for(watch.connected.wait(), 10)
                return await _measure(opt, Platform(services, base, session, watch, follower,
                                                    pids))
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await follower
    finally:
        took = services.stop()
        n = kill_containers(run_dirs, pids)
        opt.progress(f"db-casts: services stopped (SIGTERM to exit, s: "
                     f"{', '.join(f'{k} {v:.1f}' for k, v in took.items())}), "
                     f"{n} container processes killed")
        try:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        except Exception as e:
            opt.progress(f"db-casts: could not drop schema {schema} ({type(e).__name__}: {e}); "
                         f"drop it by hand")
        finally:
            await admin.close()
        await retry_cleanup(f"deleting queues {prefix}.*", opt.progress,
                            lambda: harness.delete_queues(opt.url, queues))


async def _measure(opt: Options, p: Platform) -> FlowResult:
    cids = await create_records(p.base, opt.containers, "bench")
    warm = await create_records(p.base, WARMUP, "warmup")
    opt.progress(f"db-casts: created {opt.containers} + {WARMUP} warm-up containers; "
                 f"warming up")

    async def start(cid: str) -> Sample:
        sample = await timed_start(p, cid)
        # the assignment reaches web with the result, in the same event: not a stage here
        sample.stages.pop("assigned@web", None)
        rec = p.watch.records[cid]
        sample.stages["placed"] = rec["placed"] - sample.wall_t0
        sample.stages["started"] = rec["started"] - sample.wall_t0
        return sample

    timed = await time_starts(opt, "db-casts", warm, cids, start, p.services)
    return FlowResult("db-casts", DESCRIPTION, timed.samples, timed.seconds, timed.cpu)


if __name__ == "__main__":
    sys.exit(service_main(sys.argv[1:]))
