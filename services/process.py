"""How a crdt-ops process starts and stops: SIGTERM and SIGINT end every command
promptly in every state (connecting, replaying, joining, running), and a node that
is stopping is given a bounded time to close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from crdt_ops.errors import Deposed
from crdt_ops.transport.amqp import AmqpNode, redact_urls
from crdt_ops.transport.amqp.groups import AmqpGroups

T = TypeVar("T")
log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where a process without an event loop is, like Ctrl-C's
    KeyboardInterrupt (``crdt-ops`` installs it for every command)."""


#: The stop signal that arrived (its number), for :func:`stop_if_requested`; None: none.
_requested: int | None = None


def raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM's handler: raise :class:`Terminated` (and remember it)."""
    global _requested
    _requested = signum
    raise Terminated()


def raise_interrupt(signum: int, frame: object) -> None:
    """SIGINT's handler for a computation without an event loop (``histories``,
    ``simulate``): raise KeyboardInterrupt, as Python's own does, and remember it.
    Not for a command that runs ``asyncio.run``, which handles SIGINT itself only while
    Python's own handler is installed."""
    global _requested
    _requested = signum
    raise KeyboardInterrupt


def heeding_stops() -> Callable[[], None]:
    """For a computation without an event loop (``histories``, ``simulate``): SIGINT's
    handler becomes :func:`raise_interrupt` (SIGTERM's remembers already); returns
    :func:`stop_if_requested`, for it to call between its steps."""
    signal.signal(signal.SIGINT, raise_interrupt)
    return stop_if_requested


def stop_if_requested() -> None:
    """Raise the stop signal again (:class:`Terminated`, KeyboardInterrupt) if one arrived:
    for a long computation to call between its steps. Python loses what a signal handler
    raises while a finaliser runs (a ``__del__``, a generator closed by the garbage
    collector: it prints "Exception ignored in ..." and goes on), and the computation
    would run on to its end."""
    if _requested is not None:
        raise Terminated() if _requested == signal.SIGTERM else KeyboardInterrupt


class Stopped(Exception):
    """SIGTERM or SIGINT arrived before the process was up (``state``: what it was doing).
    The process ends with ``code``, 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int, state: str) -> None:
        self.signum, self.state = signum, state
        super().__init__(f"stopped by {signal.Signals(signum).name} while {state}")

    @property
    def code(self) -> int:
        return 128 + self.signum


class ServiceFailed(Exception):
    """A service's loop (logic's decisions, a worker's beats and reconciles) ended by an
    error it does not ride out (a store failure it does: it waits for the store). The
    process then stops its node and exits with status 1, so that its supervisor starts it
    again (a worker's containers keep running meanwhile, under its guard and lease);
    ``__cause__`` is the error."""

    def __init__(self, role: str, error: BaseException | None) -> None:
        what = f"{type(error).__name__}: {error}" if error is not None else "it returned"
        where = "" if isinstance(error, Deposed) else " (the traceback is in the log above)"
        super().__init__(f"{role}'s loop ended ({what}); stopping with status 1 so that its "
                         f"supervisor starts it again{where}")


class StopSignals:
    """SIGTERM and SIGINT, caught by the running event loop from the moment it is made
    (before connecting): :attr:`event` is set by the first one, :attr:`signum` names it.
    Nothing a process does while getting up (connecting with backoff, replaying the
    stream, waiting to be admitted) may swallow them: wrap it in :meth:`guard`."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.signum: int | None = None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._got, sig)

    def _got(self, sig: int) -> None:
        if self.signum is None:
            self.signum = sig
        self.event.set()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"

    async def first(self, aw: Awaitable[T]) -> tuple[bool, T | None]:
        """Await ``aw`` unless a stop signal comes first: then ``aw`` is cancelled (and
        given up to 5 s to unwind). Returns (done, its result)."""
        done, result, _ = await self._race(aw, lambda: "")
        return done, result

    async def until_stopped(self, role: str, loop: Awaitable[None]) -> None:
        """Run ``loop`` (a service's loop, which runs until cancelled) until a stop
        signal, then cancel it. Raises :class:`ServiceFailed` if it ends first (its error
        logged with its traceback)."""
        try:
            done, _ = await self.first(loop)
        except Deposed as e:  # (said as it happened: crdt_ops/transport/amqp/holder.py)
            raise ServiceFailed(role, e) from e
        except Exception as e:
            log.error("%s's loop failed", role, exc_info=e)
            raise ServiceFailed(role, e) from e
        if done:
            raise ServiceFailed(role, None)

    async def guard(self, aw: Awaitable[T], state: Callable[[], str]) -> T:
        """Await ``aw``; a stop signal first cancels it and raises :class:`Stopped`
        saying ``state()`` (what was going on when the signal came)."""
        done, result, what = await self._race(aw, state)
        if not done:
            assert self.signum is not None
            raise Stopped(self.signum, what)
        return result  # type: ignore[return-value]

    async def _race(self, aw: Awaitable[T],
                    state: Callable[[], str]) -> tuple[bool, T | None, str]:
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stop.cancel()
        if task.done():
            return True, task.result(), ""
        what = state()  # before unwinding
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: an error while unwinding is no news now
        return False, None, what


def run_stoppable(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, where SIGINT or SIGTERM during the run cancels ``coro``
    (given up to 5 s to unwind, :meth:`StopSignals.first`) and then raises
    :class:`KeyboardInterrupt` or :class:`Terminated` once the loop is closed, so the
    caller's cleanup runs and ``crdt-ops`` says it was stopped. ``asyncio.run`` alone can
    end such a run with a bare CancelledError (when something in ``coro`` added a
    cancellation of its own), which no caller can tell from a bug. The process's SIGINT
    and SIGTERM handlers are as before afterwards."""
    signum: int | None = None

    async def main() -> T | None:
        nonlocal signum
        stops = StopSignals()
        _, result = await stops.first(coro)
        signum = stops.signum
        return result

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = asyncio.run(main())
    finally:  # the loop's own handlers are gone with it: put the process's back
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    if signum == signal.SIGTERM:
        raise Terminated()
    if signum is not None:
        raise KeyboardInterrupt()
    return result  # type: ignore[return-value]


def node_state(node: AmqpNode | AmqpGroups) -> str:
    """What a starting node (or each group's node not started yet) is doing, for a
    one-line message."""
    if isinstance(node, AmqpGroups):
        states = [node_state(n) for n in node.nodes.values()]
        return "; ".join(s for s in states if not s.startswith("starting")) or states[0]
    s = node.settings
    if node._conn is None:
        return f"connecting to the broker at {redact_urls(s.amqp_url)}"
    if node.standby:
        return f"waiting as a standby in group {s.group} (another process of it runs)"
    if node.store.get("joined") is None:
        return f"replaying group {s.group}'s stream"
    if not node.replica.is_member:
        return f"waiting to be admitted to group {s.group}"
    return f"starting in group {s.group}"


async def stop_node(node: AmqpNode | AmqpGroups) -> None:
    """``node.stop()``, bounded to 10 s (a broker that does not answer the close)."""
    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(node.stop(), 10)
