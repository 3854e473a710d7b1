"""docker-compose.yml, checked without a Docker engine (there is none on the development
machines): every crdt-ops service's command parses with the ``crdt-ops`` flags; its broker
user is provisioned in deploy/rabbitmq/definitions.json with the password the service is
given, and every group the service holds is provisioned (exchanges); each worker's cell is
held by web and logic; the ``cells`` profile adds workers in a second cell."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from services import model
from services.main import add_arguments

ROOT = Path(__file__).resolve().parents[2]


def services() -> dict[str, dict[str, Any]]:
    """The crdt-ops services of the compose file (built from this checkout): name ->
    {"command", "env", "profiles"}."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    out = {}
    for name, svc in spec["services"].items():
        if svc.get("build") != ".":
            continue
        out[name] = {"command": [str(a) for a in svc["command"]],
                     "env": {k: str(v) for k, v in svc["environment"].items()},
                     "profiles": svc.get("profiles", [])}
    return out


def parsed(command: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p.add_subparsers(dest="role", required=True))
    return p.parse_args(command)


def password_ok(stored: str, password: str) -> bool:
    """RabbitMQ's rabbit_password_hashing_sha256 (crdt_ops/transport/provision.py)."""
    raw = base64.b64decode(stored)
    return hashlib.sha256(raw[:4] + password.encode()).digest() == raw[4:]


def test_every_service_parses_and_is_provisioned() -> None:
    defs = json.loads((ROOT / "deploy/rabbitmq/definitions.json").read_text())
    users = {u["name"]: u["password_hash"] for u in defs["users"]}
    exchanges = {e["name"] for e in defs["exchanges"]}
    found = services()
    assert {"web", "logic", "worker-1", "worker-2", "worker-3", "worker-4"} <= set(found)
    for name, svc in found.items():
        args = parsed(svc["command"])
        url = urlsplit(svc["env"]["CRDT_OPS_AMQP_URL"].split(",")[0])
        user, password = unquote(url.username or ""), unquote(url.password or "")
        assert user in users and password_ok(users[user], password), name
        assert args.replica_id == user, name  # its principal (--auth user-id)
        group = svc["env"]["CRDT_OPS_GROUP"]
        cells = ([args.cell or model.DEFAULT_CELL] if args.role == "worker"
                 else svc["env"].get("CRDT_OPS_CELLS", model.DEFAULT_CELL).split(","))
        for g in model.held_groups(args.role, group, cells):
            assert f"crdt.{g}" in exchanges, (name, g)


def test_the_cells_profile_adds_a_second_cell_that_web_and_logic_hold() -> None:
    found = services()
    cell_of = {name: parsed(s["command"]).cell or model.DEFAULT_CELL
               for name, s in found.items()
               if s["command"][0] == "worker" and s["profiles"] in ([], ["cells"])}
    default = {n: c for n, c in cell_of.items() if not found[n]["profiles"]}
    profile = {n: c for n, c in cell_of.items() if found[n]["profiles"] == ["cells"]}
    assert set(default.values()) == {model.DEFAULT_CELL} and len(default) == 2
    assert len(profile) == 2 and len(set(profile.values()) - {model.DEFAULT_CELL}) == 1
    for holder in ("web", "logic"):
        held = set(found[holder]["env"]["CRDT_OPS_CELLS"].split(","))
        assert set(cell_of.values()) <= held, holder
