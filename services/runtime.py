"""Container runtimes for the worker: local OS processes, or Docker when an engine answers.

A runtime runs at most one instance per container id and remembers what it runs
in ``state_dir`` (one pid file per container), so that a restarted worker finds
and reconciles the processes that really run.

A worker calls its runtime from several threads at once (services/worker.py), never with two
calls at once for one container; a listing (:meth:`Runtime.running`) may run while other
containers start or stop. A runtime keeps its own bookkeeping consistent under that.

Its pid files name one process for sure (services/pids.py: ``<pid> <start time> <boot
id>``): a stale one, of an earlier boot or naming another process now, is neither taken for
the container nor signalled when it is stopped. A container started here is recorded
without its start time: reading it right after the start waits for the new process's
``exec`` (0.2 ms on a quiet VM, 0.4 ms under load: BENCHMARKS.md, "The publishing path"),
and this runtime polls its own children, which cannot be mistaken; it writes the start time
in at the instance's first lookup after that (every second at the latest: the worker's full
reconcile), for the other processes that read the file. One found by
:meth:`ProcessRuntime.adopt_strays` is recorded with it.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from services import pids
from services.pids import alive, terminate_all

#: The environment variables a container process starts with: its container's id, and
#: the state directory of the runtime that started it (absolute), so that a process whose
#: worker died between starting it and writing its pid file is still found
#: (:meth:`ProcessRuntime.adopt_strays`).
CONTAINER_ENV = "CRDT_OPS_CONTAINER"
RUNTIME_ENV = "CRDT_OPS_RUNTIME"
#: A token of each start, in the instance's environment and so in its children's: the
#: processes of one start that lead sessions of their own are an instance and the daemons
#: it started (``setsid``); those of two starts are two instances of one container.
START_ENV = "CRDT_OPS_START"
#: The ``restart_generation`` an instance was started for (services/model.py), in its
#: environment (a Docker container's: the label :attr:`DockerRuntime.GENERATION_LABEL`): a
#: worker killed after it started an instance and before it reported that start finds it
#: done, and does not restart the container a second time (:meth:`Runtime.generation`).
GENERATION_ENV = "CRDT_OPS_GENERATION"
#: Seconds a process named by a pid file, whose environment reads empty, is given to
#: finish its ``exec`` before it is taken for another program's (ProcessRuntime._instance).
EXEC_SETTLE_S = 0.05
log = logging.getLogger(__name__)


class RuntimeError_(Exception):
    """Starting or stopping a container failed; the message says why."""


class StartWithdrawn(Exception):
    """A start was not made: its ``may_start`` check, as the instance was about to run,
    said no (its lease or its record stopped allowing it while the slow part ran)."""


class Runtime(Protocol):
    """What a worker runs containers with. Calls for different containers may come from
    several threads at once; never two at once for one container."""

    def start(self, cid: str, generation: int = 0,
              may_start: Callable[[], bool] = lambda: True) -> int:
        """Start an instance of ``cid`` for its ``restart_generation`` ``generation``,
        replacing the one that runs (stopped first, with its grace); returns its pid.
        ``may_start`` is asked once everything slow is done (the old instance's stop, an
        image's pull and the container's creation), right before the instance runs: on
        False nothing runs, what was made for it is removed, and :class:`StartWithdrawn`
        is raised. Raises :class:`RuntimeError_` when it cannot start."""
        ...

    def generation(self, cid: str) -> int | None:
        """The ``restart_generation`` that ``cid``'s running instance was started for; None
        when none runs, or it does not say (started by an earlier version)."""
        ...

    def stop(self, cid: str, grace_s: float = 5.0) -> None: ...

    def stop_all(self, cids: Iterable[str], grace_s: float = 5.0) -> None:
        """Stop these containers' instances together: however many, within ``grace_s``
        (SIGTERM, then SIGKILL for what still runs) and 5 s more. What stops a lease's
        containers uses this: one by one, those that ignore SIGTERM could outlive it."""
        ...

    def running(self) -> dict[str, int]:
        """Container id -> pid of every instance this runtime runs now."""
        ...

    def pid(self, cid: str) -> int | None:
        """The pid of ``cid``'s instance if one runs now, else None: what
        :meth:`running` says of one container, without listing the others."""
        ...

    def guard_args(self) -> list[str]:
        """The arguments of ``python -m services.guard`` that rebuild this runtime in
        the guard's process (services/guard.py)."""
        ...

    def adopt_strays(self) -> dict[str, int]:
        """Find the instances that run but that :meth:`running` does not know (their
        worker died between starting them and recording them) and record them; returns
        them, container id -> pid. For a worker that starts, and a guard whose lease ran
        out or whose worker is gone, before they list what runs."""
        ...


