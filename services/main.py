"""``crdt-ops web | logic | worker | demo``: the services' entry points.

Each service is one replica of the group, configured like ``crdt-ops replica``
(``CRDT_OPS_*`` variables or the same-named flags), plus ``--port`` for web and
``--node`` for a worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any
from urllib.parse import quote, urlparse

from crdt_ops.errors import Deposed
from crdt_ops.policy import belongs
from crdt_ops.transport import Node, collector, config, provision
from crdt_ops.transport.amqp import redact_urls
from crdt_ops.transport.amqp.groups import AmqpGroups
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from crdt_ops.transport.topology import Topology
from services import guard, lease, logs, model
from services.logic import Logic
from services.process import (
    ServiceFailed,
    Stopped,
    StopSignals,
    Terminated,
    node_state,
    stop_node,
)
from services.runtime import DockerRuntime, ProcessRuntime, Runtime
from services.settings import LogicSettings, WebSettings, WorkerSettings
from services.worker import Worker, pin_cell

log = logging.getLogger("services.main")

#: Each command's own settings (beside the replica's): the dataclass, and the fields of it
#: the command takes (empty: all).
SERVICE_SETTINGS: dict[str, tuple[tuple[type[Any], tuple[str, ...]], ...]] = {
    "web": ((WebSettings, ()),),
    "logic": ((LogicSettings, ()),),
    "worker": ((WorkerSettings, ()),),
    "demo": ((WebSettings, ("host", "port")), (LogicSettings, ("quota", "margin_s")),
             (WorkerSettings, ("capacity", "lease_s"))),
}


@dataclass(frozen=True)
class Service:
    """What a service command was given, read once: the replica's settings, and its own
    (None for the parts it does not take)."""

    settings: config.Settings
    web: WebSettings | None = None
    logic: LogicSettings | None = None
    worker: WorkerSettings | None = None


#: Replica settings the demo cannot take (it runs four services: their ids, stores, keys
#: and metrics ports are its own), with the reason it gives.
DEMO_REFUSES = {
    "replica_id": "each demo service has its own id (web, logic, worker.worker-1, ...)",
    "store": "each demo service has its own store, in the demo's directory",
    "auth": "the demo runs without --auth, or with --auth user-id under --secure",
    "trusted_users": "the demo's services trust no other broker user",
    "signing_key": "the demo does not sign (--auth signature is for crdt-ops replica and "
                   "the services run one by one)",
    "keyring": "the demo does not check signatures",
    "bootstrap": "the demo's services start from the group's stream",
    "metrics_port": "four processes cannot share one metrics port: run the services one by "
                    "one for metrics",
    "metrics_host": "the demo serves no metrics (see --metrics-port)",
}


def add_arguments(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, helptext in (("web", "the HTTP API and live page"),
                           ("logic", "validation and placement"),
                           ("worker", "runs the containers placed on one node"),
                           ("demo", "web, logic and two workers, with the page's URL")):
        p = sub.add_parser(name, help=helptext)
        config.add_arguments(p)
        for action in p._actions:  # the services' own defaults (SERVICES_CONSUME, ...)
            if action.dest == "consume":
                own = WORKER_CONSUME if name == "worker" else SERVICES_CONSUME
                action.help = ((f"CRDT_OPS_CONSUME; default {SERVICES_CONSUME!r} for web and "
                                f"logic, {WORKER_CONSUME!r} for the workers" if name == "demo"
                                else f"CRDT_OPS_CONSUME; default for {name} {own!r}")
                               + f": {config.help_of(config.Settings, 'consume')}")
            elif action.dest == "heartbeat_s" and name == "worker":
                action.help = ("CRDT_OPS_HEARTBEAT_S; default: the worker's beat interval (a "
                               "fifth of --lease-s: 6 s under the default 30 s lease)")
            elif action.dest == "heartbeat_s" and name == "demo":
                action.help = ("CRDT_OPS_HEARTBEAT_S; default 1 for the demo's services "
                               "(seconds between heartbeats, the workers' beats included: the "
                               "page shows them live)")
        for cls, only in SERVICE_SETTINGS[name]:
            config.add_arguments(p, cls, f"{cls.__name__.removesuffix('Settings').lower()} "
                                 "settings (flag, or environment variable)"
                                 + ("; passed to logic and the workers"
                                    if name == "demo" and cls is not WebSettings else ""),
                                 only)
        if name == "demo":
            p.add_argument("--secure", action="store_true",
                           help="over RabbitMQ, as docker-compose runs it: provision the group's "
                                "broker users (rabbitmqctl import_definitions: needs the rights "
                                "to run rabbitmqctl) and run each service as its own user with "
                                "--auth user-id; the users, with random passwords, are deleted "
                                "when the demo stops")
            for action in p._actions:  # refused: not in its help
                if action.dest in DEMO_REFUSES:
                    action.help = argparse.SUPPRESS
                elif action.dest == "group":
                    action.help = ("CRDT_OPS_GROUP; default: a new group demo-<6 hex digits>, "
                                   "deleted when the demo stops; a group named here is kept")
            p.epilog = ("The replica settings --queue-type, --batch-ops, --batch-delay-ms, "
                        "--prefetch, --heartbeat-s, --gap-timeout-s, --max-waiting-per-origin, "
                        "--snapshot-every, --stream-max-age, --stream-max-bytes, --membership, "
                        "--consume (default: stream for web and logic, queue for the workers) and "
                        "--group are passed "
                        "to every service; "
                        + ", ".join(f"--{k.replace('_', '-')}" for k in DEMO_REFUSES)
                        + " are refused (each service has its own).")


#: How the services receive their groups' messages unless ``--consume`` (or
#: ``CRDT_OPS_CONSUME``) says otherwise: from each group's stream, read on from the offset
#: they logged (crdt_ops/transport/amqp/stream_consumer.py), rather than a queue each. A
#: cell's members each cost the broker a copy of every message in a queue of their own; a
#: stream reader costs it less (BENCHMARKS.md, "Replicas reading the group's stream
#: instead of queues of their own": with 40 workers in 4 cells, a fifth to a third less
#: broker CPU). The library's default stays ``queue``.
SERVICES_CONSUME = "stream"
#: How a worker receives its cell's messages unless told otherwise: a queue of its own,
#: which the broker fills with its own node's messages and the cell's common part only
#: (its node's sub-group: services/model.py); the cell's stream holds every node's.
WORKER_CONSUME = "queue"


def worker_heartbeat(settings: config.Settings, lease_s: float) -> config.Settings:
    """A worker's transport settings when ``--heartbeat-s`` was not given: its heartbeat
    every beat of its node (``services.lease.beat_interval_s``, a fifth of its lease) if
    that is longer than the default. A replica sends no heartbeat in an interval in which
    it wrote (crdt_ops.transport.amqp.node) but every fifth, and a worker writes a beat each
    time: so its cell receives one message a beat from it, and a heartbeat every five,
    instead of a heartbeat every 2 s more. What that costs: its clock reports reach its
    cell with its beats (causal stability there lags by up to a beat), and its echo's
    patience is 4 beats (a deleted queue found after up to 24 s under the default 30 s
    lease)."""
    return replace(settings, heartbeat_s=max(settings.heartbeat_s,
                                            lease.beat_interval_s(lease_s)))


def read(role: str, args: argparse.Namespace) -> Service:
    """The settings of service command ``role`` from its flags and the environment, checked
    before anything starts or is created (ValueError: one line naming the flag)."""
    if role == "demo":
        given = [k for k in DEMO_REFUSES if getattr(args, k, None) is not None]
        if given:
            k = given[0]
            raise ValueError(f"--{k.replace('_', '-')} is not for the demo: {DEMO_REFUSES[k]}")
    parts: dict[str, Any] = {}
    for cls, only in SERVICE_SETTINGS[role]:
        key = cls.__name__.removesuffix("Settings").lower()
        fixed: dict[str, Any] = {f.name: f.default for f in fields(cls)
                                 if only and f.name not in only}
        parts[key] = config.load(cls, args, **fixed)
    settings = config.from_args(args)
    if not config.given(args, config.Settings, "consume"):
        settings = replace(settings, consume=WORKER_CONSUME if role == "worker"
                           else SERVICES_CONSUME)
    if role == "worker" and not config.given(args, config.Settings, "heartbeat_s"):
        settings = worker_heartbeat(settings, parts["worker"].lease_s)
    service = Service(settings, **parts)
    if service.web is not None:
        port_free(service.web.host, service.web.port)
        if role != "demo" and settings.metrics_port == service.web.port and (
                settings.metrics_host == service.web.host
                or {settings.metrics_host, service.web.host} & ANY_HOST):
            raise ValueError(f"--metrics-port {settings.metrics_port} is web's --port too: "
                             "choose another for one of them")
    if role == "worker":
        _check_worker(service.worker)
    if role != "demo":
        who = principal_of(role, service)
        if settings.replica_id and not belongs(settings.replica_id, who):
            raise ValueError(f"--replica-id {settings.replica_id!r} does not belong to this "
                             f"service's principal {who!r}: use {who!r} or "
                             f"{who + '.<instance>'!r}")
    cells(service)  # a bad --cell or --cells: refused now
    return service


def principal_of(role: str, service: Service) -> str:
    """The principal of service ``role`` (web, logic or worker) with ``service``'s settings:
    a worker's is ``worker.<its node>`` (:func:`services.model.principal`)."""
    node = service.worker.node_name if service.worker is not None else None
    return model.principal(role, node if role == "worker" else None)


