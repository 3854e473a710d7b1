"""A bounded slice of the benchmarks runs in CI: the scripts work and check themselves.

These are smoke tests: each runs a benchmark's ``--quick`` mode as a subprocess
and checks that it exits 0 and prints its tables, complete and well formed. They
assert nothing about speed (the targets' verdicts are printed, not asserted).
The ``amqp`` and ``services`` runs use the test broker and delete what they
declare on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

#: Hard limit of one benchmark run: a hang fails the test instead of stalling CI.
#: (A --quick run takes about 3 s (core), 20 s (amqp), 30 s (services) and 30 s
#: (platform, with its restarts); a disturbed measurement is retried, which may take
#: longer.)
RUN_TIMEOUT_S = 180


def run_bench(*args: str) -> str:
    """``python -m tools.bench ARGS``; its stdout, once it exited with status 0."""
    done = subprocess.run([sys.executable, "-m", "tools.bench", *args],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, (f"exit status {done.returncode}\nstdout:\n{done.stdout}\n"
                                  f"stderr (end):\n{done.stderr[-4000:]}")
    return done.stdout


def table(out: str, first_column: str) -> list[list[str]]:
    """The body rows (cells stripped) of the Markdown table in ``out`` whose header's
    first cell is ``first_column``; checks the header and rule have the rows' width."""
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines)
              if line.startswith("|") and line[1:].split("|")[0].strip() == first_column]
    assert starts, f"no table with first column {first_column!r} in:\n{out}"
    head, rule = lines[starts[0]], lines[starts[0] + 1]
    width = head.count("|")
    assert re.fullmatch(r"\|([-]+[-:]\|)+", rule) and rule.count("|") == width, rule
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        assert line.count("|") == width, line
        rows.append([c.strip() for c in line[1:-1].split("|")])
    return rows


def number(cell: str) -> float:
    """A table cell as a number (thousands separators allowed); fails the test if it is not."""
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        raise AssertionError(f"not a number: {cell!r}") from None


