"""``crdt-ops replica``: one replica process over RabbitMQ, with an optional
scripted workload, reporting its state to a JSON file (for tests and operators).

The workload is a ledger by construction: every operation also increments the
counter ``issued/<replica id>``, so at any replica that counter must equal the
number of operations the replica issued: less is a lost operation, more is one
applied twice.

With ``--ledger FILE`` the process also keeps a ledger independent of its state:
what it issued and what it applied, line by line (see :mod:`tools.chaos`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any, TypeVar

from crdt_ops.replica import Replica
from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings
from crdt_ops.transport.store import StoreUnavailable
from services import logs
from services.process import Stopped, StopSignals, node_state, stop_node

T = TypeVar("T")


def plain(value: Any) -> Any:
    """A JSON-able form of a state value (sets as sorted lists, bytes as hex)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in sorted(value.items())}
    if isinstance(value, frozenset):
        return sorted((plain(v) for v in value), key=repr)
    if isinstance(value, bytes):
        return value.hex()
    return value


def one_op(r: Replica, rng: random.Random) -> None:
    """One random operation on counters, a set and container records, plus the ledger."""
    x = rng.randrange(6)
    if x == 0:
        r.counter("hits").increment(rng.randint(1, 3))
    elif x == 1:
        r.set("nodes").add(f"n{rng.randrange(20)}")
    elif x == 2:
        r.set("nodes").remove(f"n{rng.randrange(20)}")
    else:
        rec = r.map(f"containers/c{rng.randrange(30)}")
        if x == 3:
            rec.register("power_desired").set(rng.choice(["on", "off"]))
        elif x == 4:
            rec.counter("restart_generation").increment()
        else:
            rec.flag("pinned").enable()
    r.counter(f"issued/{r.replica_id}").increment()


def _outbox(node: AmqpNode) -> int:
    """Messages in the outbox, or -1 while the store cannot be read."""
    try:
        return len(node.store.unconfirmed())
    except StoreUnavailable:
        return -1