def cells(service: Service) -> tuple[str, ...]:
    """The cells a service holds: a worker its own (``--cell``), logic and web theirs
    (``--cells``); ValueError naming the flag for a bad one."""
    try:
        if service.worker is not None and service.web is None:
            return (model.check_cell(service.worker.cell),)
        part = service.web or service.logic
        return part.cell_names if part is not None else (model.DEFAULT_CELL,)
    except ValueError as e:
        raise ValueError(f"--cell / --cells: {e}") from None


def _check_worker(w: WorkerSettings | None) -> None:
    assert w is not None
    try:
        model.principal("worker", w.node_name)
    except ValueError as e:
        given = "" if w.node else f" (not given: this machine's host name, {w.node_name!r})"
        raise ValueError(f"--node / CRDT_OPS_NODE{given}: {e}; name the node with --node "
                         "NAME") from None
    try:
        command = shlex.split(w.container_command)
    except ValueError as e:
        raise ValueError(f"--command / CRDT_OPS_COMMAND: {e}") from None
    if not command:
        raise ValueError("--command / CRDT_OPS_COMMAND is empty")
    if w.runtime != "docker" and shutil.which(command[0]) is None:
        raise ValueError(f"--command / CRDT_OPS_COMMAND: {command[0]!r} is not a command "
                         "found on the PATH")
    if w.runtime_dir:
        config.check_writable(w.runtime_dir, "--runtime-dir", directory=True)


