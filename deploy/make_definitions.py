"""Provision a platform for the services: ``web``, ``logic`` and ``worker.<node>`` users
with the narrowest permissions, and the exchanges and streams of the platform's group and
of each cell's group (``<group>.cell.<cell>``: services/model.py; the rules are in
crdt_ops/transport/provision.py).

It writes a RabbitMQ definitions file: docker-compose.yml's broker loads
deploy/rabbitmq/definitions.json at boot (``load_definitions`` in rabbitmq.conf), and
the cluster profile imports deploy/rabbitmq/definitions-cluster.json (``--queue-type
quorum``); ``--apply`` imports it into a running broker instead.

Passwords: with ``--passwords FILE`` each user's is the one FILE holds (JSON, user ->
password), or a new random one, which is added to FILE (written readable by its owner only):
give each service its own in its ``--amqp-url``. Without it, the demo passwords
(``<user>-demo-password``, known to anyone), which docker-compose.yml gives its services:
for that throwaway broker only. ``--apply`` therefore needs ``--passwords``, and makes no
administrator user (the broker it imports into has one: it runs rabbitmqctl).
Run: python deploy/make_definitions.py [--group G] [--cell C ...] [--worker NODE ...]
[--queue-type T] [--passwords FILE] [--out FILE | --apply [--node RABBIT_NODE]]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from crdt_ops.transport.provision import apply, definitions, demo_password, new_passwords
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
    p.add_argument("--passwords", type=Path, metavar="FILE",
                   help="the users' passwords (JSON, user -> password); new random ones for "
                        "the users it lacks are added to it (needed with --apply; without "
                        "it: the demo passwords, known to anyone)")
    args = p.parse_args(argv)
    if args.apply and args.passwords is None:
        p.error("--apply sets the users' passwords on a running broker: name a --passwords "
                "FILE (new random passwords are made for the users it lacks); the demo "
                "passwords are for docker-compose's throwaway broker only")
    gs = groups(args.group, args.cell or list(DEFAULT_CELLS))
    users = principals(args.worker or list(DEFAULT_WORKERS))
    admin = None if args.apply else "admin"
    passwords = None
    if args.passwords is not None:
        passwords = keep_passwords(args.passwords, [*users, *([admin] if admin else [])])
    defs = definitions(gs, users, admin=admin, queue_type=args.queue_type,
                       routed=list(subgroups(args.group, gs)), passwords=passwords)
    said = (f"; passwords in {args.passwords}" if args.passwords
            else "; DEMO passwords (<user>-demo-password): for a throwaway broker only")
    if args.apply:
        apply(defs, args.node)
        print(f"provisioned group {args.group} on {args.node or 'the local broker'}: users "
              f"{', '.join(users)}{said}")
        return 0
    out = args.out
    out.write_text(json.dumps(defs, indent=2) + "\n")
    print(f"wrote {out} for group {args.group}{said}")
    return 0


def keep_passwords(path: Path, users: list[str]) -> dict[str, str]:
    """The passwords of ``users`` in the JSON file ``path`` (user -> password), new random
    ones for those it lacks written back to it, readable by its owner only. Raises
    SystemExit with a message when it is not such a file."""
    have: dict[str, str] = {}
    if path.exists():
        try:
            have = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"--passwords {path}: not a JSON file of passwords ({e})") from None
        if not isinstance(have, dict) or not all(isinstance(v, str) and v
                                                 for v in have.values()):
            raise SystemExit(f"--passwords {path}: not a JSON object of user -> password")
    passwords = new_passwords(users, have)
    if any(u not in have for u in users):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({**have, **passwords}, f, indent=2)
            f.write("\n")
        os.chmod(path, 0o600)
    return passwords


if __name__ == "__main__":
    sys.exit(main())