def report(node: AmqpNode, path: Path, issued: int, done: bool, left: bool = False) -> None:
    """Write the state file (``left``: the replica retired and stopped; its store is
    closed and its outbox was confirmed empty before it stopped)."""
    r = node.replica
    data = {"replica": node.replica_id, "clock": dict(r.clock), "state": plain(r.state()),
            "issued": issued, "done": done, "buffered": r.buffered, "left": left,
            "dead_lettered": node.dead_lettered,
            "published": node.published, "refused": node.refused,
            "store_failures": node.store_failures, "store_ok": node.store_failure is None,
            "echo_losses": node.echo_losses, "heartbeats": node.heartbeats,
            "resent": node.resent, "relayed": node.relayed,
            "outbox": 0 if left else _outbox(node),
            "stable_lag": r.stable_lag(), "member": r.is_member,
            "stable": sum(r.stable_clock().values()), "stable_clock": r.stable_clock(),
            "admissions": r.membership.admissions, "retired": sorted(r.membership.retired),
            "missing": {k: list(v) for k, v in r.missing().items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


async def run(settings: Settings, ops: int, seed: int, rate: float, state_file: Path | None,
              per_write: int, more_on_signal: int = 0, ledger_file: Path | None = None,
              leave_on_signal: bool = False) -> str:
    """Issue ``ops`` operations, then idle until SIGTERM/SIGINT; with ``more_on_signal``,
    each SIGUSR1 raises the target by that many operations (issued as the first ones).
    With ``leave_on_signal``, SIGUSR2 makes it issue the rest of its ``ops`` at once
    and then retire (:meth:`AmqpNode.leave`: its last writes are still in flight when
    the retirement is published after them), and idle, stopped, until SIGTERM.
    With ``ledger_file``, a :class:`services.ledger.LedgerWriter` records what is issued
    and applied."""
    node = AmqpNode(settings)
    ledger = None
    if ledger_file is not None:  # after the restore: replaying the store is not applying anew
        from services.ledger import LedgerWriter

        ledger = LedgerWriter(ledger_file, node.replica)
        node.on_committed.append(ledger.committed)
        node.on_restored.append(ledger.restored)
    signals = StopSignals()
    stop = signals.event
    more = asyncio.Event()
    leave = asyncio.Event()
    loop = asyncio.get_running_loop()
    if more_on_signal:
        loop.add_signal_handler(signal.SIGUSR1, more.set)
    if leave_on_signal:
        loop.add_signal_handler(signal.SIGUSR2, leave.set)
    try:  # connecting, replaying, joining: a stop signal ends it all the same
        await signals.guard(node.start(), lambda: node_state(node))
    except BaseException:
        await stop_node(node)
        if ledger:
            ledger.close()
        raise
    issued = node.replica.counter(f"issued/{node.replica_id}").value
    rng = random.Random(f"{seed}:{node.replica_id}:{issued}")
    print(f"replica {node.replica_id} up; {max(0, ops - issued)} operations to issue",
          file=sys.stderr, flush=True)

    left = False

    async def reporter() -> None:
        while not left:
            if state_file:
                report(node, state_file, issued, issued >= ops)
            await asyncio.sleep(0.2)

    task = loop.create_task(reporter())
    started, paced = loop.time(), 0
    try:
        while not stop.is_set():
            while issued < ops and not stop.is_set():
                first = node.replica.clock.get(node.replica_id, 0) + 1
                n = min(per_write, ops - issued)
                if ledger:
                    ledger.in_block = True
                try:
                    async with node.write() as r:
                        for _ in range(n):
                            one_op(r, rng)
                        issued += n
                        last = r.clock[r.replica_id]
                        if ledger:
                            ledger.pending(first, last, n)
                except StoreUnavailable as e:  # not accepted: memory went back to the store
                    if ledger:
                        ledger.in_block = False
                    print(f"replica {node.replica_id}: {e}; waiting for the store",
                          file=sys.stderr, flush=True)
                    if not (await signals.first(node.store_works()))[0]:
                        break  # stopped while waiting for the store
                    issued = node.replica.counter(f"issued/{node.replica_id}").value
                    continue
                if ledger:  # write() returned: accepted
                    ledger.accepted(first, last, n)
                if rate and not leave.is_set():  # paced by the clock (the work's own time
                    paced += n  # included), catching up
                    await asyncio.sleep(max(0.0, started + paced / rate - loop.time()))
                else:
                    await asyncio.sleep(0)
            if leave.is_set() and not left:
                await node.leave()  # right after the last block: its publish is in flight
                left = True
                if ledger:
                    ledger.left(node.replica.clock.get(node.replica_id, 0))
                if state_file:
                    report(node, state_file, issued, True, left=True)
                print(f"replica {node.replica_id} retired after its operation "
                      f"{node.replica.clock.get(node.replica_id, 0)}", file=sys.stderr,
                      flush=True)
            waits = [loop.create_task(stop.wait()), loop.create_task(more.wait())]
            if leave_on_signal and not leave.is_set():
                waits.append(loop.create_task(leave.wait()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if more.is_set() and not stop.is_set() and not left:
                more.clear()
                ops += more_on_signal
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not left:
            if state_file:
                report(node, state_file, issued, issued >= ops)
            await stop_node(node)
        if ledger:
            ledger.close()
    return signals.name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops", type=int, default=0, help="operations to issue (default 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the workload's random operations (default 0; with the "
                             "replica id, the same seed issues the same operations)")
    parser.add_argument("--rate", type=float, default=0, help="operations per second (0: max)")
    parser.add_argument("--per-write", type=int, default=1,
                        help="operations per write() block (each block is made durable once)")
    parser.add_argument("--state-file", type=Path, default=None,
                        help="write {clock, state, issued, ...} as JSON here every 0.2 s")
    parser.add_argument("--ledger", type=Path, default=None,
                        help="append what is issued and applied here (see tools.chaos)")
    parser.add_argument("--more-on-signal", type=int, default=0, metavar="N",
                        help="on each SIGUSR1, issue N more operations (default 0: ignore it)")
    parser.add_argument("--leave-on-signal", action="store_true",
                        help="on SIGUSR2, issue the remaining operations at once, then "
                        "retire from the group for good and stop replicating")


def main(settings: Settings, args: argparse.Namespace) -> int:
    logs.setup()
    try:
        how = asyncio.run(run(settings, args.ops, args.seed, args.rate, args.state_file,
                              args.per_write, args.more_on_signal, args.ledger,
                              args.leave_on_signal))
    except Stopped as e:  # before it was up: connecting, replaying, waiting for admission
        print(f"crdt-ops replica: {e}", file=sys.stderr, flush=True)
        return e.code
    except ValueError as e:  # a store of another replica or mode, a retired replica
        print(f"crdt-ops replica: {e}", file=sys.stderr)
        return 2
    print(f"crdt-ops replica: stopped ({how})", file=sys.stderr, flush=True)
    return 0