def port_free(host: str, port: int, flag: str = "--port", host_flag: str = "--host") -> None:
    """Raise ValueError saying so when ``host:port`` is taken (another server listens
    there) or ``host`` cannot be bound at all (naming ``flag`` or ``host_flag``)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"{host_flag} {host}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValueError(f"port {port} on {host} is taken (another server listens "
                                 f"there): choose another with {flag}") from None
            raise ValueError(f"--host {host} --port {port}: cannot listen there "
                             f"({e.strerror})") from None


#: The services of which one process at a time runs (per principal: one logic, one worker
#: per node name, whatever its cell), whatever their replica ids and stores; a second one
#: waits as a standby (crdt_ops/transport/amqp/holder.py). Two would each act on a
#: container: place it on two nodes, or start it twice on one; and logic keys nodes by
#: name, so two nodes of one name in two cells took each other's containers.
SOLE_ROLES = ("logic", "worker")
#: The hosts that mean "every address of this machine" to a server's bind.
ANY_HOST = frozenset({"0.0.0.0", "", "::"})


def _url_host(host: str) -> str:
    """The host, as a URL writes it (an IPv6 address in brackets), that a browser (and the
    demo's own check) reaches a server bound to ``host`` at."""
    if host in ANY_HOST:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def run_service(role: str, service: Service) -> str:
    """Run one service until SIGTERM or SIGINT (caught from the start: connecting,
    replaying, waiting for admission, running); returns the signal's name. Raises
    :class:`~services.process.Stopped` for a signal before the service was up."""
    signals = StopSignals()
    settings = service.settings
    name = role
    if service.worker is not None:
        name = service.worker.node_name
    who = principal_of(role, service)  # (read() checked the replica id against it)
    runtime = (make_runtime(service.worker, settings.store, name)
               if service.worker is not None else None)
    held = cells(service)
    if service.worker is not None:  # before connecting: a node that changed cells is refused
        pin_cell(runtime_dir(service.worker, settings.store, name), name, held[0])
    if runtime is not None:  # what a worker killed as it started a container left unrecorded
        for cid, pid in runtime.adopt_strays().items():
            log.warning("%s: %s runs as pid %d without a pid file (the worker before died as "
                        "it started it); recorded", name, cid, pid)
    groups = model.held_groups(role, settings.group, held)
    # imported, and collected once, before joining: once joined, every stall of the event
    # loop delays the group's messages (importing aiohttp and its parts held web's loop
    # about 0.1 s right after its start)
    web_module: ModuleType | None = None
    if service.web is not None:  # (only web serves HTTP: the others never import aiohttp)
        web_module = importlib.import_module("services.web")
    collector.freeze_survivors()
    node = AmqpGroups(settings, model.routing(settings.group), groups, name=who,
                      policies=dict.fromkeys(groups, model.POLICY),
                      subgroups=model.subgroups(settings.group, groups),
                      sole=who if role in SOLE_ROLES else None)
    # web answers on its port from now on: 503 and why, until it has joined (services/web.py)
    starting = None
    if service.web is not None:
        assert web_module is not None
        try:
            starting = await web_module.serve(
                node, service.web.host, service.web.port, web_module.starting_app(node))
        except BaseException:
            await stop_node(node)
            raise
    try:  # (deposed as it starts, after it held its principal's queue once: it exits 1;
        # the start would otherwise wait for good, neither running nor standing by)
        await signals.guard(_unless_sole_lost(node, node.start()), lambda: node_state(node))
    except BaseException:
        if starting is not None:
            await starting.cleanup()
        await stop_node(node)
        raise
    # what it holds once up (the restored replicas; the modules were frozen before it
    # joined) is scanned by no full garbage collection again, nor what survives one
    # (crdt_ops/transport/collector.py)
    collector.freeze_survivors()
    runner = None
    try:
        if service.web is not None:
            w = service.web
            assert web_module is not None and starting is not None
            await starting.cleanup()  # (its port goes to web's own app at once)
            runner = await web_module.serve(node, w.host, w.port)
            print(f"web: http://{_url_host(w.host)}:{w.port}/", file=sys.stderr, flush=True)
            await signals.event.wait()
        elif service.logic is not None:
            lg = service.logic
            await signals.until_stopped(role, _unless_sole_lost(node, Logic(
                node, quota=lg.quota, margin_s=lg.margin_s).run()))
        else:
            wk = service.worker
            assert runtime is not None and wk is not None
            await signals.until_stopped(name, _unless_sole_lost(node, Worker(
                node, name, runtime, cell=wk.cell, capacity=wk.capacity, lease_s=wk.lease_s,
                # (another process that ran this node: its new epoch waits out that one's
                # lease, Worker._predecessor_s)
                state_dir=runtime_dir(wk, settings.store, name)).run()))
    finally:
        if runner is not None:
            await runner.cleanup()
        await stop_node(node)
    return signals.name


async def _unless_sole_lost(node: AmqpGroups, loop: Coroutine[Any, Any, None]) -> None:
    """Run a service's ``loop`` (or its node's start) until it ends, or until another
    process of its principal took over while this one was cut off
    (:meth:`AmqpGroups.sole_lost`): then raise
    :class:`~crdt_ops.errors.Deposed`, so that the service exits with status 1 (a
    supervisor starts it again: it sets its stores aside and waits as the standby, a new
    replica). Logic would decide on, from a state that no longer grows; a worker's guard
    stops its containers as its lease runs out, renewed no more."""
    task = asyncio.ensure_future(loop)
    lost = asyncio.ensure_future(node.sole_lost())
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.done() and not task.cancelled():
        task.result()  # (raises what the loop raised)
        return
    raise Deposed("another process of this service's principal took over while this one "
                  "was cut off from the broker; this one stops (start it again: it sets its "
                  "stores aside, with what it decided meanwhile, and waits as the standby, "
                  "a new replica)")


def make_runtime(w: WorkerSettings, store: str, name: str) -> Runtime:
    """The worker's runtime: ``--runtime``, with auto meaning Docker when an engine answers."""
    if w.runtime == "docker" or (w.runtime == "auto" and DockerRuntime.available()):
        if not DockerRuntime.available():
            raise ValueError("--runtime docker: no Docker engine answers (docker info failed)")
        return DockerRuntime(w.image, w.container_command, node=name)
    return ProcessRuntime(runtime_dir(w, store, name), w.container_command)


def runtime_dir(w: WorkerSettings, store: str, name: str) -> Path:
    """Where a worker keeps its pid files, its lease file and its guard's pid:
    ``--runtime-dir``, else ``<--store>.runtime-<node>``, else (no ``--store``)
    ``crdt-ops.worker.<node>.runtime`` in the working directory. (A worker that ran before
    without ``--store`` kept them in ``..runtime-<node>``: that one is kept while it exists,
    so that a restart finds its lease and its containers.)"""
    if w.runtime_dir:
        return Path(w.runtime_dir)
    if store:
        return Path(f"{store}.runtime-{name}")
    legacy = Path(f"..runtime-{name}")
    return legacy if legacy.is_dir() else Path(f"crdt-ops.worker.{name}.runtime")


def broker_takes_login(url: str, timeout_s: float = 5.0) -> bool:
    """Whether RabbitMQ at ``url`` (its first URL) answers and takes the URL's login: True,
    or False when nothing answers there (no such host, a closed port). Raises RuntimeError
    saying why, with a hint, when something answers and the connection still fails (a
    refused login, an unknown virtual host, a certificate, a server that is not RabbitMQ,
    or none within ``timeout_s`` seconds)."""
    import aio_pika

    from crdt_ops.transport.amqp.connection import CONNECT_HINTS

    async def login() -> None:
        conn = await aio_pika.connect(config.split_urls(url)[0], timeout=timeout_s)
        await conn.close()

    quiet = logging.getLogger("aiormq.connection")  # its own line for each failed connect
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        asyncio.run(asyncio.wait_for(login(), timeout_s + 1))
        return True
    except OSError as e:
        if isinstance(e.errno, int):  # refused, unresolved, unreachable: nothing answers
            return False
        error: BaseException = e
    except (TimeoutError, Exception) as e:
        error = e
    finally:
        quiet.level = level
    hint = next((h for found, h in CONNECT_HINTS if found in str(error)), "")
    raise RuntimeError(f"something answers at {redact_urls(url)}, but the connection to "
                       f"RabbitMQ failed ({type(error).__name__}: {str(error) or 'no answer'})"
                       f"{hint}")


#: Replica settings the demo passes on to every service when they are given as flags
#: (the environment's CRDT_OPS_* variables reach the services anyway).
DEMO_PASSES = ("queue_type", "batch_ops", "batch_delay_ms", "prefetch", "heartbeat_s",
               "gap_timeout_s", "max_waiting_per_origin", "snapshot_every", "stream_max_age",
               "stream_max_bytes", "membership", "consume")
#: The demo's two workers (their principals, replica ids and broker users: worker.<node>).
DEMO_WORKERS = ("worker-1", "worker-2")


def demo(args: argparse.Namespace, service: Service) -> int:
    settings = service.settings
    assert service.web is not None and service.logic is not None and service.worker is not None
    host, port = service.web.host, service.web.port
    port_free(host, port)  # checked again: nothing has started yet
    lg, wk = service.logic, service.worker
    tuned = {"quota": lg.quota, "margin_s": lg.margin_s, "capacity": wk.capacity,
             "lease_s": wk.lease_s}
    flags = [a for k in DEMO_PASSES if getattr(args, k, None) is not None
             for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    refused_env = [config.env_name(k) for k in DEMO_REFUSES if config.env_name(k) in os.environ]
    if refused_env:
        print(f"crdt-ops demo: not passing {', '.join(refused_env)} to its services (each "
              "has its own)", file=sys.stderr, flush=True)
    try:
        real = broker_takes_login(settings.amqp_url)
    except RuntimeError as e:
        print(f"crdt-ops demo: error: {e}", file=sys.stderr, flush=True)
        return 2
    if real:
        owned = not config.given(args, config.Settings, "group")
        group = f"demo-{uuid.uuid4().hex[:6]}" if owned else settings.group
        print(f"crdt-ops demo: using RabbitMQ at {urlparse(settings.amqp_url).hostname}, "
              f"group {group}" + (", a broker user per service" if args.secure else ""),
              flush=True)
        return _demo_processes(settings, group, owned, host, port, args.secure, flags, tuned)
    given = [f"--{k.replace('_', '-')}" for k in ("group", *DEMO_PASSES)
             if getattr(args, k, None) is not None]
    print(f"crdt-ops demo: no broker answers at {redact_urls(settings.amqp_url)}; using the "
          "in-memory network (start RabbitMQ, or name it with --amqp-url, for the real one)"
          + (" (--secure needs RabbitMQ: ignored)" if args.secure else "")
          + (f" ({', '.join(given)}: RabbitMQ settings, not used by it)" if given else ""),
          flush=True)
    asyncio.run(_demo_memory(host, port, tuned))
    print("stopped", flush=True)
    return 0


def _demo_plan(work: Path, host: str, port: int, tuned: dict[str, Any]
               ) -> list[tuple[str, list[str]]]:
    plan = [("web", ["web", "--port", str(port), "--host", host]),
            ("logic", ["logic", "--quota", str(tuned["quota"]),
                       "--margin-s", str(tuned["margin_s"])])]
    plan += [(model.principal("worker", w),
              ["worker", "--node", w, "--runtime", "process", "--runtime-dir",
               str(work / f"run-{w}"),
               "--capacity", str(tuned["capacity"]), "--lease-s", str(tuned["lease_s"])])
             for w in DEMO_WORKERS]
    return plan


def _demo_processes(settings: config.Settings, group: str, owned: bool, host: str, port: int,
                    secure: bool, flags: list[str], tuned: dict[str, Any]) -> int:
    """The services as processes over RabbitMQ. On exit (a stop signal or a service that
    stopped) every service is stopped and what the demo made is removed: its broker
    users (``secure``), and when it made up the group (``owned``) the group's queues,
    stream and exchanges and its directory."""
    url = settings.amqp_url
    work = Path(tempfile.mkdtemp(prefix="crdt-ops-demo-"))
    base = [sys.executable, "-m", "services.cli"]
    common = ["--group", group, *flags]
    if "--heartbeat-s" not in flags:
        common += ["--heartbeat-s", "1"]
    plan = _demo_plan(work, host, port, tuned)
    names = [name for name, _ in plan]
    env = {k: v for k, v in os.environ.items()
           if k not in {config.env_name(r) for r in DEMO_REFUSES}}
    passwords: dict[str, str] = {}
    procs: list[subprocess.Popen[bytes]] = []
    up = ok = False
    page = f"http://{_url_host(host)}:{port}/"
    try:
        if secure:
            passwords = _provision_users(group, names, settings.queue_type)
            common += ["--auth", "user-id"]
        for name, cmd in plan:
            # the URL (a password in it) in the environment, not on a command line ps shows
            service_url = _as_user(url, name, passwords[name]) if secure else url
            with open(work / f"{name}.log", "ab") as log:
                procs.append(subprocess.Popen(
                    base + cmd + common + ["--replica-id", name,
                                           "--store", str(work / f"{name}.sqlite")],
                    stdout=log, stderr=subprocess.STDOUT,
                    env={**env, "CRDT_OPS_AMQP_URL": service_url}))
        while not _answers(page):  # the URL only once the page is there
            if not all(p.poll() is None for p in procs):
                break
            time.sleep(0.2)
        else:
            up = True
            print(f"open {page}  (logs in {work}; Ctrl-C stops everything)", flush=True)
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
        print(f"crdt-ops demo: a service stopped; see the logs in {work}", file=sys.stderr,
              flush=True)
        return 1
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM (services.process.Terminated)
        ok = True
        sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        if up or (procs and _answers(page)):  # up, though the demo had not seen it yet
            print(f"crdt-ops demo: stopping ({sig.name})", file=sys.stderr, flush=True)
            return 0
        print(f"crdt-ops demo: stopped by {sig.name} before the page answered",
              file=sys.stderr, flush=True)
        return 128 + sig
    except RuntimeError as e:  # provisioning the users
        print(f"crdt-ops demo: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        _hold_signals()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        stop_containers(work / f"run-{w}" for w in DEMO_WORKERS)
        deleted = _delete_group(url, group, names) if owned else False
        if passwords:
            _delete_users(list(passwords))
        if owned and ok:
            shutil.rmtree(work, ignore_errors=True)
        groups = " and ".join(model.groups(group))
        done = [f"groups {groups} deleted (their queues, streams and exchanges)" if deleted
                else f"groups {groups} not deleted (above: why)" if owned
                else f"group {group} kept (it was given)"]
        if passwords:
            done.append(f"{len(passwords)} broker users deleted")
        done.append(f"{work} removed" if owned and ok else f"logs kept in {work}")
        print(f"crdt-ops demo: cleaned up: {'; '.join(done)}", flush=True)
        print("stopped", flush=True)


def _answers(url: str) -> bool:
    """Whether web serves at ``url``: any answer but its 503 of a web still joining its
    group (services/web.py, ``starting_app``)."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError as e:
        return e.code != 503
    except (OSError, ValueError):
        return False


def _hold_signals() -> None:
    """While the demo stops its services and cleans up, another Ctrl-C or SIGTERM does
    not interrupt it halfway (which would leave processes and broker objects behind)."""
    def say(signum: int, frame: FrameType | None) -> None:
        print("crdt-ops demo: still stopping the services and cleaning up; a moment",
              file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, say)


def _rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                              timeout=60, input=stdin)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {e}") from None
    if done.returncode:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: "
                           f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return done.stdout


def _provision_users(group: str, names: list[str], queue_type: str) -> dict[str, str]:
    """Provision ``group`` and one broker user per service, each with a random password
    of this run (never a known one); returns the passwords. Refuses to take over a user
    that exists already (another demo's, or a deployment's)."""
    existing = {line.split("\t")[0] for line in _rabbitmqctl("list_users", "-q").splitlines()}
    taken = sorted(set(names) & existing)
    if taken:
        raise RuntimeError(f"--secure: broker user(s) {', '.join(taken)} exist already "
                           "(another demo's, or a deployment's); the demo does not take them "
                           "over: delete them (rabbitmqctl delete_user NAME) or run without "
                           "--secure")
    groups = model.groups(group)
    passwords = provision.new_passwords(names)
    defs = provision.definitions(groups, names, admin=None, queue_type=queue_type,
                                 routed=list(model.subgroups(group, groups)),
                                 passwords=passwords)
    try:
        provision.apply(defs)
    except BaseException:  # an import that failed, or was interrupted, halfway
        _delete_users(names)
        raise
    return passwords


def _delete_users(names: list[str]) -> None:
    left = []
    for name in names:
        try:
            _rabbitmqctl("delete_user", name)
        except RuntimeError as e:
            if "no_such_user" not in str(e) and "does not exist" not in str(e):
                left.append(name)
    if left:
        print(f"crdt-ops demo: could not delete broker user(s) {', '.join(left)}: delete "
              "them with rabbitmqctl delete_user", file=sys.stderr, flush=True)


def _delete_group(url: str, group: str, replicas: list[str]) -> bool:
    """Delete the demo's groups from the broker (its services have stopped); whether it
    could (else it says why, and what to delete by hand)."""
    import aio_pika

    from crdt_ops.transport.amqp.deletion import Survey
    from crdt_ops.transport.amqp.deletion import delete as delete_objects

    found = Survey(group)
    for g in model.groups(group):  # the platform's, and its one cell's
        q, x = Topology(g).objects(replicas)
        found.queues += q
        found.exchanges += x

    async def delete() -> None:
        conn = await aio_pika.connect(config.split_urls(url)[0], timeout=10)
        async with conn:
            await delete_objects(conn, found, strict=False)

    try:
        asyncio.run(asyncio.wait_for(delete(), 30))
        return True
    except Exception as e:
        print(f"crdt-ops demo: could not delete group {group} from the broker at "
              f"{redact_urls(url)} ({type(e).__name__}: {e}): delete its queues and exchanges "
              f"crdt.{group}* by hand", file=sys.stderr, flush=True)
        return False


def _as_user(url: str, user: str, password: str) -> str:
    """``url`` with another user's credentials."""
    u = urlparse(url)
    host = u.netloc.rsplit("@", 1)[-1]
    return u._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}").geturl()


async def _demo_memory(host: str, port: int, tuned: dict[str, Any]) -> None:
    signals = StopSignals()
    group = "demo"
    buses = {g: MemoryBus() for g in model.groups(group)}
    ids = {"web": model.principal("web"), "logic": model.principal("logic")}
    ids.update({w: model.principal("worker", w) for w in DEMO_WORKERS})
    nodes = {n: NodeGroups[Node](model.routing(group), {g: MemoryNode(
        buses[g], rid, wall_clock=time.time_ns, policy=model.POLICY)
        for g in model.held_groups(n if n in ("web", "logic") else "worker", group)})
        for n, rid in ids.items()}
    for n in nodes.values():
        await n.start()
    work = Path(tempfile.mkdtemp(prefix="crdt-ops-demo-"))
    tasks = [asyncio.create_task(Logic(nodes["logic"], quota=tuned["quota"],
                                       margin_s=tuned["margin_s"]).run())]
    tasks += [asyncio.create_task(Worker(nodes[w], w, ProcessRuntime(work / w),
                                         capacity=tuned["capacity"],
                                         lease_s=tuned["lease_s"], state_dir=work / w).run())
              for w in DEMO_WORKERS]
    runner = None
    try:
        from services import web

        runner = await web.serve(nodes["web"], host, port)
        print(f"open http://{_url_host(host)}:{port}/  (Ctrl-C stops everything)", flush=True)
        await signals.event.wait()
    finally:
        for t in tasks:
            t.cancel()
        # ended before the directory goes: a worker still running would write to it again
        await asyncio.gather(*tasks, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        stop_containers(work / w for w in DEMO_WORKERS)
        shutil.rmtree(work, ignore_errors=True)


def stop_containers(runtime_dirs: Iterable[Path]) -> None:
    """The demo (or a ``crdt-ops platform-chaos`` run) is over: stop the containers its
    workers left running in these runtime directories (a real worker leaves them: they
    are the customers', and it reconciles them when it comes back), then their guards
    (each would make its directory again once it was removed)."""
    for d in runtime_dirs:
        if not d.is_dir():
            continue
        rt = ProcessRuntime(d)
        rt.stop_all(rt.running())
        guard.stop(d)


def main(role: str, args: argparse.Namespace, service: Service) -> int:
    """Run service command ``role`` with ``service``, what :func:`read` made of its flags;
    returns the exit status."""
    logs.setup()
    if role == "demo":
        try:
            return demo(args, service)
        except ValueError as e:
            print(f"crdt-ops demo: {e}", file=sys.stderr, flush=True)
            return 1
    try:
        how = asyncio.run(run_service(role, service))
    except Stopped as e:  # before it was up: connecting, replaying, waiting for admission
        print(f"crdt-ops {role}: {e}", file=sys.stderr, flush=True)
        return e.code
    except Deposed as e:  # as it started: status 1, as once it runs (README), not a bad
        print(f"crdt-ops {role}: deposed: {e}", file=sys.stderr, flush=True)  # setting's 2
        return 1
    except ValueError as e:
        print(f"crdt-ops {role}: {e}", file=sys.stderr, flush=True)
        return 2
    except ServiceFailed as e:
        print(f"crdt-ops {role}: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"crdt-ops {role}: stopped ({how})", file=sys.stderr, flush=True)
    return 0