class ProcessRuntime:
    """Each container is a local process (``command``, by default a long sleep) in a
    session of its own; stop sends SIGTERM to its process group, then SIGKILL."""

    #: Seconds a start may take (a fork and an ``exec``): how long after its worker died a
    #: start it began may still make an instance (the guard watches that long).
    CALL_S = 1.0

    def __init__(self, state_dir: Path, command: str = "sleep 1000000") -> None:
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._root = str(self.state_dir.resolve())  # what RUNTIME_ENV names
        self._marker = f"{RUNTIME_ENV}={self._root}".encode()
        self.command = shlex.split(command)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._pids: dict[str, int] = {}  # pid files read (or written) here, by container
        #: the start time (clock ticks since boot) a pid file gave each pid read from one
        self._since: dict[int, int] = {}
        #: containers whose pid file could not be written (said once: :meth:`_record`)
        self._unwritten: set[str] = set()
        #: held while the three maps above and the pid files are read or changed (the
        #: worker's runtime threads call at once), not while a process is waited for
        self._lock = threading.RLock()

    def _pidfile(self, cid: str) -> Path:
        return self.state_dir / f"{cid}.pid"

    def start(self, cid: str, generation: int = 0,
              may_start: Callable[[], bool] = lambda: True) -> int:
        with self._lock:
            old = self._alive_pid(cid)
        if old is not None:
            self.stop(cid)
        if not may_start():
            raise StartWithdrawn(cid)
        try:
            proc = subprocess.Popen(self.command, start_new_session=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL,
                                    env={**os.environ, CONTAINER_ENV: cid,
                                         RUNTIME_ENV: self._root,
                                         START_ENV: uuid.uuid4().hex,
                                         GENERATION_ENV: str(generation)})
        except OSError as e:
            raise RuntimeError_(f"cannot run {shlex.join(self.command)!r}: {e}") from None
        with self._lock:
            self._children[proc.pid] = proc
            try:
                pids.record(self._pidfile(cid), proc.pid, None)  # no start time: the module
            except OSError as e:  # says why
                self._children.pop(proc.pid, None)
                failed = e
            else:
                self._pids[cid] = proc.pid
                return proc.pid
        # unrecorded, nothing would find it again: it may not run
        pids.start_time(proc.pid)  # (waits for its exec: its group exists by then)
        terminate_all([(proc.pid, proc)], 1.0, group=True)
        self._forget_file(cid)
        raise RuntimeError_(f"cannot record the instance of {cid} in {self.state_dir} "
                            f"({failed}); it was stopped again")

    def stop(self, cid: str, grace_s: float = 5.0) -> None:
        """Stop ``cid``'s instance: SIGTERM to its process group, SIGKILL after
        ``grace_s`` seconds if it still runs."""
        self.stop_all([cid], grace_s)

    def stop_all(self, cids: Iterable[str], grace_s: float = 5.0) -> None:
        """Stop these containers' instances together (:func:`~services.pids.terminate_all`
        on their process groups)."""
        cids = list(cids)
        with self._lock:
            targets = [(pid, self._children.get(pid)) for pid in map(self._alive_pid, cids)
                       if pid is not None]
        terminate_all(targets, grace_s, group=True)
        with self._lock:
            for pid, _ in targets:
                self._children.pop(pid, None)
            for cid in cids:  # once gone: a stop cut short leaves each one found again
                self._forget_file(cid)
                self._pids.pop(cid, None)

    def guard_args(self) -> list[str]:
        return ["--process-dir", str(self.state_dir)]

    def adopt_strays(self) -> dict[str, int]:
        """Record (write the pid file of) each container whose instance runs without one:
        its worker was killed after :meth:`start` started it and before it wrote the pid
        file, so neither a restarted worker nor the guard (services/guard.py) would have
        found it, and after a move it would have run twice. An instance is found by
        the environment it started with (:data:`RUNTIME_ENV` naming this directory,
        :data:`CONTAINER_ENV` its container), as the leader of its own session (its
        children inherit the environment, not the leadership), the oldest of its start
        (:data:`START_ENV`; the others are daemons it started). Of several starts of one
        container, the one recorded (else the oldest) is kept, and the others' processes
        that lead sessions are stopped (SIGTERM, SIGKILL 5 s later if they still run);
        so are the processes of an instance that exited (:func:`_kill_leftovers`): none
        may run beside the one kept. One read of ``/proc/<pid>/environ`` per process of the
        machine (that this user may read): a start's and a lease end's cost, not a
        change's. Returns container id -> pid of those recorded now."""
        # container -> start token -> (start time, pid) of each session leader of that start
        found: dict[str, dict[str, list[tuple[int, int]]]] = {}
        orphans: dict[str, list[int]] = {}  # container -> its processes whose leader is gone
        with os.scandir("/proc") as entries:
            everyone = [int(e.name) for e in entries if e.name.isdigit()]
        for pid in everyone:
            ours = self._ours(pid)
            if ours is None:
                continue
            cid, stat, token = ours
            if int(stat[3]) == pid:  # (its session: it leads one)
                found.setdefault(cid, {}).setdefault(token, []).append((int(stat[19]), pid))
            elif not pids.alive(int(stat[3])):  # its session's leader is gone: a leftover
                orphans.setdefault(cid, []).append(pid)
        for cid, left in sorted(orphans.items()):
            _kill_leftovers(cid, left)
        adopted: dict[str, int] = {}
        extra: list[tuple[str, int]] = []
        with self._lock:
            for cid, starts in sorted(found.items()):
                first = {token: min(leaders) for token, leaders in starts.items()}
                kept = self._alive_pid(cid)
                if kept is None:
                    since, kept = min(first.values())
                    self._record(cid, kept, since)
                    self._pids[cid] = adopted[cid] = kept
                    self._since[kept] = since
                mine = next((t for t, (_, p) in first.items() if p == kept), None)
                if mine is not None:  # (else the one kept is not readable here: left be)
                    extra += [(cid, p) for t, leaders in starts.items() if t != mine
                              for _, p in leaders]
        if extra:
            log.warning("%d containers ran more than one instance (%s); the extra ones "
                        "were stopped", len({c for c, _ in extra}),
                        ", ".join(f"{c} as pid {p}" for c, p in extra[:5]))
            terminate_all([(pid, None) for _, pid in extra], 5.0, group=True)
        return adopted

    def _instance(self, pid: int, settle: bool = False) -> tuple[str, int] | None:
        """``(container id, start time in clock ticks since boot)`` if process ``pid`` is
        a container instance of this runtime's: one of its processes (:meth:`_ours`) that
        leads its own session; else None (gone, not ours to read, or another program's).
        ``settle``: as :meth:`_ours`."""
        ours = self._ours(pid, settle)
        if ours is None or int(ours[1][3]) != pid:  # (its session)
            return None
        return ours[0], int(ours[1][19])

    def _ours(self, pid: int, settle: bool = False) -> tuple[str, list[str], str] | None:
        """``(container id, its fields of /proc/<pid>/stat, its start's token)`` if process
        ``pid`` started with the environment this runtime gives (:data:`RUNTIME_ENV`
        naming this directory, :data:`CONTAINER_ENV`, :data:`START_ENV`: "" from a version
        without it), as an instance and its children do, and is no zombie; else None.
        ``settle``: a process whose environment reads empty is read again for up to
        :data:`EXEC_SETTLE_S` (a process in its ``exec`` reads so: 20 to 27 of 400 reads
        right after ``Popen`` returned, on this project's VM; a kernel thread reads so for
        good)."""
        path = Path(f"/proc/{pid}/environ")
        deadline = time.monotonic() + (EXEC_SETTLE_S if settle else 0.0)
        try:
            while not (raw := path.read_bytes()) and time.monotonic() < deadline:
                time.sleep(0.005)
        except OSError:  # (PermissionError: :meth:`_alive_pid` says what that means)
            return None
        env = raw.split(b"\0")
        stat = pids.stat(pid) if self._marker in env else None
        if stat is None or stat[0] == "Z":  # (stat[0]: its state, Z a zombie)
            return None
        cid, token = (_env(env, name) for name in (CONTAINER_ENV, START_ENV))
        return (cid, stat, token) if cid else None

    def running(self) -> dict[str, int]:
        """Container id -> pid of every instance alive now: the pid files of the
        directory (the truth a restarted worker and the guard read too), each read
        once (this runtime writes the ones it starts), each process checked."""
        with self._lock:
            out = {}
            with os.scandir(self.state_dir) as entries:
                cids = [e.name[:-4] for e in entries if e.name.endswith(".pid")]
            for cid in self._pids.keys() - set(cids):  # its pid file is gone
                gone = self._pids.pop(cid)
                if alive(gone, self._children.get(gone), self._since.get(gone)):
                    if cid not in self._unwritten:  # (else said as it failed)
                        log.warning("the pid file of container %s (pid %d) was deleted while "
                                    "it runs; written again", cid, gone)
                    self._record(cid, gone, self._since.get(gone))
                    self._pids[cid] = gone
                    cids.append(cid)
            for cid in cids:
                pid = self._alive_pid(cid)
                if pid is not None:
                    out[cid] = pid
            return out

    def pid(self, cid: str) -> int | None:
        """The pid of ``cid``'s instance if it is alive (a stale pid file is removed)."""
        with self._lock:
            return self._alive_pid(cid)

    def generation(self, cid: str) -> int | None:
        """The generation in the environment of ``cid``'s live instance (``/proc``); None
        when none runs, it has none (an earlier version started it) or it cannot be read (a
        container that changed its user)."""
        pid = self.pid(cid)
        if pid is None:
            return None
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        return _number(_env(environ, GENERATION_ENV))

    def _alive_pid(self, cid: str) -> int | None:
        """The pid of ``cid``'s instance if it is alive (a stale pid file is removed)."""
        pid = self._pids.get(cid)
        if pid is None:
            named = pids.read(self._pidfile(cid))  # (of an earlier boot: removed, None)
            if named is None:
                return None
            pid, since = named
            if since is None:  # recorded as it started, by a worker before this process:
                # taken for the container only if it is that one (its pid may be another
                # program's now); recorded with its start time from then on
                instance = self._instance(pid, settle=True)
                if instance is not None and instance[0] == cid:
                    since = instance[1]
                    self._record(cid, pid, since)
                elif os.access(f"/proc/{pid}/environ", os.R_OK) or not os.path.exists(
                        f"/proc/{pid}"):  # gone, or readable and another program's
                    self._forget_file(cid)
                    return None
                # else unreadable (a container that changed its user): taken as it is
            self._pids[cid] = pid
            if since is not None:
                self._since[pid] = since
        child = self._children.get(pid)
        if alive(pid, child, self._since.get(pid)):
            if child is not None and pid not in self._since:
                self._name_start(cid, pid)
            return pid
        left = pids.leftovers(pid)  # (none if its pid is another process's now)
        if left:
            _kill_leftovers(cid, left, group=pid)
        self._forget_file(cid)
        self._pids.pop(cid, None)
        self._since.pop(pid, None)
        return None

    def _name_start(self, cid: str, pid: int) -> None:
        """Write the start time of ``pid``, an instance this runtime started, into its pid
        file, at its first lookup after the start (its ``exec`` is done by then: no wait on
        the start's path). Another process (the guard, a restarted worker) then knows it by
        its start time, not by its environment, which a command that rewrites its process
        title (nginx, setproctitle) overwrites: read so, its pid file was taken for another
        program's and removed, and the instance was neither stopped by the guard nor found
        by a restarted worker, which started a second one."""
        since = pids.start_time(pid)
        if since is not None:
            self._since[pid] = since
            self._record(cid, pid, since)

    def _record(self, cid: str, pid: int, since: int | None) -> None:
        """Write ``cid``'s pid file naming ``pid`` (with its start time ``since``), or,
        when the directory takes no write (full, read-only), say so and go on: what this
        runtime knows of it in memory still stops it (the guard's check, a lease's end),
        which a failed bookkeeping write must not hold up."""
        try:
            pids.record(self._pidfile(cid), pid, since)
        except OSError as e:
            if cid not in self._unwritten:
                log.warning("container %s (pid %d): its pid file could not be written (%s); "
                            "kept in memory only", cid, pid, e)
            self._unwritten.add(cid)
        else:
            self._unwritten.discard(cid)

    def _forget_file(self, cid: str) -> None:
        """Remove ``cid``'s pid file, or say why it could not be (:meth:`_record`)."""
        try:
            self._pidfile(cid).unlink(missing_ok=True)
        except OSError as e:
            log.warning("container %s: its pid file could not be removed (%s)", cid, e)


