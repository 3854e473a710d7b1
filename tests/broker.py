"""A real RabbitMQ for the tests, and replica processes that run against it.

The broker: ``AMQP_URL`` when set; else a ``RabbitMqContainer`` (testcontainers)
when a Docker engine answers; else the test fails and says how to get a broker.
Every test uses its own group name (so its own exchanges and queues) and
deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings
from tools.harness import converged, delete_group, free_port, new_group, until, wait_until
from tools.replica_process import ReplicaProcess as BaseReplicaProcess

HOW_TO_GET_A_BROKER = (
    "these tests need a RabbitMQ broker: set AMQP_URL (e.g. "
    "amqp://guest:guest@127.0.0.1:5672/), or run a Docker engine for testcontainers, or "
    "install Debian's rabbitmq-server and start it with 'rabbitmq-server -detached' "
    "(scripts/test sets AMQP_URL to the local broker by default)")


def find_broker() -> tuple[str, Any]:
    """(url, container or None)."""
    url = os.environ.get("AMQP_URL")
    if url:
        return url, None
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        raise RuntimeError(HOW_TO_GET_A_BROKER) from None
    from testcontainers.rabbitmq import RabbitMqContainer

    container = RabbitMqContainer("rabbitmq:3.13-management").start()
    host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
    return f"amqp://guest:guest@{host}:{port}/", container


class ReplicaProcess(BaseReplicaProcess):
    """:class:`tools.replica_process.ReplicaProcess` running the seeded workload
    (``ops`` operations from ``seed``, ``per_write`` per write, ``rate`` per second, 0:
    as fast as it can), with 0.5 s heartbeats and ``CRDT_OPS_LOG=WARNING``."""

    def __init__(self, url: str, group: str, replica_id: str, workdir: Path, ops: int = 0,
                 seed: int = 0, per_write: int = 10, rate: float = 0,
                 extra: list[str] | None = None) -> None:
        super().__init__(url, group, replica_id, workdir, [
            "--heartbeat-s", "0.5", "--ops", str(ops), "--seed", str(seed),
            "--per-write", str(per_write), "--rate", str(rate), *(extra or [])],
            log_level="WARNING")


async def _dead_letters(url: str, group: str) -> list[dict[str, Any]]:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        q = await ch.get_queue(f"crdt.{group}.dead")
        out = []
        while (m := await q.get(no_ack=True, fail=False)) is not None:
            out.append(dict(m.headers))
        return out


def dead_letters(url: str, group: str) -> list[dict[str, Any]]:
    """Take every message in the group's dead-letter queue: their headers, in order."""
    return asyncio.run(_dead_letters(url, group))


def explain(procs: list[ReplicaProcess]) -> Callable[[], str]:
    def text() -> str:
        out = []
        for p in procs:
            r = p.report()
            ledger = {k: v for k, v in r.get("state", {}).items() if k.startswith("issued/")}
            out.append(f"{p.replica_id}: clock={r.get('clock')} issued={r.get('issued')} "
                       f"buffered={r.get('buffered')} outbox={r.get('outbox')} ledger={ledger}"
                       f"\n--- log tail ---\n{p.tail()}")
        return "\n".join(out)
    return text


def rabbitmqctl(*args: str, container: Any = None, stdin: str | None = None) -> str:
    """Run rabbitmqctl against the test broker (locally, or in its container)."""
    if container is not None:
        code, out = container.exec(["rabbitmqctl", *args])
        if code:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out!r}")
        return str(out.decode())
    try:
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                              timeout=120, input=stdin)
    except FileNotFoundError:
        raise RuntimeError("rabbitmqctl is not on the PATH: the broker-restart tests need "
                           "the broker's own tools (Debian's rabbitmq-server)") from None
    if done.returncode:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def memory_watermark() -> list[str]:
    """The broker's memory high watermark, as the arguments of ``rabbitmqctl
    set_vm_memory_high_watermark`` that set it again (after a test raised the memory
    alarm by setting it to 0: the broker then blocks every publishing connection)."""
    out = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    absolute = re.fullmatch(r"\{absolute,(\d+)\}", out)
    return ["absolute", absolute.group(1)] if absolute else [out]


def restart_broker_app(downtime: float) -> None:
    """rabbitmqctl stop_app, wait, start_app, and wait until it serves again."""
    rabbitmqctl("stop_app")
    try:
        time.sleep(downtime)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


__all__ = ["ReplicaProcess", "converged", "cut_off_and_take_over", "dead_letters",
           "delete_group", "explain",
           "find_broker", "free_port", "new_group", "until", "wait_until"]


def group_settings(amqp_url: str, store_dir: Path, *, heartbeat_s: float,
                   replicas: tuple[str, ...] = ("a", "b")) -> Iterator[Settings]:
    """For a fixture: the settings of a new group (stores in ``store_dir``), and the group
    deleted from the broker afterwards (with the queues of ``replicas``)."""
    group = new_group()
    yield Settings(amqp_url=amqp_url, group=group, heartbeat_s=heartbeat_s,
                   store=str(store_dir))
    delete_group(amqp_url, group, list(replicas))


def node(s: Settings, rid: str) -> AmqpNode:
    """An in-process node of ``s``'s group as replica ``rid`` (store ``<store>/<rid>.sqlite``)."""
    return AmqpNode(Settings(**{**s.__dict__, "replica_id": rid,
                                "store": f"{s.store}/{rid}.sqlite"}))


@contextlib.asynccontextmanager
async def started(s: Settings, *rids: str) -> AsyncIterator[list[AmqpNode]]:
    """In-process nodes ``rids`` of ``s``'s group (:func:`node`), started in turn; every
    one that started is stopped afterwards."""
    nodes: list[AmqpNode] = []
    try:
        for rid in rids:
            n = node(s, rid)
            await n.start()
            nodes.append(n)
        yield nodes
    finally:
        for n in nodes:
            await n.stop()


async def claim_founding(url: str, group: str) -> None:
    """The group's founding claim names a replica that never runs: nobody admits anyone
    (a replica that starts waits to be admitted, for good)."""
    from crdt_ops.transport.topology import Topology, declare

    s = Topology(group)
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = (await declare(ch, s))[s.founder]
        await ex.publish(aio_pika.Message(b"ghost"), routing_key="")


async def cut_off_and_take_over(url: str, group: str, principal: str,
                                replica_id: str) -> aio_pika.abc.AbstractConnection:
    """Close replica ``replica_id``'s connection at the broker (``rabbitmqctl
    close_connection``: its process cut off) and take ``principal``'s holder queue in
    ``group`` on a connection of the caller's, a standby taking over; returns that
    connection, which holds it (close it: the standby stops). The standby asks for the
    queue every 5 ms from before the close, so that it wins it from the cut-off process's
    reconnection."""
    from crdt_ops.transport.amqp.holder import Holder
    from crdt_ops.transport.topology import Topology

    standby = await aio_pika.connect(url)
    holder = Holder(Topology(group), principal)
    lines = (await asyncio.to_thread(rabbitmqctl, "list_connections", "pid",
                                     "client_properties", "-q")).splitlines()
    pids = [line.split("\t")[0] for line in lines if f"crdt-ops {replica_id}" in line]
    assert len(pids) == 1, lines

    async def take() -> None:
        while not await holder.take(standby):
            await asyncio.sleep(0.005)

    taking = asyncio.ensure_future(take())
    try:
        await asyncio.to_thread(rabbitmqctl, "close_connection", pids[0], "test: cut off")
        await asyncio.wait_for(taking, 30)
    except BaseException:
        taking.cancel()
        await standby.close()
        raise
    return standby
