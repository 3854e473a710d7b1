"""Where a Start's time goes, step by step: stamps in every crdt-ops service, put together.

``python -m tools.bench services --trace DIR`` starts web, logic and the workers through
this module (``python -m tools.bench.trace DIR ROLE MODULE ARGS...``), which wraps a fixed
set of functions (:data:`POINTS`: a commit, a delivery handed on, ``Replica.receive``,
aiormq's ``basic_publish``, logic's decisions, starting a container process, web's
event-stream writes) and every socket read and write of the event loop, so that each
records ``time.monotonic_ns()`` (one clock for every process of the machine: Linux's
``CLOCK_MONOTONIC``) as it is entered (``label>``) and left (``label<``). Each process
writes its stamps to ``DIR/<role>.<pid>.trace`` as it exits.

:func:`steps` then follows each Start through the files, from the worker's start of the
container process backwards to web's read of the request and forwards to web's
event-stream write of the report, and :func:`step_table` gives each step's p10, p50 and
p90 over the Starts (the warm-up Starts included); :func:`socket_ops` counts each
process's socket reads and writes per Start. A step is measured from one stamp to
the next on the Start's path; a Start whose chain is broken (a stamp missing, or a chain
longer than a second: a retry, a reconnection) is left out and counted.

``python -m tools.bench hop --trace DIR`` stamps the two replicas of the crdt-ops
ping-pong the same way (:data:`HOP_POINTS`, from their processes' start), and
:func:`hop_steps` follows each hop back from the change event at its reader to its
writer's ``write()``.

The wrappers cost about a microsecond a stamp, and a coroutine frame for each async one:
a traced run is for finding where the time goes, not a measurement of the total.
"""

from __future__ import annotations

import atexit
import bisect
import functools
import importlib
import itertools
import os
import runpy
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.bench.report import first_left, markdown_table
from tools.bench.stats import nearest_rank

#: What is stamped: (module, attribute path, label, async?).
POINTS: tuple[tuple[str, str, str, bool], ...] = (
    ("crdt_ops.transport.durable", "DurableReplica._write", "commit", False),
    ("crdt_ops.transport.amqp.inbound", "Inbound.apply", "apply", True),
    ("crdt_ops.replica", "Replica.receive", "receive", False),
    ("aiormq.channel", "Channel.basic_publish", "publish", True),
    ("services.logic", "Logic.decide", "decide", True),
    ("services.logic", "Logic._place", "place", False),
    ("services.runtime", "ProcessRuntime.start", "start", False),
    ("aiohttp.web_response", "StreamResponse.write", "sse", True),
)
#: What is stamped in a ``bench hop`` replica: its ``write()`` called, a commit (its
#: messages encoded, then the store's transaction, ``Store.append``, which syncs the
#: disk), aiormq's publish, ``Replica.receive``, and the benchmark's change event
#: (``Heard.heard``).
HOP_POINTS: tuple[tuple[str, str, str, bool], ...] = (
    ("crdt_ops.transport.amqp.node", "AmqpNode.write", "node.write", False),
    ("crdt_ops.transport.durable", "DurableReplica._write", "commit", False),
    ("crdt_ops.transport.store", "Store.append", "append", False),
    ("aiormq.channel", "Channel.basic_publish", "publish", True),
    ("crdt_ops.replica", "Replica.receive", "receive", False),
    ("tools.bench.hop", "Heard.heard", "event", False),
)

_stamps: list[tuple[int, str]] = []


def _stamp(label: str) -> None:
    _stamps.append((time.monotonic_ns(), label))


def _wrap(module: str, path: str, label: str, is_async: bool) -> None:
    owner: Any = importlib.import_module(module)
    *parents, name = path.split(".")
    for p in parents:
        owner = getattr(owner, p)
    f = getattr(owner, name)
    wrapper: Callable[..., Any]
    if is_async:
        @functools.wraps(f)
        async def wrapper(*a: Any, **k: Any) -> Any:
            _stamp(label + ">")
            try:
                return await f(*a, **k)
            finally:
                _stamp(label + "<")
    else:
        @functools.wraps(f)
        def wrapper(*a: Any, **k: Any) -> Any:
            _stamp(label + ">")
            try:
                return f(*a, **k)
            finally:
                _stamp(label + "<")
    setattr(owner, name, wrapper)


