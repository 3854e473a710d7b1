"""The lease guard: stops a worker's containers when its lease runs out, even when the
worker itself is paused, stuck or dead.

One guard process per worker state directory, in a session of its own (so a
signal to the worker, or to its terminal's process group, does not reach it). It
reads the lease file (services/lease.py) at the lease's ``run_until``, and every
``CHECK_S`` (every ``POLL_S`` while nothing may run), and, from the lease's
``run_until`` on (or when there is no valid lease file), stops every container of
the runtime: SIGTERM, then SIGKILL half-way to the deadline. It exits once the
worker process named in the lease file is gone, its lease ran out, nothing runs, and
the longest a runtime call may take has passed since (a ``docker start`` its worker
began may make a container run a minute after the worker died). A runtime call that fails
(an engine restarting) is said in one line and tried again. The worker starts it
(:func:`ensure`) when it starts, on every heartbeat if it is gone, and before it starts
a container.

What it does not cover: a guard that is itself paused or killed (the worker starts
a new one when it next starts a container or starts up), and a whole machine that
freezes (its containers freeze with it, and are stopped as soon as the guard's
sleep ends on thawing, if the lease ran out meanwhile).

``python -m services.guard --state-dir DIR (--process-dir DIR | --docker [--node NAME])``
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from services import lease, pids
from services.pids import alive, terminate
from services.runtime import DockerRuntime, ProcessRuntime, Runtime

log = logging.getLogger("services.guard")

POLL_S = 0.1
#: Seconds between two reads of the lease file while the lease holds: a renewal only moves
#: the deadline later, so the guard sleeps until the lease's ``run_until`` (re-reading the
#: file then) or this long, whichever comes first, and notices a dead worker within it.
#: 40 guards reading every ``POLL_S`` cost a fifth of a core on a 2-vCPU VM.
CHECK_S = 1.0
#: The guard's behaviour's revision, on its command line: a worker replaces a running guard
#: of another (:func:`ensure`), so that an upgrade does not leave an earlier version's guard
#: watching its containers. Raised whenever what a guard does changes.
REVISION = 3
#: The guard's pid file in its state directory (services/pids.py; not *.pid: those are the
#: runtime's containers).
PIDFILE = "guard-pid"
#: The guards this process started, by state directory, until they exit (then reaped: no
#: zombie left).
_children: dict[Path, subprocess.Popen[bytes]] = {}


def running_guard(state_dir: Path) -> int | None:
    """The pid of the guard of ``state_dir`` if one runs: one this process started (polled:
    no file read), else the one its pid file names (services/pids.py: not another
    process given the same pid since, nor one of an earlier boot)."""
    child = _children.get(state_dir)
    if child is not None and child.poll() is None:
        return child.pid
    named = pids.read(state_dir / PIDFILE)
    if named is None:
        return None
    pid, since = named
    return pid if alive(pid, since=since) else None


def ensure(state_dir: Path, runtime: Runtime) -> int:
    """Start the guard of ``state_dir`` unless one runs; returns its pid. Cheap while the
    guard this process started runs (the worker calls it before each start). A guard that
    runs with other arguments than this worker would give it (one an earlier version
    started: another :data:`REVISION`, or a runtime named otherwise) is replaced: it would
    stop, and list, what this worker's runtime does not run."""
    args = _arguments(state_dir, runtime)
    pid = running_guard(state_dir)
    if pid is not None:
        if pid in (c.pid for c in _children.values()) or _argv(pid)[1:] == args[1:]:
            return pid
        log.warning("guard %s: pid %d runs as %r, not as this worker's would (%r): an "
                    "earlier version's; replaced", state_dir, pid, _argv(pid)[1:], args[1:])
        stop(state_dir)
    proc = subprocess.Popen(
        args,
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(state_dir / "guard.log", "ab"))  # noqa: SIM115 (the child owns it)
    pids.record(state_dir / PIDFILE, proc.pid, pids.start_time(proc.pid))
    _reap()
    _children[state_dir] = proc
    return proc.pid


def _arguments(state_dir: Path, runtime: Runtime) -> list[str]:
    """The command line of the guard of ``state_dir`` for ``runtime``."""
    return [sys.executable, "-m", "services.guard", "--state-dir", str(state_dir),
            "--revision", str(REVISION), *runtime.guard_args()]


