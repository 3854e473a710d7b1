"""``python -m tools.bench core``: remote operations applied per second through
``Replica.receive()``.

What one row measures: two origin replicas (``a`` and ``b``) issue the
workload's operations in rounds of :data:`ROUND_OPS` operations each, sealing
them into messages of ``ops_per_msg`` operations, and exchange their messages
after every round (so later operations observe, and causally depend on, the
other origin's). All of this is done first and is not timed. Then a fresh third
replica (``c``) receives every message of both origins, interleaved round by
round, and only that loop of ``receive()`` calls is timed with
:func:`time.perf_counter`: it covers decoding and validating the protobuf
message, the causal buffer's checks, applying each operation and the replica's
bookkeeping (clock, stability, compaction). Messages arrive in causal order, so
none waits in the buffer. The loop runs ``repeat`` times, each on a fresh
receiver, with the garbage collector enabled; the row reports the fastest run
(as :mod:`timeit` does) and the median.

Each timed run is checked afterwards, untimed: the receiver applied exactly the
workload's operations, holds nothing in its causal buffer, and its ``state()``
equals the state the origins converged to. A run that fails the check raises.

The nested map workload is also run through pycrdt (the Python binding of
Yrs, the Rust port of Yjs), when it is installed: two origin docs make the same
assignments to a map of maps (a register set is assigning a key), one
transaction per ``ops_per_msg`` assignments, exchange their updates after every
round, and a fresh doc applies both origins' updates, interleaved, with
``Doc.apply_update``; only that loop is timed. Differences to keep in mind: the
inner maps are created once by a setup doc whose update every doc (the
receiver included) applies before the timed loop, whereas crdt-ops creates
each container map through its first operation, inside the timed loop; and
Yjs breaks ties between concurrent assignments by client id, crdt-ops by
timestamp, so the final values may differ between the two systems (each system
is checked against its own origins).

The target (from the issue): at least :data:`TARGET_OPS_PER_S` remote
operations per second on one core for the counter and register workloads at
100 operations per message; the output says for each of those rows whether it
meets it. The exit status does not depend on it.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crdt_ops.replica import Replica
from tools.bench.machine import platform_info, revision
from tools.bench.quick import fill_defaults
from tools.bench.report import Progress, first_left, info_lines, markdown_table, thousands

#: Remote operations per second the batched counter and register rows must reach.
TARGET_OPS_PER_S = 100_000
#: Operations per message of the rows held to the target.
TARGET_OPS_PER_MSG = 100
#: Operations each origin issues between two exchanges of messages.
ROUND_OPS = 100
#: Operations per workload (both origins together) of a full and a ``--quick`` run.
DEFAULT_OPS = 50_000
QUICK_OPS = 2_000
DEFAULT_REPEAT = 5
DEFAULT_OPS_PER_MSG = (1, 100)

ORIGINS = ("a", "b")
RECEIVER = "c"
CONTAINERS = 50
FIELDS = ("power_desired", "state", "node")

#: ``issue(replica, n)`` makes the workload's ``n``-th operation at ``replica``.
Issue = Callable[[Replica, int], None]


def _counter(replica: Replica, n: int) -> None:
    replica.counter(f"counters/k{n % 16}").increment()


def _register(replica: Replica, n: int) -> None:
    replica.register(f"registers/k{n % 16}").set(n)


def _orset(replica: Replica, n: int) -> None:
    # Even n adds an element, n + 1 (same origin, same round) removes it again:
    # every remove observed the add, so every call issues one operation.
    k = n // 2
    s = replica.set(f"sets/s{k % 4}")
    if n % 2 == 0:
        s.add(f"e{k % 64}")
    else:
        s.remove(f"e{k % 64}")


def _map(replica: Replica, n: int) -> None:
    replica.map(f"containers/c{n % CONTAINERS}").register(FIELDS[n % len(FIELDS)]).set(n)


@dataclass(frozen=True)
class Workload:
    """One kind of operation, issued by both origins on shared keys."""

    name: str
    description: str
    issue: Issue
    #: Held to :data:`TARGET_OPS_PER_S` at :data:`TARGET_OPS_PER_MSG` operations per message.
    targeted: bool = False
    #: Also run through pycrdt.
    pycrdt: bool = False


WORKLOADS: tuple[Workload, ...] = (
    Workload("counter", "PNCounter increments on 16 top-level counters", _counter,
             targeted=True),
    Workload("register", "LWW register sets on 16 top-level registers", _register,
             targeted=True),
    Workload("orset", "OR-set add then remove of 64 elements over 4 sets", _orset),
    Workload("map", f"register sets in {CONTAINERS} nested maps containers/cN, "
             f"{len(FIELDS)} fields each", _map, pycrdt=True),
)
_BY_NAME = {w.name: w for w in WORKLOADS}


# ---------------------------------------------------------------- crdt-ops


@dataclass
class Stream:
    """The messages a receiver gets, in order, and what applying them must give."""

    messages: list[bytes]
    ops: int
    state: dict[str, Any]


def _interleave(first: list[bytes], second: list[bytes]) -> Iterable[bytes]:
    for i in range(max(len(first), len(second))):
        if i < len(first):
            yield first[i]
        if i < len(second):
            yield second[i]


def generate(workload: Workload, ops: int, ops_per_msg: int) -> Stream:
    """Issue ``ops`` operations (``ops / 2`` per origin, a multiple of
    :data:`ROUND_OPS`) at two origins exchanging messages after every round, and
    return both origins' messages interleaved round by round (a causal order)."""
    if ops <= 0 or ops % (2 * ROUND_OPS):
        raise ValueError(f"ops must be a positive multiple of {2 * ROUND_OPS}, got {ops}")
    a, b = origins = [Replica(o, max_batch_ops=ops_per_msg) for o in ORIGINS]
    messages: list[bytes] = []
    for start in range(0, ops, 2 * ROUND_OPS):
        sent: list[list[bytes]] = []
        for k, origin in enumerate(origins):
            base = start + k * ROUND_OPS
            for n in range(base, base + ROUND_OPS):
                workload.issue(origin, n)
            sent.append(origin.outgoing())
        for m in sent[1]:
            a.receive(m)
        for m in sent[0]:
            b.receive(m)
        messages.extend(_interleave(sent[0], sent[1]))
    state = a.state()
    issued = a.stats["local"] + b.stats["local"]
    if issued != ops or state != b.state():
        raise RuntimeError(f"{workload.name}: origins issued {issued} of {ops} operations "
                           "or did not converge")
    return Stream(messages, ops, state)


