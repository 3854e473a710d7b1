"""``crdt-ops web | logic | worker | demo``: the services' entry points.

Each service is one replica of the group, configured like ``crdt-ops replica``
(``CRDT_OPS_*`` variables or the same-named flags), plus ``--port`` for web and
``--node`` for a worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, urlparse

from crdt_ops import config, logs, provision
from crdt_ops.policy import belongs
from crdt_ops.transport import Node
from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from services import model, web
from services.logic import Logic
from services.runtime import DockerRuntime, ProcessRuntime, Runtime
from services.worker import Worker


def add_arguments(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, helptext in (("web", "the HTTP API and live page"),
                           ("logic", "validation and placement"),
                           ("worker", "runs the containers placed on one node"),
                           ("demo", "web, logic and two workers, with the page's URL")):
        p = sub.add_parser(name, help=helptext)
        config.add_arguments(p)
        if name in ("web", "demo"):
            p.add_argument("--port", type=int, default=None,
                           help="CRDT_OPS_HTTP_PORT; default 8080")
            p.add_argument("--host", default="127.0.0.1")
        if name == "demo":
            p.add_argument("--secure", action="store_true",
                           help="over RabbitMQ, as docker-compose runs it: provision the group's "
                                "broker users (rabbitmqctl import_definitions: needs the rights "
                                "to run rabbitmqctl) and run each service as its own user with "
                                "--auth user-id")
        if name == "worker":
            p.add_argument("--node", default=None, help="CRDT_OPS_NODE: this worker's node name")
            p.add_argument("--capacity", type=int, default=10)
            p.add_argument("--command", dest="container_command",
                           default=os.environ.get("CRDT_OPS_COMMAND", "sleep 1000000"),
                           help="CRDT_OPS_COMMAND: what a container runs (a local process)")
            p.add_argument("--runtime-dir", default=None,
                           help="where the worker keeps its pid files")
            p.add_argument("--runtime", choices=("auto", "process", "docker"),
                           default=os.environ.get("CRDT_OPS_RUNTIME", "auto"),
                           help="CRDT_OPS_RUNTIME: local processes, Docker, or Docker when an "
                                "engine answers (auto)")
            p.add_argument("--image", default=os.environ.get("CRDT_OPS_IMAGE", "busybox"),
                           help="CRDT_OPS_IMAGE: the image of a Docker container")


def port_of(args: argparse.Namespace) -> int:
    return int(args.port or os.environ.get("CRDT_OPS_HTTP_PORT", 8080))


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_service(role: str, args: argparse.Namespace) -> None:
    settings = config.from_args(args)
    name = role
    if role == "worker":
        name = args.node or os.environ.get("CRDT_OPS_NODE") or socket.gethostname()
    who = model.principal(role, name if role == "worker" else None)
    if settings.replica_id and not belongs(settings.replica_id, who):
        raise ValueError(f"replica id {settings.replica_id!r} does not belong to this service's "
                         f"principal {who!r}: use {who!r} or {who + '.<instance>'!r}")
    runtime = make_runtime(args, settings.store, name) if role == "worker" else None
    node = AmqpNode(settings, name=who, policy=model.POLICY)
    await node.start()
    tasks = []
    runner = None
    try:
        if role == "web":
            runner = await web.serve(node, args.host, port_of(args))
            print(f"web: http://{args.host}:{port_of(args)}/", file=sys.stderr, flush=True)
        elif role == "logic":
            tasks.append(asyncio.create_task(Logic(node).run()))
        else:
            assert runtime is not None
            tasks.append(asyncio.create_task(
                Worker(node, name, runtime, capacity=args.capacity).run()))
        await _until_signal()
    finally:
        for t in tasks:
            t.cancel()
        if runner is not None:
            await runner.cleanup()
        await node.stop()


def make_runtime(args: argparse.Namespace, store: str, name: str) -> Runtime:
    """The worker's runtime: ``--runtime``, with auto meaning Docker when an engine answers."""
    if args.runtime == "docker" or (args.runtime == "auto" and DockerRuntime.available()):
        if not DockerRuntime.available():
            raise ValueError("--runtime docker: no Docker engine answers (docker info failed)")
        return DockerRuntime(args.image, args.container_command)
    rdir = Path(args.runtime_dir or f"{store or '.'}.runtime-{name}")
    return ProcessRuntime(rdir, args.container_command)


