"""Provision a platform for the services: ``web``, ``logic`` and ``worker.<node>`` users
with the narrowest permissions, and the exchanges and streams of the platform's group and
of each cell's group (``<group>.cell.<cell>``: services/model.py; the rules are in
crdt_ops/transport/provision.py).

It writes a RabbitMQ definitions file: docker-compose.yml's broker loads
deploy/rabbitmq/definitions.json at boot (``load_definitions`` in rabbitmq.conf), and
the cluster profile imports deploy/rabbitmq/definitions-cluster.json (``--queue-type
quorum``); ``--apply`` imports it into a running broker instead. Passwords are demo
values, given to the services by docker-compose.yml; change both for a real deployment.
Run: python deploy/make_definitions.py [--group G] [--cell C ...] [--worker NODE ...]
[--queue-type T] [--out FILE | --apply [--node RABBIT_NODE]]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crdt_ops.transport.provision import apply, definitions, demo_password
from services.model import DEFAULT_CELL, check_cell, groups, principal, subgroups

__all__ = ["apply", "definitions", "demo_password", "principals"]

#: docker-compose.yml's deployment: cell main's two workers, and the ``cells`` profile's
#: two in cell east (logic and web hold both cells)
DEFAULT_WORKERS = ("worker-1", "worker-2", "worker-3", "worker-4")
DEFAULT_CELLS = (DEFAULT_CELL, "east")


def principals(workers: list[str] | tuple[str, ...] = DEFAULT_WORKERS) -> list[str]:
    """The service principals of a deployment: web, logic and a worker per node."""
    return [principal("web"), principal("logic"), *(principal("worker", w) for w in workers)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--group", default="platform")
    p.add_argument("--cell", action="append", type=check_cell,
                   help=f"a cell (repeatable; default {', '.join(DEFAULT_CELLS)})")
    p.add_argument("--worker", action="append", help="a worker node (repeatable; default "
                   f"{', '.join(DEFAULT_WORKERS)})")
    p.add_argument("--queue-type", choices=("classic", "quorum"), default="classic",
                   help="of the dead-letter queue, as the services' --queue-type (a cluster: "
                        "quorum)")
    p.add_argument("--apply", action="store_true", help="import into the running broker")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).parent / "rabbitmq" / "definitions.json",
                   help="the file to write (default deploy/rabbitmq/definitions.json)")
    p.add_argument("--node", help="with --apply: the RabbitMQ node (rabbitmqctl -n)")
    args = p.parse_args(argv)
    gs = groups(args.group, args.cell or list(DEFAULT_CELLS))
    defs = definitions(gs, principals(args.worker or list(DEFAULT_WORKERS)),
                       queue_type=args.queue_type, routed=list(subgroups(args.group, gs)))
    if args.apply:
        apply(defs, args.node)
        print(f"provisioned group {args.group} on {args.node or 'the local broker'}")
        return 0
    out = args.out
    out.write_text(json.dumps(defs, indent=2) + "\n")
    print(f"wrote {out} for group {args.group}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