def _argv(pid: int) -> list[str]:
    """Process ``pid``'s command line ([] if it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def stop(state_dir: Path, timeout_s: float = 5.0) -> None:
    """Stop the guard of ``state_dir`` if one runs (SIGTERM; SIGKILL after ``timeout_s``
    seconds) and return once it is gone. Only for a worker whose containers were stopped
    for good (the demo's end): the guard is what stops them when the worker cannot."""
    pid = running_guard(state_dir)
    if pid is None:
        return
    child = _children.get(state_dir)
    terminate(pid, timeout_s, child=child if child is not None and child.pid == pid else None)
    _reap()


def _reap() -> None:
    """Forget the guards this process started that have exited (reaping them)."""
    for state_dir, child in list(_children.items()):
        if child.poll() is not None:
            del _children[state_dir]


def guard(state_dir: Path, runtime: Runtime, call_s: float = 1.0) -> None:
    """Watch the lease file until the worker is gone, its lease ran out, nothing is left
    to stop, and ``call_s`` (the longest one of ``runtime``'s calls may take) has passed
    since. A check whose runtime call fails is tried again ``POLL_S`` later."""
    file = state_dir / lease.LEASE_FILE
    looked = False  # for instances the runtime does not know, since the lease last held
    while True:
        saved = lease.load(file)
        now = lease.clock()
        try:
            worker_gone = saved is None or not alive(saved.worker_pid)
            if _check(runtime, saved, now, worker_gone, looked, call_s, state_dir):
                if _leaving(state_dir):
                    return  # nothing to guard; a worker starting here starts a guard again
                continue
            looked = saved is None or worker_gone or not saved.lease.may_run(now)
        except Exception as e:  # (RuntimeError_, OSError): the guard must not end on one
            log.warning("guard %s: %s; trying again in %.1fs", state_dir, e, POLL_S)
            time.sleep(POLL_S)
            continue
        time.sleep(_until_next_check(saved, now, worker_gone))


def _check(runtime: Runtime, saved: lease.Saved | None, now: float, worker_gone: bool,
           looked: bool, call_s: float, state_dir: Path) -> bool:
    """One look at the lease ``saved`` and the runtime at ``now``, the worker gone or not:
    record what runs unrecorded (once per spell without a valid lease or a live worker:
    ``looked`` says it was done, except while a call of a dead worker may still make one),
    and stop everything once the lease ran out. Returns whether the guard may leave."""
    if saved is not None and saved.lease.may_run(now) and not worker_gone:
        return False
    settled = saved is None or now >= saved.lease.run_until + call_s
    if not looked or (worker_gone and not settled):  # a worker killed as it started one
        for cid, pid in runtime.adopt_strays().items():  # left it unrecorded
            log.warning("guard %s: %s runs as pid %d without a pid file (its worker died "
                        "as it started it); recorded", state_dir, cid, pid)
    running = runtime.running()
    if saved is None or not saved.lease.may_run(now):
        wait = saved.lease.stop_wait_s if saved is not None else 0.5
        for cid in running:
            log.warning("guard %s: the lease ran out; stopping %s", state_dir, cid)
        runtime.stop_all(running, grace_s=wait)  # together: all gone within the grace
        running = {}
    return not running and worker_gone and settled


def _leaving(state_dir: Path) -> bool:
    """Whether the guard leaves now: its pid file is removed first, then the lease file
    read again; a worker that started meanwhile (it may have found this guard still
    running, and started none) keeps it, and its pid file is written again."""
    me = os.getpid()
    if running_guard(state_dir) == me:
        (state_dir / PIDFILE).unlink(missing_ok=True)
    saved = lease.load(state_dir / lease.LEASE_FILE)
    if saved is not None and alive(saved.worker_pid):
        pids.record(state_dir / PIDFILE, me, pids.start_time(me))
        return False
    return True


def _until_next_check(saved: lease.Saved | None, now: float,
                      worker_gone: bool = False) -> float:
    """Seconds to sleep before the next read of the lease file: while nothing may run,
    ``POLL_S`` (a live worker's start, checked against the lease before the lease ran out,
    may still make a container), or ``CHECK_S`` once the worker is gone too (only a
    runtime command it began can, for as long as the runtime's calls take: minutes of
    ``docker ps`` every ``POLL_S`` would cost a core a good part of its time); else until
    the lease's ``run_until``, at most ``CHECK_S``."""
    if saved is None or not saved.lease.may_run(now):
        return CHECK_S if worker_gone and saved is not None else POLL_S
    return max(0.0, min(CHECK_S, saved.lease.run_until - now))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.guard", description=__doc__)
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--revision", type=int, default=0, help="the revision of the guard the "
                   "worker that started it expects (REVISION)")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--process-dir", type=Path)
    kind.add_argument("--docker", action="store_true")
    p.add_argument("--node", default="", help="with --docker: the worker's node (its "
                   "containers are this node's only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runtime: Runtime = (DockerRuntime(node=args.node) if args.docker
                        else ProcessRuntime(args.process_dir))
    try:
        guard(args.state_dir, runtime,
              DockerRuntime.CALL_S if args.docker else ProcessRuntime.CALL_S)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(OSError):
            if running_guard(args.state_dir) == os.getpid():
                (args.state_dir / PIDFILE).unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
