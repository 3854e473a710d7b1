"""Provision a group on RabbitMQ: its exchanges and stream, and one user per service
with the narrowest permissions it needs.

What it writes is a RabbitMQ definitions file (users, permissions, exchanges,
queues, bindings). docker-compose.yml's broker loads deploy/rabbitmq/definitions.json
at boot (``load_definitions`` in rabbitmq.conf); ``--apply`` imports it into a
running broker instead (``rabbitmqctl import_definitions``).

Each service's user is its principal (``web``, ``logic``, ``worker.<node>``: see
services/model.py), and its replica ids extend that name, so its queues are
``crdt.<group>.<principal>[.<instance>]``. A service user may:

- configure (declare, delete) only its own queues;
- write (publish, bind a queue) to the group's exchange and dead-letter exchange
  and its own queues;
- read (consume, bind from) the group's exchange, the stream and its own queues.

The group's exchanges, the stream ``crdt.<group>.log``, the dead-letter queue and
their bindings are created here, by the administrator: a service cannot declare,
bind or delete them (crdt-ops then uses them as they are). Services run with
``--auth user-id``, so a replica only accepts operations whose origin belongs to
the broker user that published them.

Passwords are demo values, given to the services by docker-compose.yml; change
both for a real deployment. Run: python deploy/make_definitions.py [--group G]
[--worker NODE ...] [--apply [--node RABBIT_NODE]]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

DEFAULT_WORKERS = ("worker-1", "worker-2")
STREAM_MAX_AGE = "7D"  # as crdt_ops.config.Settings.stream_max_age


def principals(workers: list[str] | tuple[str, ...] = DEFAULT_WORKERS) -> list[str]:
    """The service principals of a deployment (as services.model.principal names them)."""
    return ["web", "logic", *(f"worker.{w}" for w in workers)]


def demo_password(user: str) -> str:
    return f"{user}-demo-password"


def password_hash(password: str, salt: bytes) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def permissions(group: str, principal: str) -> dict[str, str]:
    """The configure/write/read patterns of one service user of ``group``."""
    g = re.escape(f"crdt.{group}")
    own = f"{g}\\.{re.escape(principal)}(\\..*)?"
    return {"configure": f"^{own}$",
            "write": f"^({g}|{g}\\.dlx|{own})$",
            "read": f"^({g}|{g}\\.log|{own})$"}


def definitions(group: str, users: list[str], vhost: str = "/", admin: str = "admin",
                queue_type: str = "classic") -> dict[str, object]:
    """Users (password: :func:`demo_password`), permissions and the group's topology
    (the dead-letter queue of ``queue_type``, as the replicas' ``--queue-type``)."""
    def user(name: str, tags: list[str]) -> dict[str, object]:
        salt = hashlib.sha256(name.encode()).digest()[:4]
        return {"name": name, "password_hash": password_hash(demo_password(name), salt),
                "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags}

    g = f"crdt.{group}"
    perms = [{"user": u, "vhost": vhost, **permissions(group, u)} for u in users]
    perms.append({"user": admin, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"})
    exchange = {"vhost": vhost, "type": "fanout", "durable": True, "auto_delete": False,
                "internal": False, "arguments": {}}
    queue = {"vhost": vhost, "durable": True, "auto_delete": False}
    return {
        "users": [user(u, []) for u in users] + [user(admin, ["administrator"])],
        "vhosts": [{"name": vhost}],
        "permissions": perms,
        "exchanges": [{"name": g, **exchange}, {"name": f"{g}.dlx", **exchange}],
        "queues": [{"name": f"{g}.log", **queue,
                    "arguments": {"x-queue-type": "stream", "x-max-age": STREAM_MAX_AGE}},
                   {"name": f"{g}.dead", **queue, "arguments": {"x-queue-type": queue_type}}],
        "bindings": [{"source": g, "vhost": vhost, "destination": f"{g}.log",
                      "destination_type": "queue", "routing_key": "", "arguments": {}},
                     {"source": f"{g}.dlx", "vhost": vhost, "destination": f"{g}.dead",
                      "destination_type": "queue", "routing_key": "", "arguments": {}}],
    }


def apply(defs: dict[str, object], node: str | None = None) -> None:
    """Import ``defs`` into a running broker (``rabbitmqctl [-n NODE] import_definitions``)."""
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), "import_definitions"]
    out = subprocess.run(cmd, input=json.dumps(defs), text=True, capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(out.stderr or out.stdout).strip()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--group", default="platform")
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
    defs = definitions(args.group, principals(args.worker or list(DEFAULT_WORKERS)),
                       queue_type=args.queue_type)
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
