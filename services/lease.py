"""A worker's lease: its right to run the containers placed on its node.

The rule (README, "What the platform guarantees about a container whose node is
paused, cut off or dead"), on the worker's side:

* A lease belongs to an *epoch* of the worker (a random id it announces in its node
  record) and lasts ``duration_s`` (the node record's ``lease_ms``).
* A heartbeat written at ``t`` (:func:`clock` seconds) renews the lease to
  ``t + duration_s`` once the broker confirmed it (routed it to every queue of the
  group, logic's included), provided it was written while the lease held (or it
  is the first beat of a new epoch) and its confirmation was seen within
  :attr:`Lease.confirm_within_s` of ``t``. A late confirmation (a paused process, a
  slow broker) renews nothing.
* Containers run only while :meth:`Lease.may_run`: from ``deadline - grace_s`` on,
  the worker and its guard (services/guard.py, a process of its own that a paused
  or killed worker does not take down) stop them, so that none runs at the
  deadline.
* A lease that ran out is over for good: the worker starts a new epoch, and a
  container placed on the old one is not run again unless logic places it anew.

Logic's side of the rule is services/liveness.py: it moves a container off an
epoch only once the lease of every beat it could not have heard yet has run out.
Leases in the sense of Gray and Cheriton, "Leases: an efficient fault-tolerant
mechanism for distributed file cache consistency" (SOSP 1989): both sides measure
durations with their own monotonic clocks, assuming only that clock *rates*
agree within the margin.

Sans-IO but for :func:`clock`, which the callers read: they hand in every time;
:func:`save`/:func:`load` read and write the lease file the guard watches.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

#: the lease a worker takes unless told otherwise (``crdt-ops worker --lease-s``)
DEFAULT_LEASE_S = 30.0
#: the lease file's name in a worker's state directory
LEASE_FILE = "lease.json"
#: heartbeats a worker writes per lease (:func:`beat_interval_s`)
BEATS_PER_LEASE = 5


def beat_interval_s(lease_s: float) -> float:
    """Seconds between a worker's heartbeats under a lease of ``lease_s`` seconds: a fifth
    of it, so that the lease outlasts three beats lost or confirmed late (past
    :attr:`Lease.confirm_within_s`) before its grace starts (:attr:`Lease.grace_s`, at most
    a quarter). A beat is an operation every replica of the worker's cell applies and
    logs; the lease, not the beat, sets how soon a dead node's containers move
    (services/liveness.py). Kubernetes' node leases are renewed at a quarter of theirs
    (40 s, every 10 s: "Node Heartbeats", kubernetes.io)."""
    return lease_s / BEATS_PER_LEASE


def silent_after_s(lease_s: float) -> float:
    """Seconds after a worker's last heartbeat from which people are shown its node as
    silent: two beats missed (:func:`beat_interval_s`), and a second for the way. Only a
    display: logic decides what is gone by its own rule (services/liveness.py)."""
    return 2 * beat_interval_s(lease_s) + 1.0


#: Seconds the longest safe pause leaves for a resumed worker to write a beat and see it
#: confirmed (:func:`longest_safe_pause_s`).
RESUME_S = 1.0


def longest_safe_pause_s(lease_s: float) -> float:
    """The longest pause of a worker (``kill -STOP``, a stalled process), in seconds, after
    which its containers are sure to be still running, whenever the pause begins: the lease,
    less its grace (:attr:`Lease.grace_s`: the guard stops them from there on), less a beat
    interval (the pause may begin just before a beat would have renewed the lease), less
    :data:`RESUME_S` to beat once resumed. 20 s under the default 30 s lease; assumes a
    broker that confirms a beat within a fraction of a second. A longer pause that ends
    within the lease has the guard stop the containers and the resumed worker start them
    again on the same node and epoch (new pids); one past the lease ends the epoch
    (README, "What the platform guarantees about a container whose node is paused, cut
    off or dead")."""
    held = Lease("", lease_s)
    return lease_s - held.grace_s - beat_interval_s(lease_s) - RESUME_S


def new_epoch() -> str:
    """A fresh epoch id: 12 hex digits, random."""
    return uuid.uuid4().hex[:12]


def clock() -> float:
    """The lease's clock, in seconds: ``CLOCK_BOOTTIME`` (Linux), which, unlike
    ``time.monotonic()`` (``CLOCK_MONOTONIC``), goes on while the machine is suspended: a
    worker and its guard that thaw after a suspend longer than their lease find it over,
    and stop the containers at once, rather than run them on for what the lease had left
    while logic has moved them (clock_gettime(2)). ``time.monotonic()`` where there is no
    such clock. Nothing inside a virtual machine sees a pause of the whole machine."""
    return time.clock_gettime(BOOTTIME) if BOOTTIME is not None else time.monotonic()


#: The clock id of :func:`clock` (None: none, ``time.monotonic()`` is used).
BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def boot_id() -> str:
    """This boot of the machine (monotonic clocks restart with it); "" if unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass
class Lease:
    """One epoch's lease. ``deadline``: ``clock()`` seconds when it ends, 0.0
    while no heartbeat of the epoch was confirmed yet (nothing may run then).
    ``began``: when the epoch began (``clock()`` seconds; 0.0: not known): an
    epoch whose lease was not held within ``duration_s`` of it is over too
    (:meth:`lapsed`)."""

    epoch: str
    duration_s: float = DEFAULT_LEASE_S
    deadline: float = 0.0
    began: float = 0.0

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f"a lease must last more than 0 s, not {self.duration_s}")

    @property
    def confirm_within_s(self) -> float:
        """A heartbeat renews the lease only if its confirmation was seen within this
        many seconds of writing it (a quarter of the lease)."""
        return self.duration_s / 4

    @property
    def grace_s(self) -> float:
        """How long before the deadline containers start being stopped (SIGTERM, then
        SIGKILL half-way): at most 3 s, at most a quarter of the lease."""
        return min(3.0, self.duration_s / 4)

    @property
    def stop_wait_s(self) -> float:
        """How long a stop waits after SIGTERM before SIGKILL: half the grace, so a
        container stopped from ``run_until`` on is gone well before the deadline."""
        return self.grace_s / 2

    @property
    def run_until(self) -> float:
        """The instant from which containers must be stopped (0.0: not held yet)."""
        return self.deadline - self.grace_s if self.deadline else 0.0

    def may_run(self, now: float) -> bool:
        """Whether containers of this epoch may run at ``now``."""
        return now < self.run_until

    def lapsed(self, now: float) -> bool:
        """Whether the epoch is over: its lease was held and ran out, or it was never held
        in ``duration_s`` since the epoch began (every beat confirmed too late: a worker
        whose node logic still takes for fresh, as its beats arrive, would hold the
        containers placed there for as long, never starting them; a new epoch has logic
        place them anew)."""
        if self.deadline:
            return now >= self.deadline
        return bool(self.began) and now >= self.began + self.duration_s

    def renew(self, written_at: float, seen_at: float) -> bool:
        """A heartbeat written at ``written_at`` was seen confirmed at ``seen_at``:
        extend the lease to ``written_at + duration_s`` if the rule allows. Returns
        whether the deadline moved."""
        if seen_at - written_at > self.confirm_within_s:
            return False  # too late to prove anything about the time it was written
        if self.deadline and written_at >= self.deadline:
            return False  # written after the lease ran out: the epoch is over
        if written_at + self.duration_s <= self.deadline:
            return False
        self.deadline = written_at + self.duration_s
        return True


def save(path: Path, lease: Lease, worker_pid: int) -> None:
    """Write the lease file atomically (a reader sees the old or the new one):
    JSON ``{"epoch", "duration_s", "deadline", "run_until", "worker_pid", "boot"}``,
    times in ``clock()`` seconds of this boot."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"epoch": lease.epoch, "duration_s": lease.duration_s,
                               "deadline": lease.deadline, "run_until": lease.run_until,
                               "worker_pid": worker_pid, "boot": boot_id()}))
    os.replace(tmp, path)


@dataclass(frozen=True)
class Saved:
    """A lease file as read: the lease and the worker process that holds it."""

    lease: Lease
    worker_pid: int


def load(path: Path) -> Saved | None:
    """The lease file at ``path``; None if it is missing, unreadable, or from an
    earlier boot (its monotonic times mean nothing now)."""
    try:
        data = json.loads(path.read_text())
        if data.get("boot") != boot_id():
            return None
        lease = Lease(str(data["epoch"]), float(data["duration_s"]), float(data["deadline"]))
        return Saved(lease, int(data["worker_pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["DEFAULT_LEASE_S", "LEASE_FILE", "RESUME_S", "Lease", "Saved", "beat_interval_s",
           "load", "longest_safe_pause_s", "new_epoch", "save", "silent_after_s"]
