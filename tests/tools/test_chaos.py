"""``crdt-ops chaos``: the ledger's rule on hand-written ledgers, and bounded real runs
(every fault kind once, then again with the late replica) as subprocesses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from crdt_ops import Replica
from services.ledger import LedgerWriter
from tests.support import exchange
from tools.chaos import audit, cross_check

LAST = re.compile(r"^ops=(\d+) faults=(\d+) lost=(\d+) applied_twice=(\d+) "
                  r"converged=(true|false) seconds=(\d+\.\d|nan)$")


# ---------------------------------------------------------------- the rule


def test_a_clean_ledger_counts_nothing() -> None:
    v = audit({"a": ["S {}", "A a 1 1", "A a 2 2", "P 1 2 1", "I 1 2 1", "A b 1 3"],
               "b": ["S {}", "A b 1 3", "P 1 3 2", "I 1 3 2", "A a 1 2"]})
    assert (v.lost, v.applied_twice, v.phantom, v.anomalies) == (0, 0, 0, [])
    assert v.issued == {"a": 2, "b": 3} and v.workload == {"a": 1, "b": 2}


def test_missing_and_doubled_applications_are_counted_per_operation_and_replica() -> None:
    v = audit({"a": ["S {}", "A a 1 3", "P 1 3 3", "I 1 3 3"],
               "b": ["S {}", "A a 1 1", "A a 1 2"],  # 3 never, 1 twice
               "c": ["S {}"]})  # none of the three
    assert (v.lost, v.applied_twice) == (1 + 3, 1)


def test_applications_lost_with_a_killed_process_are_voided_at_restart() -> None:
    # b applied a's 1..5 in memory, was killed with 1..3 in its store, applied 4..5 again
    v = audit({"a": ["S {}", "A a 1 5", "P 1 5 5", "I 1 5 5"],
               "b": ["S {}", "A a 1 5", 'S {"a":3}', "A a 4 5"]})
    assert (v.lost, v.applied_twice, v.voided, v.anomalies) == (0, 0, 2, [])
    # applied again below the recovered clock: that is a double
    v = audit({"a": ["S {}", "A a 1 5", "P 1 5 5", "I 1 5 5"],
               "b": ["S {}", "A a 1 5", 'S {"a":3}', "A a 3 5"]})
    assert v.applied_twice == 1


def test_a_block_durable_before_write_returned_is_issued_and_one_not_durable_is_not() -> None:
    # killed after 4..6 were durable but before write() returned; then 7..8 applied
    # locally and killed before durable: 7..8 are not issued, and are used again
    a = ["S {}", "A a 1 3", "P 1 3 1", "I 1 3 1", "A a 4 6", "P 4 6 2",
         'S {"a":6}', "A a 7 8", "P 7 8 1",
         'S {"a":6}', "A a 7 7", "P 7 7 1", "I 7 7 1"]
    v = audit({"a": a, "b": ["S {}", "A a 1 7"]})
    assert (v.lost, v.applied_twice, v.phantom, v.anomalies) == (0, 0, 0, [])
    assert (v.issued["a"], v.workload["a"]) == (7, 4)
    assert (v.durable_unacked, v.unaccepted, v.voided) == (3, 2, 2)
    # if b had applied the unaccepted 8, it came from nowhere: a phantom
    assert audit({"a": a, "b": ["S {}", "A a 1 8"]}).phantom == 1


def test_a_block_committed_before_a_store_failure_may_still_be_accepted() -> None:
    # 1..3 committed; the store failed before write() returned; memory restored from the
    # store (R: 1..3 in it); then write() returned: accepted, no longer "durable unacked"
    v = audit({"a": ["S {}", "A a 1 3", "P 1 3 2", 'R {"a":3}', "I 1 3 2"],
               "b": ["S {}", "A a 1 3"]})
    assert (v.lost, v.applied_twice, v.anomalies) == (0, 0, [])
    assert (v.issued["a"], v.workload["a"], v.durable_unacked) == (3, 2, 0)
    # a restart is no such case: a killed process's write() never returns
    v = audit({"a": ["S {}", "A a 1 3", "P 1 3 2", 'S {"a":3}', "I 1 3 2"],
               "b": ["S {}", "A a 1 3"]})
    assert v.anomalies == ["a: accepted block (1, 3, 2) was never pending"]


def test_an_accepted_block_missing_from_the_recovered_store_is_lost_everywhere() -> None:
    v = audit({"a": ["S {}", "A a 1 2", "P 1 2 1", "I 1 2 1", 'S {"a":1}'],
               "b": ["S {}", "A a 1 1"]})
    assert (v.lost, v.phantom) == (2, 0)  # seq 2, at both replicas; and it is named:
    assert v.anomalies == ["a: accepted blocks [(1, 2, 1)] not in the recovered store (clock 1)"]


def test_the_state_counters_are_checked_against_the_ledger() -> None:
    v = audit({"a": ["S {}", "A a 1 2", "P 1 2 1", "I 1 2 1"]})
    assert cross_check(v, {"a": {"issued/a": 1}}) == []
    assert cross_check(v, {"a": {"issued/a": 2}}) == ["a: issued/a = 2, ledger 1"]


def test_the_writer_records_what_replicas_really_apply(tmp_path: Path) -> None:
    rs = [Replica(f"r{i}") for i in range(3)]
    writers = [LedgerWriter(tmp_path / f"{r.replica_id}.ledger", r) for r in rs]
    for _ in range(3):
        for r, w in zip(rs, writers, strict=True):
            first = r.clock.get(r.replica_id, 0) + 1
            w.in_block = True
            r.counter("n").increment()
            r.counter(f"issued/{r.replica_id}").increment()
            w.pending(first, r.clock[r.replica_id], 1)
            w.accepted(first, r.clock[r.replica_id], 1)
        exchange(*rs)
        exchange(*rs)  # everything again: duplicates are not applications
    for w in writers:
        w.close()
    v = audit({r.replica_id: (tmp_path / f"{r.replica_id}.ledger").read_text().splitlines()
               for r in rs})
    assert (v.lost, v.applied_twice, v.phantom, v.anomalies) == (0, 0, 0, [])
    assert v.issued == {"r0": 6, "r1": 6, "r2": 6}
    assert cross_check(v, {r.replica_id: r.state() for r in rs}) == []


# ---------------------------------------------------------------- real runs

def chaos(*args: str) -> tuple[int, list[str], str]:
    done = subprocess.run([sys.executable, "-m", "services.cli", "chaos", "--ops", "3000",
                           "--pause-s", "3", "--lock-s", "3", "--duration", "15",
                           "--timeout", "120", *args],
                          capture_output=True, text=True, timeout=170)
    return done.returncode, done.stdout.strip().splitlines(), done.stderr


def test_every_fault_once_and_nothing_is_lost_or_doubled() -> None:
    code, out, err = chaos("--seed", "1")
    match = LAST.match(out[-1]) if out else None
    assert match, f"{out}\n{err[-4000:]}"
    ops, faults, lost, twice, converged, _ = match.groups()
    assert (ops, faults, lost, twice, converged) == ("3000", "10", "0", "0", "true"), \
        "\n".join(out) + err[-4000:]
    assert code == 0, "\n".join(out)
    assert "issued/<id> counters vs ledger: all equal" in out
    stderr_faults = re.findall(r"fault (\S+)(?: [\w-]+)? done", err)
    assert stderr_faults == ["broker-restart", "replica-kill", "replica-join", "stream-cut",
                             "connection-close", "store-lock", "replica-pause",
                             "topology-delete", "replica-retire", "broker-kill"]
    assert_membership_changed(out)
    # the locked store failed, was restored from and worked again at r1
    survived = next(x for x in out if x.startswith("store failures survived: "))
    assert re.search(r"\br1 [1-9]", survived.split(";")[0]), survived
    # what the stream missed while cut off, its senders sent again when r3 asked
    assert re.search(r"sent again on request \(the stream missed them\): (?!none)", survived), \
        survived


def assert_membership_changed(out: list[str]) -> None:
    """The joiner ended a member and the leaver retired, at every replica that stayed."""
    line = next(x for x in out if x.startswith("membership: "))
    each = {rid: (what, retired) for rid, what, retired in
            re.findall(r"(\S+) (left|member|NOT a member) \(retired: ([^)]*)\)", line)}
    assert each.pop("leaver", ("", ""))[0] == "left", line
    assert sorted(each) == ["joiner", "r0", "r1", "r2", "r3"], line
    assert all(v == ("member", "leaver") for v in each.values()), line
    # stability went on through the changes: most of what was delivered is stable
    stable = next(x for x in out if x.startswith("causally stable at the end"))
    for got, of in re.findall(r"([\d,]+)/([\d,]+)", stable):
        assert int(got.replace(",", "")) > int(of.replace(",", "")) // 2, stable


def test_with_the_late_replica_its_causal_buffer_fills_and_all_converges() -> None:
    code, out, err = chaos("--seed", "2", "--late-replica")
    match = LAST.match(out[-1]) if out else None
    assert match, f"{out}\n{err[-4000:]}"
    assert match.groups()[:5] == ("3000", "10", "0", "0", "true"), "\n".join(out) + err[-4000:]
    assert code == 0, "\n".join(out)
    assert_membership_changed(out)
    late = next(line for line in out if line.startswith("late replica r0:"))
    buffered = int(late.rsplit(":", 1)[1].replace(",", ""))
    assert buffered > 0, late
