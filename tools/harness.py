"""What the tests and the tools share to drive a real broker and real processes, written
once: a free TCP port, a fresh group name and deleting a group's objects, waiting for a
condition, and the convergence check of replica processes running the ledger workload
(``crdt-ops replica --ops N``: every operation also counts in ``issued/<replica id>``)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import aio_pika

from crdt_ops.transport.amqp.deletion import Survey, delete
from crdt_ops.transport.topology import Topology


def free_port() -> int:
    """A TCP port nobody listens on now on 127.0.0.1 (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_group(prefix: str = "test") -> str:
    """A group name no other run uses: ``<prefix>-`` and 10 random hex digits."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def delete_queues(url: str, queues: Iterable[str], exchanges: Iterable[str] = ()) -> None:
    """Delete ``queues``, then ``exchanges``, on the broker at ``url``; one that does not
    exist or cannot be deleted is passed over. Raises only if the broker cannot be
    reached."""
    conn = await aio_pika.connect(url)
    async with conn:
        await delete(conn, Survey("", queues=list(queues), exchanges=list(exchanges)),
                     strict=False)


async def delete_group_async(url: str, group: str, replicas: Iterable[str]) -> None:
    """Delete everything group ``group`` has on the broker with these replica ids
    (:meth:`Topology.objects <crdt_ops.transport.topology.Topology.objects>`)."""
    await delete_queues(url, *Topology(group).objects(replicas))


def delete_group(url: str, group: str, replicas: Iterable[str]) -> None:
    """:func:`delete_group_async` from code that runs no event loop."""
    asyncio.run(delete_group_async(url, group, replicas))


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (in an event loop, polling every 50 ms) until ``cond()`` holds; raises
    AssertionError saying ``what`` after ``timeout`` seconds."""
    for _ in range(int(timeout * 20)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               explain: Callable[[], str] = lambda: "") -> None:
    """Wait (polling every 0.2 s) until ``cond()`` holds; raises AssertionError saying
    ``what`` and ``explain()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{explain()}")


class Reporting(Protocol):
    """A replica process that reports its state (tools.replica_process.ReplicaProcess)."""

    def report(self) -> dict[str, Any]: ...


def converged(procs: Iterable[Reporting], issued: dict[str, int], idle: bool = True) -> bool:
    """Every process reports the same state and clock, each replica's ledger counter
    ``issued/<id>`` equals what it issued, and (``idle``) nothing waits in any causal
    buffer."""
    reports = [p.report() for p in procs]
    if not all(reports) or (idle and any(r.get("buffered") for r in reports)):
        return False
    first = reports[0]
    return (all(r["state"] == first["state"] and r["clock"] == first["clock"] for r in reports)
            and all(first["state"].get(f"issued/{rid}", 0) == n for rid, n in issued.items()))
