"""Provision a crdt-ops group on RabbitMQ: its exchanges, stream and dead-letter queue,
and one broker user per principal with the narrowest permissions it needs.

A principal's user may configure (declare, delete) only its own queues
``crdt.<group>.<principal>[.<instance>]``; write (publish, bind a queue) to the group's
exchange and dead-letter exchange and its own queues; read (consume, bind from) the
group's exchange, the stream and its own queues. The group's exchanges, stream,
dead-letter queue and their bindings are created by the administrator (here), so no
service can declare, bind or delete them. Passwords are :func:`demo_password` values:
for demos and tests; a real deployment sets its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess

from crdt_ops.transport.topology import Topology


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
            "write": f"^({g}|{g}\\.dlx|{g}\\.founder|{own})$",
            "read": f"^({g}|{g}\\.log|{g}\\.founder|{g}\\.founders|{own})$"}


def definitions(group: str, users: list[str], vhost: str = "/", admin: str | None = "admin",
                queue_type: str = "classic") -> dict[str, object]:
    """Users (password: :func:`demo_password`), permissions and the group's shared
    topology (:meth:`~crdt_ops.transport.topology.Topology.shared`, for replicas
    whose ``--queue-type`` is ``queue_type``)."""
    def user(name: str, tags: list[str]) -> dict[str, object]:
        salt = hashlib.sha256(name.encode()).digest()[:4]
        return {"name": name, "password_hash": password_hash(demo_password(name), salt),
                "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags}

    topology = Topology(group, queue_type=queue_type)
    perms = [{"user": u, "vhost": vhost, **permissions(group, u)} for u in users]
    admins = [] if admin is None else [admin]  # None: provisioning a broker that has one
    perms += [{"user": a, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
              for a in admins]
    exchange = {"vhost": vhost, "type": "fanout", "durable": True, "auto_delete": False,
                "internal": False, "arguments": {}}
    queue = {"vhost": vhost, "durable": True, "auto_delete": False}
    shared = topology.shared()
    return {
        "users": [user(u, []) for u in users] + [user(a, ["administrator"]) for a in admins],
        "vhosts": [{"name": vhost}],
        "permissions": perms,
        "exchanges": [{"name": name, **exchange} for name in topology.exchanges],
        "queues": [{"name": q.name, **queue, "arguments": q.arguments or {}} for q in shared],
        "bindings": [{"source": q.bound_to, "vhost": vhost, "destination": q.name,
                      "destination_type": "queue", "routing_key": "", "arguments": {}}
                     for q in shared if q.bound_to is not None],
    }


def apply(defs: dict[str, object], node: str | None = None) -> None:
    """Import ``defs`` into a running broker (``rabbitmqctl [-n NODE] import_definitions``)."""
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), "import_definitions"]
    out = subprocess.run(cmd, input=json.dumps(defs), text=True, capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(out.stderr or out.stdout).strip()}")