def install(out_dir: Path, role: str,
            points: Sequence[tuple[str, str, str, bool]] = POINTS) -> None:
    """Stamp ``points`` (by default :data:`POINTS`) and the event loop's socket reads
    (``read``) and writes (``write``) in this process from now on; write them to
    ``out_dir/<role>.<pid>.trace`` (one ``<ns> <label>`` a line) at exit."""
    from asyncio import selector_events

    transport: Any = getattr(selector_events, "_SelectorSocketTransport")  # noqa: B009
    write, read = transport.write, transport._read_ready__data_received

    def traced_write(self: Any, data: Any) -> None:
        _stamp("write")
        write(self, data)

    def traced_read(self: Any) -> None:
        _stamp("read")
        read(self)

    transport.write, transport._read_ready__data_received = traced_write, traced_read
    for point in points:
        _wrap(*point)

    def dump() -> None:
        with open(out_dir / f"{role}.{os.getpid()}.trace", "w", encoding="ascii") as f:
            f.writelines(f"{t} {label}\n" for t, label in _stamps)

    atexit.register(dump)


@dataclass(frozen=True)
class Step:
    """One step of a Start: its name, and its durations (ms), one per Start followed."""

    name: str
    ms: list[float]


#: The stamps on a Start's path, as (step, role, label), found from the anchor (the
#: worker's ``start>``): :data:`_BACK` backwards, each the last stamp of its role and label
#: before the one found last, and names the step that starts there; :data:`_FORWARD`
#: forwards, each the first after, and names the step that ends there.
_BACK = (  # from the worker's start of the process, backwards
    ("worker: receive -> starting the process", "worker", "receive>"),
    ("worker: socket read -> receive", "worker", "read"),
    ("the broker, logic -> the worker's socket", "logic", "write"),
    ("logic: placement written -> on its socket", "logic", "publish>"),
    ("logic: second commit (the placement) -> publish", "logic", "commit<"),
    ("logic: second commit", "logic", "commit>"),
    ("logic: place (the placement's operations)", "logic", "place>"),
    ("logic: first commit -> place", "logic", "commit<"),
    ("logic: first commit (the home named)", "logic", "commit>"),
    ("logic: decide -> first commit", "logic", "decide>"),
    ("logic: receive -> decide", "logic", "receive>"),
    ("logic: socket read -> receive", "logic", "read"),
    ("the broker, web -> logic's socket", "web", "write"),
    ("web: publish -> on its socket", "web", "publish>"),
    ("web: commit -> publish (its 202 and event-stream push first)", "web", "commit<"),
    ("web: commit (one disk sync)", "web", "commit>"),
    ("web: the request read -> commit", "web", "read"),
)
_FORWARD = (  # from the worker's start of the process, forwards
    ("worker: starting the container process", "worker", "start<"),
    ("worker: process started -> commit", "worker", "commit>"),
    ("worker: commit (the report)", "worker", "commit<"),
    ("worker: commit -> publish", "worker", "publish>"),
    ("worker: publish -> on its socket", "worker", "write"),
    ("the broker, worker -> web's socket", "web", "read"),
    ("web: socket read -> receive", "web", "receive>"),
    ("web: receive -> event-stream write", "web", "sse>"),
)


#: The name of the whole of a Start's path, the first of :func:`steps`.
WHOLE = "whole: request read -> event-stream write"
#: A chain of stamps spanning longer than this (ns) is not one Start's: left out.
MAX_START_NS = 1_000_000_000


def clear(trace_dir: Path) -> None:
    """Remove the stamps of an earlier attempt from ``trace_dir``: a run retried (a new
    group, new processes) is followed from its own stamps only."""
    for old in trace_dir.glob("*.trace"):
        old.unlink()


