"""``python -m tools.bench hop --quick`` against the real broker: the benchmark runs, its
table has every row with numbers that make sense, and the groups it made are deleted.
With ``--trace DIR`` it also prints each step of a hop (:func:`tools.bench.trace.hop_steps`,
checked on made-up stamps too).

A smoke test like :mod:`tests.tools.test_bench_smoke`: it asserts nothing about speed
(the targets of issue 14 are printed with verdicts, not asserted).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import aio_pika

from crdt_ops.transport.topology import Topology
from tests.tools.test_bench_smoke import RUN_TIMEOUT_S, number, table
from tools.bench import trace

#: The rows of a --quick run, by the start of their first cell, in order.
ROWS = ("crdt-ops hop 1:", "crdt-ops hop 2:", "raw aio-pika hop 1:", "raw aio-pika hop 2:",
        "crdt-ops load:")


async def _leftovers(url: str, groups: list[str]) -> list[str]:
    """The queues and exchanges of ``groups`` (replicas a and b) still on the broker."""
    left: list[str] = []
    conn = await aio_pika.connect(url)
    async with conn:
        for group in groups:
            queues, exchanges = Topology(group).objects(("a", "b"))
            for name in queues + exchanges:
                ch = await conn.channel()
                try:
                    if name in queues:
                        await ch.declare_queue(name, passive=True)
                    else:
                        await ch.declare_exchange(name, passive=True)
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    continue
                left.append(name)
                await ch.close()
    return left


def _hop(*args: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-m", "tools.bench", "hop", "--quick", *args],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, f"exit status {done.returncode}\n{out}\n{err[-4000:]}"
    return out, err


def test_hop_benchmark_quick_run(amqp_url: str) -> None:
    out, err = _hop("--amqp-url", amqp_url)
    assert "step by step" not in out  # only with --trace
    assert "FAILED" not in out, out
    rows = table(out, "measurement")
    assert [next(p for p in ROWS if r[0].startswith(p)) for r in rows] == list(ROWS), out
    for r in rows:
        what, samples, p50, p99, worst, vs_raw, rate, target, met, stall = r
        # --quick: 50 timed round trips; 200 ops/s for 1 s
        assert number(samples) == (200 if what.startswith("crdt-ops load") else 50), r
        assert 0 < number(p50) <= number(p99) <= number(worst), r
        assert met in ("-", "yes", "NO"), r
        a, b = stall.split("/")
        assert number(a) >= 0 and number(b) >= 0, r
        if what.startswith("crdt-ops hop"):
            assert re.fullmatch(r"[0-9.]+x", vs_raw) and met != "-", r
            assert "<= 1.5x raw" in target, r
        if what.startswith("crdt-ops load"):
            asked, issued = (number(x) for x in rate.split(" (")[0].split(" / "))
            assert asked == 200 and issued > 0, r
    assert "Worst event-loop stall of a crdt-ops replica: " in out
    assert "Targets (from issue 14):" in out
    groups = sorted(set(re.findall(r"group (bench-hop-[0-9a-f]+)", err)))
    assert len(groups) >= 3, err  # crdt-ops ping-pong, raw ping-pong, one load rate
    assert asyncio.run(_leftovers(amqp_url, groups)) == []


def _stamps(d: Path, role: str, stamps: list[tuple[float, str]]) -> None:
    (d / f"{role}.1.trace").write_text(
        "".join(f"{int(ms * 1_000_000)} {label}\n" for ms, label in stamps), encoding="ascii")


#: One replica's stamps of a hop it writes, from ``t`` ms: write(), the commit with its
#: transaction, the publish and its frame on the socket.
def _writes(t: float) -> list[tuple[float, str]]:
    return [(t, "node.write>"), (t + 0.1, "commit>"), (t + 0.2, "append>"),
            (t + 0.5, "append<"), (t + 0.6, "commit<"), (t + 0.8, "publish>"),
            (t + 0.9, "write"), (t + 1.0, "write")]  # the second: an ack, not the publish


def test_hop_steps_follow_each_hop_from_write_to_change_event(tmp_path: Path) -> None:
    # a writes at 0 ms; b reads at 1.6, receives at 1.8, has the change at 2.0 and writes
    # at 2.1; a reads at 3.7, receives at 3.9 and has the change at 4.0. A change event at
    # b with no receive before it (0.1 ms) is left out.
    _stamps(tmp_path, "hop-a", [*_writes(0.0), (3.7, "read"), (3.9, "receive>"),
                                (4.0, "event>")])
    _stamps(tmp_path, "hop-b", [(0.1, "event>"), (1.6, "read"), (1.8, "receive>"),
                                (2.0, "event>"), *_writes(2.1)])
    found, broken = trace.hop_steps(tmp_path)
    assert broken == 1
    by = {s.name: s.ms for s in found}
    assert found[0].name == trace.HOP_WHOLE
    assert by[trace.HOP_WHOLE] == [2.0, 1.9]  # a -> b, then b -> a
    assert by["writer: the store's transaction (one disk sync)"] == [0.3, 0.3]
    # the broker's pass from the writer's last frame before the reader's read
    assert [round(x, 6) for x in by["the broker, writer -> reader's socket"]] == [0.6, 0.6]
    assert by["reader: socket read -> receive"] == [0.2, 0.2]
    for whole, *parts in zip(*(by[s.name] for s in found), strict=True):
        assert abs(whole - sum(parts)) < 1e-9


def test_a_traced_hop_run_prints_every_step_of_a_hop(amqp_url: str, tmp_path: Path) -> None:
    out, _ = _hop("--amqp-url", amqp_url, "--quiet", "--trace", str(tmp_path))
    assert "FAILED" not in out, out
    rows = table(out[out.index("A crdt-ops hop step by step"):], "step")
    assert [r[0] for r in rows] == [trace.HOP_WHOLE] + [
        name for name, _, _ in reversed(trace.hop_path("writer", "reader"))], rows
    hops = {int(r[1]) for r in rows}
    # --quick: 5 warm-up and 50 timed round trips, two hops each
    assert len(hops) == 1 and hops.pop() >= 100, rows
    for r in rows:
        p10, p50, p90 = map(number, r[2:])
        assert 0 <= p10 <= p50 <= p90, r
    assert all(number(r[3]) <= number(rows[0][3]) for r in rows[1:]), rows
    # the crdt-ops ping-pong's two replicas only (not the raw clients, not the load)
    assert sorted(f.name.split(".")[0] for f in tmp_path.glob("*.trace")) == ["hop-a",
                                                                                "hop-b"]
