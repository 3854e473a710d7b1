"""``crdt-ops platform-chaos``: its watch of what runs, on processes made to look doubled,
and a bounded real run (web, two logics, three workers over a broker of its own, under
seven kinds of fault) as a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime import CONTAINER_ENV, RUNTIME_ENV
from tools.platform_chaos import Watch, copies

LAST = re.compile(r"^actions=(\d+) faults=(\d+) doubled=(\d+) converged=(true|false) "
                  r"seconds=(\d+\.\d|nan)$")


@pytest.fixture
def container(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A container id and a list to start its processes in (killed after the test)."""
    cid, procs = f"c-{uuid.uuid4().hex[:8]}", list[subprocess.Popen[bytes]]()
    yield cid, procs
    for p in procs:
        p.kill()
        p.wait()


def _copy(cid: str, node: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], env={**os.environ, CONTAINER_ENV: cid,
                                                  RUNTIME_ENV: f"/x/run-{node}"})


def _until(cond: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)


def test_copies_finds_each_process_of_a_container_and_the_node_it_runs_on(
        container: tuple[str, list[subprocess.Popen[bytes]]]) -> None:
    cid, procs = container
    assert copies([cid]) == {}
    procs.append(_copy(cid, "worker-1"))
    _until(lambda: cid in copies([cid]))
    assert copies([cid]) == {cid: {procs[0].pid: "/x/run-worker-1"}}
    procs.append(_copy(cid, "worker-2"))
    _until(lambda: len(copies([cid]).get(cid, {})) == 2)
    assert copies([cid])[cid] == {procs[0].pid: "/x/run-worker-1",
                                  procs[1].pid: "/x/run-worker-2"}
    procs[0].kill()
    procs[0].wait()  # reaped: a zombie would not count either
    assert copies([cid])[cid] == {procs[1].pid: "/x/run-worker-2"}


def test_the_watch_keeps_a_double_it_read(
        container: tuple[str, list[subprocess.Popen[bytes]]]) -> None:
    cid, procs = container
    watch = Watch()
    watch.cids = {cid}
    watch.start()
    try:
        procs.append(_copy(cid, "worker-1"))
        _until(lambda: watch.samples > 10)
        assert watch.doubles == {}
        procs.append(_copy(cid, "worker-2"))
        _until(lambda: bool(watch.doubles))
        procs[1].kill()
        procs[1].wait()
        assert watch.doubles == {cid: {procs[0].pid, procs[1].pid}}
    finally:
        watch.stop()


def test_a_short_run_under_the_faults_that_move_containers_and_logic_doubles_nothing(
        ) -> None:
    """A worker and the placing logic each frozen and cut off past their lease or
    heartbeat timeout, a node crashed, the placing logic killed, the broker restarted (the
    other kinds: the documented longer run)."""
    faults = "worker-pause,worker-cut,node-crash,logic-pause,logic-cut,logic-kill," \
             "broker-restart"
    run = subprocess.Popen([sys.executable, "-m", "services.cli", "platform-chaos",
                            "--duration", "95", "--fault-interval-s", "10", "--faults", faults,
                            "--containers", "6", "--seed", "1", "--timeout", "120"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        stdout, stderr = run.communicate(timeout=480)
    except subprocess.TimeoutExpired as e:  # SIGTERM first: it cleans up (its broker, ...)
        os.killpg(run.pid, signal.SIGTERM)
        try:
            stdout, stderr = run.communicate(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
        raise AssertionError(f"still running after 480 s:\n{stdout}\n{stderr[-6000:]}") from e
    done = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    out = done.stdout.strip().splitlines()
    match = LAST.match(out[-1]) if out else None
    assert match, f"{out}\n{done.stderr[-6000:]}"
    actions, n_faults, doubled, converged, _ = match.groups()
    assert (doubled, converged) == ("0", "true"), "\n".join(out) + done.stderr[-6000:]
    assert int(n_faults) >= 7, out
    done_kinds = next(x for x in out if x.startswith("faults: ")).split(";")[0]
    assert set(done_kinds.removeprefix("faults: ").split(", ")) == set(faults.split(",")), \
        done_kinds
    assert int(actions) > 50, out
    assert done.returncode == 0, "\n".join(out)
    # the pause of the placing logic outlasted the broker's heartbeat timeout: its standby
    # took over, and the frozen one, woken, was deposed (exit 1) and started again
    restarts = next(x for x in out if x.startswith("restarts: "))
    assert re.search(r"logic\.[ab] \d+ \(exits: [^)]*\b1\b", restarts), restarts