def _number(text: str) -> int | None:
    """``text`` as a generation (an integer of 0 or more), else None."""
    return int(text) if text.isascii() and text.isdigit() else None


def _env(environ: list[bytes], name: str) -> str:
    """The value of ``name`` in ``environ`` (``/proc/<pid>/environ``'s entries), "" if
    none."""
    prefix = name.encode() + b"="
    return next((v[len(prefix):].decode(errors="replace") for v in environ
                 if v.startswith(prefix)), "")


def _kill_leftovers(cid: str, left: list[int], group: int | None = None) -> None:
    """SIGKILL to ``left``, processes of container ``cid`` that still run though its
    instance (their process group's leader) exited, as Docker ends a container's every
    process when its first one exits (the end of its PID namespace, pid_namespaces(7)).
    Left running, they would run beside the instance that replaces this one, or on the
    node the container moves to. Not waited for (callers hold the runtime's lock): a
    process sent SIGKILL runs no more of its code. ``group``: their process group,
    signalled as one (else each of ``left``). One that may not be signalled (another
    user's) is said, and runs on."""
    log.warning("container %s: its instance exited, and %d processes it started still "
                "ran (%s); killed", cid, len(left), ", ".join(map(str, left[:5])))
    pids.send_signal([group] if group is not None else left, signal.SIGKILL,
                     group=group is not None)


