"""The lease guard (services/guard.py) as a real process over real container processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from services import guard, lease
from services.runtime import ProcessRuntime
from tests.broker import wait_until
from tests.services.test_services import alive


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_guard_stops_containers_when_the_lease_runs_out(tmp_path: Path) -> None:
    rt = ProcessRuntime(tmp_path)
    held = lease.Lease("e1", 4.0)
    held.renew(lease.clock(), lease.clock())  # holds for 4 s: runs until 3 s from now
    lease.save(tmp_path / lease.LEASE_FILE, held, os.getpid())
    pid = rt.start("c1")
    g = guard.ensure(tmp_path, rt)
    try:
        assert guard.ensure(tmp_path, rt) == g  # one guard per directory
        time.sleep(1.5)
        assert alive(pid)  # the lease holds: left alone
        wait_until(lambda: not alive(pid), 5, "the guard to stop the container")
        assert rt.running() == {} and alive(g)  # its worker (this test) lives: it stays
        # the worker is gone and nothing runs: the guard goes too
        lease.save(tmp_path / lease.LEASE_FILE, held, dead_pid())
        wait_until(lambda: not alive(g), 5, "the guard to exit")
    finally:
        for cid in rt.running():
            rt.stop(cid, grace_s=0.1)
        if alive(g):
            os.kill(g, 9)


#: a container that ignores SIGTERM (only SIGKILL ends it)
STUBBORN = "sh -c 'trap \"\" TERM; sleep 1000000'"


def test_the_guard_stops_containers_that_ignore_sigterm_together_before_the_deadline(
        tmp_path: Path) -> None:
    """One by one, each waiting its half grace after SIGTERM, the tenth of ten such
    containers was killed 4.5 s past the lease's run_until: past its deadline, when logic
    may run them elsewhere (services/liveness.py)."""
    rt = ProcessRuntime(tmp_path, command=STUBBORN)
    held = lease.Lease("e1", 4.0)  # grace 1 s: stopped from 3 s on, SIGKILL 0.5 s later
    held.renew(lease.clock(), lease.clock())
    lease.save(tmp_path / lease.LEASE_FILE, held, os.getpid())
    started = [rt.start(f"c{i}") for i in range(10)]
    g = guard.ensure(tmp_path, rt)
    try:
        time.sleep(max(0.0, held.deadline - lease.clock()))
        left = [p for p in started if alive(p)]
        assert not left, f"{len(left)} of 10 containers still ran at the lease's deadline"
    finally:
        os.kill(g, 9)
        rt.stop_all(rt.running(), grace_s=0.1)


def test_without_a_lease_file_nothing_runs(tmp_path: Path) -> None:
    rt = ProcessRuntime(tmp_path)
    pid = rt.start("c1")
    g = guard.ensure(tmp_path, rt)
    try:
        wait_until(lambda: not alive(pid), 5, "the guard to stop an unleased container")
        wait_until(lambda: not alive(g), 5, "the guard to exit (no worker named)")
    finally:
        if alive(pid):
            rt.stop("c1", grace_s=0.1)


def test_the_guard_reads_the_lease_file_at_its_run_until_and_once_a_check_while_it_holds(
) -> None:
    held = lease.Lease("e1", 30.0)
    held.renew(100.0, 100.0)  # deadline 130, run_until 127
    saved = lease.Saved(held, worker_pid=1)
    assert guard._until_next_check(saved, 100.0) == guard.CHECK_S
    assert guard._until_next_check(saved, 126.6) == 127.0 - 126.6
    assert guard._until_next_check(saved, 127.5) == guard.POLL_S  # ran out: stopping
    # its worker gone too: only a runtime command it began can still make a container
    assert guard._until_next_check(saved, 127.5, worker_gone=True) == guard.CHECK_S
    assert guard._until_next_check(None, 100.0) == guard.POLL_S


def test_the_guard_stops_a_container_its_worker_did_not_record(tmp_path: Path) -> None:
    """A worker killed between starting a container and writing its pid file: once the
    lease runs out the guard finds the process by its environment and stops it (else it
    would run on after logic moved the container: twice)."""
    rt = ProcessRuntime(tmp_path)
    held = lease.Lease("e1", 2.0)
    held.renew(lease.clock(), lease.clock())
    lease.save(tmp_path / lease.LEASE_FILE, held, dead_pid())  # its worker is gone
    pid = rt.start("c1")
    (tmp_path / "c1.pid").unlink()
    g = guard.ensure(tmp_path, rt)
    try:
        wait_until(lambda: not alive(pid), 8, "the guard to stop the unrecorded container")
        assert "c1 runs as pid" in (tmp_path / "guard.log").read_text()
        wait_until(lambda: not alive(g), 5, "the guard to exit (its worker is gone)")
    finally:
        if alive(pid):
            os.killpg(pid, 9)
        if alive(g):
            os.kill(g, 9)


def test_a_stale_guard_pid_file_is_not_taken_for_a_running_guard(tmp_path: Path) -> None:
    """The guard's pid file names its process for sure (services/pids.py): a file naming a
    live process of another start time, or of an earlier boot, is stale, and a guard is
    started; the guard this process started is known without reading the file."""
    from services import pids

    rt = ProcessRuntime(tmp_path)
    held = lease.Lease("e1", 60.0)  # a lease that holds, of a worker that lives (this test):
    held.renew(lease.clock(), lease.clock())  # the guards it starts stay
    lease.save(tmp_path / lease.LEASE_FILE, held, os.getpid())
    other = subprocess.Popen(["sleep", "30"])  # a process that took the guard's pid
    started: list[int] = []
    try:
        since = pids.start_time(other.pid)
        assert since is not None
        for text in (f"{other.pid} {since + 1} {pids.BOOT}",  # another start time
                     f"{other.pid} {since} an-earlier-boot"):
            guard._children.pop(tmp_path, None)
            (tmp_path / guard.PIDFILE).write_text(text)
            g = guard.ensure(tmp_path, rt)
            started.append(g)
            assert g != other.pid and alive(g), text
            assert (tmp_path / guard.PIDFILE).read_text().split() == [
                str(g), str(pids.start_time(g)), pids.BOOT]
            (tmp_path / guard.PIDFILE).unlink()  # its own guard is known all the same
            assert guard.ensure(tmp_path, rt) == g
            os.kill(g, 9)
        assert alive(other.pid)  # never signalled
    finally:
        other.kill()
        other.wait()
        for g in started:
            if alive(g):
                os.kill(g, 9)


class _Flaky(ProcessRuntime):
    """A process runtime whose listing fails ``fails`` times first (an engine restarting)."""

    def __init__(self, state_dir: Path, fails: int) -> None:
        super().__init__(state_dir)
        self.fails = fails

    def running(self) -> dict[str, int]:
        if self.fails:
            self.fails -= 1
            from services.runtime import RuntimeError_

            raise RuntimeError_("docker ps failed: Cannot connect to the Docker daemon")
        return super().running()


def _guarding_for_a_dead_worker(state_dir: Path, rt: ProcessRuntime, lease_s: float,
                                call_s: float) -> threading.Event:
    """A lease of ``lease_s`` held from now in ``state_dir`` by a worker already gone, and
    :func:`guard.guard` on a thread of this process; the event it sets once it returns."""
    held = lease.Lease("e1", lease_s)
    held.renew(lease.clock(), lease.clock())
    lease.save(state_dir / lease.LEASE_FILE, held, dead_pid())
    done = threading.Event()
    threading.Thread(target=lambda: (guard.guard(state_dir, rt, call_s=call_s), done.set()),
                     daemon=True).start()
    return done


def test_a_runtime_call_that_fails_does_not_end_the_guard(tmp_path: Path) -> None:
    """One failed listing ended the guard (status 1), so nothing stopped the containers of
    a worker that was gone, and logic ran them elsewhere too."""
    rt = _Flaky(tmp_path, fails=3)
    pid = rt.start("c1")
    done = _guarding_for_a_dead_worker(tmp_path, rt, lease_s=2.0, call_s=0.2)
    try:
        wait_until(done.is_set, 10, "the guard to stop the container and leave")
        assert rt.fails == 0 and not alive(pid)
    finally:
        if alive(pid):
            rt.stop("c1", grace_s=0.1)


def test_the_guard_stops_what_a_start_of_its_dead_worker_made_after_the_lease_ran_out(
        tmp_path: Path) -> None:
    """A ``docker run`` the worker began goes on after the worker is killed, and may make
    its container minutes later: the guard, finding nothing running and its worker gone,
    left at once, and the container ran unguarded beside its moved copy."""
    rt = ProcessRuntime(tmp_path)
    done = _guarding_for_a_dead_worker(tmp_path, rt, lease_s=1.0, call_s=3.0)
    time.sleep(1.5)  # past the lease's end, nothing ran: the guard stays
    assert not done.is_set()
    late = ProcessRuntime(tmp_path).start("c1")  # the start its dead worker began
    try:
        wait_until(lambda: not alive(late), 5, "the guard to stop the late container")
        wait_until(done.is_set, 5, "the guard to leave once no start can come")
    finally:
        if alive(late):
            os.killpg(late, 9)


def test_a_guard_leaving_stays_for_a_worker_that_started_meanwhile(tmp_path: Path) -> None:
    """A worker that started as its guard was about to leave found the guard running and
    started none: its node ran without a guard until its next beat. The guard now removes
    its pid file before it reads the lease file a last time, and stays (its pid file
    written again) if a worker lives."""
    from services import pids

    me = os.getpid()
    pids.record(tmp_path / guard.PIDFILE, me, pids.start_time(me))
    held = lease.Lease("e1", 30.0)
    lease.save(tmp_path / lease.LEASE_FILE, held, os.getpid())  # a live worker
    assert not guard._leaving(tmp_path)
    assert guard.running_guard(tmp_path) == me
    lease.save(tmp_path / lease.LEASE_FILE, held, dead_pid())
    assert guard._leaving(tmp_path)
    assert guard.running_guard(tmp_path) is None


def test_a_guard_an_earlier_version_started_is_replaced(tmp_path: Path) -> None:
    """A worker upgraded within its lease kept the guard its earlier version had started:
    that guard went on with the earlier version's rules (and, for Docker, the earlier
    container names, so at the lease's end it stopped nothing)."""
    from services import pids

    rt = ProcessRuntime(tmp_path)
    held = lease.Lease("e1", 30.0)
    held.renew(lease.clock(), lease.clock())
    lease.save(tmp_path / lease.LEASE_FILE, held, os.getpid())
    old = subprocess.Popen([sys.executable, "-m", "services.guard", "--state-dir",
                            str(tmp_path), *rt.guard_args()], start_new_session=True)
    try:
        pids.record(tmp_path / guard.PIDFILE, old.pid, pids.start_time(old.pid))
        assert guard.running_guard(tmp_path) == old.pid
        new = guard.ensure(tmp_path, rt)
        assert new != old.pid and old.wait(5) is not None
        assert guard.ensure(tmp_path, rt) == new  # this version's: kept
        assert f"--revision {guard.REVISION}" in " ".join(guard._argv(new))
    finally:
        if old.poll() is None:
            old.kill()
        guard.stop(tmp_path)