def _timed_loop(apply: Callable[[bytes], object], items: Sequence[bytes]) -> float:
    """Seconds (:func:`time.perf_counter`) of ``apply(x)`` for each of ``items`` in
    order, timed after a :func:`gc.collect` (the collector stays enabled)."""
    gc.collect()
    start = time.perf_counter()
    for x in items:
        apply(x)
    return time.perf_counter() - start


def time_receive(stream: Stream) -> float:
    """Seconds a fresh replica takes to ``receive()`` every message of ``stream``;
    raises RuntimeError if it did not end with exactly the stream's operations
    applied, nothing buffered, and the origins' state."""
    receiver = Replica(RECEIVER)
    elapsed = _timed_loop(receiver.receive, stream.messages)
    applied = receiver.stats["applied"]
    if applied != stream.ops or receiver.buffered or receiver.state() != stream.state:
        raise RuntimeError(f"receiver applied {applied} of {stream.ops} operations, "
                           f"buffers {receiver.buffered}, or diverged from the origins")
    return elapsed


# ---------------------------------------------------------------- pycrdt


def load_pycrdt() -> Any | None:
    """The pycrdt module, or None if it is not installed (extra ``bench``)."""
    try:
        import pycrdt
    except ImportError:
        return None
    return pycrdt


@dataclass
class YStream:
    """pycrdt updates a receiver applies, in order, after ``init``, and the
    ``containers`` map they must give."""

    init: bytes
    updates: list[bytes]
    ops: int
    state: dict[str, Any]