def bench_guards() -> list[str]:
    """The command lines of the lease guards (services/guard.py) of a benchmark's workers
    still running: none once a benchmark has exited (each would make its worker's
    directory again once the benchmark removed it)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                args = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if "services.guard" in args and any(
                        p in a for a in args for p in ("crdt-ops-bench-", "crdt-ops-platform-")):
                    found.append(" ".join(args))
    return found


def test_core_benchmark_quick_run() -> None:
    out = run_bench("core", "--quick")
    rows = table(out, "workload")
    assert {r[0] for r in rows} >= {"counter", "register", "orset", "map"}
    for r in rows:
        assert number(r[1]) in (1, 100) and number(r[3]) > 0 and number(r[5]) > 0, r


def test_amqp_benchmark_quick_run(amqp_url: str) -> None:
    out = run_bench("amqp", "--quick", "--amqp-url", amqp_url)
    assert "FAILED" not in out, out
    rows = table(out, "#")
    # 1. publish and consume; 2. unbatched (64 writers, 1 writer), batched;
    # 3. latency in 3 processes and in 1; 4. replay of 500-op and 1-op messages
    assert [r[0] for r in rows] == ["1", "1", "2", "2", "2", "3", "3", "4", "4"], out
    for r in rows:
        _section, what, _setup, ops, messages, seconds, result, _target, met, cpu = r
        assert ops == "-" or number(ops) > 0, r
        assert number(messages) > 0 and number(seconds) >= 0, r
        assert met in ("-", "yes", "NO"), r
        assert re.fullmatch(r"[0-9?]+( \((1 process|fresh)\))?(/[0-9?]+)+", cpu), r
        if what.startswith("latency"):
            p50, p99 = map(float, re.findall(r"p(?:50|99) ([0-9.]+) ms", result))
            assert p50 <= p99, r
        else:
            assert re.match(r"[0-9,]+ (msg|ops)/s", result), r
    assert "Targets (from the issue):" in out


def pg_answers(dsn: str) -> bool:
    """Whether a PostgreSQL answers at ``dsn`` within 2 s (asyncpg installed)."""
    try:
        import asyncpg
    except ImportError:
        return False

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=2)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


def test_services_benchmark_quick_run(amqp_url: str) -> None:
    from tools.bench.services import DEFAULT_PG_DSN

    dsn = os.environ.get("CRDT_OPS_PG_DSN", DEFAULT_PG_DSN)
    pg = pg_answers(dsn)  # the db-casts flow runs (and is checked) where PostgreSQL answers
    out = run_bench("services", "--quick", "--url", amqp_url, "--pg-dsn", dsn)
    assert "FAILED" not in out, out
    assert bench_guards() == []  # stopped with the workers' containers
    flows = ["crdt-ops", "old-way", "db-casts"] if pg else ["crdt-ops", "old-way"]
    assert ("SKIPPED db-casts" in out) is not pg, out
    rows = table(out, "flow")
    assert [r[0] for r in rows] == flows + [f"ratio crdt-ops/{f}" for f in flows[1:]], out
    for r in rows[:len(flows)]:
        assert r[1] == "20", r  # --quick: 20 timed Starts per flow
        p50, p99, mean, low, high, seconds = map(number, r[2:])
        assert 0 < low <= p50 <= p99 <= high and low <= mean <= high and seconds > 0, r
    for r in rows[len(flows):]:
        assert all(re.fullmatch(r"[0-9.]+x", c) for c in r[2:7]), r
    assert "Targets (issue 14)" in out
    stages = table(out[out.index("Where the time goes:"):], "flow")
    want = {("crdt-ops", "on@web"), ("old-way", "answered")}
    if pg:
        want |= {("db-casts", s) for s in ("answered", "placed", "started", "on@web")}
    assert {(r[0], r[1]) for r in stages} >= want, stages
    for r in stages:
        assert re.fullmatch(r"[0-9]+/20", r[2]) and number(r[3]) <= number(r[4]), r
        if r[0] == "db-casts":
            assert r[2] == "20/20", r
    cpu = table(out[out.index("CPU over the timed phase"):], "flow")
    assert [r[0] for r in cpu] == flows
    assert all(re.fullmatch(r"[0-9]+|\?|-", c) for r in cpu for c in r[1:]), cpu
    # the census: every Start is a message of web, of logic and of a worker at least; each
    # of web's and logic's comes back to its sender (they hold every sub-group), which drops
    # it as a duplicate; a worker's reports, on its own node's sub-group, which it holds
    # alone, are not routed back to it. Each message a service sends was committed with a
    # disk sync first: web's write and logic's two each Start
    census = {r[0]: [number(c) for c in r[1:]]
              for r in table(out[out.index("Messages and log commits per timed Start"):],
                             "service")}
    assert list(census) == ["web", "logic", "worker-1", "worker-2", "all"], census
    received, duplicates, published = census["all"][:3]
    assert published >= 3 and received > duplicates, census
    for name in ("web", "logic"):
        assert census[name][1] >= census[name][2] - 0.5, census
    assert all(r[1] <= r[0] and r[4] <= r[3] for r in census.values()), census
    assert census["web"][4] >= 1 and census["logic"][4] >= 2, census
    # each crdt-ops service said its event loop's worst stall, and when, as it stopped
    stalls = re.search(r"Worst event-loop stall of each crdt-ops service .*: (.*)", out)
    assert stalls is not None, out
    assert re.fullmatch(", ".join(rf"{name} [0-9.]+ \([0-9]+ s\)" for name in
                                  ("web", "logic", "worker-1", "worker-2")),
                        stalls.group(1)), stalls.group(1)


def test_platform_benchmark_quick_run(amqp_url: str) -> None:
    out = run_bench("platform", "--quick", "--url", amqp_url, "--quiet")
    assert bench_guards() == []
    rows = table(out, "records")
    assert [r[0] for r in rows] == ["50", "200"], out
    for r in rows:
        _records, creates, seq, burst, rss, cpu, settle, messages = r
        assert number(creates) > 0 and number(settle) >= 0, r
        # the creates and Starts were logged at web: mean <= largest, and some were
        m = re.fullmatch(r"([0-9,]+) / ([0-9,]+) \(([0-9,]+)\)", messages)
        assert m and 0 < number(m[1]) <= number(m[2]) and number(m[3]) > 0, r
        for pair in (seq, burst):
            p50, p99 = map(number, pair.split(" / "))
            assert 0 < p50 <= p99, r
        assert len(rss.split(" / ")) == 4 and all(
            re.fullmatch(r"-?[0-9,]+", c) for c in rss.split(" / ")), r
        assert len(cpu.split(" / ")) == 4 and all(number(c) >= 0 for c in cpu.split(" / ")), r
    restarts = table(out, "service")  # at the largest size: web, logic, one worker
    assert [r[0] for r in restarts][:2] == ["web", "logic"] and len(restarts) == 3, out
    assert restarts[2][0] in ("worker-1", "worker-2"), restarts
    for r in restarts:
        _service, stopped, serving, first_pass, means = r
        assert number(stopped) >= 0 and number(serving) > 0 and means, r
        assert first_pass == "-" if r[0] == "web" else number(first_pass) >= 0, r
    snapshot = table(out, "snapshot of")
    assert len(snapshot) == 1 and snapshot[0][0] == "logic.sqlite", snapshot
    # fork, write, loop held, child, encode (ms), MB, bytes per record, restore (s): the
    # child's bytes were read, and the snapshot has a size
    assert all(number(c) >= 0 for c in snapshot[0][1:]) and number(snapshot[0][4]) > 0 \
        and number(snapshot[0][6]) > 0 and number(snapshot[0][7]) > 0, snapshot


def test_shared_helpers() -> None:
    from tools.bench.report import first_left, markdown_table
    from tools.bench.stats import nearest_rank

    assert nearest_rank(list(range(200, 0, -1)), 0.99) == 198  # p99 of 200: the 198th
    assert nearest_rank([3.0, 1.0, 2.0], 0.5) == 2.0 and nearest_rank([5.0], 0.0) == 5.0
    assert markdown_table(("a", "bb"), [("xyz", "1"), ("", "22")], first_left(2)).splitlines() \
        == ["| a   | bb |", "|-----|---:|", "| xyz |  1 |", "|     | 22 |"]


def test_cells_bench_smoke() -> None:
    """``bench cells`` with 4 workers in 2 cells: both platforms' rows, a worker of the
    split platform receiving fewer messages per Start than one of the single cell (a
    worker receives its own node's: with twice the workers, half as many Starts are its),
    every container of the killed cell on again elsewhere, none left running, and the
    ratio of each round of the side-by-side timing."""
    out = run_bench("cells", "--quick")  # 4 workers in 2 cells, 6 Starts
    assert bench_guards() == []
    rows = table(out, "platform")
    assert [r[0] for r in rows] == ["2 workers in 1 cell", "4 workers in 2 cells"], rows
    for r in rows:
        assert number(r[1]) > 0 and number(r[2]) >= number(r[1])
    per_start = [number(r[5].split()[0]) for r in rows]
    assert per_start[1] < per_start[0], rows
    for r in rows:  # CPU while idle: workers / their guards / logic / web / broker
        idle_cpu = [number(x) for x in r[9].split(" / ")]
        assert len(idle_cpu) == 5 and min(idle_cpu) >= 0, r
    killed = re.search(r"Cell c0's workers killed: (\d+) containers on again in other cells "
                       r"after [0-9.]+ s; (\d+) of their old processes still running", out)
    assert killed and int(killed[1]) > 0 and killed[2] == "0", out
    floor = re.search(r"A bare aio-pika consumer .* at (\d+) messages a second spends "
                      r"([0-9.]+) ms per message", out)
    assert floor and int(floor[1]) >= 1 and 0 < float(floor[2]) < 50, out
    per = re.findall(r"workers? in \d cells? ([0-9.]+) ms", out)
    assert len(per) == 2 and all(float(x) > 0 for x in per), out
    # timed side by side: a ratio for each of the 2 rounds (--quick)
    rounds = re.search(r"Each round's Start->on median over the baseline's, in the order run: "
                       r"([0-9.]+)x, ([0-9.]+)x\.", out)
    assert rounds and all(float(x) > 0 for x in rounds.groups()), out


def test_wakeup_bench_quick_run() -> None:
    """``bench wakeup --quick``: both cases, every CPU figure measured (above 0), and a
    receiver woken for each message spending more per message than one that reads them
    back to back (it reads many in one go)."""
    out = run_bench("wakeup", "--quick", "--quiet")
    rows = table(out, "case")
    assert [r[0].split(" (")[0] for r in rows] == ["receiver asleep", "receiver awake"], rows
    asleep, awake = ([number(x) for x in r[1:]] for r in rows)
    assert asleep[0] == awake[0] == 200, rows
    assert min(asleep[1:] + awake[1:]) > 0, rows
    assert asleep[2] > awake[2], rows
    assert "costs its sender" in out, out
