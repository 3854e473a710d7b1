"""Work on a copy of this process's memory, in a child process: how a durable replica
encodes a snapshot without holding its event loop (issue 14).

``fork()`` gives the child a copy-on-write copy of the parent's memory at that instant,
so a function the child runs sees the state as it was when :func:`fork_child` returned,
while the parent goes on changing its own. Holding the loop costs the fork (copying the
page tables: about 20 ms for a 460 MB process on a 2-vCPU VM, a few ms for 100 MB), not
the work. The child talks to nothing the parent owns: it disables the garbage collector
(no finalizer of a socket or a store runs in it), takes the default action on signals
(a Ctrl-C sent to the process group ends it instead of reaching the parent's event loop
through the signal wake-up descriptor they share), writes its result into a pipe and
leaves with ``os._exit`` (no ``atexit`` hook, no buffered output flushed twice).

POSIX only (``os.fork``): :data:`AVAILABLE` says whether it can be used.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable

#: Whether this platform can fork (POSIX).
AVAILABLE = hasattr(os, "fork")


class ChildFailed(RuntimeError):
    """The child raised, was killed, or wrote nothing: its work is lost, nothing else."""


class Child:
    """A forked child running one function (:func:`fork_child`). Await :meth:`result`
    for its bytes; :meth:`kill` it if they are no longer wanted."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self._fd = pid, fd
        self._reaped = False

    async def result(self, timeout_s: float = 600.0) -> bytes:
        """The child's bytes, read in a thread (the loop goes on meanwhile). Raises
        :class:`ChildFailed` if it raised or died, or took over ``timeout_s`` seconds
        (then it is killed). Cancelled, it kills the child."""
        deadline = asyncio.get_running_loop().call_later(timeout_s, self.kill)
        try:
            data, status = await asyncio.to_thread(self._read_and_reap)
        except asyncio.CancelledError:
            self.kill()
            raise
        finally:
            deadline.cancel()
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exit status {os.WEXITSTATUS(status)}")
            raise ChildFailed(f"child {self.pid} failed ({how}; its time limit: {timeout_s:g}s)")
        return data

    def kill(self) -> None:
        """End the child (SIGKILL) if it still runs; it is reaped when :meth:`result`'s
        read ends (the pipe closes with it)."""
        if not self._reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _read_and_reap(self) -> tuple[bytes, int]:
        chunks = []
        with open(self._fd, "rb", closefd=True) as pipe:
            while chunk := pipe.read(1 << 20):
                chunks.append(chunk)
        _, status = os.waitpid(self.pid, 0)
        self._reaped = True
        return b"".join(chunks), status


def fork_child(work: Callable[[], bytes]) -> Child:
    """Fork; the child runs ``work`` on its copy of memory, writes the bytes it returns to
    a pipe, and exits. Returns at once in the parent. Raises OSError if the fork fails."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            gc.disable()
            with contextlib.suppress(ValueError):  # forked from a thread that is not main
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
            os.close(read_fd)
            data = memoryview(work())
            while data:
                data = data[os.write(write_fd, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    return Child(pid, read_fd)
