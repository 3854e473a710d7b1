"""Write deploy/rabbitmq/definitions.json: one broker user per service of a group.

RabbitMQ loads the file at boot (``load_definitions`` in rabbitmq.conf). Passwords
are demo values, given to the services by docker-compose.yml; change both for a
real deployment. Run: python deploy/make_definitions.py [GROUP]
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from pathlib import Path

USERS = {"web": "web-demo-password", "logic": "logic-demo-password",
         "worker-1": "worker-1-demo-password", "worker-2": "worker-2-demo-password",
         "admin": "admin-demo-password"}


def password_hash(password: str, salt: bytes) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(group: str) -> dict[str, object]:
    g = re.escape(group)
    names = f"^crdt\\.{g}(\\..*)?$"
    users = [{"name": u, "password_hash": password_hash(p, hashlib.sha256(u.encode()).digest()[:4]),
              "hashing_algorithm": "rabbit_password_hashing_sha256",
              "tags": ["administrator"] if u == "admin" else []} for u, p in USERS.items()]
    perms = [{"user": u, "vhost": "/", "configure": names, "write": names, "read": names}
             for u in USERS if u != "admin"]
    perms.append({"user": "admin", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"})
    return {"users": users, "vhosts": [{"name": "/"}], "permissions": perms}


if __name__ == "__main__":
    group = sys.argv[1] if len(sys.argv) > 1 else "platform"
    out = Path(__file__).parent / "rabbitmq" / "definitions.json"
    out.write_text(json.dumps(definitions(group), indent=2) + "\n")
    print(f"wrote {out} for group {group}")
