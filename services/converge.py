"""One runtime call of the worker's reconcile, on one of its runtime threads.

:func:`converge` looks up the containers it is given, stops those that must not run
(together), then starts those that must run and do not, or run an older
``restart_generation``; it returns what it did (:class:`Converged`) for the worker's event
loop to record and report (services/worker.py, ``Worker.reconcile``). It runs off the
event loop because a runtime's calls may take long (each ``docker`` command up to a minute;
a stop waits out the grace of a container that ignores SIGTERM), and the loop must go on
beating to keep the lease. The worker runs several such calls at once, never two that share
a container: one per container whose record changed, or that a full reconcile's listing of
what runs found at odds with its record.

The one rule, :func:`should_run`, decides which containers run. Each start is checked
against it again as it is made, with the records and lease of that moment: the calls
before it may have taken long, and meanwhile the loop may have changed a record, removed
a placement, or ended the lease.

What it reads of the loop's state it is handed: a copy of the records to reconcile, made
on the loop, for its decisions; for the checks as it starts, callables that return the
records and the lease as they are then (one key read at a time: the loop may replace the
mapping meanwhile, and empty the old one); the retries' times. It writes none of that
state.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping

from services import lease, model
from services.runtime import Runtime, RuntimeError_, StartWithdrawn

log = logging.getLogger("services.worker")


def should_run(c: model.Container | None, held: lease.Lease, now: float) -> bool:
    """The rule: container ``c`` (None: no placement on this node) runs here at ``now``
    (``lease.clock()`` seconds) under lease ``held`` when it is placed on the lease's
    epoch, it should be on, and the lease allows containers to run (README, "What the
    platform guarantees about a container whose node is paused, cut off or dead")."""
    return (c is not None and c.power_desired == "on" and c.assigned_epoch == held.epoch
            and held.may_run(now))


def at_odds(c: model.Container | None, pid: int | None, held: lease.Lease, now: float,
            retry_at: tuple[float, float] | None = None) -> bool:
    """Whether container ``c`` (its placement on this node, None for none), whose instance
    runs as ``pid`` (None: none runs), needs a reconcile at ``now`` under lease ``held``:
    it runs and must not (:func:`should_run`); it must run and does not, unless its retry
    after a failed start (``retry_at``: when, and its backoff) is not due yet; it runs an
    older ``restart_generation``; or its record does not report what runs (``on`` and its
    pid, or ``off`` and none). What the worker's full reconcile asks of each container its
    listing of what runs found (services/worker.py)."""
    if should_run(c, held, now):
        assert c is not None  # (should_run)
        if pid is None:
            return retry_at is None or retry_at[0] <= now
        return (c.started_generation != c.restart_generation or c.power_actual != "on"
                or c.pid != pid)
    return pid is not None or (c is not None and (c.power_actual != "off"
                                                  or c.pid is not None))


@dataclasses.dataclass
class Converged:
    """What one :func:`converge` did: the containers it looked at (``cids``); the pids of
    those that run now (``running``); those the rule wants here (``wanted``); those it
    started (pid, and the ``restart_generation`` started; or found started for it, by a
    worker killed before it reported the start); those whose start failed (why:
    none of them runs, as a runtime's start removes the old instance first); and those it
    did not start because their record or the lease changed while earlier calls ran
    (``passed_over``)."""

    cids: list[str]
    running: dict[str, int]
    wanted: set[str]
    started: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    passed_over: set[str] = dataclasses.field(default_factory=set)


def converge(runtime: Runtime, node: str, placed: Mapping[str, model.Container | None],
             now: float, *, records: Callable[[], Mapping[str, model.Container]],
             held: Callable[[], lease.Lease],
             retry_at: Mapping[str, tuple[float, float]]) -> Converged:
    """Bring ``runtime`` (node ``node``'s) toward what the records want.

    ``placed``: the containers to reconcile (container id -> its placement on this node,
    None for none), a copy the loop made as it called; each is looked up
    (``Runtime.pid``). ``now``: the reconcile's time (``lease.clock()``
    seconds): the rule's and the backoff's. ``records()``: the placements on this node as
    the loop holds them at the moment of asking; ``held()``: the lease likewise;
    ``retry_at``: container id -> (when its next start may be tried, its backoff) after a
    failed start. Raises what the runtime raises, except
    :class:`~services.runtime.RuntimeError_` from a start (recorded in ``failed``)."""
    cids = sorted(placed)
    running = {cid: pid for cid in cids if (pid := runtime.pid(cid)) is not None}
    lease_then = held()
    wanted = {cid for cid in cids if should_run(placed.get(cid), lease_then, now)}
    stopping = [cid for cid in cids if cid in running and cid not in wanted]
    for cid in stopping:
        log.info("%s: stopping %s", node, cid)
    if stopping:
        runtime.stop_all(stopping, grace_s=lease_then.stop_wait_s)
        for cid in stopping:
            del running[cid]
    done = Converged(cids, running, wanted)

    def may_start(cid: str) -> bool:
        """The rule with the record and the lease of now: the calls before took time."""
        return held() is lease_then and should_run(records().get(cid), lease_then,
                                                   lease.clock())
    for cid in sorted(wanted):
        c = records().get(cid)
        if c is None or not may_start(cid):
            done.passed_over.add(cid)
            continue
        if cid in running and c.started_generation == c.restart_generation:
            continue
        if cid in running and runtime.generation(cid) == c.restart_generation:
            # started for this generation by a worker killed before it reported that: a
            # Restart is carried out once
            log.info("%s: %s runs as pid %d, started for restart generation %d already",
                     node, cid, running[cid], c.restart_generation)
            done.started[cid] = (running[cid], c.restart_generation)
            continue
        if retry_at.get(cid, (0.0, 0.0))[0] > now:
            continue  # its backoff after a failed start
        try:  # (asked again as it runs: an image's pull, the old one's stop take long)
            pid = runtime.start(cid, c.restart_generation, functools.partial(may_start, cid))
        except StartWithdrawn:
            log.info("%s: not starting %s: its lease or its record stopped allowing it while "
                     "its start was prepared", node, cid)
            done.passed_over.add(cid)
            running.pop(cid, None)
            continue
        except RuntimeError_ as e:
            log.warning("%s: starting %s failed: %s", node, cid, e)
            done.failed[cid] = str(e)
            running.pop(cid, None)
            continue
        log.info("%s: started %s as pid %d", node, cid, pid)
        running[cid] = pid
        done.started[cid] = (pid, c.restart_generation)
    return done


__all__ = ["Converged", "at_odds", "converge", "should_run"]
