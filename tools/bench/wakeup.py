"""``python -m tools.bench wakeup``: what one small message between two processes of this
machine costs in CPU, when its receiver sleeps and when it is awake.

A Start through crdt-ops is some twenty messages between processes of one machine (web,
logic, the workers, the broker, the client: ``bench services --trace`` counts each
service's socket reads and writes). When a message finds its receiver asleep in
``epoll_wait``, the kernel wakes it, and on a virtual machine a wake-up across cores
costs the sender more than the write itself (an inter-processor interrupt, a VM exit).
This benchmark measures that on the machine it runs on:

- a receiver process (an asyncio server, as every service is) reads and drops what comes;
- the sender writes ``--messages`` messages of 300 bytes over loopback TCP (``TCP_NODELAY``),
  first ``--gap-ms`` apart, so that the receiver is asleep when each one comes, then back to
  back, so that it is mostly awake;
- for each case: the sender's CPU per ``send`` (its thread's CPU clock around the call),
  and the receiver's per message (its process CPU clock over the case, divided).

Results go to stdout (a Markdown table), progress to stderr. Not a test of crdt-ops: a
property of the machine that sets what each message of a flow costs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue as MpQueue

from tools.bench.args import above, at_least
from tools.bench.cpu import proc_cpu
from tools.bench.report import first_left, markdown_table

#: Bytes per message (about a crdt-ops operation's message, or an event-stream event).
SIZE = 300
#: The fewest messages a case sends.
MIN_MESSAGES = 10
#: Seconds to wait for the receiver to start.
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Case:
    """One case's result: its name, the messages sent, and the CPU each cost, in
    microseconds: the sender's (its ``send``) and the receiver's (all its work)."""

    name: str
    messages: int
    sender_us: float
    receiver_us: float


def _serve(out: MpQueue[object]) -> None:
    """The receiver (a spawned process): an asyncio server on 127.0.0.1 that reads and
    drops what comes; puts its port on ``out``, then serves until killed."""
    async def main() -> None:
        async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(65536):
                pass
            writer.close()

        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        out.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def _case(name: str, sock: socket.socket, pid: int, messages: int, gap_s: float) -> Case:
    """Send ``messages`` messages ``gap_s`` apart (0: back to back) on ``sock`` to the
    receiver ``pid``; their CPU per message."""
    body = b"x" * SIZE
    sent_ns = 0
    before = proc_cpu(pid)
    for _ in range(messages):
        t = time.thread_time_ns()
        sock.sendall(body)
        sent_ns += time.thread_time_ns() - t
        if gap_s:
            time.sleep(gap_s)
    time.sleep(0.2)  # the receiver reads the last of them
    after = proc_cpu(pid)
    receiver = (after - before) if before is not None and after is not None else float("nan")
    return Case(name, messages, sent_ns / messages / 1000, receiver / messages * 1e6)


def measure(messages: int, gap_ms: float, progress: bool = True) -> list[Case]:
    """Both cases against a fresh receiver process. Raises ValueError for fewer than 10
    messages or a gap not above 0; RuntimeError if the receiver does not start."""
    if messages < MIN_MESSAGES or gap_ms <= 0:
        raise ValueError(f"wakeup needs {MIN_MESSAGES} messages or more and a gap above 0 ms, not "
                         f"{messages} and {gap_ms:g}")
    ctx = multiprocessing.get_context("spawn")
    out: MpQueue[object] = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(out,), name="bench-wakeup-receiver", daemon=True)
    proc.start()
    try:
        port = out.get(timeout=TIMEOUT_S)
        if not isinstance(port, int) or proc.pid is None:
            raise RuntimeError(f"the receiver did not start: {port!r}")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cases = []
            for name, gap_s in ((f"receiver asleep ({gap_ms:g} ms apart)", gap_ms / 1000),
                                ("receiver awake (back to back)", 0.0)):
                if progress:
                    print(f"wakeup: {messages} messages, {name}", file=sys.stderr, flush=True)
                cases.append(_case(name, sock, proc.pid, messages, gap_s))
            return cases
    finally:
        proc.kill()
        proc.join(timeout=10)


def table(cases: list[Case]) -> str:
    """Markdown: each case's messages and CPU per message."""
    return markdown_table(
        ("case", "messages", "sender CPU us / message", "receiver CPU us / message"),
        [(c.name, f"{c.messages:,}", f"{c.sender_us:.1f}", f"{c.receiver_us:.1f}")
         for c in cases], first_left(4))


def run(args: argparse.Namespace) -> int:
    messages = 200 if args.quick else args.messages
    cases = measure(messages, args.gap_ms, progress=not args.quiet)
    print(f"One small message ({SIZE} bytes over loopback TCP) from one process to another, "
          f"in CPU (tools/bench/wakeup.py):\n\n{table(cases)}")
    asleep, awake = cases
    if awake.sender_us > 0:
        print(f"\nA message to a sleeping receiver costs its sender "
              f"{asleep.sender_us / awake.sender_us:.1f}x what one to an awake receiver does.")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``wakeup`` subcommand."""
    p = subparsers.add_parser(
        "wakeup", help="the CPU one small message between two local processes costs, its "
                       "receiver asleep or awake",
        description="A sender writes small messages over loopback TCP to an asyncio "
                    "receiver in another process, first far enough apart that the "
                    "receiver sleeps between them, then back to back: the CPU each "
                    "message costs the sender and the receiver, in microseconds.")
    p.add_argument("--messages", type=at_least(MIN_MESSAGES), default=2000,
                   help="messages per case (default %(default)s)")
    p.add_argument("--gap-ms", type=above(0), default=2.0,
                   help="ms between two messages while the receiver sleeps (default "
                        "%(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="200 messages per case (a smoke test, not a measurement)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)