class _YOrigin:
    """An origin doc that records the updates of its own transactions only."""

    def __init__(self, pycrdt: Any, client_id: int, init: bytes) -> None:
        self.doc = pycrdt.Doc(client_id=client_id)
        self.doc.apply_update(init)
        self.recording = False
        self.updates: list[bytes] = []
        self.doc.observe(self._on_transaction)
        root = self.doc.get("containers", type=pycrdt.Map)
        self.containers = {f"c{c}": root[f"c{c}"] for c in range(CONTAINERS)}

    def _on_transaction(self, event: Any) -> None:
        if self.recording:
            self.updates.append(event.update)

    def issue(self, first: int, count: int, per_update: int) -> list[bytes]:
        """Make assignments ``first .. first + count - 1``, ``per_update`` per
        transaction, and return the transactions' updates."""
        self.recording, self.updates = True, []
        for start in range(first, first + count, per_update):
            with self.doc.transaction():
                for n in range(start, min(start + per_update, first + count)):
                    self.containers[f"c{n % CONTAINERS}"][FIELDS[n % len(FIELDS)]] = n
        self.recording = False
        return self.updates


def _containers(pycrdt: Any, doc: Any) -> dict[str, Any]:
    value: dict[str, Any] = doc.get("containers", type=pycrdt.Map).to_py()
    return value


def generate_pycrdt(pycrdt: Any, ops: int, per_update: int) -> YStream:
    """The ``map`` workload through pycrdt: as :func:`generate`, with one
    transaction (one update) per ``per_update`` assignments."""
    if ops <= 0 or ops % (2 * ROUND_OPS):
        raise ValueError(f"ops must be a positive multiple of {2 * ROUND_OPS}, got {ops}")
    setup = pycrdt.Doc(client_id=1)
    root = setup.get("containers", type=pycrdt.Map)
    with setup.transaction():
        for c in range(CONTAINERS):
            root[f"c{c}"] = pycrdt.Map()
    init: bytes = setup.get_update()
    a, b = origins = [_YOrigin(pycrdt, 2 + k, init) for k in range(len(ORIGINS))]
    updates: list[bytes] = []
    for start in range(0, ops, 2 * ROUND_OPS):
        sent = [o.issue(start + k * ROUND_OPS, ROUND_OPS, per_update)
                for k, o in enumerate(origins)]
        for u in sent[1]:
            a.doc.apply_update(u)
        for u in sent[0]:
            b.doc.apply_update(u)
        updates.extend(_interleave(sent[0], sent[1]))
    state = _containers(pycrdt, a.doc)
    if state != _containers(pycrdt, b.doc):
        raise RuntimeError("pycrdt origins did not converge")
    return YStream(init, updates, ops, state)


def time_pycrdt(pycrdt: Any, stream: YStream) -> float:
    """Seconds a fresh doc (``init`` applied untimed) takes to ``apply_update``
    every update of ``stream``; raises RuntimeError if it does not end with the
    origins' ``containers`` map."""
    receiver = pycrdt.Doc(client_id=99)
    receiver.apply_update(stream.init)
    elapsed = _timed_loop(receiver.apply_update, stream.updates)
    if _containers(pycrdt, receiver) != stream.state:
        raise RuntimeError("pycrdt receiver diverged from the origins")
    return elapsed


# ---------------------------------------------------------------- running, reporting