def broker_answers(url: str) -> bool:
    u = urlparse(url)
    port = u.port or (5671 if u.scheme == "amqps" else 5672)
    try:
        with socket.create_connection((u.hostname or "localhost", port), timeout=1):
            return True
    except OSError:
        return False


def demo(args: argparse.Namespace) -> int:
    settings = config.from_args(args)
    port = port_of(args)
    if broker_answers(settings.amqp_url):
        group = settings.group if settings.group != "default" else f"demo-{uuid.uuid4().hex[:6]}"
        print(f"crdt-ops demo: using RabbitMQ at {urlparse(settings.amqp_url).hostname}, "
              f"group {group}" + (", a broker user per service" if args.secure else ""),
              flush=True)
        return _demo_processes(settings.amqp_url, group, args.host, port, args.secure)
    print("crdt-ops demo: no broker answers; using the in-memory network"
          + (" (--secure needs RabbitMQ: ignored)" if args.secure else ""), flush=True)
    asyncio.run(_demo_memory(args.host, port))
    return 0


def _demo_processes(url: str, group: str, host: str, port: int, secure: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="crdt-ops-demo-"))
    base = [sys.executable, "-m", "crdt_ops.cli"]
    common = ["--group", group, "--heartbeat-s", "1"]
    plan = [("web", ["web", "--port", str(port), "--host", host]), ("logic", ["logic"])]
    plan += [(model.principal("worker", f"worker-{i}"),
              ["worker", "--node", f"worker-{i}", "--runtime-dir", str(work / f"run-{i}")])
             for i in (1, 2)]
    if secure:
        provision.apply(provision.definitions(group, [name for name, _ in plan], admin=None))
        common += ["--auth", "user-id"]
    procs = []
    for name, cmd in plan:
        service_url = _as_user(url, name, provision.demo_password(name)) if secure else url
        with open(work / f"{name}.log", "ab") as log:
            procs.append(subprocess.Popen(
                base + cmd + common + ["--amqp-url", service_url, "--replica-id", name,
                                       "--store", str(work / f"{name}.sqlite")],
                stdout=log, stderr=subprocess.STDOUT))
    print(f"open http://{host}:{port}/  (logs in {work}; Ctrl-C stops everything)", flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a service stopped; see the logs", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=20)
        _stop_containers(work / f"run-{i}" for i in (1, 2))


def _as_user(url: str, user: str, password: str) -> str:
    """``url`` with another user's credentials."""
    u = urlparse(url)
    host = u.netloc.rsplit("@", 1)[-1]
    return u._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}").geturl()


async def _demo_memory(host: str, port: int) -> None:
    bus = MemoryBus()
    ids = {"web": model.principal("web"), "logic": model.principal("logic")}
    ids.update({w: model.principal("worker", w) for w in ("worker-1", "worker-2")})
    nodes: dict[str, Node] = {n: MemoryNode(bus, rid, wall_clock=time.time_ns,
                                            policy=model.POLICY) for n, rid in ids.items()}
    for n in nodes.values():
        await n.start()
    work = Path(tempfile.mkdtemp(prefix="crdt-ops-demo-"))
    tasks = [asyncio.create_task(Logic(nodes["logic"]).run())]
    tasks += [asyncio.create_task(Worker(nodes[w], w, ProcessRuntime(work / w)).run())
              for w in ("worker-1", "worker-2")]
    runner = await web.serve(nodes["web"], host, port)
    print(f"open http://{host}:{port}/  (Ctrl-C stops everything)", flush=True)
    try:
        await _until_signal()
    finally:
        for t in tasks:
            t.cancel()
        await runner.cleanup()
        _stop_containers(work / w for w in ("worker-1", "worker-2"))


def _stop_containers(runtime_dirs: Iterable[Path]) -> None:
    """The demo is over: stop the containers its workers left running (a real worker
    leaves them: they are the customers', and it reconciles them when it comes back)."""
    for d in runtime_dirs:
        rt = ProcessRuntime(d)
        for cid in rt.running():
            rt.stop(cid)
    print("stopped", flush=True)


def main(role: str, args: argparse.Namespace) -> int:
    logs.setup()
    if role == "demo":
        return demo(args)
    try:
        asyncio.run(run_service(role, args))
    except ValueError as e:
        print(f"crdt-ops {role}: {e}", file=sys.stderr)
        return 2
    return 0
