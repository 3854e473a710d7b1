"""What the tests and the tools share to drive a real broker and real processes, written
once: a free TCP port, a fresh group name and deleting a group's objects, waiting for a
condition, a TCP proxy to the broker that can be cut (:class:`Proxy`), and the convergence
check of replica processes running the ledger workload
(``crdt-ops replica --ops N``: every operation also counts in ``issued/<replica id>``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import urlparse

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


class Proxy:
    """TCP to the broker of ``amqp_url``, on a port of its own, that can be cut and
    restored (a network fault played without touching the shared broker: when it is cut,
    the broker sees the connections close at once), or left half open
    (:meth:`half_open`). :attr:`url` reaches the broker through it."""

    def __init__(self, amqp_url: str) -> None:
        u = urlparse(amqp_url)
        self.target = (u.hostname or "127.0.0.1", u.port or 5672)
        self.port = 0
        self.conns: list[tuple[socket.socket, socket.socket]] = []  # (client, broker)
        #: broker sides left open by :meth:`half_open`: what they send is dropped
        self.stranded: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.up()
        #: ``amqp_url`` through the proxy
        self.url = u._replace(netloc=f"{u.netloc.rsplit('@', 1)[0]}@127.0.0.1:{self.port}"
                              ).geturl()

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(50)
        self.port = s.getsockname()[1]
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                client, _ = s.accept()
            except OSError:
                return
            try:
                broker = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.append((client, broker))
            for a, b in ((client, broker), (broker, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                if a not in self.stranded:
                    b.sendall(data)
        for x in (a, b):
            if x not in self.stranded:
                with contextlib.suppress(OSError):
                    x.shutdown(socket.SHUT_RDWR)

    def half_open(self) -> None:
        """Close the client side of every connection now, and leave the broker side open
        and silent (what the broker sends is dropped): the client reconnects at once, while
        the broker keeps the old connection, and what it holds, until its heartbeat
        timeout. New connections go through."""
        with self.lock:
            for client, broker in self.conns:
                self.stranded.add(broker)
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)
                client.close()
            self.conns = []

    def down(self) -> None:
        """Drop every connection; refuse new ones until :meth:`up`."""
        assert self.listener is not None
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(): the port is closed
        self.listener.close()
        with self.lock:
            for c in [*(c for pair in self.conns for c in pair), *self.stranded]:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self.conns = []
            self.stranded = set()