@dataclass
class Row:
    """The measurement of one workload at one number of operations per message."""

    workload: Workload
    ops_per_msg: int
    messages: int
    ops: int
    times: list[float]
    pycrdt_times: list[float] = field(default_factory=list)

    @property
    def ops_per_s(self) -> float:
        return self.ops / min(self.times)

    @property
    def median_ops_per_s(self) -> float:
        return self.ops / statistics.median(self.times)

    @property
    def pycrdt_ops_per_s(self) -> float | None:
        return self.ops / min(self.pycrdt_times) if self.pycrdt_times else None

    @property
    def targeted(self) -> bool:
        return self.workload.targeted and self.ops_per_msg == TARGET_OPS_PER_MSG

    @property
    def meets_target(self) -> bool:
        return self.ops_per_s >= TARGET_OPS_PER_S


def run(ops: int = DEFAULT_OPS, repeat: int = DEFAULT_REPEAT,
        workloads: Sequence[Workload] = WORKLOADS,
        ops_per_msg: Sequence[int] = DEFAULT_OPS_PER_MSG, use_pycrdt: bool = True,
        progress: Callable[[str], None] | None = None) -> list[Row]:
    """Measure every workload at every number of operations per message (see the
    module docstring); pycrdt runs too if ``use_pycrdt`` and it is installed."""
    if progress is None:
        progress = Progress()
    pycrdt = load_pycrdt() if use_pycrdt else None
    if use_pycrdt and pycrdt is None:
        progress("pycrdt is not installed (pip install 'crdt-ops[bench]'): no comparison")
    rows = []
    for w in workloads:
        for per_msg in ops_per_msg:
            label = f"{w.name}, {per_msg} op{'s' if per_msg > 1 else ''}/msg"
            progress(f"{label}: generating {ops:,} operations at 2 origins")
            stream = generate(w, ops, per_msg)
            row = Row(w, per_msg, len(stream.messages), ops, [])
            for i in range(repeat):
                row.times.append(time_receive(stream))
                progress(f"{label}: receive run {i + 1}/{repeat}: {row.times[-1]:.3f} s, "
                         f"{ops / row.times[-1]:,.0f} ops/s")
            del stream
            if w.pycrdt and pycrdt is not None:
                progress(f"{label}: generating {ops:,} assignments at 2 pycrdt docs")
                ystream = generate_pycrdt(pycrdt, ops, per_msg)
                for i in range(repeat):
                    row.pycrdt_times.append(time_pycrdt(pycrdt, ystream))
                    progress(f"{label}: pycrdt apply run {i + 1}/{repeat}: "
                             f"{row.pycrdt_times[-1]:.3f} s, "
                             f"{ops / row.pycrdt_times[-1]:,.0f} ops/s")
            rows.append(row)
    return rows


