"""What a result was measured on: the machine, the software and the load."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_model() -> str:
    """The first ``model name`` of /proc/cpuinfo, else what :mod:`platform` says,
    else ``unknown``; never raises."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def revision() -> str:
    """The git commit of the crdt_ops being measured, marked if tracked files
    under crdt_ops/ have uncommitted changes; ``unknown`` outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno", "--", ".."], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + (" +uncommitted changes" if dirty.stdout.strip() else "")


def platform_info() -> dict[str, str]:
    """The entries every benchmark's header starts with, in this order: ``cpu``
    (:func:`cpu_model`), ``cores`` (all, and how many this process may use),
    ``os`` and ``python``."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()}" + (f" ({usable} usable)" if usable is not None else ""),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def load_average(sep: str = "/") -> str:
    """The 1, 5 and 15 minute load averages to two decimals, joined by ``sep``;
    ``?`` where the system does not tell."""
    try:
        return sep.join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"
