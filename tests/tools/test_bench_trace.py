"""``bench services --trace``: each step of a Start, from stamps in every service.

One test follows made-up stamps through :func:`tools.bench.trace.steps` (the chain, and a
Start whose stamps are missing left out); one runs ``bench services --quick --flow
crdt-ops --trace DIR`` against the test broker, real processes, and checks the table.
"""

from __future__ import annotations

from pathlib import Path

from tests.tools.test_bench_smoke import bench_guards, number, run_bench, table
from tools.bench import trace


def _write(d: Path, role: str, stamps: list[tuple[float, str]]) -> None:
    (d / f"{role}.1.trace").write_text(
        "".join(f"{int(ms * 1_000_000)} {label}\n" for ms, label in stamps), encoding="ascii")


def test_steps_follow_a_start_through_the_services_files(tmp_path: Path) -> None:
    _write(tmp_path, "web", [(1.0, "read"), (1.5, "commit>"), (2.0, "commit<"),
                             (2.5, "write"),  # the 202: not the publish
                             (3.0, "publish>"), (3.2, "write"),
                             (20.0, "read"), (20.3, "receive>"), (21.0, "sse>")])
    _write(tmp_path, "logic", [(4.0, "read"), (4.2, "receive>"), (4.5, "decide>"),
                               (5.0, "commit>"), (5.5, "commit<"), (5.6, "place>"),
                               (6.0, "commit>"), (6.4, "commit<"), (6.8, "publish>"),
                               (7.0, "write")])
    _write(tmp_path, "worker", [(8.0, "read"), (8.5, "receive>"), (9.0, "start>"),
                                (10.0, "start<"), (10.5, "commit>"), (11.0, "commit<"),
                                (11.2, "publish>"), (11.4, "write"),
                                # a second Start with nothing before it: left out
                                (30.0, "start>"), (31.0, "start<")])
    found, broken = trace.steps(tmp_path)
    assert broken == 1
    by = {s.name: s.ms for s in found}
    assert by["whole: request read -> event-stream write"] == [20.0]
    assert by["web: commit -> publish (its 202 and event-stream push first)"] == [1.0]
    assert by["the broker, web -> logic's socket"] == [0.8]
    assert by["logic: first commit (the home named)"] == [0.5]
    assert by["worker: starting the container process"] == [1.0]
    assert by["the broker, worker -> web's socket"] == [8.6]
    assert sum(sum(v) for n, v in by.items() if not n.startswith("whole")) == 20.0
    # from the first start of a process (9.0 ms) to the last (30.0), per Start (2)
    assert trace.socket_ops(tmp_path) == [("web", 0.5, 0.0, 0.5), ("logic", 0.0, 0.0, 0.0),
                                          ("worker 1", 0.0, 0.5, 0.0)]


def test_no_start_traced_counts_no_socket_operations(tmp_path: Path) -> None:
    _write(tmp_path, "web", [(1.0, "read"), (2.0, "write")])
    assert trace.socket_ops(tmp_path) == []


def test_a_traced_services_run_prints_every_step(amqp_url: str, tmp_path: Path) -> None:
    out = run_bench("services", "--quick", "--flow", "crdt-ops", "--url", amqp_url,
                    "--quiet", "--trace", str(tmp_path))
    assert "FAILED" not in out, out
    assert bench_guards() == []  # the workers' lease guards stopped before the directory went
    rows = table(out[out.index("A crdt-ops Start step by step"):], "step")
    names = [r[0] for r in rows]
    assert names[0].startswith("whole") and len(names) == 26, names
    starts = {int(r[1]) for r in rows}
    assert len(starts) == 1 and starts.pop() >= 20, rows  # every Start through every step
    for r in rows:
        p10, p50, p90 = map(number, r[2:])
        assert 0 <= p10 <= p50 <= p90, r
    whole = number(rows[0][3])
    assert all(number(r[3]) <= whole for r in rows[1:]), rows
    assert {f.name.split(".")[0] for f in tmp_path.glob("*.trace")} == {"web", "logic",
                                                                        "worker"}
    ops = table(out[out.index("Socket reads and writes"):], "service")
    assert [r[0] for r in ops][:2] == ["web", "logic"] and len(ops) >= 3, ops
    for name, reads, writes, sse in ops:
        # every service reads and writes for each Start; web's event stream once at least
        assert number(reads) >= 0.5 and number(writes) >= 0.3, ops
        assert (number(sse) >= 1) == (name == "web"), ops
