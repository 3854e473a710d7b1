"""Provision crdt-ops groups on RabbitMQ: their exchanges, streams and dead-letter queues,
and one broker user per principal with the narrowest permissions it needs in them.

A principal's user may configure (declare, delete) only its own queues
``crdt.<group>.<principal>[.<instance>]``; write (publish, bind a queue) to the group's
exchange, its dead-letter exchange, the exchange into its stream alone (``crdt.G.tolog``:
what a member's queue refused goes there, never through the default exchange, which would
reach any queue of the virtual host by name) and its own queues; read (consume, bind from) the
group's exchange, the stream and its own queues. The group's exchanges, stream,
dead-letter queue and their bindings are created by the administrator (here), so no
service can declare, bind or delete them. Passwords are the ones given (a real deployment's:
:func:`new_passwords`), else :func:`demo_password` values, known to anyone: for
docker-compose's throwaway broker and tests only.

Several groups (a platform and its cells, :mod:`crdt_ops.routing`) are provisioned
together: RabbitMQ keeps one set of permissions per user and virtual host, so a user's
patterns cover each group's objects ("Access Control", https://www.rabbitmq.com/access-control.html).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
from collections.abc import Collection, Mapping, Sequence

from crdt_ops.transport.topology import Topology


def demo_password(user: str) -> str:
    """The demo password of ``user``: known to anyone who reads this line."""
    return f"{user}-demo-password"


def new_passwords(users: Collection[str], have: Mapping[str, str] | None = None
                  ) -> dict[str, str]:
    """A password for each of ``users``: the one in ``have`` if it has one, else a new
    random one (32 characters from ``secrets``)."""
    have = have or {}
    return {u: have.get(u) or secrets.token_urlsafe(24) for u in users}


def password_hash(password: str, salt: bytes) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _groups(groups: str | Sequence[str]) -> list[str]:
    names = [groups] if isinstance(groups, str) else list(groups)
    if not names:
        raise ValueError("provision at least one group")
    return names


def permissions(groups: str | Sequence[str], principal: str) -> dict[str, str]:
    """The configure/write/read patterns of one service user of ``groups`` (a group's
    name, or several)."""
    configure, write, read = [], [], []
    for group in _groups(groups):
        g = re.escape(f"crdt.{group}")
        own = f"{g}\\.{re.escape(principal)}(\\..*)?"
        configure.append(own)
        write += [g, f"{g}\\.dlx", f"{g}\\.founder", f"{g}\\.routed", f"{g}\\.tolog", own]
        read += [g, f"{g}\\.log", f"{g}\\.founder", f"{g}\\.founders", f"{g}\\.routed", own]
    return {"configure": f"^({'|'.join(configure)})$", "write": f"^({'|'.join(write)})$",
            "read": f"^({'|'.join(read)})$"}


def definitions(groups: str | Sequence[str], users: list[str], vhost: str = "/",
                admin: str | None = "admin", queue_type: str = "classic",
                routed: Collection[str] = (),
                passwords: Mapping[str, str] | None = None) -> dict[str, object]:
    """Users, their permissions in ``groups`` (a group's name, or several) and each group's
    shared topology (:meth:`~crdt_ops.transport.topology.Topology.shared`, for replicas
    whose ``--queue-type`` is ``queue_type``; ``routed``: the groups that have sub-groups,
    with their topic exchange bound to the fanout one). Each user's password is
    ``passwords[user]`` (hashed with a random salt; KeyError for a user it lacks), or with
    ``passwords`` None its :func:`demo_password` (with a salt derived from the name, so that
    the file is the same each time)."""
    def user(name: str, tags: list[str]) -> dict[str, object]:
        if passwords is None:
            pw, salt = demo_password(name), hashlib.sha256(name.encode()).digest()[:4]
        else:
            pw, salt = passwords[name], os.urandom(4)
        return {"name": name, "password_hash": password_hash(pw, salt),
                "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags}

    topologies = [Topology(g, queue_type=queue_type, routed=g in routed)
                  for g in _groups(groups)]
    perms = [{"user": u, "vhost": vhost, **permissions(groups, u)} for u in users]
    admins = [] if admin is None else [admin]  # None: provisioning a broker that has one
    perms += [{"user": a, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
              for a in admins]
    exchange = {"vhost": vhost, "durable": True, "auto_delete": False,
                "internal": False, "arguments": {}}
    queue = {"vhost": vhost, "durable": True, "auto_delete": False}
    shared = [q for t in topologies for q in t.shared()]
    return {
        "users": [user(u, []) for u in users] + [user(a, ["administrator"]) for a in admins],
        "vhosts": [{"name": vhost}],
        "permissions": perms,
        "exchanges": [{"name": name, "type": t.exchange_type(name), **exchange}
                      for t in topologies for name in t.exchanges],
        "queues": [{"name": q.name, **queue, "arguments": q.arguments or {}} for q in shared],
        "bindings": [{"source": source, "vhost": vhost, "destination": q.name,
                      "destination_type": "queue", "routing_key": "", "arguments": {}}
                     for q in shared for source in (q.bound_to, *q.also)
                     if source is not None]
        + [{"source": t.routed_exchange, "vhost": vhost, "destination": t.exchange,
            "destination_type": "exchange", "routing_key": "#", "arguments": {}}
           for t in topologies if t.routed],
    }


def apply(defs: dict[str, object], node: str | None = None) -> None:
    """Import ``defs`` into a running broker (``rabbitmqctl [-n NODE] import_definitions``)."""
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), "import_definitions"]
    out = subprocess.run(cmd, input=json.dumps(defs), text=True, capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(out.stderr or out.stdout).strip()}")
