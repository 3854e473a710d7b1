"""``python -m tools.bench hop --quick`` against the real broker: the benchmark runs, its
table has every row with numbers that make sense, and the groups it made are deleted.

A smoke test like :mod:`tests.tools.test_bench_smoke`: it asserts nothing about speed
(the targets of issue 14 are printed with verdicts, not asserted).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import aio_pika

from crdt_ops.transport.topology import Topology
from tests.tools.test_bench_smoke import RUN_TIMEOUT_S, number, table

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


def test_hop_benchmark_quick_run(amqp_url: str) -> None:
    done = subprocess.run([sys.executable, "-m", "tools.bench", "hop", "--quick",
                           "--amqp-url", amqp_url],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, f"exit status {done.returncode}\n{out}\n{err[-4000:]}"
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
