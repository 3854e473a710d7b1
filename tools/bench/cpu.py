"""CPU time used by this process, by another local process, and by the local broker."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from pathlib import Path


def self_cpu() -> float:
    """CPU seconds (user + system) this process has used so far (``getrusage``)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def proc_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` and all its threads,
    past and present; None if ``pid`` is None or the process cannot be read.

    Read from the process's CPU-time clock (``clock_getcpuclockid(3)``: Linux encodes
    it as ``(~pid << 3) | 2``, CPUCLOCK_SCHED of the whole process), which counts in
    nanoseconds. Where that clock is refused (a zombie, or not Linux) it falls back to
    /proc/PID/stat's utime + stime, which count in clock ticks (10 ms at the usual
    USER_HZ of 100): too coarse for a block of a few short Starts.
    """
    if pid is None:
        return None
    with contextlib.suppress(OSError, OverflowError):
        return time.clock_gettime(((~pid) << 3) | 2)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid() -> int | None:
    """The pid of a RabbitMQ node (an Erlang ``beam.smp``) on this machine, None if
    there is none (the broker runs elsewhere, or /proc is not readable)."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() == "beam.smp":
                    return int(d.name)
    return None


class BrokerCpu:
    """CPU seconds of the local broker between construction and :meth:`used`
    (all its work, other clients' included)."""

    def __init__(self) -> None:
        self.pid = broker_pid()
        self.start = proc_cpu(self.pid)

    def used(self) -> float | None:
        """Seconds since construction; None if the broker is not local or unreadable."""
        end = proc_cpu(self.pid)
        return None if end is None or self.start is None else end - self.start


def percent(cpu: float | None, seconds: float) -> str:
    """``cpu`` seconds over ``seconds`` of wall time, in whole percent of one core;
    ``?`` if ``cpu`` is None."""
    return "?" if cpu is None else f"{100 * cpu / max(seconds, 1e-9):.0f}"
