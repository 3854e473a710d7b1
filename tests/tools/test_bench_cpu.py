"""The benchmarks' CPU readings of other processes are fine-grained enough for short blocks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tools.bench.cpu import proc_cpu


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_proc_cpu_sees_a_few_milliseconds() -> None:
    """3 ms of CPU shows as 3 ms or a little more, not as 0 or a 10 ms clock tick."""
    pid = os.getpid()
    before = proc_cpu(pid)
    _burn(0.003)
    after = proc_cpu(pid)
    assert before is not None and after is not None
    assert 0.003 <= after - before < 0.008, after - before


def test_proc_cpu_reads_another_process_and_none_once_it_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, time\nend = time.process_time() + 0.2\n"
                              "while time.process_time() < end: pass\n"
                              "sys.stdout.write('x'); sys.stdout.flush(); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.read(1) == b"x"
    used = proc_cpu(child.pid)
    assert used is not None and 0.2 <= used < 2.0, used
    child.communicate()
    assert proc_cpu(child.pid) is None
    assert proc_cpu(None) is None