class DockerRuntime:
    """Each container is a Docker container ``crdt-ops-<node>-<id>`` of ``image`` (through the
    ``docker`` command line), labelled with its container id and its node, so that a
    restarted worker finds it again, and a worker lists, stops and replaces only its own
    node's: workers of several nodes may share one engine (the demo on a host with Docker,
    a test machine). A container made before the node was in its name and labels
    (``crdt-ops-<id>``, no node label) is taken for this node's."""

    LABEL = "crdt-ops.container"
    NODE_LABEL = "crdt-ops.node"
    #: the label of the ``restart_generation`` a container was started for (as
    #: :data:`GENERATION_ENV` for a process)
    GENERATION_LABEL = "crdt-ops.generation"
    #: Seconds one ``docker`` command may take before it is given up: ended by coreutils'
    #: ``timeout`` (SIGTERM, SIGKILL 5 s later), which outlives a worker that dies meanwhile.
    TIMEOUT_S = 60.0
    #: How long after its worker died a start it began may still make a container run (the
    #: guard watches that long): a ``docker start`` in flight. (The ``docker create``
    #: before it, which pulls the image, makes one that does not run; the worker's next
    #: start of that container removes it.)
    CALL_S = TIMEOUT_S + 5

    def __init__(self, image: str = "busybox", command: str = "sleep 1000000",
                 node: str = "") -> None:
        self.image = image
        self.command = shlex.split(command)
        self.node = node

    def _names(self, cid: str) -> list[str]:
        """The names ``cid``'s container may have here: this node's, then the one of a
        version that named no node."""
        legacy = f"crdt-ops-{cid}"
        return [f"crdt-ops-{self.node}-{cid}", legacy] if self.node else [legacy]

    @staticmethod
    def available() -> bool:
        """Whether a Docker engine answers."""
        try:
            return subprocess.run(["docker", "info"], capture_output=True,
                                  timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _docker(self, *args: str, missing_ok: bool = False) -> str:
        """``docker ARGS``' output; raises RuntimeError_ if it fails, unless ``missing_ok``
        and all it says is that some objects it was given do not exist ("No such object",
        "No such container": ``docker inspect`` or ``docker stop`` of several does the
        others, and exits with status 1; moby/moby pull request 30648)."""
        bound = ["timeout", "--kill-after=5", f"{self.TIMEOUT_S:g}"] \
            if shutil.which("timeout") else []
        try:
            done = subprocess.run([*bound, "docker", *args], capture_output=True, text=True,
                                  timeout=self.TIMEOUT_S + 10)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError_(f"docker {args[0]} failed: {e}") from None
        if bound and done.returncode in (124, 137):  # (timeout's: it ended the command)
            raise RuntimeError_(f"docker {args[0]} failed: it took more than "
                                f"{self.TIMEOUT_S:g}s")
        said = [line for line in done.stderr.splitlines() if line.strip()]
        if done.returncode and not (missing_ok and said and all(
                "no such object" in line.lower() or "no such container" in line.lower()
                for line in said)):
            raise RuntimeError_(f"docker {args[0]} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self, cid: str, generation: int = 0,
              may_start: Callable[[], bool] = lambda: True) -> int:
        """``docker create`` (which pulls the image if it must: the slow part), then
        ``may_start``, then ``docker start``: a pull that outlasts the lease makes no
        container run after it (``docker run`` did both at once)."""
        name = self._names(cid)[0]
        self.stop(cid)  # the old instance goes first, with its grace (as a process's does)
        labels = [f"{self.LABEL}={cid}", f"{self.GENERATION_LABEL}={generation}"]
        if self.node:
            labels.append(f"{self.NODE_LABEL}={self.node}")
        self._docker("create", "--name", name,
                     *(arg for label in labels for arg in ("--label", label)),
                     self.image, *self.command)
        if not may_start():
            self._docker("rm", "-f", name)
            raise StartWithdrawn(cid)
        self._docker("start", name)
        return int(self._docker("inspect", "-f", "{{.State.Pid}}", name))

    def stop(self, cid: str, grace_s: float = 5.0) -> None:
        """Stop ``cid``'s container and remove it (:meth:`stop_all`)."""
        self.stop_all([cid], grace_s)

    def stop_all(self, cids: Iterable[str], grace_s: float = 5.0) -> None:
        """Stop these containers together (one ``docker stop -t``: each is sent its stop
        signal, SIGTERM unless its image says otherwise, and SIGKILL after ``grace_s``
        rounded up to a second), then remove them (one ``docker rm -f``)."""
        names = [name for cid in cids for name in self._names(cid)]
        if names:
            self._docker("stop", "-t", str(math.ceil(max(grace_s, 0.0))), *names,
                         missing_ok=True)
            self._docker("rm", "-f", *names)  # (no error for one that is not there:
            # docker/cli pull request 2678, Docker 20.10)

    def guard_args(self) -> list[str]:
        return ["--docker", *(["--node", self.node] if self.node else [])]

    def pid(self, cid: str) -> int | None:
        """The pid of ``cid``'s container if it runs (``docker inspect``), else None."""
        pid = self._of_running(cid, "{{.State.Pid}}")
        return None if pid is None else int(pid)

    def _of_running(self, cid: str, field: str) -> str | None:
        """What the Go template ``field`` says of ``cid``'s container that runs (one ``docker
        inspect`` of the names it may have), else None."""
        states = self._docker("inspect", "-f", "{{.State.Running}} " + field,
                              *self._names(cid), missing_ok=True)
        for line in states.splitlines():
            up, _, value = line.partition(" ")
            if up == "true":
                return value.strip()
        return None

    def generation(self, cid: str) -> int | None:
        """The generation label of ``cid``'s container if it runs (``docker inspect``),
        else None (none runs, or it has no such label: an earlier version made it)."""
        label = self._of_running(cid, f'{{{{index .Config.Labels "{self.GENERATION_LABEL}"}}}}')
        return None if label is None else _number(label)

    def adopt_strays(self) -> dict[str, int]:
        """Nothing to do: ``docker create`` names and labels a container as it makes it, so
        :meth:`running` finds every one."""
        return {}

    def running(self) -> dict[str, int]:
        """Container id -> pid of every container of this runtime's that runs: one ``docker
        ps`` and one ``docker inspect`` of all it listed. One removed between the two (a
        stop or a restart on another of the worker's threads) is left out."""
        listing = self._docker("ps", "--filter", f"label={self.LABEL}", "--format",
                               f'{{{{.Label "{self.LABEL}"}}}}\t{{{{.Label "{self.NODE_LABEL}"}}}}'
                               '\t{{.Names}}')
        names = {}  # container name -> container id
        for line in listing.splitlines():
            cid, node, name = line.split("\t", 2)
            if node in (self.node, ""):  # this node's, or one made before nodes were named
                names[name] = cid
        if not names:
            return {}
        states = self._docker("inspect", "-f", "{{.Name}} {{.State.Running}} {{.State.Pid}}",
                              *names, missing_ok=True)
        out = {}
        for line in states.splitlines():
            name, up, pid = line.split(" ")
            if up == "true" and name.lstrip("/") in names:
                out[names[name.lstrip("/")]] = int(pid)
        return out