def machine() -> dict[str, str]:
    """The machine and software a result was measured on."""
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    pycrdt = load_pycrdt()
    return {
        **platform_info(),
        "protobuf": f"{protobuf_version} ({api_implementation.Type()} backend)",
        "pycrdt": "not installed" if pycrdt is None else str(pycrdt.__version__),
        "crdt-ops": revision(),
    }


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (one row per workload and ops per message):
    best ops/s, us/op, pycrdt ops/s, the ratio and the target verdict are of the
    fastest run; the median ops/s shows how much the runs spread."""
    head = ("workload", "ops/msg", "messages", "ops", "best s", "best ops/s", "median ops/s",
            "us/op", "pycrdt ops/s", "crdt-ops/pycrdt", f">= {TARGET_OPS_PER_S:,}/s")
    lines = []
    for r in rows:
        y = r.pycrdt_ops_per_s
        lines.append((
            r.workload.name, str(r.ops_per_msg), f"{r.messages:,}", f"{r.ops:,}",
            f"{min(r.times):.3f}", thousands(r.ops_per_s), thousands(r.median_ops_per_s),
            f"{1e6 / r.ops_per_s:.1f}",
            thousands(y), "-" if y is None else f"{r.ops_per_s / y:.2f}x",
            ("yes" if r.meets_target else "NO") if r.targeted else "-",
        ))
    return markdown_table(head, lines, first_left(len(head)))


def report(rows: Sequence[Row], info: dict[str, str], ops: int, repeat: int) -> str:
    """The whole result: machine, setup, table, workloads and target verdicts."""
    out = ["crdt-ops core benchmark: remote operations applied through Replica.receive()",
           ""]
    out += info_lines(info)
    out += [
        "",
        f"{ops:,} operations per workload, issued by 2 origins in rounds of {ROUND_OPS} "
        "each (exchanging messages every round);",
        f"a fresh 3rd replica receives them interleaved; best of {repeat} timed receive "
        "loop(s).",
        "",
        table(rows),
        "",
    ]
    out += [f"  {w.name:<9} {w.description}" for w in dict.fromkeys(r.workload for r in rows)]
    targeted = [r for r in rows if r.targeted]
    if targeted:
        out.append("")
        out.append(f"Target: >= {TARGET_OPS_PER_S:,} remote ops/s on one core, "
                   f"{TARGET_OPS_PER_MSG} ops/message, counter and register:")
        for r in targeted:
            verdict = "meets it" if r.meets_target else "DOES NOT meet it"
            out.append(f"  {r.workload.name:<9} {r.ops_per_s:>10,.0f} ops/s  {verdict} "
                       f"({r.ops_per_s / TARGET_OPS_PER_S:.2f}x the target)")
    return "\n".join(out)


def _round_ops(n: int) -> int:
    unit = 2 * ROUND_OPS
    return max(unit, -(-n // unit) * unit)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``core`` subcommand."""
    p = subparsers.add_parser(
        "core", help="remote operations applied per second through Replica.receive()",
        description="Remote operations applied per second through Replica.receive() "
                    "(decode + causal buffer + apply), at 1 and 100 operations per message, "
                    "with the nested map workload compared against pycrdt (Yjs).")
    p.add_argument("--ops", type=int, default=None, metavar="N",
                   help=f"operations per workload, both origins together, rounded up to a "
                        f"multiple of {2 * ROUND_OPS} (default {DEFAULT_OPS:,}; "
                        f"--quick: {QUICK_OPS:,})")
    p.add_argument("--repeat", type=int, default=None, metavar="R",
                   help=f"timed receive loops per row, the best is reported "
                        f"(default {DEFAULT_REPEAT}; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast run (a smoke test for CI, not a measurement)")
    p.add_argument("--workload", action="append", choices=[w.name for w in WORKLOADS],
                   help="run only this workload (repeatable; default: all)")
    p.add_argument("--ops-per-msg", action="append", type=int, metavar="K",
                   help=f"operations per message, 1..{ROUND_OPS} (repeatable; default: 1 and 100)")
    p.add_argument("--no-pycrdt", action="store_true", help="skip the pycrdt comparison")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    """Run ``core`` with parsed arguments; print the report to stdout. Returns 0."""
    fill_defaults(args, {"ops": (DEFAULT_OPS, QUICK_OPS), "repeat": (DEFAULT_REPEAT, 1)})
    ops, repeat = _round_ops(args.ops), args.repeat
    if repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    per_msg = args.ops_per_msg or list(DEFAULT_OPS_PER_MSG)
    if any(not 1 <= k <= ROUND_OPS for k in per_msg):
        raise SystemExit(f"--ops-per-msg must be 1..{ROUND_OPS} (operations per round)")
    workloads = [_BY_NAME[n] for n in args.workload] if args.workload else list(WORKLOADS)
    progress = Progress(enabled=not args.quiet)
    info = machine()
    progress(f"core: {ops:,} ops per workload, best of {repeat}, on {info['cpu']}")
    rows = run(ops, repeat, workloads, per_msg, use_pycrdt=not args.no_pycrdt,
               progress=progress)
    print(report(rows, info, ops, repeat), flush=True)
    progress("done")
    return 0
