"""Processes named by their pid: whether one runs, its start time, pid files that name one
process for sure, and stopping one. The container runtime (services/runtime.py) keeps a
pid file per container, and the lease guard (services/guard.py) one for itself.

A pid file holds ``<pid> <start time> <boot id>``: the process's start time in clock ticks
since boot (proc(5)'s ``starttime``; ``-`` when not known) and the machine's boot
(``/proc/sys/kernel/random/boot_id``). Pids are reused, by a later boot above all: a file
whose boot is not this one names nothing that runs (no process outlives its machine's
boot), and a process with the file's pid but another start time is another program's
(:func:`alive` with ``since``). A file of an older version, a pid alone, is read as
before: any live process with that pid.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from services.lease import boot_id

log = logging.getLogger(__name__)

#: This boot of the machine, as pid files name it ("-": unknown, then not checked).
BOOT = boot_id() or "-"


def record(path: Path, pid: int, since: int | None) -> None:
    """Write the pid file ``path`` naming process ``pid`` with its start time ``since``
    (None: not known) in this boot."""
    path.write_text(f"{pid} {'-' if since is None else since} {BOOT}")


def read(path: Path) -> tuple[int, int | None] | None:
    """``(pid, start time or None)`` of the process the pid file ``path`` names in this
    boot; None when there is no such file or it holds no pid file's text, and when it is of
    an earlier boot (then it is removed: it names nothing that runs). Whether that process
    still runs is :func:`alive`'s to say."""
    try:
        parts = path.read_text().split()
    except OSError:
        return None
    try:
        if len(parts) == 1:
            return int(parts[0]), None
        if len(parts) == 3:
            boot = None if parts[2] == "-" else parts[2]
            if boot not in (None, BOOT) and BOOT != "-":
                path.unlink(missing_ok=True)
                return None
            return int(parts[0]), None if parts[1] == "-" else int(parts[1])
    except ValueError:
        pass
    return None


def stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command's name (state, parent,
    process group, session, ...: proc(5), from its 3rd field on); None if it cannot be
    read (gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """Process ``pid``'s start time (clock ticks since boot: proc(5)'s ``starttime``), None
    if it is gone. Read right after starting it, this waits for its ``exec``."""
    fields = stat(pid)
    return None if fields is None else int(fields[19])


def alive(pid: int, child: subprocess.Popen[bytes] | None = None,
          since: int | None = None) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie (one whose parent has not
    reaped it is dead all the same). ``child``: its ``Popen`` if this process started it
    (polled, which reaps it). ``since``: the start time it had (clock ticks since boot,
    proc(5)'s ``starttime``): a process with another is a later one given the same pid."""
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: its start time can be read all the same
        if since is None:
            return True
    fields = stat(pid)  # a zombie is not running
    return fields is not None and fields[0] != "Z" and (since is None
                                                        or int(fields[19]) == since)


def in_group(pid: int, pgid: int) -> bool:
    """Whether process ``pid`` runs (no zombie) in process group ``pgid``."""
    fields = stat(pid)
    return fields is not None and fields[0] != "Z" and int(fields[2]) == pgid


def leftovers(leader: int) -> list[int]:
    """The processes that still run in the process group of ``leader``, a group leader
    that has exited (a container's children, which outlive their parent unless stopped):
    one ``killpg(leader, 0)``, and a look at every process in ``/proc`` only when the group
    has any (zombies are left out). [] also while a live process has ``leader``'s pid:
    Linux gives no new process the id of a group that still has members (the kernel keeps
    a group's id while any process refers to it), so that group is empty, and the one with
    that id now is another program's."""
    try:
        os.killpg(leader, 0)
    except ProcessLookupError:
        return []
    except PermissionError:  # another user's: looked for all the same
        pass
    fields = stat(leader)
    if fields is not None and fields[0] != "Z":
        return []  # (the leader itself, or a later process given its pid)
    with os.scandir("/proc") as entries:
        return [int(e.name) for e in entries if e.name.isdigit() and int(e.name) != leader
                and in_group(int(e.name), leader)]


def send_signal(targets: Sequence[int], sig: signal.Signals, *,
                group: bool = False) -> list[int]:
    """Send ``sig`` to each of ``targets`` (process groups with ``group``); returns those
    it reached. One gone already is left out; one this process may not signal (another
    user's) is said in one line, and runs on."""
    send = os.killpg if group else os.kill
    sent = []
    for pid in targets:
        try:
            send(pid, sig)
        except ProcessLookupError:  # gone already
            continue
        except PermissionError:  # (a process of its group runs as another user)
            log.error("process %s %d: not allowed to signal it (%s), so it runs on; "
                      "run the worker as a user that may signal its containers' "
                      "processes", "group" if group else "", pid, sig.name)
            continue
        sent.append(pid)
    return sent


def terminate(pid: int, grace_s: float, *, group: bool = False,
              child: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM to process ``pid`` (to its process group with ``group``), SIGKILL after
    ``grace_s`` seconds if it still runs; returns once it is gone, or 5 s after the
    SIGKILL. ``child``: its ``Popen`` if this process started it (it is reaped)."""
    terminate_all([(pid, child)], grace_s, group=group)


def terminate_all(targets: Sequence[tuple[int, subprocess.Popen[bytes] | None]],
                  grace_s: float, *, group: bool = False) -> None:
    """:func:`terminate` for several processes at once (``(pid, its Popen or None)``):
    SIGTERM to every one, one wait of at most ``grace_s`` seconds for them all, SIGKILL to
    those still running, and at most 5 s more; so however many there are, all are gone
    (or were sent SIGKILL) within ``grace_s`` + 5 s. One by one, the n-th of n processes
    that ignore SIGTERM would be killed only after n times ``grace_s``: a lease's
    containers stopped that way could outlive the lease (services/lease.py). With
    ``group``, each is the leader of a process group, and it is gone once every process
    of its group is (:func:`leftovers`): a child that ignores SIGTERM is sent SIGKILL
    though its parent exited at once."""
    members: dict[int, list[int]] = {}  # a leader gone -> its group's members last seen

    def runs(pid: int, child: subprocess.Popen[bytes] | None) -> bool:
        if alive(pid, child):
            return True
        if not group:
            return False
        seen = [m for m in members.get(pid, ()) if in_group(m, pid)]  # (no /proc scan
        members[pid] = seen or leftovers(pid)  # while those it found still run)
        return bool(members[pid])

    left = list(targets)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        sent = set(send_signal([pid for pid, _ in left], sig, group=group))
        left = [(pid, child) for pid, child in left if pid in sent]
        deadline, pause = time.monotonic() + wait, 0.001  # (most exit within a millisecond:
        while True:  # the caller's event loop waits, so look soon, then every 20 ms)
            left = [(pid, child) for pid, child in left if runs(pid, child)]
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        if not left:
            return


__all__ = ["BOOT", "alive", "in_group", "leftovers", "read", "record", "send_signal",
           "start_time", "stat", "terminate", "terminate_all"]
