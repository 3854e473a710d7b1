"""The ``crdt-ops`` command."""

from __future__ import annotations

import argparse
import sys

from crdt_ops import config
from crdt_ops.runner import add_arguments as runner_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crdt-ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    story = sub.add_parser("story", help="the origin story, printed (in-memory network)")
    story.add_argument("--seed", type=int, default=1)
    from services.main import add_arguments as service_arguments

    service_arguments(sub)
    sim = sub.add_parser("simulate", help="many replicas over the in-memory network")
    sim.add_argument("--replicas", type=int, default=100)
    sim.add_argument("--ops", type=int, default=2000)
    sim.add_argument("--seed", type=int, default=0)
    rep = sub.add_parser("replica", help="one replica over RabbitMQ (optionally with a workload)")
    config.add_arguments(rep)
    runner_arguments(rep)
    ret = sub.add_parser("retire", help="tell a group that a replica is gone for good")
    ret.add_argument("retiree", metavar="REPLICA_ID")
    config.add_arguments(ret)
    snap = sub.add_parser("snapshot", help="export a stopped replica's snapshot (for --bootstrap)")
    snap.add_argument("--store", required=True, help="the replica's SQLite store")
    snap.add_argument("--out", required=True, help="file to write the snapshot to")
    args = parser.parse_args(argv)

    if args.command == "snapshot":
        from crdt_ops.transport.amqp import export_snapshot

        clock = export_snapshot(args.store, args.out)
        print(f"wrote {args.out}: clock {clock}")
        return 0
    if args.command == "retire":
        import asyncio

        from crdt_ops.transport.amqp import publish_retirement

        asyncio.run(publish_retirement(config.from_args(args), args.retiree))
        print(f"retired {args.retiree} from group {config.from_args(args).group}")
        return 0

    if args.command == "replica":
        from crdt_ops.runner import main as run_replica

        try:
            settings = config.from_args(args)
        except ValueError as e:
            parser.error(str(e))
        return run_replica(settings, args)

    if args.command in ("web", "logic", "worker", "demo"):
        from services.main import main as service_main

        return service_main(args.command, args)
    if args.command == "story":
        from crdt_ops.sim.demo import run_demo

        return 0 if run_demo(seed=args.seed) else 1
    from crdt_ops.sim.simulation import simulate

    print(f"simulating {args.replicas} replicas, {args.ops} operations ...", file=sys.stderr)
    result = simulate(args.replicas, args.ops, args.seed, progress=True)
    print(result.line())
    return 0 if result.converged else 1


if __name__ == "__main__":
    raise SystemExit(main())
