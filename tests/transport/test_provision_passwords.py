"""``deploy/make_definitions.py``'s passwords: never the demo ones on a running broker
unless asked, new random ones kept in a file only its owner reads."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "deploy" / "make_definitions.py"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def verifies(user: dict[str, str], password: str) -> bool:
    """RabbitMQ's rabbit_password_hashing_sha256 check of ``password`` against ``user``."""
    raw = base64.b64decode(user["password_hash"])
    salt, digest = raw[:4], raw[4:]
    return hashlib.sha256(salt + password.encode()).digest() == digest


def test_apply_without_a_passwords_file_is_refused_before_touching_the_broker(
        tmp_path: Path) -> None:
    done = run("--apply", "--node", "nobody@nowhere", cwd=tmp_path)
    assert done.returncode == 2, done
    assert "--apply sets the users' passwords on a running broker" in done.stderr
    assert "rabbitmqctl" not in done.stderr  # refused before any import was tried


def test_new_passwords_are_random_kept_private_and_reused(tmp_path: Path) -> None:
    pw = tmp_path / "pw.json"
    first = run("--out", str(tmp_path / "a.json"), "--passwords", str(pw), "--worker", "n1",
                cwd=tmp_path)
    assert first.returncode == 0, first
    assert f"passwords in {pw}" in first.stdout
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    passwords = json.loads(pw.read_text())
    assert sorted(passwords) == ["admin", "logic", "web", "worker.n1"]
    assert all(len(p) >= 30 and "demo" not in p for p in passwords.values())
    defs = json.loads((tmp_path / "a.json").read_text())
    assert all(verifies(u, passwords[u["name"]]) for u in defs["users"])

    again = run("--out", str(tmp_path / "b.json"), "--passwords", str(pw), "--worker", "n1",
                "--worker", "n2", cwd=tmp_path)
    assert again.returncode == 0, again
    more = json.loads(pw.read_text())
    assert {k: more[k] for k in passwords} == passwords and "worker.n2" in more


def test_without_a_passwords_file_the_demo_passwords_are_named_as_such(tmp_path: Path) -> None:
    done = run("--out", str(tmp_path / "d.json"), cwd=tmp_path)
    assert done.returncode == 0, done
    assert "DEMO passwords" in done.stdout
    defs = json.loads((tmp_path / "d.json").read_text())
    assert all(verifies(u, f"{u['name']}-demo-password") for u in defs["users"])
