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

STREAM_MAX_AGE = "7D"  # as crdt_ops.transport.config.Settings.stream_max_age
#: The founder queue holds one message, the first claim; later claims are nacked
#: ("reject-publish": https://www.rabbitmq.com/docs/maxlength#overflow-behaviour).
FOUNDER_QUEUE: dict[str, int | str] = {"x-max-length": 1, "x-overflow": "reject-publish"}


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
            "read": f"^({g}|{g}\\.log|{g}\\.founder|{own})$"}


def definitions(group: str, users: list[str], vhost: str = "/", admin: str | None = "admin",
                queue_type: str = "classic") -> dict[str, object]:
    """Users (password: :func:`demo_password`), permissions and the group's topology
    (the dead-letter queue of ``queue_type``, as the replicas' ``--queue-type``)."""
    def user(name: str, tags: list[str]) -> dict[str, object]:
        salt = hashlib.sha256(name.encode()).digest()[:4]
        return {"name": name, "password_hash": password_hash(demo_password(name), salt),
                "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags}

    g = f"crdt.{group}"
    perms = [{"user": u, "vhost": vhost, **permissions(group, u)} for u in users]
    admins = [] if admin is None else [admin]  # None: provisioning a broker that has one
    perms += [{"user": a, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
              for a in admins]
    exchange = {"vhost": vhost, "type": "fanout", "durable": True, "auto_delete": False,
                "internal": False, "arguments": {}}
    queue = {"vhost": vhost, "durable": True, "auto_delete": False}
    return {
        "users": [user(u, []) for u in users] + [user(a, ["administrator"]) for a in admins],
        "vhosts": [{"name": vhost}],
        "permissions": perms,
        "exchanges": [{"name": g, **exchange}, {"name": f"{g}.dlx", **exchange},
                      {"name": f"{g}.founder", **exchange}],
        "queues": [{"name": f"{g}.log", **queue,
                    "arguments": {"x-queue-type": "stream", "x-max-age": STREAM_MAX_AGE}},
                   {"name": f"{g}.dead", **queue, "arguments": {"x-queue-type": queue_type}},
                   {"name": f"{g}.founder", **queue,
                    "arguments": {**FOUNDER_QUEUE, "x-queue-type": queue_type}}],
        "bindings": [{"source": g, "vhost": vhost, "destination": f"{g}.log",
                      "destination_type": "queue", "routing_key": "", "arguments": {}},
                     {"source": f"{g}.dlx", "vhost": vhost, "destination": f"{g}.dead",
                      "destination_type": "queue", "routing_key": "", "arguments": {}},
                     {"source": f"{g}.founder", "vhost": vhost, "destination": f"{g}.founder",
                      "destination_type": "queue", "routing_key": "", "arguments": {}}],
    }


def apply(defs: dict[str, object], node: str | None = None) -> None:
    """Import ``defs`` into a running broker (``rabbitmqctl [-n NODE] import_definitions``)."""
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), "import_definitions"]
    out = subprocess.run(cmd, input=json.dumps(defs), text=True, capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(out.stderr or out.stdout).strip()}")
