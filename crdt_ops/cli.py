"""The ``crdt-ops`` command: services, a replica process, simulations and tools."""

from __future__ import annotations

import argparse
import asyncio
import sys

from crdt_ops import config
from crdt_ops.chaos import add_command as chaos_command
from crdt_ops.fuzz import register as fuzz_command
from crdt_ops.runner import add_arguments as runner_arguments
from crdt_ops.sim.histories import add_arguments as histories_arguments
from crdt_ops.sim.histories import command as histories_command


def _story(args: argparse.Namespace) -> int:
    from crdt_ops.sim.demo import run_demo

    return 0 if run_demo(seed=args.seed) else 1


def _simulate(args: argparse.Namespace) -> int:
    from crdt_ops.sim.simulation import simulate

    print(f"simulating {args.replicas} replicas, {args.ops} operations ...", file=sys.stderr)
    result = simulate(args.replicas, args.ops, args.seed, progress=True)
    print(result.line())
    return 0 if result.converged else 1


def _replica(args: argparse.Namespace) -> int:
    from crdt_ops.runner import main as run_replica

    return run_replica(config.from_args(args), args)


def _retire(args: argparse.Namespace) -> int:
    from crdt_ops.transport.amqp import publish_retirement

    settings = config.from_args(args)
    last = asyncio.run(publish_retirement(settings, args.retiree))
    print(f"retired {args.retiree} from group {settings.group} after its operation {last}")
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from crdt_ops.transport.amqp import export_snapshot

    print(f"wrote {args.out}: clock {export_snapshot(args.store, args.out)}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from crdt_ops.signing import keygen

    key, ring = keygen(args.principal, args.out)
    print(f"wrote {key} (secret: give it to {args.principal}'s replicas as --signing-key) "
          f"and added its public key to {ring} (give it to every replica as --keyring)")
    return 0


def _service(args: argparse.Namespace) -> int:
    from services.main import main as service_main

    return service_main(args.command, args)


def main(argv: list[str] | None = None) -> int:
    from services.main import add_arguments as service_arguments

    parser = argparse.ArgumentParser(prog="crdt-ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    service_arguments(sub)
    for name in ("web", "logic", "worker", "demo"):
        sub.choices[name].set_defaults(func=_service)

    story = sub.add_parser("story", help="the origin story, printed (in-memory network)")
    story.add_argument("--seed", type=int, default=1)
    story.set_defaults(func=_story)

    sim = sub.add_parser("simulate", help="many replicas over the in-memory network")
    sim.add_argument("--replicas", type=int, default=100)
    sim.add_argument("--ops", type=int, default=2000)
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=_simulate)

    hist = sub.add_parser("histories", help="random histories with joins, retirements and "
                          "compaction, checked for convergence (in memory)")
    histories_arguments(hist)
    hist.set_defaults(func=histories_command)

    rep = sub.add_parser("replica", help="one replica over RabbitMQ (optionally with a workload)")
    config.add_arguments(rep)
    runner_arguments(rep)
    rep.set_defaults(func=_replica)

    ret = sub.add_parser("retire", help="tell a group that a replica is gone for good")
    ret.add_argument("retiree", metavar="REPLICA_ID")
    config.add_arguments(ret)
    ret.set_defaults(func=_retire)

    snap = sub.add_parser("snapshot", help="export a stopped replica's snapshot (for --bootstrap)")
    snap.add_argument("--store", required=True, help="the replica's SQLite store")
    snap.add_argument("--out", required=True, help="file to write the snapshot to")
    snap.set_defaults(func=_snapshot)

    keys = sub.add_parser("keygen", help="an Ed25519 signing key for a principal "
                          "(--auth signature)")
    keys.add_argument("principal", help="e.g. web, logic, worker.node-1")
    keys.add_argument("--out", default=".", help="directory for PRINCIPAL.key and keyring.json")
    keys.set_defaults(func=_keygen)

    chaos_command(sub)

    fuzz_command(sub)  # crdt-ops fuzz: crdt_ops/fuzz.py

    args = parser.parse_args(argv)
    if hasattr(args, "amqp_url"):  # a command with replica settings: check them first
        try:
            config.from_args(args)
        except ValueError as e:
            parser.error(str(e))
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