def load(trace_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """The stamps of ``trace_dir``'s files by role (every worker's together, in time
    order)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for f in sorted(trace_dir.glob("*.trace")):
        out.setdefault(f.name.split(".")[0], []).extend(_read(f))
    for rows in out.values():
        rows.sort()
    return out


def _read(f: Path) -> list[tuple[int, str]]:
    """The stamps of one process's file ``f``, ``(ns, label)`` in the order written."""
    return [(int(t), label) for t, label in
            (line.split(" ", 1) for line in f.read_text(encoding="ascii").splitlines())]


#: A path of stamps: (the step that starts, or ends, at the stamp; its role; its label).
StampPath = tuple[tuple[str, str, str], ...]


def steps(trace_dir: Path) -> tuple[list[Step], int]:
    """Each step of the Starts traced in ``trace_dir`` (in path order, the whole first),
    and how many Starts were left out (a stamp missing, or the chain longer than
    :data:`MAX_START_NS`)."""
    found, broken = _follow(load(trace_dir), ("worker", "start>"), _BACK, _FORWARD, WHOLE)
    return [Step(n, v) for n, v in found.items()], broken


#: The name of the whole of a hop, the first of :func:`hop_steps`.
HOP_WHOLE = "whole: the writer's write() -> the change event at the reader"


def hop_path(writer: str, reader: str) -> StampPath:
    """The stamps of one hop, backwards from the change event at ``reader``."""
    return (
        ("reader: receive -> change event", reader, "receive>"),
        ("reader: socket read -> receive", reader, "read"),
        ("the broker, writer -> reader's socket", writer, "write"),
        ("writer: publish -> on its socket", writer, "publish>"),
        ("writer: commit -> publish", writer, "commit<"),
        ("writer: commit, after the transaction", writer, "append<"),
        ("writer: the store's transaction (one disk sync)", writer, "append>"),
        ("writer: commit, before the transaction (its messages encoded)", writer, "commit>"),
        ("writer: write() -> commit", writer, "node.write>"),
    )


def hop_steps(trace_dir: Path, roles: tuple[str, str] = ("hop-a", "hop-b")
              ) -> tuple[list[Step], int]:
    """Each step of the hops of a ``bench hop --trace`` ping-pong (both directions, the
    warm-up round trips included), from the writer's ``write()`` to the change event at
    the reader; and how many hops were left out. ``roles``: the two replicas' trace
    files' roles. Each step starts at the last stamp of its kind before the one that ends
    it (the last socket read before the receive, for instance, which may be another
    message's)."""
    by_role = load(trace_dir)
    found: dict[str, list[float]] = {}
    broken = 0
    for writer, reader in (roles, roles[::-1]):
        one, left = _follow(by_role, (reader, "event>"), hop_path(writer, reader), (),
                            HOP_WHOLE)
        for name, ms in one.items():
            found.setdefault(name, []).extend(ms)
        broken += left
    return [Step(n, v) for n, v in found.items()], broken


def _follow(by_role: dict[str, list[tuple[int, str]]], anchor: tuple[str, str],
            back: StampPath, forward: StampPath, whole: str) -> tuple[dict[str, list[float]], int]:
    """Each stamp ``anchor`` (role, label) of ``by_role``, followed along ``back`` (each
    the last stamp of its role and label before the one found last, naming the step that
    starts there) and ``forward`` (each the first after, naming the step that ends
    there): the durations (ms) of ``whole`` and of each step, in path order, and how many
    anchors were left out (a stamp missing, or the chain longer than
    :data:`MAX_START_NS`)."""
    times = {role: [t for t, _ in rows] for role, rows in by_role.items()}

    def find(role: str, label: str, at: int, direction: int) -> int | None:
        rows, ts = by_role.get(role, []), times.get(role, [])
        if direction < 0:
            i = bisect.bisect_left(ts, at) - 1
            while i >= 0 and rows[i][1] != label:
                i -= 1
            return rows[i][0] if i >= 0 else None
        i = bisect.bisect_right(ts, at)
        while i < len(rows) and rows[i][1] != label:
            i += 1
        return rows[i][0] if i < len(rows) else None

    def walk(table: StampPath, start: int, direction: int) -> list[int | None]:
        """The stamps of ``table`` from ``start`` on, each found from the one before it
        (None from the first one missing)."""
        path: list[int | None] = [start]
        for _, role, want in table:
            prev = path[-1]
            path.append(None if prev is None else find(role, want, prev, direction))
        return path[1:]

    names = [n for n, _, _ in reversed(back)] + [n for n, _, _ in forward]
    durations: dict[str, list[float]] = {n: [] for n in [whole, *names]}
    broken = 0
    role, label = anchor
    for t, seen in by_role.get(role, []):
        if seen != label:
            continue
        chain = [*reversed(walk(back, t, -1)), t, *walk(forward, t, +1)]
        stamps = [c for c in chain if c is not None]
        # (each found strictly before or after the one before it: in order by construction)
        if len(stamps) < len(chain) or stamps[-1] - stamps[0] > MAX_START_NS:
            broken += 1
            continue
        durations[whole].append((stamps[-1] - stamps[0]) / 1e6)
        for name, (a, b) in zip(names, itertools.pairwise(stamps), strict=True):
            durations[name].append((b - a) / 1e6)
    return durations, broken


def socket_ops(trace_dir: Path) -> list[tuple[str, float, float, float]]:
    """Each traced process's socket reads and writes per Start, and of the writes those
    of web's event stream, over the Starts traced: from the first worker's start of a
    container process to the last (so the creates before them are not counted; the
    background of heartbeats is). One row per file, ``(service, reads, writes, event-stream
    writes)``: web, logic, then the workers numbered in file order; none when no Start
    was traced.

    On one machine each of them wakes another process (a service, the broker, the
    client) or is woken, which costs more CPU than the read or write itself; BENCHMARKS.md,
    "What a Start costs in messages", measures it."""
    order = {"web": 0, "logic": 1}  # then the workers
    files = sorted(trace_dir.glob("*.trace"),
                   key=lambda f: (order.get(f.name.split(".")[0], 2), f.name))
    stamps = {f: _read(f) for f in files}
    starts = [t for rows in stamps.values() for t, label in rows if label == "start>"]
    if not starts:
        return []
    first, last, n = min(starts), max(starts), len(starts)
    out, workers = [], 0
    for f, rows in stamps.items():
        role = f.name.split(".")[0]
        if role == "worker":
            workers += 1
            role = f"worker {workers}"
        counts = {"read": 0, "write": 0, "sse>": 0}
        for t, label in rows:
            if first <= t <= last and label in counts:
                counts[label] += 1
        out.append((role, counts["read"] / n, counts["write"] / n, counts["sse>"] / n))
    return out


def socket_table(rows: Sequence[tuple[str, float, float, float]]) -> str:
    """Markdown: :func:`socket_ops`' rows."""
    return markdown_table(
        ("service", "socket reads / Start", "socket writes / Start",
         "of which event-stream writes"),
        [(name, f"{r:.2f}", f"{w:.2f}", f"{e:.2f}") for name, r, w, e in rows],
        first_left(4))


def step_table(found: Sequence[Step], unit: str = "Starts") -> str:
    """Markdown: each step's count (of ``unit``: Starts, hops), and p10 / p50 / p90 in ms
    (nearest rank)."""
    rows = []
    for s in found:
        cells = ("-", "-", "-") if not s.ms else tuple(
            f"{nearest_rank(s.ms, q):.2f}" for q in (0.1, 0.5, 0.9))
        rows.append((s.name, str(len(s.ms)), *cells))
    return markdown_table(("step", unit, "p10 ms", "p50 ms", "p90 ms"), rows,
                          first_left(5))


def main(argv: list[str]) -> None:
    """``python -m tools.bench.trace DIR ROLE MODULE ARGS...``: run ``python -m MODULE
    ARGS...`` with this process's stamps written to ``DIR`` (:func:`install`)."""
    if len(argv) < 3:
        raise SystemExit("usage: python -m tools.bench.trace DIR ROLE MODULE [ARGS...]")
    out_dir, role, module, *args = argv
    install(Path(out_dir), role)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
